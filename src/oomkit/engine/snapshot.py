"""The snapshot of an OOM's context that the daemon's event log carries, so
the OOM can be replayed offline against another policy (``oomkit replay``).

It must be what the first handler saw, or a replay answers another question
(issue 10 s.12: re-reading usage after the kill made "the kernel alone" say
the OOM had cleared by itself).  So, for a memcg OOM, :func:`freeze` reads the
OOMing memcg's subtree once before the first handler runs, and that handler's
context is given the very same values; after the chain, :func:`take` adds the
tasks the first handler read.  What nobody read before acting (the tasks, if
no policy looked; the cgroups of a global OOM, too many to read on the way to
the kill) is read after the chain, off the path to the kill, and the
snapshot says so (``"read": "after"``): a victim is then missing from it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from oomkit.context import CgroupInfo, Level, OOMContext, TaskInfo, is_within
from oomkit.errors import KernelError
from oomkit.schema import CgroupState, Snapshot, TaskState

if TYPE_CHECKING:  # pragma: no cover
    from oomkit.backends.base import Backend, OOMEvent

log = logging.getLogger("oomkit")


def freeze(backend: Backend, oom: OOMEvent) -> dict[str, CgroupInfo] | None:
    """The OOMing memcg's subtree as it is now, before any handler acts; None
    for a global or numa OOM (the whole machine: read after the chain)."""
    if oom.level != Level.MEMCG:
        return None
    cgroups = backend.cgroups(oom, oom.memcg)
    out: dict[str, CgroupInfo] = {}
    try:
        paths = list(cgroups)
    except KernelError as exc:
        log.debug("oomkit: snapshot: cannot list %s before the chain (%s); read after it",
                  oom.memcg, exc)
        return None
    for path in paths:
        try:
            out[path] = cgroups[path]
        except KernelError as exc:      # removed since the listing: not in the snapshot
            log.debug("oomkit: snapshot: %s not read before the chain: %s", path, exc)
    return out


def preload(first: OOMContext, oom: OOMEvent) -> None:
    """Before the kernel's killer acts on a memcg OOM no policy resolved: read
    the tasks the first handler did not, so that the snapshot holds the
    kernel's victim as it was (a read on the way to the kernel's kill, the
    price of a replayable record)."""
    if oom.level != Level.MEMCG or first.tasks.loaded(oom.memcg) is not None:
        return
    try:
        first.tasks.in_cgroup(oom.memcg)    # the OOMing memcg's subtree only, kept by the context
    except KernelError as exc:
        log.debug("oomkit: snapshot: tasks of %s not read before the kernel's kill: %s",
                  oom.memcg, exc)


States = dict[int, tuple[TaskInfo, TaskState]]


def take(backend: Backend, oom: OOMEvent, first: OOMContext | None,
         frozen: dict[str, CgroupInfo] | None, victims: Sequence[TaskInfo] = (),
         states: tuple[States, States] | None = None) -> Snapshot:
    """The snapshot: ``frozen`` and what the first handler's context ``first``
    had read; the rest read now.  For a global or numa OOM the tasks only if a
    policy read them: reading every task on the machine for the log is not worth it.
    Tasks read now miss the chain's victims: ``victims`` (as the actions saw each
    before killing it) are put back, so a replay still has them.
    ``states``: (the previous snapshot's task states, this one's), by the
    TaskInfo's identity: a task seen again as the same object (a standing
    decision's rehearsals share one read) is not converted again."""
    after = frozen is None
    cgroups = frozen if frozen is not None else _cgroups_after(backend, oom, first)
    totalpages = first.totalpages if first is not None else backend.totalpages(oom)
    tasks = first.tasks.loaded(oom.memcg) if first is not None else None
    if tasks is None and oom.level == Level.MEMCG:
        tasks, after = _with_victims(_tasks_after(backend, oom), victims, oom.memcg), True
    return Snapshot(scope=oom.memcg, totalpages=totalpages,
                    cgroups={p: CgroupState.of(c) for p, c in cgroups.items()},
                    read="after" if after else "before",
                    tasks=_states(tasks, states) if tasks is not None else None)


def _states(tasks: Sequence[TaskInfo], states: tuple[States, States] | None) -> list[TaskState]:
    if states is None:
        return [TaskState.of(t) for t in tasks]
    before, now = states
    out = []
    for t in tasks:
        seen = before.get(id(t)) or now.get(id(t))
        # the TaskInfo is held with its state: its id cannot be another's meanwhile
        state = seen[1] if seen is not None and seen[0] is t else TaskState.of(t)
        now[id(t)] = (t, state)
        out.append(state)
    return out


def _cgroups_after(backend: Backend, oom: OOMEvent, first: OOMContext | None) -> dict[str, CgroupInfo]:
    """The cgroups of the OOM's scope: as the first handler read them, else now."""
    fresh = backend.cgroups(oom, oom.memcg)
    out: dict[str, CgroupInfo] = {}
    try:
        paths = list(fresh)
    except KernelError as exc:
        log.debug("oomkit: snapshot: cannot list %s after the chain: %s", oom.memcg, exc)
        paths = []
    for path in paths:
        seen = first.cgroups.loaded(path) if first is not None else None
        try:
            out[path] = seen if seen is not None else fresh[path]
        except KernelError as exc:
            log.debug("oomkit: snapshot: %s left out, gone after the chain: %s", path, exc)
    return out


def _with_victims(tasks: tuple[TaskInfo, ...] | None, victims: Sequence[TaskInfo],
                  scope: str) -> tuple[TaskInfo, ...] | None:
    """Tasks read after the chain, with its victims as they were before it (a
    killed task may still be listed, exiting: the earlier view replaces it)."""
    mine = {t.pid: t for t in victims if is_within(t.cgroup, scope)}
    if not mine:
        return tasks
    rest = [t for t in tasks or () if t.pid not in mine]
    return tuple(sorted([*rest, *mine.values()]))


def _tasks_after(backend: Backend, oom: OOMEvent) -> tuple[TaskInfo, ...] | None:
    try:
        return tuple(backend.tasks(oom, oom.memcg))
    except KernelError as exc:
        log.debug("oomkit: snapshot: tasks of %s left out, gone after the chain: %s", oom.memcg, exc)
        return None
