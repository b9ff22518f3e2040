"""The read-only OOM context a policy receives as ``oc``.

As the BPF verifier makes ``struct oom_control`` read-only for a BPF OOM
program, every object here refuses attribute assignment with
:class:`~oomkit.errors.ContextReadOnly`, and every container is immutable
(tuples, read-only mappings).  ``memory_freed`` is read from the engine's
own record of this OOM: a policy can read it, never write it.

The context is lazy: ``cgroups`` and ``tasks`` are loaded from the backend
on first use, so a policy that looks at one cgroup does not make a live
backend read every ``/proc`` entry on the machine during an OOM.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

from oomkit.errors import ContextReadOnly


class Level(enum.StrEnum):
    """Where the OOM is (``oc.level``): the kernel's three OOM constraints."""

    MEMCG = "memcg"      # a memory cgroup hit its limit (CONSTRAINT_MEMCG)
    GLOBAL = "global"    # the machine is out of memory (CONSTRAINT_NONE)
    NUMA = "numa"        # the allowed NUMA nodes are (CONSTRAINT_MEMORY_POLICY / _CPUSET)


class _ReadOnly:
    """Mixin: no attribute of this object may be set after construction."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise ContextReadOnly(f"the OOM context is read-only: cannot set {type(self).__name__}.{name}")

    def __delattr__(self, name: str) -> None:
        raise ContextReadOnly(f"the OOM context is read-only: cannot delete {type(self).__name__}.{name}")


def _init(obj: object, **values: Any) -> None:
    for key, value in values.items():
        object.__setattr__(obj, key, value)


class _TaskFields(NamedTuple):
    pid: int
    name: str                 # comm, as /proc/PID/stat field 2
    cmdline: tuple[str, ...]
    cgroup: str               # memory cgroup path, "/" for the root
    rss: int                  # bytes resident (VmRSS)
    swap: int                 # bytes swapped out (VmSwap)
    pgtables: int             # bytes of page tables (VmPTE)
    oom_score_adj: int
    uid: int
    start_time: float         # seconds since boot (simulated: since the scenario began)
    exiting: bool             # already killed or exiting: its memory is on its way back
    nodes: tuple[int, ...] | None = None   # NUMA binding (mempolicy/cpuset); None: any node


class TaskInfo(_TaskFields):
    """One task (thread-group leader), named after ``/proc/PID`` fields.

    An immutable named tuple: cheap to build by the ten thousand during an
    OOM (about 0.3 us, against 2.4 us for a frozen dataclass), and read-only
    like the rest of the context.  ``cmdline`` and ``nodes`` are tuples.
    """

    __slots__ = ()
    __setattr__ = _ReadOnly.__setattr__
    __delattr__ = _ReadOnly.__delattr__


class MemoryStat(Mapping[str, int]):
    """``CgroupInfo.stat``: the cgroup's ``memory.stat`` (its whole subtree), in
    one vocabulary for cgroup v1 and v2 (``oomkit.linux.parse.memory_stat``):
    ``anon``, ``file``, ``shmem``, ``file_mapped``, ``swap``, ``pgscan``,
    ``pgsteal``, ``workingset_refault``, ...  Read on first use, once: a policy
    that never looks pays nothing.  A name the kernel does not count is absent
    (``stat.get("pgscan", 0)``)."""

    __slots__ = ("_load", "_values")

    _load: Callable[[], Mapping[str, int]] | None
    _values: Mapping[str, int] | None

    def __init__(self, load: Callable[[], Mapping[str, int]] | Mapping[str, int]):
        if callable(load):
            _init(self, _load=load, _values=None)
        else:
            _init(self, _load=None, _values=MappingProxyType(dict(load)))

    def _all(self) -> Mapping[str, int]:
        values = self._values
        if values is None:
            load = self._load
            assert load is not None
            with metered():
                values = MappingProxyType(dict(load()))
            _init(self, _values=values, _load=None)
        return values

    @property
    def loaded(self) -> bool:
        """Was it read (by a policy, or given)?  The snapshot keeps only what was."""
        return self._values is not None

    def __getitem__(self, key: str) -> int:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __hash__(self) -> int:         # by identity: it is read-only, and may be unread
        return id(self)

    def __repr__(self) -> str:
        return f"MemoryStat({dict(self._values)!r})" if self._values is not None else "MemoryStat(<unread>)"

    __setattr__ = _ReadOnly.__setattr__
    __delattr__ = _ReadOnly.__delattr__


_NO_STAT = MemoryStat({})


@dataclass(frozen=True, slots=True)
class CgroupInfo(_ReadOnly):
    """One memory cgroup, named after its cgroupfs files."""

    path: str
    usage: int                # memory.current / memory.usage_in_bytes
    limit: int | None         # memory.max / memory.limit_in_bytes; None: unlimited
    swap: int                 # swap charged to it
    oom_group: bool           # memory.oom.group
    children: tuple[str, ...]
    pids: tuple[int, ...]     # cgroup.procs of this cgroup alone, not its subtree
    events: Mapping[str, int]  # memory.events
    # memory.stat, read on first use (compare=False: comparing must not read it)
    stat: MemoryStat = field(default=_NO_STAT, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.stat, MemoryStat):
            object.__setattr__(self, "stat", MemoryStat(self.stat))
        if not isinstance(self.events, MappingProxyType):
            object.__setattr__(self, "events", MappingProxyType(dict(self.events)))
        if not isinstance(self.children, tuple):
            object.__setattr__(self, "children", tuple(self.children))
        if not isinstance(self.pids, tuple):
            object.__setattr__(self, "pids", tuple(self.pids))


# dataclass(frozen=True) installs its own __setattr__ (FrozenInstanceError);
# put ours back so a policy always meets ContextReadOnly.
CgroupInfo.__setattr__ = _ReadOnly.__setattr__  # type: ignore[method-assign]
CgroupInfo.__delattr__ = _ReadOnly.__delattr__  # type: ignore[method-assign]


class IOMeter:
    """Time oomkit itself spends on a handler's behalf: reading the context
    (``/proc`` and cgroupfs on a live backend) and carrying out its release
    actions.  A handler's deadline is for the policy's own code, so the guard
    adds this time to it (see :mod:`oomkit.engine.guard`)."""

    __slots__ = ("spent", "since", "depth")

    def __init__(self) -> None:
        self.spent, self.since, self.depth = 0.0, 0.0, 0

    def now(self) -> float:
        """Time spent so far, a read in progress included (read from another thread)."""
        since = self.since
        return self.spent + (time.perf_counter() - since if self.depth and since else 0.0)


_current = threading.local()


def set_meter(meter: IOMeter | None) -> None:
    """The meter of the handler running on this thread (the guard's worker)."""
    _current.meter = meter


@contextmanager
def metered():
    """Count the enclosed work as oomkit's, not the policy's."""
    meter = getattr(_current, "meter", None)
    if meter is None:
        yield
        return
    meter.depth += 1
    if meter.depth == 1:
        meter.since = time.perf_counter()
    try:
        yield
    finally:
        meter.depth -= 1
        if meter.depth == 0:
            meter.spent += time.perf_counter() - meter.since


V = TypeVar("V")


class LazyMapping(Mapping[str, V]):
    """A read-only mapping whose values are loaded on first access.

    With ``has``, a lookup checks that one key instead of listing them all
    (on a live backend, listing means walking the whole cgroup subtree)."""

    __slots__ = ("_keys", "_load", "_cache", "_has")

    _keys: Callable[[], Iterable[str]] | dict[str, None]    # a dict once listed
    _load: Callable[[str], V]
    _cache: dict[str, V]
    _has: Callable[[str], bool] | None

    def __init__(self, keys: Callable[[], Iterable[str]], load: Callable[[str], V],
                 has: Callable[[str], bool] | None = None):
        _init(self, _keys=keys, _load=load, _cache={}, _has=has)

    def preload(self, values: Mapping[str, V]) -> None:
        """Values already read (the engine's: the OOMing subtree, frozen before the
        first handler runs, so the handler and the snapshot see the same)."""
        self._cache.update(values)

    def _key_list(self) -> dict[str, None]:
        keys = self._keys
        if callable(keys):
            with metered():
                keys = dict.fromkeys(keys())     # ordered, and O(1) membership
            object.__setattr__(self, "_keys", keys)
        return keys

    def __contains__(self, key: object) -> bool:
        if key in self._cache:
            return True
        if self._has is not None and callable(self._keys):
            with metered():
                return isinstance(key, str) and self._has(key)
        return key in self._key_list()

    def __getitem__(self, key: str) -> V:
        if key in self._cache:      # read already (or preloaded)
            return self._cache[key]
        if key not in self:
            raise KeyError(key)
        with metered():
            value = self._cache[key] = self._load(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._key_list())

    def __len__(self) -> int:
        return len(self._key_list())

    def loaded(self, key: str) -> V | None:
        """The value of ``key`` if it was read already, else None."""
        return self._cache.get(key)

    __setattr__ = _ReadOnly.__setattr__
    __delattr__ = _ReadOnly.__delattr__


class LazyTasks(Sequence[TaskInfo]):
    """A read-only sequence of tasks, loaded on first access.

    With ``subtree``, ``in_cgroup(path)`` loads only that cgroup's subtree
    while the whole list has not been needed: for a memcg OOM most policies
    look only at the OOMing cgroup, not at the attachment's whole subtree.
    """

    __slots__ = ("_load", "_subtree", "_tasks", "_by_pid", "_parts")

    _load: Callable[[], Iterable[TaskInfo]] | Sequence[TaskInfo]
    _subtree: Callable[[str], Iterable[TaskInfo]] | None
    _tasks: tuple[TaskInfo, ...] | None
    _by_pid: dict[int, TaskInfo] | None
    _parts: dict[str, tuple[TaskInfo, ...]]

    def __init__(self, load: Callable[[], Iterable[TaskInfo]] | Sequence[TaskInfo],
                 subtree: Callable[[str], Iterable[TaskInfo]] | None = None):
        _init(self, _load=load, _subtree=subtree, _tasks=None, _by_pid=None, _parts={})

    def _all(self) -> tuple[TaskInfo, ...]:
        tasks = self._tasks
        if tasks is None:
            load = self._load
            with metered():
                tasks = tuple(load() if callable(load) else load)
            object.__setattr__(self, "_tasks", tasks)
        return tasks

    def __getitem__(self, index):   # an int or a slice, as a tuple's
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._all())

    def __iter__(self) -> Iterator[TaskInfo]:
        return iter(self._all())

    def by_pid(self, pid: int) -> TaskInfo | None:
        if self._tasks is None:
            for part in self._parts.values():
                for task in part:
                    if task.pid == pid:
                        return task
        by_pid = self._by_pid
        if by_pid is None:
            by_pid = {t.pid: t for t in self._all()}
            object.__setattr__(self, "_by_pid", by_pid)
        return by_pid.get(pid)

    def in_cgroup(self, path: str, *, recursive: bool = True) -> tuple[TaskInfo, ...]:
        """Tasks of ``path`` (and, by default, of every cgroup below it)."""
        if self._tasks is None and self._subtree is not None and recursive:
            part = self._parts.get(path)
            if part is None:
                with metered():
                    part = self._parts[path] = tuple(self._subtree(path))
            return part
        return tuple(t for t in self._all()
                     if t.cgroup == path or (recursive and is_within(t.cgroup, path)))

    def loaded(self, path: str) -> tuple[TaskInfo, ...] | None:
        """The tasks of ``path``'s subtree if they were read already, else None."""
        if self._tasks is not None:
            return self.in_cgroup(path)
        return next((part for top, part in self._parts.items() if top == path), None)

    __setattr__ = _ReadOnly.__setattr__
    __delattr__ = _ReadOnly.__delattr__


class OOMContext(_ReadOnly):
    """What a policy sees of one OOM: the kernel's ``struct oom_control``, read-only."""

    __slots__ = ("level", "memcg", "attached_to", "nodes", "requested", "cgroups", "tasks",
                 "totalpages", "_freed", "_in_flight")

    level: Level                          # memcg, global or numa
    memcg: str                            # the OOMing cgroup ("/" for global and numa)
    attached_to: str                      # the cgroup whose policy is running
    nodes: tuple[int, ...]                # the constrained NUMA nodes (numa)
    requested: int | None                 # bytes of the failing charge, when known
    cgroups: LazyMapping[CgroupInfo]      # path -> CgroupInfo, the attachment's subtree
    tasks: LazyTasks                      # the attachment's subtree's tasks
    totalpages: int                       # the kernel's totalpages for this OOM
    _freed: Callable[[], int]
    _in_flight: Callable[[], tuple[int, ...]]

    def __init__(self, *, level: Level, memcg: str, attached_to: str, nodes: tuple[int, ...],
                 requested: int | None, cgroups: LazyMapping[CgroupInfo], tasks: LazyTasks,
                 totalpages: int, freed: Callable[[], int], in_flight: Callable[[], tuple[int, ...]]):
        _init(self, level=level, memcg=memcg, attached_to=attached_to, nodes=tuple(nodes),
              requested=requested, cgroups=cgroups, tasks=tasks, totalpages=totalpages,
              _freed=freed, _in_flight=in_flight)

    @property
    def memory_freed(self) -> int:
        """Bytes released so far in this OOM by release actions (``bpf_memory_freed``)."""
        return self._freed()

    @property
    def victims_in_flight(self) -> tuple[int, ...]:
        """Pids killed (by anyone) whose memory has not come back yet."""
        return self._in_flight()

    def __repr__(self) -> str:
        return f"<OOMContext {self.level} memcg={self.memcg} attached_to={self.attached_to}>"


def is_within(path: str, ancestor: str) -> bool:
    """True when cgroup ``path`` is ``ancestor`` or below it."""
    if ancestor == "/" or path == ancestor:
        return True
    return path.startswith(ancestor + "/")


def parent_of(path: str) -> str | None:
    """The parent cgroup's path; None for the root."""
    if path == "/":
        return None
    head = path.rsplit("/", 1)[0]
    return head or "/"


def ancestors(path: str) -> Iterator[str]:
    """``path`` itself, then each parent up to the root ``/``."""
    current: str | None = path
    while current is not None:
        yield current
        current = parent_of(current)


def above(path: str) -> list[str]:
    """Every cgroup strictly above ``path``, its parent first, up to the root ``/``."""
    return list(ancestors(path))[1:]
