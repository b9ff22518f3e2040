"""Every kernel setting the daemon changes, held so that it is put back.

A minimal first version (the full one keeps runtime state under /run/oomkit
that outlives the daemon, see issue 10): v1's ``memory.oom_control`` files go
to the watchdog process (``daemon/watchdog.py``), which hands them back if the
daemon dies; every other held file is restored by :meth:`Restorer.close` when
the daemon stops.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from oomkit.daemon import watchdog as watchdog_module
from oomkit.errors import KernelError

log = logging.getLogger("oomkit")


class Restorer:
    def __init__(self, state_dir, watchdog_timeout: float, *, watchdog: bool = True):
        self.timeout = watchdog_timeout
        self.proc = None
        self.watchdog_pid = None
        self.held: dict[str, str] = {}

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", watchdog_module.__file__, str(self.timeout)],
                                     stdin=subprocess.PIPE, start_new_session=True)
        self.watchdog_pid = self.proc.pid

    def _send(self, line: str) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.write(line.encode("utf-8", "surrogateescape") + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise KernelError("the watchdog is gone") from None

    def hold(self, path, restore, *, pid=None, starttime=None):
        self.held[path] = restore
        if path.endswith("memory.oom_control"):
            self._send("+" + path)

    def drop(self, path):
        self.held.pop(path, None)
        if path.endswith("memory.oom_control"):
            self._send("-" + path)

    def heartbeat(self):
        self._send(".")

    def close(self):
        for path, text in list(self.held.items()):
            try:
                Path(path).write_text(text)
            except OSError:
                pass
        self.held.clear()
        if self.proc is not None:
            try:
                self._send("bye")
                self.proc.stdin.close()
            except (KernelError, OSError):
                pass
            self.proc.wait(timeout=2)
