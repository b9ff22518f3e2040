"""The one small interface every backend implements: simulated, cgroup v1, cgroup v2.

The engine (``oomkit.engine``) only ever talks to a backend through these
methods; it never learns which kernel, real or simulated, is underneath.
Like an httpx transport, a backend is a plain object passed in, and the
simulated one (``oomkit.backends.sim``) is public and supported for tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from oomkit.context import LazyMapping, LazyTasks, Level, TaskInfo, is_within

if TYPE_CHECKING:  # pragma: no cover
    from oomkit.engine.clock import Clock


@dataclass(frozen=True)
class Declaration:
    """Who declared an OOM (``k.declare_oom``, upstream's ``bpf_out_of_memory()``)."""

    policy: str                      # the declaring policy's label
    attached: str                    # the cgroup it is attached to
    reason: str
    via: str                         # the callback it was declared from: handle_psi_event ...


@dataclass(frozen=True)
class OOMEvent:
    """What woke us: an OOM at one level, in one memory cgroup."""

    level: Level                     # memcg, global or numa (a plain "memcg" is taken too)
    memcg: str                       # the OOMing cgroup ("/" for global and numa)
    nodes: tuple[int, ...] = ()      # the constrained nodes of a numa OOM
    requested: int | None = None     # bytes of the failing charge, when known
    trigger: str | None = None       # name of the task whose allocation failed
    declared: Declaration | None = None   # declared by a policy, not raised by a charge

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", Level(self.level))


@dataclass(frozen=True)
class Release:
    """One task a backend killed, and how much of its memory relieves this OOM."""

    pid: int
    name: str
    cgroup: str
    rss: int
    relief: int


@dataclass
class Fallback:
    """What the kernel's own OOM killer did after the chain failed."""

    killed: list[Release] = field(default_factory=list)
    waiting_for: int | None = None   # pid of an exiting victim the kernel waits for
    note: str | None = None

    @property
    def resolved(self) -> bool:
        return bool(self.killed) or self.waiting_for is not None


class Backend(Protocol):
    @property
    def clock(self) -> Clock:
        """The backend's clock (a ``ManualClock`` in the simulator and a replay)."""

    def cgroups(self, oom: OOMEvent, scope: str) -> LazyMapping:
        """The cgroups of ``scope``'s subtree, each read on first use."""

    def tasks(self, oom: OOMEvent, scope: str) -> LazyTasks:
        """The tasks of ``scope``'s subtree, in pid order (lazy where reading costs)."""

    def task(self, pid: int) -> TaskInfo | None:
        """One task anywhere on the machine, or None (to refuse a kill with the right errno)."""

    def totalpages(self, oom: OOMEvent) -> int:
        """``oom_constrained()``'s totalpages for this OOM (see ``oomkit.oom_kill``)."""

    def kill(self, tasks: Sequence[TaskInfo], oom: OOMEvent, *, cgroup: str | None = None) -> list[Release]:
        """SIGKILL these tasks (all of ``cgroup`` when given); report each one killed."""

    def mm_sharers(self, dying: Sequence[TaskInfo], pool: Sequence[TaskInfo]) -> list[TaskInfo]:
        """The tasks of ``pool`` (or, where the backend knows every mm, of the whole
        machine) that share an address space with one of ``dying``."""

    def set_limit(self, path: str, limit: int) -> None:
        """Write a new memory limit for ``path``."""

    def headroom(self, path: str) -> int:
        """How far ``path``'s limit may grow before its parents' limits (or RAM) bind."""

    def protected(self, pid: int) -> str | None:
        """Why ``pid`` must never be killed by oomkit (itself, pid 1), or None."""

    def condition_gone(self, oom: OOMEvent) -> bool:
        """Is the OOM over (usage back under the limit with room for the request)?"""

    def wait_for_relief(self, oom: OOMEvent, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the OOM condition to go away."""

    def in_flight(self) -> tuple[int, ...]:
        """Pids killed and still exiting."""

    def kernel_fallback(self, oom: OOMEvent) -> Fallback:
        """Let the kernel's own OOM killer act (simulated, handed back, or automatic)."""


def relief_for(oom: OOMEvent, cgroup: str, rss: int, node_rss: Mapping[int, int] | None = None) -> int:
    """How much of a dying task's memory relieves ``oom``: only memory charged
    inside the OOMing memcg (any, for a global OOM; on the constrained nodes,
    for a numa OOM)."""
    if oom.level == Level.MEMCG:
        return rss if is_within(cgroup, oom.memcg) else 0
    if oom.level == Level.NUMA:
        if node_rss is None:
            return rss
        return sum(node_rss.get(n, 0) for n in oom.nodes)
    return rss
