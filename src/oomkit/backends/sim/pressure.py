"""Simulated memory pressure (PSI) and the triggers policies ask for.

A scenario scripts each cgroup's pressure (``[[event]] pressure = { cgroup =
"/batch", some = "40%", full = "10%" }``): the share of wall time some task /
every non-idle task of it stalls on memory, from that time on.  What a
cgroup's triggers see (Documentation/accounting/psi.rst, kernel/sched/psi.c):

* a task stalled in a child is stalled in each ancestor too, so a cgroup's
  ``some`` is the highest ``some`` scripted in its subtree; ``full`` (all of
  its non-idle tasks stalled at once) is what is scripted for the cgroup
  itself, never inferred from a child's;
* a cgroup with no running task in its subtree has no stall: a kill that
  empties it ends its pressure;
* a trigger ``<some|full> <threshold> <window>`` fires when the stall time
  within the last ``window`` reaches ``threshold``, at most once per window
  (psi.c: ``if (now < t->last_event_time + t->win.size)``); it is looked at
  every ``window / 10`` (the kernel's poller: UPDATES_PER_WINDOW), on that
  grid of simulated time, so a run is deterministic.

Pressure is looked at up to the scenario's last event: script an end (a
pressure event back to 0%) where a run should end.
"""

from __future__ import annotations

from collections.abc import Iterable

from oomkit.backends.sim.machine import Machine

MEAN_WINDOW = 10.0          # the reported some/full: the mean over the last 10 s (psi's avg10)
EPSILON = 1e-9              # float sums of stall time: a threshold met exactly is met


class PressureModel:
    """Scripted pressure per cgroup, its history, and the stall within a window."""

    def __init__(self, machine: Machine):
        self.machine = machine
        self.script: dict[str, tuple[float, float]] = {}     # cgroup -> (some, full), 0..1
        # (cgroup, kind) -> change points [(t, level)]: level holds until the next one
        self.history: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def set(self, cgroup: str, some: float, full: float, now: float) -> None:
        self.script[cgroup] = (some, full)
        self.observe(now)

    def track(self, keys: Iterable[tuple[str, str]], now: float) -> None:
        """Keep a history for these (cgroup, kind) pairs (from ``now``, if new)."""
        for key in keys:
            if key not in self.history:
                self.history[key] = [(now, self.level(*key))]

    def observe(self, now: float) -> None:
        """Note each tracked level that changed (a script change, tasks gone)."""
        for (cgroup, kind), points in self.history.items():
            level = self.level(cgroup, kind)
            if points[-1][1] != level:
                if points[-1][0] == now:
                    points[-1] = (now, level)
                else:
                    points.append((now, level))

    def level(self, cgroup: str, kind: str) -> float:
        """``cgroup``'s stall share now."""
        m = self.machine
        if cgroup not in m.cgroups:
            return 0.0
        if kind == "full":
            return self.script.get(cgroup, (0.0, 0.0))[1] if self._busy(cgroup) else 0.0
        best = 0.0
        for path in m.subtree(cgroup):
            some = self.script.get(path, (0.0, 0.0))[0]
            if some > best and self._busy(path):
                best = some
        return best

    def _busy(self, cgroup: str) -> bool:
        """Has ``cgroup``'s subtree a running task (something that can stall)?"""
        m = self.machine
        return any(m.tasks[pid].state == "running" for path in m.subtree(cgroup)
                   for pid in m.cgroups[path].pids if pid in m.tasks)

    def stall(self, cgroup: str, kind: str, start: float, end: float) -> float:
        """Seconds stalled between ``start`` and ``end`` (0 before the history)."""
        points = self.history.get((cgroup, kind), [])
        total = 0.0
        for i, (t, level) in enumerate(points):
            until = points[i + 1][0] if i + 1 < len(points) else end
            lo, hi = max(t, start), min(until, end)
            if hi > lo and level:
                total += (hi - lo) * level
        return total

    def mean(self, cgroup: str, kind: str, now: float) -> float:
        """The mean share over the last 10 s, in percent (psi's avg10, as a plain mean)."""
        return round(100.0 * self.stall(cgroup, kind, now - MEAN_WINDOW, now) / MEAN_WINDOW, 2)


class TriggerClock:
    """When each trigger last fired (the kernel's ``last_event_time``)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, object], float] = {}

    def due(self, key: tuple[str, object], stalled: float, threshold: float, window: float,
            now: float) -> bool:
        """Does this trigger fire now: ``stalled`` reached ``threshold``, and a
        window passed since it last fired?"""
        if stalled + EPSILON < threshold:
            return False
        last = self._last.get(key)
        if last is not None and now - last + EPSILON < window:
            return False
        self._last[key] = now
        return True
