"""The daemon built in the test's own process (its loop not run), for tests that
hand it one event at a time: a stand-in restorer, the config every such daemon
needs, and a look at the moment the live stack is restarted (Daemon._contain)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class FakeRestorer:
    """It keeps what it is told to hold, and nothing else (the real restorer and its
    watchdog are tested on their own)."""

    watchdog_pid = None

    def __init__(self):
        self.held: dict[str, tuple[str, int | None]] = {}
        self.on_handback: list = []     # v1's stacks add their rearm here

    def start(self):
        pass

    def hold(self, path, restore, *, pid=None, starttime=None):
        self.held[path] = (restore, pid)

    def drop(self, path):
        self.held.pop(path, None)

    def heartbeat(self):
        pass

    def close(self):
        pass


def in_process_daemon(tmp_path: Path, attach: list[dict], **daemon: Any):
    """A Daemon with a FakeRestorer; its event log and state dir in ``tmp_path``
    (never /run/oomkit), ``daemon`` the rest of its [daemon] table."""
    from oomkit.config.daemon import resolve
    from oomkit.daemon.main import Daemon

    config = resolve({"daemon": {"event_log": str(tmp_path / "ev.jsonl"),
                                 "state_dir": str(tmp_path / "state"), **daemon},
                      "attach": attach})
    return Daemon(config, restorer=FakeRestorer())


def at_restart(monkeypatch, look: Callable[[], dict]) -> dict:
    """What ``look()`` returns between the old stack's close and the new one's
    opening, once the daemon restarts its live stack (filled in then)."""
    from oomkit.daemon import main as daemon_main

    seen: dict = {}
    real_open = daemon_main.open_stack

    def open_stack(*args):
        seen.update(look())
        return real_open(*args)

    monkeypatch.setattr(daemon_main, "open_stack", open_stack)
    return seen
