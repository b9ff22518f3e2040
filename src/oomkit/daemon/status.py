"""What the running daemon is doing, for ``oomkit status``: a state file it writes.

The daemon keeps a :class:`StatusBook` (counts per attachment, the last OOMs)
and writes it whole to ``state_dir/status.json`` (atomically: a temporary file
then ``rename``; 0600 in the 0700 state dir, so root-only) at start, after each
OOM's record reached the event log, after a reload and when the managed
cgroups change.  Never before an OOM's record: the file is what happened.

``oomkit status`` reads that file and never derives anything itself: a daemon
is running while it holds the flock on ``state_dir/lock`` (the one
:mod:`oomkit.daemon.restore` takes), and the file is its own when the pid in it
is the lock holder's.  The file is checked as the state file is (a regular
file we own, not a symlink, bounded in size).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from collections import deque
from pathlib import Path
from typing import Any

import msgspec

from oomkit.daemon.files import replace_file
from oomkit.errors import ConfigError, OOMKitError
from oomkit.schema import OOMRecord

log = logging.getLogger("oomkit")

STATUS = "status.json"
MAX_STATUS = 16 << 20
LAST_OOMS = 10


class AttachmentStatus(msgspec.Struct, kw_only=True):
    """One attached cgroup: what the config gave it and what its OOMs came to."""

    cgroup: str
    pattern: str                    # the config's attach[].cgroup (a path or a glob)
    policy: str
    params: dict[str, Any] = {}
    ceiling: int | None = None
    ooms: int = 0                   # OOMs in which this attachment's handler ran
    resolved: dict[str, int] = {}   # by resolved_by: policy, backoff, kernel, unresolved
    kills: int = 0                  # tasks killed on this attachment's decision
    failures: int = 0               # handler failures (errors, overruns, bad verdicts)
    consecutive_failures: int = 0
    ejected: bool = False


class KilledStatus(msgspec.Struct, kw_only=True):
    pid: int
    name: str
    cgroup: str
    by: str


class OOMStatus(msgspec.Struct, kw_only=True):
    detected_at: str | None
    level: str
    memcg: str
    resolved_by: str
    policies: list[str]
    killed: list[KilledStatus]
    latency_ms: float | None = None


#: Histogram bucket bounds in seconds: the handler deadline defaults to 50 ms,
#: and an OOM handed to the kernel may take a second or more.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Timings(msgspec.Struct, kw_only=True):
    """A histogram as plain data (the metrics exporter shows it as one):
    ``counts[i]`` observations at most ``BUCKETS[i]`` and above the bound
    before, the last one above every bound."""

    counts: list[int] = msgspec.field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        i = next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
        self.counts[i] += 1
        self.sum += seconds

    def copy(self) -> Timings:
        return Timings(counts=list(self.counts), sum=self.sum)


class DaemonStatus(msgspec.Struct, kw_only=True):
    pid: int
    version: str
    started_at: str
    updated_at: str
    config: str | None
    hierarchy: str
    mount: str
    task_reader: str
    dry_run: bool
    running: str                    # "running", "reloading"
    managed: list[str]
    attachments: list[AttachmentStatus]
    ooms: int = 0
    ooms_by: dict[str, int] = {}    # "LEVEL/RESOLUTION" -> count
    kills_by: dict[str, int] = {}   # "policy:/cg" or "kernel" -> count
    event_log: str = ""
    event_log_errors: int = 0
    reload_failures: int = 0
    internal_errors: int = 0        # bugs of oomkit's own the loop contained (stack restarts)
    failures: int = 0               # handler failures, every attachment (detached ones too)
    ejections: int = 0              # attachments ejected after repeated failures
    handler_seconds: Timings = msgspec.field(default_factory=Timings)   # each handler's run
    oom_seconds: Timings = msgspec.field(default_factory=Timings)       # detection to resolution
    last_ooms: list[OOMStatus] = []


class StatusBook:
    """The daemon's counts, kept across reloads (by attached cgroup)."""

    def __init__(self) -> None:
        self.per_cgroup: dict[str, AttachmentStatus] = {}
        self.ooms = 0
        self.ooms_by: dict[str, int] = {}
        self.kills_by: dict[str, int] = {}
        self.reload_failures = 0
        self.internal_errors = 0
        self.failures = 0
        self.ejections = 0
        self.handler_seconds = Timings()
        self.oom_seconds = Timings()
        self.last: deque[OOMStatus] = deque(maxlen=LAST_OOMS)

    def counts(self, cgroup: str) -> AttachmentStatus:
        return self.per_cgroup.setdefault(cgroup, AttachmentStatus(cgroup=cgroup, pattern="", policy=""))

    def record(self, record: OOMRecord) -> None:
        """One OOM, as the event log has it."""
        resolved = str(record.resolved_by)
        self.ooms += 1
        key = f"{record.level}/{resolved}"
        self.ooms_by[key] = self.ooms_by.get(key, 0) + 1
        for k in record.killed:
            self.kills_by[k.by] = self.kills_by.get(k.by, 0) + 1
        for cg in dict.fromkeys(h.cgroup for h in record.handlers):
            a = self.counts(cg)
            a.ooms += 1
            a.resolved[resolved] = a.resolved.get(resolved, 0) + 1
            a.kills += sum(1 for k in record.killed if k.by == f"policy:{cg}")
            a.failures += sum(1 for h in record.handlers if h.cgroup == cg and h.error)
        self.failures += sum(1 for h in record.handlers if h.error)
        self.ejections += len(record.ejected)
        for h in record.handlers:
            if h.ms is not None:
                self.handler_seconds.observe(h.ms / 1000)
        if record.latency_ms is not None:
            self.oom_seconds.observe(record.latency_ms / 1000)
        self.last.append(OOMStatus(
            detected_at=record.detected_at, level=str(record.level), memcg=record.memcg,
            resolved_by=resolved, policies=[f"{h.policy}@{h.cgroup}" for h in record.handlers],
            killed=[KilledStatus(pid=k.pid, name=k.name, cgroup=k.cgroup, by=k.by) for k in record.killed],
            latency_ms=record.latency_ms))


def write_status(state_dir: str | Path, status: DaemonStatus) -> None:
    """``state_dir/status.json``, whole or not at all (an error is logged, never raised:
    the daemon's work does not depend on it)."""
    from oomkit.text import record_safe

    path = Path(state_dir) / STATUS
    try:
        data = msgspec.json.encode(status)
    except UnicodeEncodeError:      # a name that was not UTF-8: \xNN, as the event log
        data = msgspec.json.encode(record_safe(msgspec.to_builtins(status)))
    try:
        replace_file(path, data, 0o600, f".{STATUS}.{os.getpid()}")
    except OSError as exc:
        log.warning("oomkit: could not write %s (%s): `oomkit status` shows older state", path, exc.strerror)


def remove_status(state_dir: str | Path) -> None:
    try:
        os.unlink(Path(state_dir) / STATUS)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.debug("oomkit: %s not removed at exit: %s", Path(state_dir) / STATUS, exc)


class NotRunning(OOMKitError):
    """No daemon holds the state dir's lock."""


def running_pid(state_dir: Path) -> int:
    """The pid of the daemon holding ``state_dir/lock``; NotRunning if none does."""
    from oomkit.daemon.restore import LOCK, check_dir

    if not os.path.lexists(state_dir):
        raise NotRunning(f"no oomkit daemon is running (no state dir {state_dir})")
    check_dir(state_dir)
    try:
        fd = os.open(state_dir / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotRunning(f"no oomkit daemon is running (no lock in {state_dir})") from None
    except OSError as exc:
        raise ConfigError(f"cannot open {state_dir / LOCK}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"cannot lock {state_dir / LOCK}: {exc.strerror}") from None
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0
        raise NotRunning(f"no oomkit daemon is running (nobody holds {state_dir / LOCK})")
    finally:
        os.close(fd)


def read_status(state_dir: str | Path) -> DaemonStatus:
    """The running daemon's own account; NotRunning if there is no daemon."""
    state_dir = Path(state_dir)
    pid = running_pid(state_dir)
    path = state_dir / STATUS
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotRunning(f"the oomkit daemon (pid {pid}) has not written {path} yet") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_STATUS or st.st_uid != os.geteuid():
            raise ConfigError(f"{path} is not a status file oomkit wrote")
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
    finally:
        os.close(fd)
    try:
        status = msgspec.json.decode(data, type=DaemonStatus)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not a status file oomkit wrote ({exc})") from None
    if pid and status.pid != pid:
        raise NotRunning(f"the oomkit daemon (pid {pid}) has not written {path} yet "
                         f"(it holds pid {status.pid}'s)")
    return status


def build_status(daemon: Any, running: str = "running") -> DaemonStatus:
    """The document ``oomkit status`` shows, from the daemon's own objects."""
    from oomkit import __version__
    from oomkit.daemon.eventlog import now_iso

    book: StatusBook = daemon.book
    attached = []
    for cg, att in sorted(daemon.engine.attachments.items()):
        spec = daemon.attached_specs.get(cg)
        counts = book.counts(cg)
        # Copies throughout: the metrics exporter reads this document on its own thread.
        attached.append(msgspec.structs.replace(
            counts, resolved=dict(counts.resolved), pattern=spec.cgroup if spec else cg,
            policy=spec.policy if spec else att.label,
            params=dict(spec.params) if spec else {}, ceiling=att.ceiling,
            consecutive_failures=att.failures, ejected=cg in daemon.engine.ejected))
    return DaemonStatus(
        pid=os.getpid(), version=__version__, started_at=daemon.started_at, updated_at=now_iso(),
        config=daemon.config_path, hierarchy=daemon.version, mount=str(daemon.fs.mount),
        task_reader=daemon.task_reader, dry_run=daemon.config.dry_run, running=running,
        managed=sorted(daemon.managed), attachments=attached, ooms=book.ooms,
        ooms_by=dict(book.ooms_by), kills_by=dict(book.kills_by), event_log=daemon.events.path,
        event_log_errors=daemon.events.errors, reload_failures=book.reload_failures,
        internal_errors=book.internal_errors,
        failures=book.failures, ejections=book.ejections, handler_seconds=book.handler_seconds.copy(),
        oom_seconds=book.oom_seconds.copy(), last_ooms=list(book.last))
