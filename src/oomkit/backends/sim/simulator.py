"""The simulated kernel's timeline: runs a scenario through the real engine.

Events run in time order (file order among equal times).  An allocation
that does not fit raises an OOM, which the engine handles; then the
allocation is retried, at once if it now fits, else when the next exiting
task's memory comes back (``exit_delay``, modelling exit and the OOM
reaper).  An allocation is retried at most ``MAX_RETRIES`` times and fails
when an OOM is unresolved, so nothing ever loops forever.  The same
scenario gives byte-identical output.

Scripted memory pressure (``pressure`` events) is measured by
:mod:`oomkit.backends.sim.pressure`; the attached policies' PSI triggers are
looked at on a grid of simulated time, a firing goes to the policy's
``handle_psi_event``, and an OOM it declares runs through the chain at once.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from typing import Any

from oomkit.backends.base import OOMEvent
from oomkit.backends.sim.backend import SimBackend
from oomkit.backends.sim.machine import Machine, SimTask
from oomkit.backends.sim.pressure import PressureModel, TriggerClock
from oomkit.config.scenario import FIRST_PID, Scenario, Task
from oomkit.context import Level
from oomkit.engine.attachment import Recipe
from oomkit.engine.chain import Engine
from oomkit.errors import ConfigError, PolicyLoadError
from oomkit.policy import PressureEvent
from oomkit.schema import CgroupUsage, FailedAllocation, ResolvedBy, SimResult

MAX_RETRIES = 8


class Simulator:
    def __init__(self, scenario: Scenario, attach_overrides: dict[str, str] | None = None,
                 runner: str | None = None):
        """``runner``: "worker" (the scenario's default) or "inprocess" (``--in-process``)."""
        self.scenario = scenario
        self.machine = Machine(scenario.memory, scenario.swap, scenario.numa_nodes)
        self.backend = SimBackend(self.machine)
        settings = scenario.settings
        if runner is not None:
            settings = dataclasses.replace(settings, runner=runner)
        self.engine = Engine(self.backend, settings)
        self.result = SimResult()
        self.steps = 0          # events and retries run (the benchmark's rate)
        self._by_name: dict[str, SimTask] = {}
        # The scenario's events, in time order (file order among equal times), and
        # a heap of the retries they cause; both ordered by (time, seq).
        self._timeline: list[tuple[float, int, Any]] = []
        self._queue: list[tuple[float, int, tuple]] = []
        self._seq = 0
        self._next_pid = FIRST_PID
        self.pressure = PressureModel(self.machine)
        self._fired = TriggerClock()
        self._ticking = False
        # Pressure is looked at up to the last scripted event.
        self._horizon = max((e.at for e in scenario.events), default=0.0)
        self.on_step: Any = None        # called (time, machine) after each step: --plot's samples
        self._build(attach_overrides or {})

    # -- set-up -------------------------------------------------------------------

    def _build(self, overrides: dict[str, str]) -> None:
        s = self.scenario
        for i, cg in enumerate(s.cgroups):
            self.machine.add_cgroup(cg.path, cg.limit, cg.oom_group)
            if cg.file and not self._read(cg.path, cg.file, None):
                raise ConfigError(f"{cg.path}'s page cache does not fit at the start", file=s.file,
                                  where=f"cgroup[{i}].file", hint="make the start state fit")
        for i, spec in enumerate(s.tasks):
            task = self._spawn(spec)
            if spec.mm is not None:
                self.machine.share_mm(task, self._by_name[spec.mm])
            if spec.file and not self._read(spec.cgroup, spec.file, spec.nodes):
                raise ConfigError(f"{spec.name}'s page cache does not fit at the start",
                                  file=s.file, where=f"task[{i}].file", hint="make the start state fit")
            if self.machine.check(task, spec.rss) is not None:
                raise ConfigError(f"{spec.name}'s rss does not fit at the start (a limit or RAM is "
                                  f"already full)", file=s.file, where=f"task[{i}].rss",
                                  hint="make the start state fit; let events cause the OOMs")
            self.machine.charge(task, spec.rss)
        # cgroup -> (policy, params, ceiling, where a load error is reported)
        attachments = {a.cgroup: (a.policy, a.params, a.ceiling, f"attach[{i}].policy")
                       for i, a in enumerate(s.attach)}
        for cgroup, policy in overrides.items():
            if cgroup not in self.machine.cgroups:
                raise ConfigError(f"--attach {cgroup}={policy}: no cgroup {cgroup} in the scenario")
            ceiling = attachments[cgroup][2] if cgroup in attachments else None
            attachments[cgroup] = (policy, {}, ceiling, f"--attach {cgroup}={policy}")
        for cgroup, (policy, params, ceiling, where) in attachments.items():
            recipe = Recipe(policy, dict(params or {}), str(s.base_dir))
            try:
                self.engine.attach(cgroup, recipe, ceiling=ceiling)
            except PolicyLoadError as exc:
                self.engine.close()
                raise ConfigError(str(exc), file=None if where.startswith("--") else s.file,
                                  where=where) from None
        for event in s.events:
            self._seq += 1
            self._timeline.append((event.at, self._seq, event))
        self._timeline.sort(key=lambda item: item[:2])
        if any(e.kind == "pressure" for e in s.events):
            self._track()

    def _spawn(self, spec: Task) -> SimTask:
        task = SimTask(pid=self._next_pid, name=spec.name, cgroup=spec.cgroup,
                       oom_score_adj=spec.oom_score_adj, swap=spec.swap, pgtables=spec.pgtables,
                       uid=spec.uid, cmdline=spec.cmdline, start_time=self.backend.clock.now(),
                       nodes=spec.nodes,
                       exit_delay=self.scenario.exit_delay if spec.exit_delay is None else spec.exit_delay)
        self._next_pid += 1
        self._by_name[spec.name] = task
        return self.machine.add_task(task)

    def _retry(self, t: float, payload: tuple) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, (self._alloc, *payload)))

    def _later(self, t: float, *call) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, call))

    # -- the run --------------------------------------------------------------------

    def run(self) -> SimResult:
        backend, clock, queue, timeline = self.backend, self.backend.clock, self._queue, self._timeline
        never = (float("inf"), 0)
        pos, end = 0, len(timeline)
        step = self.on_step or (lambda t, machine: None)
        step(clock.now(), self.machine)
        while True:
            event = timeline[pos][:2] if pos < end else never
            retry = queue[0][:2] if queue else never
            next_exit = backend.next_exit()
            # An exit that lands by the next event's time comes first: memory
            # freed at t is there for an allocation at t.
            if next_exit is not None and next_exit <= min(event, retry)[0]:
                backend.reap_next()
                step(clock.now(), self.machine)
                continue
            if event is never and retry is never:
                break
            self.steps += 1
            if event < retry:
                t, _, payload = timeline[pos]
                pos += 1
                clock.advance_to(t)
                self._event(payload)
            else:
                t, _, (fn, *args) = heapq.heappop(queue)
                clock.advance_to(t)
                fn(*args)
            step(clock.now(), self.machine)
        return self._finish()

    def _event(self, event) -> None:
        if event.kind == "pressure":
            p = event.pressure
            self.pressure.set(p.cgroup, p.some, p.full, self.backend.clock.now())
            self._start_ticks()
            return
        if event.kind == "spawn":
            task = self._spawn(event.spawn)
            self._alloc(task, event.amount, 0)
            return
        named = self._by_name.get(event.task)
        if named is None or named.state != "running":
            return
        if event.kind == "alloc":
            self._alloc(named, event.amount, 0)
        elif event.kind == "read":
            self._read(named.cgroup, event.amount, named.nodes, reclaim=True)
        elif event.kind == "free":
            self.machine.uncharge(named, event.amount)
        else:
            self.backend.exit_task(named)

    def _alloc(self, task: SimTask, amount: int, attempt: int) -> None:
        if task.state != "running":
            return
        oom = self._reclaimed(task, amount)
        if oom is None:
            self.machine.charge(task, amount)
            return
        if oom.level == Level.MEMCG:
            self.machine.count_event(oom.memcg, "oom")
        record = self.engine.handle(oom)
        self.result.ooms.append(record)
        if task.state != "running":
            return
        if record.resolved_by == ResolvedBy.UNRESOLVED or attempt >= MAX_RETRIES:
            self.result.failed_allocations.append(FailedAllocation(
                t=round(self.backend.clock.now(), 6), task=task.name, alloc=amount,
                oom=len(self.result.ooms) - 1))
            return
        when = self.backend.clock.now()
        next_exit = self.backend.next_exit()
        if not self.machine.fits(oom) and next_exit is not None:
            when = max(when, next_exit)
        self._retry(when, (task, amount, attempt + 1))

    # -- pressure -------------------------------------------------------------------

    def _track(self) -> list:
        """The attached policies' triggers, each (cgroup, kind) measured from now."""
        pairs = self.engine.psi_triggers()
        keys = [(t.cgroup, kind) for _att, t in pairs for kind in ("some", "full")]
        self.pressure.track(keys, self.backend.clock.now())
        return pairs

    def _start_ticks(self) -> None:
        if not self._ticking:
            self._ticking = True
            self._tick_next(self._track())

    def _tick_next(self, pairs: list) -> None:
        """The next look at the triggers, on the grid of the shortest window / 10."""
        if not pairs:
            self._ticking = False
            return
        period = min(t.window for _att, t in pairs) / 10
        now = self.backend.clock.now()
        t = round((math.floor(now / period + 1e-9) + 1) * period, 9)
        if t > self._horizon:
            self._ticking = False
            return
        self._later(t, self._tick)

    def _tick(self) -> None:
        now = self.backend.clock.now()
        pairs = self._track()
        self.pressure.observe(now)
        for att, trig in pairs:
            stalled = self.pressure.stall(trig.cgroup, trig.kind, now - trig.window, now)
            if not self._fired.due((att.cgroup, trig), stalled, trig.threshold, trig.window, now):
                continue
            event = PressureEvent(trig, round(now, 6), some=self.pressure.mean(trig.cgroup, "some", now),
                                  full=self.pressure.mean(trig.cgroup, "full", now))
            for oom in self.engine.psi_event(att, event):
                self.result.ooms.append(self.engine.handle(oom))
                self.pressure.observe(now)
        self._tick_next(pairs)

    def _reclaimed(self, task: SimTask, amount: int) -> OOMEvent | None:
        """The OOM this allocation raises once page cache is reclaimed, or None
        (the kernel reclaims before it declares an OOM; each time a memcg's limit
        is hit, memory.events max counts it)."""
        counted = set()
        while True:
            oom = self.machine.check(task, amount)
            if oom is None:
                return None
            if oom.level == Level.MEMCG and oom.memcg not in counted:
                counted.add(oom.memcg)
                self.machine.count_event(oom.memcg, "max")
            if not self.machine.reclaim(oom):
                return oom

    def _read(self, cgroup: str, amount: int, nodes, reclaim: bool = False) -> bool:
        """Page cache read in for ``cgroup``: what fits (after reclaiming older page
        cache, with ``reclaim``); a read never raises an OOM in this model.  True if
        all of it fit."""
        m = self.machine
        probe = SimTask(pid=0, name="(page cache)", cgroup=cgroup, nodes=nodes)
        oom = self._reclaimed(probe, amount) if reclaim else m.check(probe, amount)
        if oom is not None:
            room = sum(m.node_size[n] - m.node_used[n] for n in m.allowed_nodes(probe))
            for cg in m.chain(cgroup):
                if cg.limit is not None:
                    room = min(room, cg.limit - cg.usage)
            m.add_file(cgroup, max(0, room), nodes)
            return False
        m.add_file(cgroup, amount, nodes)
        return True

    def _finish(self) -> SimResult:
        r, m = self.result, self.machine
        killed_pids = {k.pid for o in r.ooms for k in o.killed}
        r.survivors = [t.name for t in m.tasks.values() if t.state == "running"]
        for task in self.backend.reaped:
            (r.killed if task.pid in killed_pids else r.exited).append(task.name)
        r.final = {path: CgroupUsage(usage=cg.usage, limit=cg.limit) for path, cg in m.cgroups.items()}
        # memory.events, as a v2 kernel would show it: only the counters that moved.
        r.memory_events = {path: {k: v for k, v in cg.events.items() if v}
                           for path, cg in m.cgroups.items() if any(cg.events.values())}
        r.ejected = list(self.engine.ejected)
        return r


def simulate(scenario: Scenario, attach_overrides: dict[str, str] | None = None,
             runner: str | None = None, on_step: Any = None) -> SimResult:
    """``on_step(t, machine)``: after each step (``oomkit simulate --plot`` samples usage)."""
    sim = Simulator(scenario, attach_overrides, runner)
    sim.on_step = on_step
    try:
        return sim.run()
    finally:
        sim.engine.close()
