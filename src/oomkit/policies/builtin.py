"""The built-in policies.  Each is a plain :class:`~oomkit.OOMPolicy`, written
only against the public contract, as a third-party policy would be."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

from oomkit import oom_kill
from oomkit.context import OOMContext, TaskInfo, is_within
from oomkit.policy import OOMPolicy, Verdict
from oomkit.units import parse_size


def candidates(oc: OOMContext) -> list[TaskInfo]:
    """Tasks whose death would relieve this OOM and that may be killed."""
    return [t for t in oom_kill.oom_tasks(oc)
            if oom_kill.eligible(t, oc.level, oc.memcg, oc.nodes)
            and t.oom_score_adj > oom_kill.OOM_SCORE_ADJ_MIN and not t.exiting]


def size_of(task: TaskInfo) -> int:
    return task.rss + task.swap


def kill_first(k, tasks: Iterable[TaskInfo], reason: str) -> Verdict:
    """Kill the first task that the actions accept; HANDLED once memory came back."""
    for task in tasks:
        if k.kill_task(task, reason) > 0:
            return Verdict.HANDLED
    return Verdict.PASS


class KernelDefault(OOMPolicy):
    """What the kernel's OOM killer would do (``mm/oom_kill.c``), as a policy."""

    name = "kernel-default"

    def handle_out_of_memory(self, oc, k):
        decision = oom_kill.decide(oc)
        if decision.waiting_for is not None:
            return Verdict.BACKOFF
        if not decision.kills:
            return Verdict.PASS
        victim = decision.victim
        reason = f"badness {decision.points} pages"
        if decision.group is not None:
            freed = k.kill_cgroup(decision.group, f"{reason}, pid {victim.pid}; memory.oom.group")
        else:
            freed = k.kill_task(victim, reason)
        return Verdict.HANDLED if freed > 0 else Verdict.PASS


class LargestTask(OOMPolicy):
    """Kill the task using the most memory (rss + swap), ignoring oom_score_adj
    except -1000."""

    name = "largest-task"

    def handle_out_of_memory(self, oc, k):
        ranked = sorted(candidates(oc), key=lambda t: (-size_of(t), t.pid))
        return kill_first(k, ranked, "largest task")


class NewestTask(OOMPolicy):
    """Kill the most recently started task: the least work lost."""

    name = "newest-task"

    def handle_out_of_memory(self, oc, k):
        ranked = sorted(candidates(oc), key=lambda t: (-t.start_time, -t.pid))
        return kill_first(k, ranked, "newest task")


class LargestCgroup(OOMPolicy):
    """The upstream selftest's policy: kill the leaf (or ``oom_group``) cgroup
    with the largest usage, skipping any that holds a -1000 task."""

    name = "largest-cgroup"

    def handle_out_of_memory(self, oc, k):
        top = oc.memcg if is_within(oc.memcg, oc.attached_to) else oc.attached_to
        units = sorted(self._units(oc, top), key=lambda cg: (-oc.cgroups[cg].usage, cg))
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
        return any(t.oom_score_adj <= oom_kill.OOM_SCORE_ADJ_MIN for t in oc.tasks.in_cgroup(path))


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


class PreferAvoid(OOMPolicy):
    """Kill by preference: never an ``omit`` match, ``prefer`` matches first,
    ``avoid`` matches last; the largest first within each class (like
    systemd-oomd's ManagedOOMPreference and earlyoom's --prefer/--avoid)."""

    name = "prefer-avoid"

    def __init__(self, prefer: Sequence[str] = (), avoid: Sequence[str] = (),
                 omit: Sequence[str] = ()):
        self.prefer = Matcher(prefer, "prefer")
        self.avoid = Matcher(avoid, "avoid")
        self.omit = Matcher(omit, "omit")

    def handle_out_of_memory(self, oc, k):
        allowed = [t for t in candidates(oc) if not self.omit(t)]
        ranked = sorted(allowed, key=lambda t: (self._rank(t), -size_of(t), t.pid))
        return kill_first(k, ranked, "prefer-avoid")

    def _rank(self, task: TaskInfo) -> int:
        if self.prefer(task):
            return 0
        return 2 if self.avoid(task) else 1


class RaiseLimit(OOMPolicy):
    """Buy headroom from the parent instead of killing: raise the limit that
    was hit by ``step`` (at least what the failing charge needs), never above
    ``ceiling``; PASS when the parent has no room for it."""

    name = "raise-limit"

    def __init__(self, step: str | int = "64M", ceiling: str | int | None = None):
        self.step = parse_size(step)
        self.ceiling = None if ceiling is None else parse_size(ceiling)

    def handle_out_of_memory(self, oc, k):
        info = oc.cgroups.get(oc.memcg)
        if oc.level != "memcg" or info is None or info.limit is None:
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

    def handle_out_of_memory(self, oc, k):
        in_flight = set(oc.victims_in_flight)
        for task in oom_kill.oom_tasks(oc):
            dying = task.exiting or task.pid in in_flight
            if dying and oom_kill.eligible(task, oc.level, oc.memcg, oc.nodes) \
                    and task.rss >= self.min_exiting:
                return Verdict.BACKOFF
        return Verdict.PASS
