"""What the daemon records: one JSON line per OOM (the shape of ``oomkit
simulate --json``, plus timing and a snapshot of the context for replay), and
one readable line per release, as informative as the kernel's own."""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from oomkit.backends.base import Release
from oomkit.text import record_safe
from oomkit.units import format_size

log = logging.getLogger("oomkit")


class EventLog:
    """The JSON-lines event log, which never takes the daemon down.

    Any error writing it (a full disk, a read-only filesystem, ``/dev/full``, a
    directory or a symlink at its path, a path made unwritable by a reload) is
    said once per episode on stderr; the records wait in a bounded queue
    (``QUEUE``, the oldest dropped and counted beyond it) and are retried at the
    next record, every ``RETRY`` seconds (:meth:`retry`, from the daemon's loop)
    and on :meth:`reopen` (SIGHUP, for logrotate).  The file is created 0640
    with ``O_NOFOLLOW``, whatever the umask.  Hostile strings (names that are
    not UTF-8) are escaped (:func:`oomkit.text.for_record`), never fatal."""

    QUEUE = 1000
    RETRY = 5.0

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.clock = clock
        self._fd: int | None = None
        self._encoder = msgspec.json.Encoder()
        self._queue: deque[bytes] = deque()
        self._lost = 0
        self._failing: str | None = None       # the error of the current episode
        self._next_try = 0.0
        self._torn = False                     # a partial line was written: end it first
        self.errors = 0                        # failed writes (status, metrics)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def write(self, record: dict[str, Any]) -> None:
        if len(self._queue) >= self.QUEUE:
            self._queue.popleft()
            self._lost += 1
        self._queue.append(self._encode(record))
        self._flush()

    def retry(self) -> None:
        """Write what waits, if the last try is ``RETRY`` seconds old."""
        if self._queue and self.clock() >= self._next_try:
            self._flush()

    def reopen(self, path: str | None = None) -> None:
        """SIGHUP: let go of the file (logrotate moved it) and open ``path`` afresh."""
        self._close_fd()
        if path is not None:
            self.path = path
        self._flush()

    def close(self) -> None:
        self._flush()
        if self._queue:
            log.error("oomkit: %d records not written to the event log %s at exit",
                      len(self._queue), self.path)
        self._close_fd()

    def _encode(self, record: dict[str, Any]) -> bytes:
        try:
            return self._encoder.encode(record) + b"\n"
        except UnicodeEncodeError:
            pass        # a name that is not UTF-8 (surrogateescape): escape it
        try:
            return self._encoder.encode(record_safe(record)) + b"\n"
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            log.error("oomkit: a record could not be encoded (%s); writing its outline", exc)
            keep = {k: record.get(k) for k in ("t", "level", "memcg", "resolved_by", "detected_at")}
            return self._encoder.encode(record_safe({**{k: str(v) for k, v in keep.items()},
                                                     "error": f"not encodable: {exc}"})) + b"\n"

    def _flush(self) -> None:
        try:
            if self._fd is None:
                self._fd = self._open()
            while self._queue:
                line = self._queue[0]
                if self._torn:
                    line = b"\n" + line
                self._write_all(line)
                self._torn = False
                self._queue.popleft()
        except OSError as exc:
            self._fail(exc)
            return
        if self._failing is not None:
            log.warning("oomkit: the event log %s is written again%s", self.path,
                        f"; {self._lost} records were lost while it failed" if self._lost else "")
            self._failing, self._lost = None, 0

    def _open(self) -> int:
        if self.path == "-":
            return sys.stdout.fileno()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o750, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o640)
        if not stat.S_ISREG(os.fstat(fd).st_mode) and not stat.S_ISCHR(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file")
        return fd

    def _write_all(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise OSError(errno.EBADF, "the event log is not open")
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except OSError:
                if len(view) < len(data):
                    self._torn = True
                raise
            view = view[n:]

    def _fail(self, exc: OSError) -> None:
        self._next_try = self.clock() + self.RETRY
        self._close_fd()
        why = exc.strerror or str(exc)
        self.errors += 1
        if self._failing is None:
            log.error("oomkit: cannot write the event log %s (%s): keeping up to %d records "
                      "in memory and retrying; OOMs are still handled", self.path, why, self.QUEUE)
        self._failing = why

    def _close_fd(self) -> None:
        if self._fd is not None and self.path != "-":
            try:
                os.close(self._fd)
            except OSError as exc:
                log.debug("oomkit: closing the event log: %s", exc)
        self._fd = None


def log_problem(path: str) -> str | None:
    """Why the event log at ``path`` could not be opened for appending (``oomkit
    check``), or None.  Creates nothing."""
    if path == "-":
        return None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return exc.strerror
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            return "it is a symlink (the daemon opens it with O_NOFOLLOW)"
        if stat.S_ISDIR(st.st_mode):
            return "it is a directory"
        return None if os.access(path, os.W_OK) else "not writable"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"{parent} is not writable"


def release_line(r: Release, policy: str, attached: str, reason: str, dry_run: bool = False) -> str:
    """``oomkit: killed pid 4242 (java) in /batch.slice/job-7, rss 1.2G, by largest-task at
    /batch.slice: largest task`` (the kernel: ``Killed process 4242 (java) ... anon-rss:...``)."""
    verb = "would kill" if dry_run else "killed"
    who = "the kernel OOM killer" if policy == "kernel" else f"{policy} at {attached}"
    return (f"oomkit: {verb} pid {r.pid} ({r.name}) in {r.cgroup}, rss {format_size(r.rss)}, "
            f"relief {format_size(r.relief)}, by {who}: {reason}")


def raise_lines(record: Any, dry_run: bool = False) -> list[str]:
    """``oomkit: raised the limit of /apps/web from 2G to 2.5G, by raise-limit at /apps/web:
    REASON``: one line per limit a policy raised in this OOM (a kill has its own line)."""
    verb = "would raise" if dry_run else "raised"
    old = {c.cgroup: c.old for c in record.limits}
    out = []
    for h in record.handlers:
        for a in h.actions:
            if a.action != "raise_limit" or a.result < 0 or a.error:
                continue
            cgroup, _, new = a.target.partition(" -> ")
            was = format_size(old[cgroup]) if old.get(cgroup) is not None else "?"
            out.append(f"oomkit: {verb} the limit of {cgroup} from {was} to {new}, by {h.policy} at "
                       f"{h.cgroup}: {a.reason or 'no reason given'}")
    return out


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
