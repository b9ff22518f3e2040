"""The backend over a snapshot (the one the daemon's event log carries):
the engine's interface to a recorded OOM's context, so ``oomkit replay`` can
ask what another policy would have done with the very same context.  Kills
and raises only change this copy; nothing touches the machine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from oomkit import oom_kill
from oomkit.backends.base import Fallback, OOMEvent, Release, relief_for
from oomkit.context import CgroupInfo, LazyMapping, LazyTasks, Level, TaskInfo, is_within
from oomkit.engine.clock import ManualClock
from oomkit.schema import Snapshot


class SnapshotBackend:
    def __init__(self, snap: Snapshot):
        self.clock = ManualClock()
        self._totalpages = snap.totalpages
        self._cgroups = {p: c.info(p) for p, c in snap.cgroups.items()}
        self._tasks = {t.pid: t.info() for t in snap.tasks or ()}
        self._freed: dict[str, int] = {}     # per cgroup: the rss of the tasks killed in it

    def copy(self) -> SnapshotBackend:
        """A backend in this one's state, on its own: what one replay kills or raises
        never reaches the other (the infos are immutable, replaced on change), so a
        snapshot is converted once and replayed under several policies (oomkit evaluate)."""
        other = object.__new__(SnapshotBackend)
        other.clock = ManualClock()
        other._totalpages = self._totalpages
        other._cgroups, other._tasks, other._freed = dict(self._cgroups), dict(self._tasks), dict(self._freed)
        return other

    def cgroups(self, oom: OOMEvent, scope: str) -> LazyMapping[CgroupInfo]:
        return LazyMapping(lambda: [p for p in self._cgroups if is_within(p, scope)],
                           self._cgroups.__getitem__)

    def tasks(self, oom: OOMEvent, scope: str) -> LazyTasks:
        return LazyTasks(lambda: [t for t in self._tasks.values() if is_within(t.cgroup, scope)])

    def task(self, pid: int) -> TaskInfo | None:
        return self._tasks.get(pid)

    def totalpages(self, oom: OOMEvent) -> int:
        return self._totalpages

    def kill(self, tasks: Sequence[TaskInfo], oom: OOMEvent, *, cgroup: str | None = None) -> list[Release]:
        out = []
        for t in tasks:
            if t.pid in self._tasks and not self._tasks[t.pid].exiting:
                self._tasks[t.pid] = t._replace(exiting=True)
                for path in self._cgroups:
                    if is_within(t.cgroup, path):
                        self._freed[path] = self._freed.get(path, 0) + t.rss
                out.append(Release(t.pid, t.name, t.cgroup, t.rss, relief_for(oom, t.cgroup, t.rss)))
        return out

    def set_limit(self, path: str, limit: int) -> None:
        self._cgroups[path] = replace(self._cgroups[path], limit=limit)

    def headroom(self, path: str) -> int:
        room = None
        for p, c in self._cgroups.items():
            if p != path and is_within(path, p) and c.limit is not None:
                free = c.limit - c.usage + self._freed.get(p, 0)
                room = free if room is None else min(room, free)
        return max(0, room if room is not None else 0)

    def mm_sharers(self, dying: Sequence[TaskInfo], pool: Sequence[TaskInfo]) -> list[TaskInfo]:
        """A recorded snapshot does not say which tasks shared an mm."""
        return []

    def protected(self, pid: int) -> str | None:
        return None

    def condition_gone(self, oom: OOMEvent) -> bool:
        c = self._cgroups.get(oom.memcg)
        if oom.level != Level.MEMCG or c is None or c.limit is None:
            return False
        return c.usage - self._freed.get(oom.memcg, 0) + (oom.requested or 0) < c.limit

    def wait_for_relief(self, oom: OOMEvent, timeout: float) -> bool:
        self.clock.sleep(timeout)
        return self.condition_gone(oom)

    def in_flight(self) -> tuple[int, ...]:
        return tuple(p for p, t in self._tasks.items() if t.exiting)

    def kernel_fallback(self, oom: OOMEvent) -> Fallback:
        decision = oom_kill.select_bad_process(self._tasks.values(), self._cgroups, level=oom.level,
                                               memcg=oom.memcg, nodes=oom.nodes,
                                               totalpages=self._totalpages)
        if decision.waiting_for is not None:
            return Fallback(waiting_for=decision.waiting_for.pid)
        if not decision.kills:
            return Fallback(note="out of memory and no killable processes")
        return Fallback(killed=self.kill(decision.victims, oom, cgroup=decision.group))
