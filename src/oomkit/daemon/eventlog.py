"""What the daemon records: one JSON line per OOM (the shape of ``oomkit
simulate --json``, plus timing and a snapshot of the context for replay), and
one readable line per release, as informative as the kernel's own."""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime, timezone
from typing import IO, Any

import msgspec

from oomkit.backends.base import Release
from oomkit.units import format_size

log = logging.getLogger("oomkit")


class EventLog:
    def __init__(self, path: str):
        self.path = path
        self._file: IO[bytes] | None = None
        self._encoder = msgspec.json.Encoder()

    def open(self) -> None:
        if self.path == "-":
            self._file = sys.stdout.buffer
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.open()
        self._file.write(self._encoder.encode(record) + b"\n")
        if self.path == "-":
            self._file.flush()

    def close(self) -> None:
        if self._file is not None and self.path != "-":
            self._file.close()
        self._file = None


def release_line(r: Release, policy: str, attached: str, reason: str, dry_run: bool = False) -> str:
    """``oomkit: killed pid 4242 (java) in /batch.slice/job-7, rss 1.2G, by largest-task at
    /batch.slice: largest task`` (the kernel: ``Killed process 4242 (java) ... anon-rss:...``)."""
    verb = "would kill" if dry_run else "killed"
    who = "the kernel OOM killer" if policy == "kernel" else f"{policy} at {attached}"
    return (f"oomkit: {verb} pid {r.pid} ({r.name}) in {r.cgroup}, rss {format_size(r.rss)}, "
            f"relief {format_size(r.relief)}, by {who}: {reason}")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
