"""The built-in policies.  Each is a plain :class:`~oomkit.OOMPolicy`, written
only against the public contract, as a third-party policy would be."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

from oomkit import oom_kill
from oomkit.context import Level, OOMContext, TaskInfo
from oomkit.errors import PolicyLoadError
from oomkit.helpers import (
    OOM_SCORE_ADJ_MIN,
    badness,
    candidates,
    is_within,
    kernel_choice,
    relieves,
    tasks_that_relieve,
)
from oomkit.policies.loader import make_policy
from oomkit.policy import (
    OOMPolicy,
    PressureActions,
    PressureEvent,
    PressureTrigger,
    ReleaseActions,
    Verdict,
)
from oomkit.units import parse_duration, parse_size


def size_of(task: TaskInfo) -> int:
    return task.rss + task.swap


def kill_first(k: ReleaseActions, tasks: Iterable[TaskInfo], reason: str) -> Verdict:
    """Kill the first task that the actions accept; HANDLED once memory came back."""
    for task in tasks:
        if k.kill_task(task, reason) > 0:
            return Verdict.HANDLED
    return Verdict.PASS


class Matcher:
    """A list of cgroup globs (entries starting with ``/``) and task-name regexes."""

    def __init__(self, patterns: Sequence[str], param: str):
        if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
            raise ValueError(f"{param} must be a list of strings")
        self.globs = [p for p in patterns if p.startswith("/")]
        try:
            self.regexes = [re.compile(p) for p in patterns if not p.startswith("/")]
        except re.error as exc:
            raise ValueError(f"{param}: bad regular expression: {exc}") from None

    def __call__(self, task: TaskInfo) -> bool:
        return (any(fnmatch.fnmatchcase(task.cgroup, g) for g in self.globs)
                or any(r.search(task.name) for r in self.regexes))


class Preferences(OOMPolicy):
    """Base of the killing built-ins: the optional ``prefer``, ``avoid`` and
    ``omit`` lists, one implementation for all of them.  An ``omit`` match is
    never killed; an ``avoid`` match only when nothing else can relieve the
    OOM; a ``prefer`` match before the rest.  Empty lists (the default)
    change nothing."""

    def __init__(self, prefer: Sequence[str] = (), avoid: Sequence[str] = (),
                 omit: Sequence[str] = ()):
        self.prefer = Matcher(prefer, "prefer")
        self.avoid = Matcher(avoid, "avoid")
        self.omit = Matcher(omit, "omit")
        self.lists = bool(prefer or avoid or omit)

    def tier(self, tasks: Iterable[TaskInfo]) -> int | None:
        """The class of a victim (a task, or every task a kill takes with it):
        None if any is omitted, 2 if any is avoided, 0 if any is preferred, else 1."""
        tasks = list(tasks)
        if any(self.omit(t) for t in tasks):
            return None
        if any(self.avoid(t) for t in tasks):
            return 2
        return 0 if any(self.prefer(t) for t in tasks) else 1

    def ranked(self, tasks: Iterable[TaskInfo], key) -> list[TaskInfo]:
        """``tasks`` without the omitted, by class, then by ``key`` within it."""
        if not self.lists:          # no lists, one class: the usual case, and the fast one
            return sorted(tasks, key=key)
        tiers = {t.pid: self.tier((t,)) for t in tasks}
        return sorted((t for t in tasks if tiers[t.pid] is not None),
                      key=lambda t: (tiers[t.pid], key(t)))


class KernelDefault(Preferences):
    """What the kernel's OOM killer would do (``mm/oom_kill.c``), as a policy.
    With ``prefer``/``avoid``/``omit``: the kernel's badness order within each class."""

    name = "kernel-default"

    def handle_out_of_memory(self, oc: OOMContext, k: ReleaseActions) -> Verdict:
        decision = kernel_choice(oc)
        if decision.waiting_for is not None:
            return Verdict.BACKOFF
        if not self.lists:
            return self._carry_out(decision, k)
        for choice in self._choices(oc):
            if self._carry_out(choice, k) is Verdict.HANDLED:
                return Verdict.HANDLED
        return Verdict.PASS

    def _choices(self, oc: OOMContext) -> list[oom_kill.Decision]:
        """Each candidate's kill (its memory.oom.group with it) by class, then badness."""
        domain = oc.memcg if oc.level == Level.MEMCG else "/"
        scope = tasks_that_relieve(oc)
        scored = []
        for task in candidates(oc):
            points = badness(task, oc.totalpages)
            if points is None:      # -1000: never a candidate
                continue
            choice = oom_kill.kill_decision(task, points, oc.cgroups, domain, scope)
            tier = self.tier(choice.victims)
            if tier is not None:
                scored.append(((tier, -points, -task.pid), choice))
        return [choice for _key, choice in sorted(scored, key=lambda s: s[0])]

    @staticmethod
    def _carry_out(decision: oom_kill.Decision, k: ReleaseActions) -> Verdict:
        if not decision.kills:
            return Verdict.PASS
        victim = decision.victim
        assert victim is not None       # a decision that kills has a victim
        # k.kill_task kills as the kernel does: its memory.oom.group and mm sharers with it.
        freed = k.kill_task(victim, f"badness {decision.points} pages")
        return Verdict.HANDLED if freed > 0 else Verdict.PASS


class LargestTask(Preferences):
    """Kill the task using the most memory (rss + swap), ignoring oom_score_adj
    except -1000; with ``prefer``/``avoid``/``omit``, the largest within each class."""

    name = "largest-task"

    def handle_out_of_memory(self, oc: OOMContext, k: ReleaseActions) -> Verdict:
        ranked = self.ranked(candidates(oc), key=lambda t: (-size_of(t), t.pid))
        return kill_first(k, ranked, self.name)


class NewestTask(Preferences):
    """Kill the most recently started task: the least work lost; with
    ``prefer``/``avoid``/``omit``, the newest within each class."""

    name = "newest-task"

    def handle_out_of_memory(self, oc: OOMContext, k: ReleaseActions) -> Verdict:
        ranked = self.ranked(candidates(oc), key=lambda t: (-t.start_time, -t.pid))
        return kill_first(k, ranked, "newest task")


class LargestCgroup(Preferences):
    """The upstream selftest's policy: kill the leaf (or ``oom_group``) cgroup
    with the largest usage, skipping any that holds a -1000 task; with
    ``prefer``/``avoid``/``omit``, a cgroup is in the class of its tasks
    (omitted if one is, else avoided if one is, else preferred if one is)."""

    name = "largest-cgroup"

    def handle_out_of_memory(self, oc: OOMContext, k: ReleaseActions) -> Verdict:
        top = oc.memcg if is_within(oc.memcg, oc.attached_to) else oc.attached_to
        tiers = {cg: self.tier(oc.tasks.in_cgroup(cg)) for cg in self._units(oc, top)}
        units = sorted((cg for cg, tier in tiers.items() if tier is not None),
                       key=lambda cg: (tiers[cg], -oc.cgroups[cg].usage, cg))
        for path in units:
            if self._protected(oc, path):
                continue
            if k.kill_cgroup(path, f"largest cgroup, usage {oc.cgroups[path].usage}") > 0:
                return Verdict.HANDLED
        return Verdict.PASS

    @staticmethod
    def _units(oc, top: str) -> list[str]:
        """Leaf cgroups under ``top``, an oom_group cgroup standing for its subtree."""
        out, stack = [], [top]
        while stack:
            info = oc.cgroups.get(stack.pop())
            if info is None:
                continue
            if info.oom_group or not info.children:
                out.append(info.path)
            else:
                stack.extend(info.children)
        return out

    @staticmethod
    def _protected(oc, path: str) -> bool:
        return any(t.oom_score_adj <= OOM_SCORE_ADJ_MIN for t in oc.tasks.in_cgroup(path))


class PressureKill(LargestCgroup):
    """Kill under sustained memory pressure, as users configure systemd-oomd
    (``ManagedOOMMemoryPressure=kill``, ``ManagedOOMMemoryPressureLimit=``,
    ``DefaultMemoryPressureDurationSec=``) and oomd's pressure plugins: when a
    watched cgroup's ``kind`` (``full``) pressure stays at ``threshold`` or more
    of each ``window`` for ``duration``, declare an OOM there; the chain then
    kills as largest-cgroup does (the largest leaf or ``oom_group`` cgroup,
    with the ``prefer``/``avoid``/``omit`` lists).  On an OOM the kernel raises
    it does the same.  ``cgroups``: the cgroups to watch (within the one it is
    attached to)."""

    name = "pressure-kill"

    def __init__(self, cgroups: Sequence[str] = (), threshold: str | float = "60%",
                 duration: str | float = "30s", window: str | float = "10s", kind: str = "full",
                 prefer: Sequence[str] = (), avoid: Sequence[str] = (), omit: Sequence[str] = ()):
        super().__init__(prefer, avoid, omit)
        if isinstance(cgroups, str) or not cgroups or not all(isinstance(c, str) for c in cgroups):
            raise ValueError('cgroups must be a list of cgroup paths to watch, like ["/batch"]')
        try:
            percent = float(str(threshold).strip().removesuffix("%"))
        except ValueError:
            percent = float("nan")
        if not 0 < percent <= 100:
            raise ValueError(f"threshold {threshold!r} is not a percentage above 0, at most 100")
        self.window, self.duration = parse_duration(window), parse_duration(duration)
        if kind not in ("some", "full"):
            raise ValueError(f"kind {kind!r} is not some or full")
        self.triggers = [PressureTrigger.percent(c, "full" if kind == "full" else "some",
                                                 percent, self.window) for c in cgroups]
        bad = next((t.problem() for t in self.triggers if t.problem()), None)
        if bad:
            raise ValueError(bad)
        self._since: dict[str, tuple[float, float]] = {}   # cgroup -> (first, last) firing

    def psi_triggers(self) -> Sequence[PressureTrigger]:
        return self.triggers

    def handle_psi_event(self, event: PressureEvent, k: PressureActions) -> None:
        """A firing within 1.5 windows of the previous one continues a stretch
        (the kernel signals at most once per window); a stretch of ``duration``
        declares the OOM, and the next one starts afresh."""
        now, cg = event.at, event.cgroup
        first, last = self._since.get(cg, (now, now))
        if now - last > 1.5 * self.window:
            first = now
        self._since[cg] = (first, now)
        if now - first >= self.duration:
            del self._since[cg]
            shown = "" if event.full is None else f", full avg {event.full:g}%"
            k.declare_oom(cg, f"{self.triggers[0].kind} pressure over {self.threshold_text} "
                              f"for {now - first:g}s{shown}")

    @property
    def threshold_text(self) -> str:
        t = self.triggers[0]
        return f"{100 * t.threshold / t.window:g}% of {t.window:g}s"


class PreferAvoid(LargestTask):
    """Kill by preference: never an ``omit`` match, ``prefer`` matches first,
    ``avoid`` matches last; the largest first within each class (like
    systemd-oomd's ManagedOOMPreference and earlyoom's --prefer/--avoid).
    The same as largest-task with the same lists, under the name users look for."""

    name = "prefer-avoid"


class RaiseLimit(OOMPolicy):
    """Buy headroom from the parent instead of killing: raise the limit that
    was hit by ``step`` (at least what the failing charge needs), never above
    ``ceiling``; PASS when the parent has no room for it."""

    name = "raise-limit"

    def __init__(self, step: str | int = "64M", ceiling: str | int | None = None):
        self.step = parse_size(step)
        self.ceiling = None if ceiling is None else parse_size(ceiling)

    def handle_out_of_memory(self, oc: OOMContext, k: ReleaseActions) -> Verdict:
        info = oc.cgroups.get(oc.memcg)
        if oc.level != Level.MEMCG or info is None or info.limit is None:
            return Verdict.PASS
        need = info.usage + (oc.requested or 0) - info.limit
        room = k.headroom(oc.memcg)
        if self.ceiling is not None:
            room = min(room, self.ceiling - info.limit)
        grow = min(max(self.step, need), room)
        if grow <= 0 or grow < need:
            return Verdict.PASS
        freed = k.raise_limit(oc.memcg, info.limit + grow, f"raise-limit step {self.step}")
        return Verdict.HANDLED if freed > 0 else Verdict.PASS


class WaitForExiting(OOMPolicy):
    """BACKOFF while a victim of this OOM is still exiting (at least
    ``min_exiting`` bytes of it): killing another would be needless."""

    name = "wait-for-exiting"

    def __init__(self, min_exiting: str | int = 0):
        self.min_exiting = parse_size(min_exiting)

    def handle_out_of_memory(self, oc: OOMContext, k: ReleaseActions) -> Verdict:
        in_flight = set(oc.victims_in_flight)
        for task in tasks_that_relieve(oc):
            dying = task.exiting or task.pid in in_flight
            if dying and relieves(oc, task) and task.rss >= self.min_exiting:
                return Verdict.BACKOFF
        return Verdict.PASS


class Settle(OOMPolicy):
    """Kill only while memory keeps climbing towards the limit: BACKOFF while the
    OOMing cgroup gives memory back (a task's rss fell, or one is exiting), for at
    most ``grace``; PASS while it has settled with ``margin`` of room under its
    limit; otherwise the ``then`` policy decides (``then_params`` its params)."""

    name = "settle"

    def __init__(self, then: str = "prefer-avoid", then_params: dict | None = None,
                 margin: str | int = "4M", slack: str | int = "8M", grace: str | float = "10s"):
        if then == self.name:
            raise ValueError("then: settle cannot run itself")
        try:
            self.then = make_policy(then, then_params)
        except PolicyLoadError as exc:
            raise ValueError(f"then: {exc}") from None
        self.margin, self.slack = parse_size(margin), parse_size(slack)
        self.grace = parse_duration(grace)
        self._last: tuple[float, dict[int, int]] | None = None   # the previous look: rss by pid
        self._episode = (0.0, 0)     # when this stretch of OOMs began, and the usage then

    def handle_out_of_memory(self, oc: OOMContext, k: ReleaseActions) -> Verdict:
        info = oc.cgroups.get(oc.memcg)
        if oc.level != Level.MEMCG or info is None or info.limit is None:
            return self.then.handle_out_of_memory(oc, k)
        now, tasks = k.now(), tasks_that_relieve(oc)
        last, self._last = self._last, (now, {t.pid: t.rss for t in tasks})
        if last is None or now - last[0] > self.grace:
            self._episode = (now, info.usage)
        began, usage_then = self._episode
        if now - began < self.grace and self._shedding(oc, tasks, last):
            return Verdict.BACKOFF
        room = info.limit - info.usage
        # Settled: room left under the limit, and no higher than when this began;
        # the kernel still kills at the limit if it is ever reached.
        if room >= max(oc.requested or 0, self.margin) and info.usage <= usage_then + self.slack:
            return Verdict.PASS
        return self.then.handle_out_of_memory(oc, k)

    def _shedding(self, oc, tasks, last) -> bool:
        """Is memory coming back: a task exiting, or one whose rss fell since the last look?"""
        in_flight = set(oc.victims_in_flight)
        before = last[1] if last else {}
        return any(t.exiting or t.pid in in_flight
                   or before.get(t.pid, 0) >= t.rss + self.slack for t in tasks)
