"""The JSON oomkit writes and reads, declared once: the OOM record, the
snapshot of its context, and the result of a simulation.

These msgspec Structs are what the engine fills in, what ``oomkit simulate
--json`` and the daemon's event log encode, and what ``oomkit replay``
decodes, so a field added here exists on both sides; decoding validates a
record (types, required fields, absolute cgroup paths) before anything
replays it.

In the OOM record, a field with a default (``claimed``, ``nodes``, ``note``,
the daemon's timing and snapshot ...) is written only when it differs from
it; every field without one is always written.  Unknown fields are ignored
when reading, so a newer daemon's log still replays.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from oomkit.context import CgroupInfo, Level, MemoryStat, TaskInfo
from oomkit.policy import Verdict
from oomkit.text import record_safe

__all__ = ["ActionRecord", "CgroupState", "CgroupUsage", "FailedAllocation",
           "HandlerRecord", "Killed", "Level", "LimitChange", "OOMRecord", "ResolvedBy",
           "SimResult", "Snapshot", "TaskState"]

#: A cgroup path as oomkit writes it: absolute ("/" is the root).  Checked when
#: a record is read: a relative one would never reach "/" walking up the tree.
CgroupPath = Annotated[str, Meta(pattern=r"^/")]
#: A size in bytes: the kernel's counters fit in 63 bits (PAGE_COUNTER_MAX).
Bytes = Annotated[int, Meta(ge=0, le=2**63 - 1)]


class ResolvedBy(enum.StrEnum):
    """How an OOM ended (``resolved_by``)."""

    POLICY = "policy"            # a handler's release relieved it
    BACKOFF = "backoff"          # a BACKOFF promise came true
    KERNEL = "kernel"            # the kernel's OOM killer acted (or the condition went by itself)
    UNRESOLVED = "unresolved"    # nothing killable: the allocation fails


class _Struct(msgspec.Struct, kw_only=True):
    """Keyword-only fields, in the order the JSON keys are written."""


class _Record(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Fields with a default are written only when they differ from it."""


# -- the OOM record ------------------------------------------------------------------

class ActionRecord(_Record, kw_only=True):
    """One release action a handler called (``k.kill_task`` ...), refused or not."""

    action: str                 # kill_task, kill_cgroup, raise_limit
    target: str
    reason: str
    result: int                 # bytes freed for this OOM, or a negative errno
    error: str | None


class HandlerRecord(_Record, kw_only=True):
    """What one attached policy said and did."""

    cgroup: CgroupPath
    policy: str
    verdict: Verdict                            # the verdict that counted
    freed: int                                  # bytes its actions freed for this OOM
    error: str | None
    actions: list[ActionRecord]
    claimed: Verdict | None = None              # what it returned, when that did not count
    ms: float | None = None                     # wall time, live only (a simulation stays byte-identical)

    @classmethod
    def new(cls, cgroup: str, policy: str) -> HandlerRecord:
        return cls(cgroup=cgroup, policy=policy, verdict=Verdict.PASS, freed=0, error=None, actions=[])


class Killed(_Struct, kw_only=True):
    """A task killed during the OOM; ``by`` is ``policy:<attached cgroup>`` or ``kernel``."""

    name: str
    pid: int
    cgroup: CgroupPath
    by: str


class LimitChange(_Struct, kw_only=True):
    cgroup: CgroupPath
    old: int | None
    new: int


class CgroupState(_Struct, kw_only=True):
    """A cgroup as the snapshot holds it (``CgroupInfo`` without the path: the key)."""

    usage: Bytes
    limit: Bytes | None
    swap: Bytes = 0
    oom_group: bool = False
    children: list[CgroupPath] = []
    pids: list[int] = []
    events: dict[str, int] = {}
    stat: dict[str, int] | None = None      # memory.stat, when a policy read it

    @classmethod
    def of(cls, c: CgroupInfo) -> CgroupState:
        return cls(usage=c.usage, limit=c.limit, swap=c.swap, oom_group=c.oom_group,
                   children=list(c.children), pids=list(c.pids), events=dict(c.events),
                   stat=dict(c.stat) if c.stat.loaded and c.stat else None)

    def info(self, path: str) -> CgroupInfo:
        return CgroupInfo(path, self.usage, self.limit, self.swap, self.oom_group,
                          tuple(self.children), tuple(self.pids), self.events,
                          MemoryStat(self.stat or {}))


class TaskState(_Struct, kw_only=True):
    """A task as the snapshot holds it (the fields of ``TaskInfo``)."""

    pid: Annotated[int, Meta(ge=0)]
    name: str
    cmdline: list[str] = []
    cgroup: CgroupPath
    rss: Bytes
    swap: Bytes = 0
    pgtables: Bytes = 0
    oom_score_adj: Annotated[int, Meta(ge=-1000, le=1000)] = 0
    uid: int = 0
    start_time: float = 0.0
    exiting: bool = False
    nodes: list[Annotated[int, Meta(ge=0)]] | None = None

    @classmethod
    def of(cls, t: TaskInfo) -> TaskState:
        return cls(pid=t.pid, name=t.name, cmdline=list(t.cmdline), cgroup=t.cgroup, rss=t.rss,
                   swap=t.swap, pgtables=t.pgtables, oom_score_adj=t.oom_score_adj, uid=t.uid,
                   start_time=t.start_time, exiting=t.exiting,
                   nodes=list(t.nodes) if t.nodes is not None else None)

    def info(self) -> TaskInfo:
        return TaskInfo(self.pid, self.name, tuple(self.cmdline), self.cgroup, self.rss, self.swap,
                        self.pgtables, self.oom_score_adj, self.uid, self.start_time, self.exiting,
                        tuple(self.nodes) if self.nodes is not None else None)


class Snapshot(_Record, kw_only=True):
    """The OOMing memcg's subtree as the first handler saw it, so the OOM can be
    replayed offline (``read: "after"``: part of it was read after the chain)."""

    scope: CgroupPath
    totalpages: Bytes
    cgroups: dict[CgroupPath, CgroupState]
    read: Literal["before", "after"]
    tasks: list[TaskState] | None = None     # None: not read (a global OOM no policy looked into)


class OOMRecord(_Record, kw_only=True):
    """One OOM: the JSON of ``oomkit simulate --json`` and of the daemon's event log."""

    t: float
    level: Level
    memcg: CgroupPath
    trigger: str | None
    requested: Bytes | None
    handlers: list[HandlerRecord]
    resolved_by: ResolvedBy
    killed: list[Killed]
    limits: list[LimitChange]
    nodes: tuple[Annotated[int, Meta(ge=0)], ...] = ()    # numa OOMs
    ejected: list[CgroupPath] = []
    note: str | None = None
    # The live daemon's, never the simulator's:
    detected_at: str | None = None
    resolved_at: str | None = None
    latency_ms: float | None = None
    snapshot: Snapshot | None = None
    dry_run: bool | None = None
    # cgroup v2's standing decisions (oomkit.backends.cgroup_v2):
    armed: list[int] | None = None        # pids the policy's decision marked for the kernel
    executed_by: str | None = None        # "kernel": the kernel's killer carried the decision out
    decided_at: str | None = None
    host: str | None = None               # the daemon's [daemon] host: a fleet's logs merged (oomkit evaluate)
    # An OOM a policy declared (k.declare_oom, upstream's bpf_out_of_memory()):
    declared_by: str | None = None        # "<policy> at <attached cgroup>"
    declared_reason: str | None = None    # the reason it gave
    declared_via: str | None = None       # the callback it declared from: handle_psi_event ...

    @classmethod
    def new(cls, t: float, level: Level, memcg: str, *, trigger: str | None = None,
            requested: int | None = None, nodes: tuple[int, ...] = ()) -> OOMRecord:
        """A record with nothing done yet (unresolved until the chain says)."""
        return cls(t=t, level=level, memcg=memcg, trigger=trigger, requested=requested, handlers=[],
                   resolved_by=ResolvedBy.UNRESOLVED, killed=[], limits=[], nodes=tuple(nodes))

    @property
    def memory_freed(self) -> int:
        return sum(h.freed for h in self.handlers)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain dicts and lists, every string valid UTF-8 (a name
        that was not is escaped, see :func:`oomkit.text.for_record`)."""
        out: dict[str, Any] = record_safe(msgspec.to_builtins(self))
        return out


# -- oomkit simulate --json ---------------------------------------------------------

class FailedAllocation(_Struct, kw_only=True):
    t: float
    task: str
    alloc: int
    oom: int          # index of the OOM in ``ooms``


class CgroupUsage(_Struct, kw_only=True):
    usage: int
    limit: int | None


class SimResult(_Struct, kw_only=True):
    ooms: list[OOMRecord] = []
    survivors: list[str] = []
    killed: list[str] = []
    exited: list[str] = []
    failed_allocations: list[FailedAllocation] = []
    ejected: list[str] = []
    final: dict[str, CgroupUsage] = {}
    memory_events: dict[str, dict[str, int]] = {}     # memory.events: only the counters that moved

    def to_dict(self) -> dict[str, Any]:
        """The result as plain dicts and lists, every string valid UTF-8."""
        out: dict[str, Any] = record_safe(msgspec.to_builtins(self))
        return out
