"""The kernel's own OOM killer, modelled on ``mm/oom_kill.c`` (Linux 6.x).

Pure functions over the read-only OOM context: they read, decide and return
a :class:`Decision`; the caller kills.  Used twice: as the fallback when a
whole policy chain fails (in the simulated kernel), and as the built-in
``kernel-default`` policy.

Where the kernel is subtle, this follows it and says so:

* Units are pages (``PAGE_SIZE`` 4096); byte counts are floored to pages,
  as ``get_mm_rss()`` counts whole pages.
* ``oom_badness()``: rss + swap entries + page-table pages, plus
  ``oom_score_adj * (totalpages / 1000)`` with C integer division of
  ``totalpages`` first, so the adjustment is a whole number of pages.
  ``oom_score_adj == -1000`` (``OOM_SCORE_ADJ_MIN``) is never chosen.
* ``totalpages`` (``oom_constrained()``): the memcg's ``mem_cgroup_get_max()``
  (limit plus the swap it may use) for a memcg OOM; RAM + swap for a global
  OOM; the allowed nodes' memory + swap for a NUMA-constrained OOM.  The
  backend computes it, as it alone knows the machine.
* Candidates (``select_bad_process()``): the tasks of the OOMing memcg's
  subtree for a memcg OOM; for a NUMA OOM, tasks whose allowed nodes
  intersect the constrained nodes (``oom_cpuset_eligible()``); all for global.
* Ties: ``oom_evaluate_task()`` skips a task only when ``points <
  chosen_points``, so among equal scores the task evaluated *last* wins.
  Evaluation order is ``for_each_process()`` (creation order, pid order
  here) globally, and ``mem_cgroup_scan_tasks()`` for a memcg: cgroups in
  pre-order from the OOMing one, tasks in each in the order they joined
  (pid order here).
* A task that is already an OOM victim and still exiting makes the kernel
  *abort* the selection and wait for it (``oom_evaluate_task()``'s ``abort``
  label) rather than kill a second task.
* ``memory.oom.group`` (``mem_cgroup_get_oom_group()``): walking up from the
  victim's memcg to the OOM domain (the OOMing memcg; the root for a global
  OOM), the highest memcg with ``oom_group`` set is killed whole, skipping its
  ``-1000`` tasks (``oom_kill_memcg_member()``).  The root memcg never is.
* Every process that shares the address space (``mm``) of one that dies,
  dies too (``__oom_kill_process()``: ``for_each_process()`` ...
  ``process_shares_mm()``): ``clone(CLONE_VM)`` without ``CLONE_THREAD``, or
  a ``vfork()`` child.  The mm is freed only when its last user exits, so
  killing one of them alone frees nothing.  The kernel spares only init
  and kernel threads there, not ``-1000`` (``__set_oom_adj()`` keeps
  ``oom_score_adj`` equal across the processes sharing an mm since Linux
  4.8, so a ``-1000`` sharer of a killable victim is a vfork child at most).

Who dies is decided once, by :func:`oom_kill_set`, for the kernel model
(the simulator's fallback, ``kernel-default``) and for a policy's
``k.kill_task`` / ``k.kill_cgroup`` alike: like ``bpf_oom_kill_process()``,
a policy's kill is the OOM killer's kill.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from oomkit.context import CgroupInfo, TaskInfo, ancestors, is_within, parent_of

PAGE_SIZE = 4096
OOM_SCORE_ADJ_MIN = -1000


def badness(task: TaskInfo, totalpages: int) -> int | None:
    """``oom_badness()``: the task's score in pages, or None if it may not be chosen."""
    if task.oom_score_adj <= OOM_SCORE_ADJ_MIN:
        return None
    points = task.rss // PAGE_SIZE + task.swap // PAGE_SIZE + task.pgtables // PAGE_SIZE
    return points + task.oom_score_adj * (totalpages // 1000)


# Which of ``pool`` share an mm with one of ``dying`` (the backend's: the
# simulator knows every mm, a live backend asks the kernel with kcmp(2)).
SharersFn = Callable[[Sequence[TaskInfo], Sequence[TaskInfo]], Iterable[TaskInfo]]


@dataclass(frozen=True)
class Decision:
    """What the kernel would do: kill ``victims`` (victim first), wait, or nothing."""

    victim: TaskInfo | None = None
    points: int | None = None
    group: str | None = None                 # the memory.oom.group cgroup killed whole
    victims: tuple[TaskInfo, ...] = ()
    sharers: tuple[TaskInfo, ...] = ()      # of victims: killed for sharing a dying one's mm
    waiting_for: TaskInfo | None = None     # the "abort" case: an OOM victim is still exiting
    skipped: tuple[str, ...] = field(default=())

    @property
    def kills(self) -> bool:
        return bool(self.victims)


def eligible(task: TaskInfo, level: str, memcg: str, nodes: Sequence[int]) -> bool:
    """May the kernel choose ``task`` for this OOM at all? (scope, not score)"""
    if level == "memcg":
        return is_within(task.cgroup, memcg)
    if level == "numa":
        return task.nodes is None or bool(set(task.nodes) & set(nodes))
    return True


def _preorder_rank(paths: set[str], cgroups: Mapping[str, CgroupInfo], top: str) -> dict[str, int]:
    """The ``css_next_descendant_pre()`` positions of ``paths`` (all within
    ``top``) relative to each other.  Only the cgroups where two of their
    branches part need their children's order looked up: on a live backend
    that is one cgroup's files read, not the whole subtree's."""
    branches: dict[str, set[str]] = {}         # cgroup -> its children on the way to paths
    for path in paths:
        node = path
        while node != top:
            parent = parent_of(node)
            if parent is None:                 # not below top: never the case for the OOM's tasks
                break
            kids = branches.setdefault(parent, set())
            if node in kids:
                break                          # the rest of the way up is known
            kids.add(node)
            node = parent
    rank: dict[str, int] = {}
    stack = [top]
    while stack:
        node = stack.pop()
        rank[node] = len(rank)
        order = list(branches.get(node, ()))
        if len(order) > 1:
            info = cgroups.get(node)
            pos = {c: i for i, c in enumerate(info.children if info is not None else ())}
            order.sort(key=lambda c: (pos.get(c, len(pos)), c))
        stack.extend(reversed(order))
    return rank


def select_bad_process(tasks: Iterable[TaskInfo], cgroups: Mapping[str, CgroupInfo], *,
                       level: str, memcg: str, nodes: Sequence[int],
                       totalpages: int, sharers: SharersFn | None = None) -> Decision:
    """``select_bad_process()`` + ``oom_kill_process()``'s group expansion.

    The evaluation order decides only two things: which of equal scores wins,
    and which exiting task the kernel meets first.  So one pass finds the best
    score, and the order (which needs the cgroup tree for a memcg OOM) is
    worked out for the tied or exiting tasks alone: on a live backend, the
    tree is files to read.
    """
    tasks = tasks if isinstance(tasks, Sequence) else list(tasks)
    best: int | None = None
    tied: list[TaskInfo] = []
    exiting_tasks: list[TaskInfo] = []
    adj_unit = totalpages // 1000            # badness()'s oom_score_adj scale, computed once
    node_set = frozenset(nodes) if level == "numa" else None
    # The loop is eligible() and badness() inlined (it runs once per task, and
    # this is the hot path of a global OOM).
    for task in _in_memcg(tasks, memcg) if level == "memcg" else tasks:
        # Unpacking the named tuple once is cheaper than six attribute reads.
        _pid, _name, _cmd, _cg, rss, swap, pgtables, adj, _uid, _start, exiting, tnodes = task
        if node_set is not None and tnodes is not None and node_set.isdisjoint(tnodes):
            continue
        if exiting:
            exiting_tasks.append(task)
            continue
        if adj <= OOM_SCORE_ADJ_MIN:
            continue
        points = rss // PAGE_SIZE + swap // PAGE_SIZE + pgtables // PAGE_SIZE + adj * adj_unit
        if best is None or points > best:
            best, tied = points, [task]
        elif points == best:
            tied.append(task)
    if exiting_tasks:       # oom_evaluate_task()'s abort: at the first exiting task met
        return Decision(waiting_for=_met(min, exiting_tasks, cgroups, level, memcg))
    if not tied or best is None:
        return Decision()
    # oom_evaluate_task() keeps a later task of equal points: the last one met wins.
    chosen = _met(max, tied, cgroups, level, memcg)
    return kill_decision(chosen, best, cgroups, memcg if level == "memcg" else "/", tasks, sharers)


def _in_memcg(tasks: Iterable[TaskInfo], memcg: str) -> list[TaskInfo]:
    if memcg == "/":
        return list(tasks)
    prefix = memcg + "/"    # is_within(), inlined: this runs once per task
    return [t for t in tasks if t.cgroup == memcg or t.cgroup.startswith(prefix)]


def _met(first_or_last, tasks: list[TaskInfo], cgroups: Mapping[str, CgroupInfo], level: str,
         memcg: str) -> TaskInfo:
    """The first (``min``) or last (``max``) of a few tasks in the order the
    kernel evaluates them (see the module doc), all in the OOM's scope; the
    cgroup tree is looked at only if they are in more than one cgroup."""
    paths = {t.cgroup for t in tasks}
    if level != "memcg" or len(paths) == 1:
        return first_or_last(tasks)     # a TaskInfo is a tuple that starts with its (unique) pid
    rank = _preorder_rank(paths, cgroups, memcg)
    return first_or_last(tasks, key=lambda t: (rank[t.cgroup], t.pid))


def kill_decision(victim: TaskInfo, points: int, cgroups: Mapping[str, CgroupInfo], domain: str,
                  tasks: Iterable[TaskInfo], sharers: SharersFn | None = None) -> Decision:
    """``oom_kill_process()``: the chosen victim, its ``memory.oom.group`` if
    any, and every process sharing a dying one's mm (with ``sharers``)."""
    group = oom_group(victim, cgroups, domain)
    tasks = tasks if isinstance(tasks, Sequence) else list(tasks)
    killed = oom_kill_set(victim, group, tasks, sharers)
    return Decision(victim=victim, points=points, group=group, victims=killed.victims,
                    sharers=killed.sharers)


@dataclass(frozen=True)
class KillSet:
    """Who dies when the OOM killer kills: ``members`` (the victim first, then the
    rest of its ``memory.oom.group``), then ``sharers`` of their mms."""

    group: str | None
    members: tuple[TaskInfo, ...]
    sharers: tuple[TaskInfo, ...] = ()

    @property
    def victims(self) -> tuple[TaskInfo, ...]:
        return self.members + self.sharers


def oom_kill_set(victim: TaskInfo | None, group: str | None, tasks: Sequence[TaskInfo],
                 sharers: SharersFn | None = None,
                 spared: Callable[[int], object] | None = None) -> KillSet:
    """``oom_kill_process()``'s kill, from the chosen ``victim`` (None: the group
    alone, as ``k.kill_cgroup``): ``__oom_kill_process(victim)``, then for the
    ``group``, ``oom_kill_memcg_member()`` for each task of it but ``-1000``
    ones (and exiting ones: ``find_lock_task_mm()`` finds no mm), each with
    ``__oom_kill_process()``'s kill of every process sharing its mm.

    ``tasks`` is where group members and sharers are looked for; ``spared(pid)``
    is true for what may never die (init, oomkit itself: the kernel skips
    ``is_global_init()`` and kernel threads both as members and as sharers).
    The caller has checked the victim itself.
    """
    spare = spared or (lambda _pid: False)
    members = [] if victim is None else [victim]
    if group is not None:
        first = victim.pid if victim is not None else None
        members += sorted((t for t in tasks if t.pid != first and is_within(t.cgroup, group)
                           and t.oom_score_adj > OOM_SCORE_ADJ_MIN and not t.exiting
                           and not spare(t.pid)), key=lambda t: t.pid)
    if sharers is None or not members:
        return KillSet(group, tuple(members))
    dying = {t.pid for t in members}
    pool = [t for t in tasks if t.pid not in dying and not t.exiting and not spare(t.pid)]
    found = {t.pid: t for t in sharers(members, pool) if t.pid not in dying and not spare(t.pid)}
    return KillSet(group, tuple(members), tuple(found[p] for p in sorted(found)))


class GlobalIndex:
    """``select_bad_process()`` for a *global* OOM, kept up to date task by task
    instead of rescanning every task at each OOM (the simulator's hot path).

    The same rules, from the same functions: ``badness()`` with the machine's
    fixed ``totalpages``; an exiting task makes the kernel wait (the first one
    ``for_each_process()`` meets: the lowest pid); among equal scores the task
    evaluated last (the highest pid) wins.  ``tests/unit/test_oom_kill.py``
    checks that it always agrees with ``select_bad_process()``.
    """

    def __init__(self, totalpages: int):
        self.totalpages = totalpages
        self._keys: dict[int, tuple[int, int]] = {}   # pid -> (points, pid), the max() key
        self._exiting: set[int] = set()

    def update(self, task: TaskInfo) -> None:
        pid = task.pid
        self._keys.pop(pid, None)
        self._exiting.discard(pid)
        if task.exiting:
            self._exiting.add(pid)
            return
        points = badness(task, self.totalpages)
        if points is not None:
            self._keys[pid] = (points, pid)

    def remove(self, pid: int) -> None:
        self._keys.pop(pid, None)
        self._exiting.discard(pid)

    def select(self) -> tuple[int | None, int | None, int | None]:
        """(victim pid, its points, pid of an exiting task to wait for)."""
        if self._exiting:
            return None, None, min(self._exiting)
        if not self._keys:
            return None, None, None
        points, pid = max(self._keys.values())
        return pid, points, None


def oom_group(victim: TaskInfo, cgroups: Mapping[str, CgroupInfo], domain: str) -> str | None:
    """``mem_cgroup_get_oom_group()``: the highest oom_group memcg up to ``domain``."""
    if victim.cgroup == "/" or not is_within(victim.cgroup, domain):
        return None
    found = None
    for path in ancestors(victim.cgroup):
        if path == "/":
            break
        info = cgroups.get(path)
        if info is not None and info.oom_group:
            found = path
        if path == domain:
            break
    return found


def oom_tasks(oc) -> Sequence[TaskInfo]:
    """The tasks whose death can relieve this OOM: the OOMing memcg's subtree
    for a memcg OOM (read alone, on a live backend), every task otherwise."""
    if oc.level == "memcg" and oc.memcg != "/":
        return oc.tasks.in_cgroup(oc.memcg)
    return oc.tasks


def decide(oc) -> Decision:
    """The kernel's decision for the OOM described by a context ``oc``."""
    return select_bad_process(oom_tasks(oc), oc.cgroups, level=oc.level, memcg=oc.memcg,
                              nodes=oc.nodes, totalpages=oc.totalpages)
