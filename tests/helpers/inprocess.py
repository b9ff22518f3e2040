"""A stand-in for the daemon's restorer (daemon/restore.py) in tests that run the
daemon in process: it keeps what it is told to hold, and nothing else (the real
restorer and its watchdog are tested on their own)."""

from __future__ import annotations


class FakeRestorer:
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
