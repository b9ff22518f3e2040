"""Replaying a recorded OOM: the engine's interface over the snapshot the
daemon wrote in its event log, so ``oomkit replay`` can ask what another
policy would have done with the very same context.  Kills and raises only
change the snapshot; nothing touches the machine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from oomkit import oom_kill
from oomkit.backends.base import Fallback, OOMEvent, Release, relief_for
from oomkit.context import CgroupInfo, LazyMapping, LazyTasks, TaskInfo, is_within
from oomkit.engine.clock import ManualClock
from oomkit.errors import ConfigError


class ReplayBackend:
    def __init__(self, snapshot: dict[str, Any]):
        self.clock = ManualClock()
        self._totalpages = int(snapshot["totalpages"])
        self._cgroups = {p: _cgroup(p, c) for p, c in snapshot["cgroups"].items()}
        self._tasks = {t["pid"]: _task(t) for t in snapshot.get("tasks", [])}
        self._freed: dict[str, int] = {}

    def cgroups(self, oom: OOMEvent, scope: str) -> Mapping[str, CgroupInfo]:
        return LazyMapping(lambda: [p for p in self._cgroups if is_within(p, scope)], self._cgroups.get)

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

    def protected(self, pid: int) -> str | None:
        return None

    def condition_gone(self, oom: OOMEvent) -> bool:
        c = self._cgroups.get(oom.memcg)
        if oom.level != "memcg" or c is None or c.limit is None:
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


def _cgroup(path: str, c: dict[str, Any]) -> CgroupInfo:
    return CgroupInfo(path, c["usage"], c["limit"], c.get("swap", 0), c.get("oom_group", False),
                      c.get("children", ()), c.get("pids", ()), c.get("events", {}))


def _task(t: dict[str, Any]) -> TaskInfo:
    nodes = t.get("nodes")
    return TaskInfo(t["pid"], t["name"], tuple(t.get("cmdline", ())), t["cgroup"], t["rss"], t.get("swap", 0),
                    t.get("pgtables", 0), t.get("oom_score_adj", 0), t.get("uid", 0),
                    t.get("start_time", 0.0), t.get("exiting", False),
                    tuple(nodes) if nodes is not None else None)


def oom_event(record: dict[str, Any]) -> OOMEvent:
    """The OOM a record describes."""
    if "snapshot" not in record:
        raise ConfigError("this record has no snapshot to replay (only the daemon's OOM records do)")
    return OOMEvent(record["level"], record["memcg"], tuple(record.get("nodes", ())),
                    record.get("requested"), record.get("trigger"))
