"""The core of ``oomkit evaluate``: replay one recorded OOM under each
candidate and under the kernel alone, and add what each did to a summary.

Pure and deterministic: a record and the candidates in, plain numbers out;
summaries merge in any order to the same result (sums, and samples chosen by
a hash of the record's place, not by arrival), so a run on one process, on
all cores or on a Dask cluster gives the same output.

What a replay can and cannot say: it runs the candidate on the snapshot the
daemon recorded, what the first handler saw (``oomkit replay``); what the
workload did afterwards (a restart, another OOM a minute later) is not
replayed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from oomkit.backends.base import OOMEvent
from oomkit.backends.snapshot import SnapshotBackend
from oomkit.config.attach_arg import AttachArg
from oomkit.context import TaskInfo, ancestors
from oomkit.engine.chain import Engine, EngineSettings
from oomkit.errors import ConfigError, PolicyLoadError
from oomkit.policies import make_policy
from oomkit.policies.builtin import Matcher
from oomkit.policy import OOMPolicy
from oomkit.schema import OOMRecord, ResolvedBy, Snapshot, TaskState

HAPPENED = "happened"          # the column of what the record says happened
KERNEL = "kernel alone"        # the column of the kernel's OOM killer, no policy
RESOLUTIONS = tuple(r.value for r in ResolvedBy)
SAMPLES = 5                    # records kept per candidate where it differs from what happened

#: The engine's limits for a replay: the daemon's, but a wall deadline far off,
#: so a loaded machine (or a busy Dask worker) never turns a sound handler into
#: a timeout and every run gives the same answer.
REPLAY_SETTINGS = EngineSettings(handler_deadline=5.0)


@dataclass(frozen=True)
class Attachment:
    cgroup: str                    # a path, or a glob ("/system.slice/*.service")
    policy: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    """One column of the evaluation: a set of attachments, as ``--attach`` gave it."""

    label: str
    attach: tuple[Attachment, ...]
    protect: tuple[str, ...] = ()  # the candidate's own avoid and omit lists, and --protect

    @classmethod
    def of(cls, label: str, attach: Sequence[Attachment], protect: Iterable[str] = ()) -> Candidate:
        own = [p for a in attach for key in ("avoid", "omit")
               for p in _strings(a.params.get(key, ()))]
        return cls(label, tuple(attach), tuple(dict.fromkeys([*own, *protect])))

    def check(self, base_dir: str | None = None) -> None:
        """Every policy loads with its params (ConfigError naming the attachment)."""
        for a in self.attach:
            try:
                make_policy(a.policy, a.params, base_dir)
            except PolicyLoadError as exc:
                raise ConfigError(str(exc), where=f"--attach {a.cgroup}={a.policy}") from None
        try:
            Matcher(self.protect, "--protect")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list | tuple) else []


def protected(candidates: Iterable[Candidate]) -> list[str]:
    """The protect list of every column: each candidate's (its avoid and omit
    lists, and --protect), in a stable order."""
    return list(dict.fromkeys(p for c in candidates for p in c.protect))


def kernel_alone(protect: Iterable[str] = ()) -> Candidate:
    return Candidate(KERNEL, (), tuple(protect))


# -- what one OOM cost ------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    resolved_by: str
    killed: tuple[tuple[int, str, str, int], ...]    # pid, name, cgroup, rss (0: not in the snapshot)
    error: str | None = None                         # the replay failed (a policy's constructor ...)

    @property
    def pids(self) -> frozenset[int]:
        return frozenset(k[0] for k in self.killed)


def needed(record: OOMRecord, snap: Snapshot) -> int:
    """What the OOM needed freed: for a memcg OOM, the charge less the room
    under the limit; otherwise the failing charge (what is known of it)."""
    want = record.requested or 0
    cg = snap.cgroups.get(record.memcg)
    if record.level == "memcg" and cg is not None and cg.limit is not None:
        return max(0, cg.usage + want - cg.limit)
    return want


def replayable(record: OOMRecord, snap: Snapshot | None) -> bool:
    """Does the snapshot hold what the first handler saw?  Not when the tasks of
    a memcg OOM were read after the chain (no policy looked before acting: the
    victim is gone or exiting in it), nor without tasks (a global OOM no policy
    read); a global OOM's cgroups are always read after, and replay needs only its tasks."""
    if snap is None or snap.tasks is None:
        return False
    return snap.read == "before" or record.level != "memcg"


def happened(record: OOMRecord, tasks: dict[int, TaskInfo]) -> Outcome:
    return Outcome(record.resolved_by.value,
                   tuple((k.pid, k.name, k.cgroup, _rss(tasks.get(k.pid))) for k in record.killed))


def _rss(task: TaskInfo | TaskState | None) -> int:
    return task.rss + task.swap if task is not None else 0


class Replayer:
    """Replays records; one per thread (an engine's guard keeps a worker thread:
    one engine per replay would leave a thread behind each)."""

    def __init__(self, base_dir: str | None = None):
        self.base_dir = base_dir
        self.engine = Engine(SnapshotBackend(Snapshot(scope="/", totalpages=0, cgroups={}, read="before")),
                             REPLAY_SETTINGS)
        self._classes: dict[tuple[str, str], type[OOMPolicy]] = {}

    def policy(self, a: Attachment) -> OOMPolicy:
        key = (a.policy, msgspec.json.encode(a.params).decode())
        cls = self._classes.get(key)
        if cls is None:          # load (and check the params) once; build a fresh one per OOM
            cls = self._classes[key] = type(make_policy(a.policy, a.params, self.base_dir))
        return cls(**a.params)

    def replay(self, record: OOMRecord, snap: Snapshot, candidate: Candidate,
               base: SnapshotBackend | None = None) -> Outcome:
        """``candidate`` on ``record``; ``base``: the snapshot's backend, untouched, to copy."""
        backend = base.copy() if base is not None else SnapshotBackend(snap)
        engine = self.engine
        engine.backend = backend
        engine.attachments.clear()
        engine.ejected.clear()
        try:
            for cgroup, a in attachments_for(record, candidate):
                engine.attach(cgroup, self.policy(a))
            out = engine.handle(OOMEvent(record.level, record.memcg, record.nodes, record.requested,
                                         record.trigger))
        except Exception as exc:  # noqa: BLE001 - one bad replay is counted, never the end of the run
            return Outcome(ResolvedBy.UNRESOLVED.value, (), f"{type(exc).__name__}: {exc}")
        tasks = {t.pid: t for t in (snap.tasks or ())}
        return Outcome(out.resolved_by.value,
                       tuple((k.pid, k.name, k.cgroup, _rss(tasks.get(k.pid))) for k in out.killed))


def attachments_for(record: OOMRecord, candidate: Candidate) -> list[tuple[str, Attachment]]:
    """The candidate's attachments on this OOM's chain (the OOMing memcg and
    its ancestors; the root for a global OOM): a glob attaches to each match,
    the first attachment that matches a cgroup wins (as a config file's order)."""
    chain = list(ancestors(record.memcg)) if record.level == "memcg" else ["/"]
    out = []
    for cgroup in chain:
        for a in candidate.attach:
            if a.cgroup == cgroup or fnmatch.fnmatchcase(cgroup, a.cgroup):
                out.append((cgroup, a))
                break
    return out


def attach_arg(cgroup: str, a: Attachment) -> str:
    """``--attach``'s text for one attachment (``CGROUP=POLICY{PARAMS}``)."""
    return str(AttachArg(cgroup, a.policy, a.params))


_local = threading.local()


def replayer(base_dir: str | None = None) -> Replayer:
    r = getattr(_local, "replayer", None)
    if r is None or r.base_dir != base_dir:
        r = _local.replayer = Replayer(base_dir)
    return r


# -- the summary ---------------------------------------------------------------------

_DIGITS = re.compile(r"\d+")


def service_of(cgroup: str) -> str:
    """A cgroup's service: its path with every number a ``*`` (``/batch.slice/job-*.scope``),
    so a fleet's thousands of job scopes are one row."""
    return _DIGITS.sub("*", cgroup)


class Column(msgspec.Struct, kw_only=True):
    """What one candidate (or what happened) did to every OOM."""

    ooms: int = 0
    resolved: dict[str, int] = msgspec.field(default_factory=dict)
    processes_killed: int = 0
    memory_killed: int = 0
    memory_beyond_need: int = 0        # killed past what each OOM needed
    protected_killed: int = 0          # kills matching protected() (the same list for every column)
    differs: int = 0                   # OOMs where it killed others than happened (or left it unresolved)
    errors: int = 0

    def merge(self, o: Column) -> None:
        self.ooms += o.ooms
        for k, v in o.resolved.items():
            self.resolved[k] = self.resolved.get(k, 0) + v
        self.processes_killed += o.processes_killed
        self.memory_killed += o.memory_killed
        self.memory_beyond_need += o.memory_beyond_need
        self.protected_killed += o.protected_killed
        self.differs += o.differs
        self.errors += o.errors


class Sample(msgspec.Struct, kw_only=True):
    """One record where a candidate differs from what happened."""

    key: str                     # its place's hash: the sample is the same whatever the order
    source: str
    index: int
    host: str | None
    detected_at: str | None
    memcg: str
    happened: str                # "policy: killed a (pid 3), b (pid 4)"
    candidate: str
    attach: list[str]            # the candidate's --attach for this OOM's chain, for oomkit replay


class Summary(msgspec.Struct, kw_only=True):
    columns: dict[str, Column] = msgspec.field(default_factory=dict)
    # service -> column -> [processes killed, memory killed]; "" -> OOMs in that service
    services: dict[str, dict[str, list[int]]] = msgspec.field(default_factory=dict)
    samples: dict[str, list[Sample]] = msgspec.field(default_factory=dict)
    records: int = 0              # OOM records read
    replayed: int = 0             # of which replayed
    not_replayable: int = 0       # no snapshot of what the first handler saw (see replayable())
    unreadable: int = 0           # lines that are not an OOM record
    unreadable_where: list[str] = msgspec.field(default_factory=list)   # the first few
    hosts: list[str] = msgspec.field(default_factory=list)

    def merge(self, o: Summary) -> Summary:
        for name, col in o.columns.items():
            self.columns.setdefault(name, Column()).merge(col)
        for svc, cols in o.services.items():
            mine = self.services.setdefault(svc, {})
            for name, (n, b) in cols.items():
                cur = mine.setdefault(name, [0, 0])
                cur[0] += n
                cur[1] += b
        for name, samples in o.samples.items():
            self.samples[name] = _keep(self.samples.get(name, []) + samples)
        self.records += o.records
        self.replayed += o.replayed
        self.not_replayable += o.not_replayable
        self.unreadable += o.unreadable
        self.unreadable_where = sorted(self.unreadable_where + o.unreadable_where)[:SAMPLES]
        self.hosts = sorted(set(self.hosts) | set(o.hosts))
        return self


def _keep(samples: list[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: s.key)[:SAMPLES]


def _describe(o: Outcome) -> str:
    if o.error:
        return f"replay failed: {o.error}"
    kills = ", ".join(f"{name} (pid {pid}, {cg})" for pid, name, cg, _ in o.killed[:4])
    more = f" and {len(o.killed) - 4} more" if len(o.killed) > 4 else ""
    return f"{o.resolved_by}: " + (f"killed {kills}{more}" if kills else "killed nothing")


@dataclass
class Evaluator:
    """Adds records to a :class:`Summary`, one candidate column each (the kernel
    alone first), and the column of what happened."""

    candidates: Sequence[Candidate]
    base_dir: str | None = None
    summary: Summary = field(default_factory=Summary)

    def __post_init__(self) -> None:
        # One list for every column, so their counts compare: --protect and every
        # candidate's own avoid and omit lists.
        self._protect = Matcher(protected(self.candidates), "protect")
        self._hosts: set[str] = set()

    def add(self, record: OOMRecord, source: str, index: int) -> None:
        s = self.summary
        s.records += 1
        if record.host:
            self._hosts.add(record.host)
        snap = record.snapshot
        if not replayable(record, snap):
            s.not_replayable += 1
            return
        assert snap is not None
        s.replayed += 1
        tasks = {t.pid: t.info() for t in snap.tasks or ()}
        need = needed(record, snap)
        service = service_of(record.memcg)
        svc = s.services.setdefault(service, {})
        svc.setdefault("", [0, 0])[0] += 1
        actual = happened(record, tasks)
        self._count(HAPPENED, actual, need, service, tasks, self._protect)
        r = replayer(self.base_dir)
        base = SnapshotBackend(snap)      # converted once, copied for each candidate
        for c in self.candidates:
            out = r.replay(record, snap, c, base)
            # Another victim, or resolved where it was not (or the reverse); who
            # carried the kill out (policy or kernel) is not a difference.
            differs = out.pids != actual.pids or ((out.resolved_by == ResolvedBy.UNRESOLVED)
                                                 != (actual.resolved_by == ResolvedBy.UNRESOLVED))
            col = self._count(c.label, out, need, service, tasks, self._protect)
            if differs:
                col.differs += 1
                self._sample(c, record, source, index, actual, out)

    def _count(self, name: str, o: Outcome, need: int, service: str, tasks: dict[int, TaskInfo],
               protect: Matcher) -> Column:
        s = self.summary
        col = s.columns.setdefault(name, Column())
        col.ooms += 1
        col.resolved[o.resolved_by] = col.resolved.get(o.resolved_by, 0) + 1
        col.errors += o.error is not None
        killed = sum(k[3] for k in o.killed)
        col.processes_killed += len(o.killed)
        col.memory_killed += killed
        if o.killed:
            col.memory_beyond_need += max(0, killed - need)
        for pid, _name, cgroup, rss in o.killed:
            task = tasks.get(pid)
            if task is not None and protect(task):
                col.protected_killed += 1
            per = s.services.setdefault(service_of(cgroup), {}).setdefault(name, [0, 0])
            per[0] += 1
            per[1] += rss
        return col

    def _sample(self, c: Candidate, record: OOMRecord, source: str, index: int, actual: Outcome,
                out: Outcome) -> None:
        key = hashlib.blake2b(f"{c.label}\0{source}\0{index}".encode(), digest_size=8).hexdigest()
        kept = self.summary.samples.setdefault(c.label, [])
        if len(kept) >= SAMPLES and key >= kept[-1].key:
            return
        kept.append(Sample(key=key, source=source, index=index, host=record.host,
                           detected_at=record.detected_at, memcg=record.memcg,
                           happened=_describe(actual), candidate=_describe(out),
                           attach=[attach_arg(cg, a) for cg, a in attachments_for(record, c)]))
        self.summary.samples[c.label] = _keep(kept)

    def unreadable(self, where: str) -> None:
        self.summary.unreadable += 1
        self.summary.unreadable_where = sorted([*self.summary.unreadable_where, where])[:SAMPLES]

    def done(self) -> Summary:
        self.summary.hosts = sorted(set(self.summary.hosts) | self._hosts)
        return self.summary
