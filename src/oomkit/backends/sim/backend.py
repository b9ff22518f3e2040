"""The simulated backend: the engine's interface over a :class:`Machine`.

Public and supported (as httpx's MockTransport is): tests and ``oomkit
simulate`` drive the real engine through it, without root.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from oomkit import oom_kill
from oomkit.backends.base import Fallback, OOMEvent, Release, relief_for
from oomkit.backends.sim.machine import Machine, SimTask
from oomkit.context import CgroupInfo, LazyMapping, LazyTasks, TaskInfo
from oomkit.engine.clock import ManualClock

PAGE = oom_kill.PAGE_SIZE


class SimBackend:
    def __init__(self, machine: Machine, clock: ManualClock | None = None):
        self.machine = machine
        self.clock = clock or ManualClock()
        self._exits: list[tuple[float, int, int]] = []   # (when, seq, pid): memory comes back
        self._seq = 0
        self.reaped: list[SimTask] = []                     # in the order they went away

    # -- context ------------------------------------------------------------------

    def cgroups(self, oom: OOMEvent, scope: str) -> LazyMapping[CgroupInfo]:
        m = self.machine
        return LazyMapping(lambda: m.subtree(scope), lambda path: m.cgroups[path].info())

    def tasks(self, oom: OOMEvent, scope: str) -> LazyTasks:
        m = self.machine
        return LazyTasks(lambda: m.snapshot_of(scope))

    def task(self, pid: int) -> TaskInfo | None:
        task = self.machine.tasks.get(pid)
        return task.info() if task is not None else None

    def totalpages(self, oom: OOMEvent) -> int:
        """``oom_constrained()``: see :mod:`oomkit.oom_kill`."""
        m = self.machine
        swap_pages = m.swap // PAGE
        if oom.level == "memcg":
            # mem_cgroup_get_max(): the limit plus the swap it may use (no swap.max here).
            # A declared OOM may be in a memcg without a limit: RAM then, as the
            # live backends count it (the kernel's would be PAGE_COUNTER_MAX).
            limit = m.cgroups[oom.memcg].limit
            return (m.memory if limit is None else limit) // PAGE + swap_pages
        if oom.level == "numa":
            return sum(m.node_size[n] for n in oom.nodes) // PAGE + swap_pages
        return m.memory // PAGE + swap_pages

    # -- actions --------------------------------------------------------------------

    def kill(self, tasks: Sequence[TaskInfo], oom: OOMEvent, *, cgroup: str | None = None) -> list[Release]:
        victims = []
        for info in tasks:
            task = self.machine.tasks.get(info.pid)
            if task is not None and task.state == "running":
                victims.append(task)
        dying = {t.pid for t in victims}
        out, counted = [], set()
        for task in victims:
            # An mm comes back once, and only if none of its users lives on.
            holder = task.mm or task
            users = [holder, *holder.mm_users.values()]
            kept = any(u.state == "running" and u.pid not in dying for u in users)
            relief = 0 if kept or holder.pid in counted else \
                relief_for(oom, holder.cgroup, holder.rss, holder.node_rss)
            counted.add(holder.pid)
            out.append(Release(task.pid, task.name, task.cgroup, holder.rss, relief))
        for task in victims:
            self.machine.count_event(task.cgroup, "oom_kill")
            self._exit(task)
        if cgroup is not None and out:
            self.machine.count_event(cgroup, "oom_group_kill")
        return out

    def mm_sharers(self, dying: Sequence[TaskInfo], pool: Sequence[TaskInfo] | None) -> list[TaskInfo]:
        """The running tasks sharing an mm with one of ``dying``: among ``pool``
        (what a policy's kill sees), or anywhere (``None``: the kernel's
        ``for_each_process()``)."""
        allowed = None if pool is None else {t.pid for t in pool}
        skip = {t.pid for t in dying}
        out: dict[int, TaskInfo] = {}
        for info in dying:
            task = self.machine.tasks.get(info.pid)
            if task is None:
                continue
            holder = task.mm or task
            for user in (holder, *holder.mm_users.values()):
                if user.state == "running" and user.pid not in skip \
                        and (allowed is None or user.pid in allowed):
                    out[user.pid] = user.info()
        return [out[pid] for pid in sorted(out)]

    def set_limit(self, path: str, limit: int) -> None:
        self.machine.cgroups[path].limit = limit

    def headroom(self, path: str) -> int:
        return self.machine.headroom(path)

    def protected(self, pid: int) -> str | None:
        return None

    # -- the OOM condition ------------------------------------------------------------

    def condition_gone(self, oom: OOMEvent) -> bool:
        return self.machine.fits(oom)

    def wait_for_relief(self, oom: OOMEvent, timeout: float) -> bool:
        """Let exiting tasks finish for up to ``timeout`` simulated seconds."""
        deadline = self.clock.now() + timeout
        while self._exits and self._exits[0][0] <= deadline:
            self.reap_next()
            if self.machine.fits(oom):
                return True
        self.clock.advance_to(deadline)
        return self.machine.fits(oom)

    def in_flight(self) -> tuple[int, ...]:
        return tuple(pid for _, _, pid in sorted(self._exits))

    def kernel_fallback(self, oom: OOMEvent) -> Fallback:
        if oom.level == "global":
            decision = self._global_decision(oom)
        else:
            # Candidates of a memcg OOM are in its subtree, and so is its oom_group
            # domain: reading only that subtree decides exactly as reading it all.
            scope = oom.memcg if oom.level == "memcg" else "/"
            decision = oom_kill.select_bad_process(
                self.tasks(oom, scope), self.cgroups(oom, scope), level=oom.level,
                memcg=oom.memcg, nodes=oom.nodes, totalpages=self.totalpages(oom),
                sharers=self._kernel_sharers)
        if decision.waiting_for is not None:
            return Fallback(waiting_for=decision.waiting_for.pid)
        if not decision.kills:
            return Fallback(note="out of memory and no killable processes")
        return Fallback(killed=self.kill(decision.victims, oom, cgroup=decision.group))

    def _global_decision(self, oom: OOMEvent) -> oom_kill.Decision:
        """``select_bad_process()`` for a global OOM, from the machine's index
        (the same choice, without rescanning every task)."""
        m = self.machine
        m.refresh()
        pid, points, waiting = m.global_index.select()
        if waiting is not None:
            return oom_kill.Decision(waiting_for=m.tasks[waiting].info())
        if pid is None or points is None:
            return oom_kill.Decision()
        return oom_kill.kill_decision(m.tasks[pid].info(), points, self.cgroups(oom, "/"), "/",
                                      self.tasks(oom, "/"), self._kernel_sharers)

    def _kernel_sharers(self, dying: Sequence[TaskInfo], pool: Sequence[TaskInfo]) -> list[TaskInfo]:
        """The kernel looks for an mm's users among every process, not a memcg's."""
        return self.mm_sharers(dying, None)

    # -- exits (the simulator's clock drives them) -----------------------------------

    def _exit(self, task: SimTask) -> None:
        self.machine.mark_exiting(task)
        if task.exit_delay <= 0:
            self._finish(task)
            return
        self._seq += 1
        heapq.heappush(self._exits, (self.clock.now() + task.exit_delay, self._seq, task.pid))

    def next_exit(self) -> float | None:
        return self._exits[0][0] if self._exits else None

    def reap_next(self) -> None:
        when, _, pid = heapq.heappop(self._exits)
        self.clock.advance_to(when)
        task = self.machine.tasks.get(pid)
        if task is not None:
            self._finish(task)

    def _finish(self, task: SimTask) -> None:
        self.machine.reap(task)
        self.reaped.append(task)

    def exit_task(self, task: SimTask) -> None:
        """A task exits by itself (the scenario's ``exit = true``)."""
        if task.state == "running":
            self._exit(task)
