"""``oomkit run`` as a real subprocess, for the live daemon tests.

Safety rules kept here:
- every attachment must lie inside the test's sandbox (checked before the
  config is written), so the daemon never manages a cgroup we did not create;
- the daemon and its watchdog are ended by pidfd (SIGTERM, then SIGKILL),
  never by name, also when the test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec

from oomkit.errors import TaskGone
from oomkit.linux import pidfd as _pidfd
from oomkit.schema import OOMRecord

from .procs import end_by_pidfd, signal_pidfd, until, wait_for_line, watchdogs_of


def read_event_log(path: Path) -> list[dict]:
    """The records of a daemon's JSON-lines event log so far ([] before it exists):
    whole lines only (one being written may be read in part)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def wait_event_log(path: Path, n: int, timeout: float = 10.0, step: float = 0.01) -> list[dict]:
    """The event log's records once there are ``n`` or more, or what is there after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_event_log(path)
        if len(records) >= n or time.monotonic() > deadline:
            return records
        time.sleep(step)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def config_text(sandbox_root: str, attach: list[dict], event_log: str, **daemon) -> str:
    for a in attach:
        cg = a["cgroup"]
        if not (cg == sandbox_root or cg.startswith(sandbox_root + "/")):
            raise ValueError(f"attachment {cg} is outside the sandbox {sandbox_root}")
    lines = ["[daemon]", 'cgroup = "v1"', f"event_log = {toml_value(event_log)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in daemon.items()]
    for a in attach:
        lines.append("\n[[attach]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in a.items()]
    return "\n".join(lines) + "\n"


class DaemonProc:
    """One ``oomkit run`` we started, its stderr collected line by line."""

    def __init__(self, tmp_path: Path, sandbox, attach: list[dict], name: str = "oomkit",
                 args: tuple[str, ...] = (), **daemon):
        self.tmp_path, self.sandbox = Path(tmp_path), sandbox
        self.config = self.tmp_path / f"{name}.toml"
        self.event_log = self.tmp_path / f"{name}-events.jsonl"
        # Machine-global by default (/run/oomkit): each test daemon gets its own.
        daemon.setdefault("state_dir", str(self.tmp_path / f"{name}-state"))
        self.state_dir = Path(daemon["state_dir"])
        self.daemon_opts = daemon
        self.args = tuple(args)         # more `oomkit run` options (--dry-run)
        self.write_config(attach)
        self.popen: subprocess.Popen | None = None
        self.pidfd = -1
        self.watchdog_pid: int | None = None
        self.watchdog_pidfd = -1
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None
        self.started_at = 0.0
        self.env: dict[str, str] | None = None     # extra environment (e.g. $NOTIFY_SOCKET)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def write_config(self, attach: list[dict], **daemon) -> None:
        opts = {**self.daemon_opts, **daemon}
        self.config.write_text(config_text(self.sandbox.root, attach, str(self.event_log), **opts))

    def start(self, timeout: float = 20.0) -> DaemonProc:
        self.started_at = time.monotonic()
        self.popen = subprocess.Popen([sys.executable, "-m", "oomkit.cli", "run", "--config", str(self.config),
                                       *self.args],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, bufsize=1, cwd=self.tmp_path,
                                      env=None if self.env is None else {**os.environ, **self.env})
        self.pidfd = _pidfd.open_pidfd(self.popen.pid)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if self.wait_line("oomkit: running", timeout) is None:
            raise RuntimeError("the daemon did not start:\n" + self.stderr())
        # The watchdog started before "running"; a loaded machine may show it late in /proc.
        kids: list[int] = []
        until(lambda: bool(kids.extend(watchdogs_of(self.popen.pid)) or kids), 5)
        if kids:   # v1: the watchdog (the zygote, a worker runner's, is the other child)
            self.watchdog_pid = kids[0]
            try:
                self.watchdog_pidfd = _pidfd.open_pidfd(kids[0])
            except TaskGone:
                self.watchdog_pidfd = -1
        return self

    def _read_stderr(self) -> None:
        for line in self.popen.stderr:
            self.lines.append(line.rstrip("\n"))

    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, text: str, timeout: float, start: int = 0) -> str | None:
        return wait_for_line(lambda: self.lines[start:], text, timeout,
                             done=lambda: self.popen.poll() is not None and not self._reader.is_alive())

    def alive(self) -> bool:
        return not _pidfd.wait_exit(self.pidfd, 0)

    def watchdog_alive(self) -> bool:
        return self.watchdog_pidfd >= 0 and not _pidfd.wait_exit(self.watchdog_pidfd, 0)

    def signal(self, sig: int) -> None:
        signal_pidfd(self.pidfd, sig)

    def events(self) -> list[dict]:
        return read_event_log(self.event_log)

    def wait_events(self, n: int, timeout: float = 10.0) -> list[dict]:
        return wait_event_log(self.event_log, n, timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit; then make sure the watchdog is gone."""
        if self.popen is None:
            return None
        if self.pidfd >= 0:
            end_by_pidfd(self.pidfd, timeout)
        try:
            rc = self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        if self.watchdog_pidfd >= 0:
            # On the daemon's exit the watchdog reads EOF and ends by itself.
            end_by_pidfd(self.watchdog_pidfd, 3, sig=None)
        if self._reader is not None:
            self._reader.join(timeout=5)
        for fd in (self.pidfd, self.watchdog_pidfd):
            if fd >= 0:
                os.close(fd)
        self.pidfd = self.watchdog_pidfd = -1
        return rc


def check_record(ev: dict, memcg: str, resolved_by: str | None = None) -> None:
    """What every OOM line in the event log carries."""
    assert ev["level"] == "memcg", ev
    assert ev["memcg"] == memcg, ev
    if resolved_by is not None:
        assert ev["resolved_by"] == resolved_by, ev
    assert isinstance(ev["latency_ms"], (int, float)) and ev["latency_ms"] >= 0
    assert ev["detected_at"] and ev["resolved_at"] and ev["detected_at"] <= ev["resolved_at"]
    msgspec.convert(ev, OOMRecord)          # what `oomkit replay` reads: valid by the schema
    snap = ev["snapshot"]
    assert snap["scope"] == memcg
    assert memcg in snap["cgroups"] and snap["cgroups"][memcg]["limit"]
    assert snap["totalpages"] > 0
    assert isinstance(snap["tasks"], list)


def killed_pids(ev: dict) -> set[int]:
    return {k["pid"] for k in ev["killed"]}


def brief(events: list[dict]) -> list[str]:
    """One line per record, for an assertion's message: what ended it, who died, why."""
    return [f"{e.get('resolved_by')} killed={[(k.get('pid'), k.get('by')) for k in e.get('killed', [])]} "
            f"errors={[h.get('error') for h in e.get('handlers', [])]} note={e.get('note')!r} "
            f"at={e.get('detected_at')}" for e in events]
