"""The cgroup v2 backend: the policy decides, the kernel's OOM killer executes.

cgroup v2 cannot pause an OOM (v1's ``oom_kill_disable`` has no v2
counterpart), and at ``memory.max`` the kernel kills within milliseconds of
the failing charge: no daemon wakes in time to act *at* the OOM, and acting
*before* it kills what the kernel would never have killed.  So oomkit keeps a
**standing decision** for every managed memcg that is near its limit, and
lets the kernel carry it out:

* each managed memcg with a ``memory.max`` gets a wake-up point,
  ``memory.high = memory.max - headroom`` (only while its usage is below it:
  writing a lower ``memory.high`` reclaims at once, mm/memcontrol.c
  ``memory_high_write()``).  Crossing it raises a ``high`` event in
  ``memory.events`` (inotify wakes us) and throttles the allocator
  (``mem_cgroup_handle_over_high()``) until we lift it again, which gives a
  fast grower's policy the time to decide;
* the attached chain runs then, as a *rehearsal* (:class:`Rehearsal`): the
  same engine, context and actions, but a ``k.kill_task`` marks its victim
  instead of killing it: ``oom_score_adj`` 1000 (``OOM_SCORE_ADJ_MAX``), so
  ``oom_badness()`` (mm/oom_kill.c: ``points += adj * totalpages / 1000``)
  ranks it above every task whose ``oom_score_adj`` is 0 or less (their
  points never exceed totalpages);
  ``k.kill_cgroup`` also sets ``memory.oom.group`` on the cgroup, which the
  kernel then kills whole (``mem_cgroup_get_oom_group()``); ``k.raise_limit``
  acts at once; ``BACKOFF``, ``PASS`` or a failed chain arm nobody;
* ``memory.high`` is put back and nothing else happens until the kernel's
  real OOM, if it comes: the kernel kills the armed task through its own
  path (OOM reaper, ``memory.events`` oom_kill, its report, oom.group), once;
* managed memcgs nested, several near their limits: one ``oom_score_adj``
  per task serves every OOM, so each decision is placed under every one above
  it that stands, at the values placed for it (:func:`place`), or, where no
  values let each OOM's own choice win there, the memcg with less room
  decides and the other is held back;
* while usage stays in the zone the decision is taken again every
  ``rearm`` seconds and at once when an armed task exits; when usage leaves
  the zone every armed value is restored and the wake-up point set again.

Every value written (``oom_score_adj``, ``memory.high``,
``memory.oom.group``) is held by the daemon's restorer first, so a crash
leaves nothing behind (the watchdog restores it, or the next start).  A
policy sees the *original* ``oom_score_adj`` of an armed task, never our
1000.  The PSI path (``pressure``, off by default) is the opt-in to acting
early: it runs the chain for real, and a kill then is oomkit's own.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import select
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from oomkit.backends.base import Fallback, OOMEvent, Release, relief_for
from oomkit.backends.live import (
    OOM_SCORE_ADJ_MAX,
    OOM_SCORE_ADJ_MIN,
    Dispatcher,
    Holder,
    KernelLog,
    LiveBackend,
    LiveSettings,
    mark_for_kernel,
    remark,
    unmark,
    victims_from_kmsg,
)
from oomkit.context import CgroupInfo, LazyMapping, LazyTasks, Level, TaskInfo, above, ancestors, is_within
from oomkit.engine.chain import Engine
from oomkit.errors import CgroupGone, KernelError, TaskGone
from oomkit.linux import notify, parse, pidfd
from oomkit.oom_kill import PAGE_SIZE, badness
from oomkit.schema import Killed, OOMRecord, ResolvedBy

if TYPE_CHECKING:  # pragma: no cover
    from oomkit.linux.bpftasks import BpfTasks
    from oomkit.linux.cgroupfs import CgroupFS
    from oomkit.linux.procfs import ProcFS

log = logging.getLogger("oomkit")

MiB = 1 << 20
GLOBAL_POLL = 1.0             # seconds between two looks at MemAvailable out of the zone
FORK_DELAY = 0.01             # a new task in the zone: decide again this soon (a burst coalesces)
MEMBERS_POLL = 0.05           # in the zone: how often cgroup.procs is read for tasks moved in
RECENT_MARKS = 10.0           # seconds a marked task's decision is kept after it exited
# memory.events wakes us at every charge that finds a memcg full (a 'max'
# event: mm/memcontrol.c try_charge_memcg()), in it and in every memcg above it
# (memcg_memory_event() counts up the tree), up to 100 times a second each
# (kernel/cgroup/cgroup.c cgroup_file_notify(), CGROUP_FILE_NOTIFY_MIN_INTV): a
# memcg full of page cache sits at memory.max for good.  So a memcg's files are
# read at most this often on such wakes; what a look finds (a kernel kill, usage
# entering or leaving the zone) waits at most this long.  A grower that crossed
# our wake-up point meanwhile is throttled there (mem_cgroup_handle_over_high()).
# An armed task's exit (pidfd), a new task (proc connector, MEMBERS_POLL) and
# rearm wake us on their own.
LOOK_GAP = 0.05


def zone(limit: int, headroom: int | None) -> int:
    """How far below ``memory.max`` a standing decision is kept: ``headroom``,
    or (auto) an eighth of the limit, 4 MiB to 1 GiB; never more than half."""
    size = headroom if headroom is not None else min(max(limit // 8, 4 * MiB), 1024 * MiB)
    return max(0, min(size, limit // 2))


class Wakeup(enum.Enum):
    """What a look at one managed memcg means (see :func:`classify`)."""

    NONE = "none"
    KERNEL_KILLED = "kernel killed"       # oom_kill moved in this cgroup's own tasks
    KERNEL_ACTING = "kernel acting"       # 'oom' moved: the kernel's killer runs here now
    NEAR_LIMIT = "near the limit"         # usage entered the zone: take a decision
    LEFT_ZONE = "left the zone"           # usage left it: restore what was armed


@dataclass(frozen=True)
class Look:
    """One look at a memcg: plain numbers, as read from its files."""

    usage: int
    limit: int | None
    events: Mapping[str, int]          # memory.events now
    before: Mapping[str, int]          # memory.events at the previous look
    local_kills: int = 0               # memory.events.local oom_kill since the previous look


def classify(look: Look, zone_size: int, in_zone: bool) -> Wakeup:
    """Is this wake-up an OOM, the kernel's, or a reason to decide or to
    restore?  ``in_zone``: usage was in the zone at the previous look.  Pure."""
    if look.local_kills > 0:
        return Wakeup.KERNEL_KILLED
    if look.events.get("oom", 0) > look.before.get("oom", 0):
        return Wakeup.KERNEL_ACTING
    near = look.limit is not None and look.usage + zone_size > look.limit
    if near and not in_zone:
        return Wakeup.NEAR_LIMIT
    if in_zone and not near:
        return Wakeup.LEFT_ZONE
    return Wakeup.NONE


def grade(chain: Sequence[TaskInfo], others: Iterable[TaskInfo], totalpages: int,
          slack: int, head: int = 1, top: Callable[[TaskInfo], int] | None = None) -> list[int]:
    """The ``oom_score_adj`` of each task of a decision several deep: ``chain[0]``
    (the chain's victim) at 1000, then each successor (the victim the chain
    chooses once those before it are gone) as high as it can stand while the
    kernel's ``oom_badness()`` (mm/oom_kill.c, :func:`oomkit.oom_kill.badness`)
    still ranks every task before it higher, and it higher than every task of
    ``others`` (at their own values), even after any one task grows by ``slack``
    bytes.  The list stops at the first successor that cannot be placed so (too
    large, or its own value already as high: a mark only raises).  The first
    ``head`` tasks are all the victim's rank (a handler that killed two, the
    first freeing nothing), all at 1000.  ``top``: the highest value each task
    may have (:func:`place`: under the decisions above it), 1000 without.  Pure."""
    if not chain:
        return []
    cap = top or (lambda t: OOM_SCORE_ADJ_MAX)
    out = [min(OOM_SCORE_ADJ_MAX, cap(t)) for t in chain[:head]]
    unit = totalpages // 1000           # badness(): adj * (totalpages / 1000), integer division
    if unit <= 0:
        return out
    grow = -(-slack // PAGE_SIZE)
    points = [badness(t._replace(oom_score_adj=v), totalpages) or 0
              for t, v in zip(chain, out, strict=False)]
    rivals = [b for t in others if (b := badness(t, totalpages)) is not None]
    best_other = max(rivals, default=None)
    for t in chain[len(out):]:
        base = badness(t._replace(oom_score_adj=0), totalpages) or 0
        # below every earlier one, grown by slack: base + grow + adj * unit < min(points)
        adj = min(min(out) - 1, (min(points) - base - grow - 1) // unit, cap(t))
        if adj <= t.oom_score_adj or adj <= 0:
            break
        if best_other is not None and base + adj * unit <= best_other + grow:
            break
        out.append(adj)
        points.append(base + adj * unit)
    return out


@dataclass(frozen=True)
class Stand:
    """One memcg's standing decision as plain numbers, for :func:`place`."""

    memcg: str
    totalpages: int                  # of its OOM: mem_cgroup_get_max() in pages
    room: int                        # memory.max - memory.current: the smaller OOMs first
    slack: int                       # bytes any one task may still grow (as for grade())
    chain: tuple[TaskInfo, ...]      # the tasks it marks, victim(s) first, at their own values
    head: int                        # how many of chain are the victim's rank
    values: tuple[int, ...]          # what grade() gives each when it stands alone
    others: tuple[TaskInfo, ...]     # its OOM's other candidates (not exiting), own values


def place(stands: Sequence[Stand]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The values of every standing decision, so that the kernel's pick at each
    memcg's OOM is that memcg's own choice: one ``oom_score_adj`` per task
    serves every OOM, whose ``oom_badness()`` differ only in totalpages
    (mm/oom_kill.c: the OOMing memcg's mem_cgroup_get_max()) and candidates
    (its subtree).  Outermost first, each memcg is placed under every one above
    it that stands, at the values it was placed at (:func:`_under`); an
    outermost one stands as alone.  Where that fails, the nearest memcg above
    whose inclusion makes it fail blocks it: if this memcg has the less room
    (or as much: it OOMs first) the blocker is held back and everything is
    placed again without it; otherwise this memcg is held back.  Returns the
    values of those that stand, and for each held back the memcg it waits
    for.  A memcg held back for one that is held back itself in the end is
    placed again (that one is pinned held back: it could stand in no plan).
    A function of the stands alone, so a re-take of the same numbers holds
    back the same memcgs (no flapping).  Pure."""
    order = sorted(stands, key=lambda s: (s.memcg.count("/"), s.memcg))     # outer first
    forced: dict[str, str] = {}         # a blocker held back -> the memcg it is held for
    pinned: dict[str, str] = {}         # held back whatever the others do -> its blocker
    # Each pass adds a blocker, or pins a memcg not pinned before (it then blocks
    # nothing): at most n pins, and at most n blockers between two.
    for _ in range((len(order) + 1) ** 2):
        values, held, blocker = _place_once(order, {**forced, **pinned})
        if blocker is not None:
            forced[blocker[0]] = blocker[1]
            continue
        idle = [x for x, memcg in forced.items() if memcg in held]
        if not idle:
            return values, held
        for x in idle:
            memcg = forced.pop(x)
            pinned[memcg] = held[memcg]
    raise AssertionError("place(): no plan")      # pragma: no cover


def _place_once(order: Sequence[Stand], forced: Mapping[str, str]
                ) -> tuple[dict[str, tuple[int, ...]], dict[str, str], tuple[str, str] | None]:
    """One pass of :func:`place` with ``forced`` held back; a blocker to hold
    back (and for whom) ends it early."""
    placed: dict[str, Stand] = {}
    held = dict(forced)
    for s in order:
        if s.memcg in held:
            continue
        outers = [placed[a] for a in reversed(above(s.memcg)) if a in placed]
        values, blocker = _weigh(outers, s)
        if blocker is not None:
            if s.room <= blocker.room:
                return {}, {}, (blocker.memcg, s.memcg)
            held[s.memcg] = blocker.memcg
            continue
        assert values is not None
        placed[s.memcg] = dataclasses.replace(s, values=values)
    return {m: p.values for m, p in placed.items()}, held, None


def _weigh(outers: Sequence[Stand], inner: Stand) -> tuple[tuple[int, ...] | None, Stand | None]:
    """``inner``'s values under ``outers`` (outermost first), or the nearest of
    them whose inclusion leaves no values for it."""
    values, kept = inner.values, list[Stand]()
    for outer in reversed(outers):              # nearest first
        capped = _under([outer, *kept], inner)
        if capped is None:
            return None, outer
        values, kept = capped, [outer, *kept]
    return values, None


def _ceiling(outer: Stand) -> Callable[[TaskInfo], int]:
    """The highest value a task inside ``outer``'s memcg may have so that at its
    OOM, grown by its slack, it stays below every task of its decision (at the
    values placed): a task it marks stands there, not above."""
    unit = outer.totalpages // 1000     # badness(): adj * (totalpages / 1000)
    marks = {t.pid: v for t, v in zip(outer.chain, outer.values, strict=False)}
    floor = min(badness(t._replace(oom_score_adj=v), outer.totalpages) or 0
                for t, v in zip(outer.chain, outer.values, strict=False))
    grow = -(-outer.slack // PAGE_SIZE)

    def top(t: TaskInfo) -> int:
        if t.pid in marks:
            return marks[t.pid]
        base = badness(t._replace(oom_score_adj=0), outer.totalpages) or 0
        return (floor - base - grow - 1) // unit

    return top


def _under(outers: Sequence[Stand], inner: Stand) -> tuple[int, ...] | None:
    """``inner``'s values under every decision of ``outers`` (memcgs above its,
    each at its placed values), or None if it cannot win its own OOM there.
    Each task's ceiling is the least of theirs (:func:`_ceiling`); a task
    several mark stands at the highest of their marks (``Armed.owners``)."""
    if inner.totalpages // 1000 <= 0 or not inner.chain or not outers or any(
            o.totalpages // 1000 <= 0 or not o.chain for o in outers):
        return None
    marks: dict[int, int] = {}
    for o in outers:
        for t, v in zip(o.chain, o.values, strict=False):
            marks[t.pid] = max(v, marks.get(t.pid, v))
    ceilings = [_ceiling(o) for o in outers]

    def top(t: TaskInfo) -> int:
        return min(c(t) for c in ceilings)

    # A successor an outer marks stands at that outer's value: no successor of
    # the inner's there; it and the rest are rivals like any other candidate.
    cut = next((i for i, t in enumerate(inner.chain) if i >= inner.head and t.pid in marks),
               len(inner.chain))
    others = [t._replace(oom_score_adj=max(t.oom_score_adj, marks[t.pid])) if t.pid in marks else t
              for t in (*inner.others, *inner.chain[cut:])]
    values = grade(inner.chain[:cut], others, inner.totalpages, inner.slack, inner.head, top=top)
    heads = list(zip(inner.chain, values[:inner.head], strict=False))
    if len(heads) < min(inner.head, len(inner.chain)) or any(
            v <= t.oom_score_adj and t.pid not in marks for t, v in heads):
        return None             # a mark only raises: the victim cannot be placed under it
    least = min(badness(t._replace(oom_score_adj=v), inner.totalpages) or 0 for t, v in heads)
    rivals = [b for t in others if (b := badness(t, inner.totalpages)) is not None]
    if rivals and least <= max(rivals) + -(-inner.slack // PAGE_SIZE):
        return None             # another candidate of the inner OOM would outrank its victim
    return tuple(values)


# -- which of the kernel's kills are new ------------------------------------------------


class Tally(NamedTuple):
    """:func:`tally`'s answer for one move of ``oom_kill`` in ``memory.events.local``."""

    fresh: list[Release]    # the victims to report now
    ahead: int              # kills reported ahead of the count, for the counts to come
    done: bool              # nothing to report: every victim read was reported already


def tally(victims: Sequence[Release], reported: Container[int], ahead: int, count: int) -> Tally:
    """The kernel's victims read from /dev/kmsg at a move of ``count`` kills,
    against the pids ``reported`` lately and the kills reported ``ahead`` of the
    count before.  Debian's 6.1 counts some kills twice (seen in the VM: one
    death, two moves of the count), and two kills' lines may be read at one
    count (both reported then, the second counted at the next move): a move
    whose victims were all reported, or that an earlier report was ahead of, is
    no new kill.  No victim read (no /dev/kmsg) is still one kill to report,
    nameless."""
    fresh = [v for v in victims if v.pid not in reported]
    if not fresh and (victims or ahead):
        return Tally([], max(0, ahead - count), True)
    return Tally(fresh, max(0, ahead + len(fresh) - count), False)


# -- the backend ----------------------------------------------------------------------


class CgroupV2Backend(LiveBackend):
    """cgroup v2's context and actions.  A real kill here (the opt-in pressure
    path, system-wide OOMs) writes ``cgroup.kill`` for a whole cgroup."""

    version = "v2"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._kernel_ooms: dict[str, int] = {}   # memcg -> its 'oom' count when a chain started

    def note_kernel_count(self, memcg: str) -> None:
        """A chain is about to run for ``memcg``: note how often the kernel's OOM
        killer has run there ('oom', counted by mem_cgroup_out_of_memory())."""
        try:
            self._kernel_ooms[memcg] = self.fs.events(memcg).get("oom", 0)
        except CgroupGone:
            self._kernel_ooms.pop(memcg, None)

    def kernel_acted(self, oom: OOMEvent) -> bool:
        """Has the kernel's OOM killer run in the OOMing memcg since the chain
        started?  Then its kill is the last word and one of ours would be a second."""
        seen = self._kernel_ooms.get(oom.memcg)
        if oom.level != "memcg" or seen is None:
            return False
        try:
            return self.fs.events(oom.memcg).get("oom", 0) > seen
        except CgroupGone:
            return True

    def cgroup_gone(self, path: str) -> None:
        super().cgroup_gone(path)
        for memcg in [m for m in self._kernel_ooms if is_within(m, path)]:
            del self._kernel_ooms[memcg]

    def _swap(self, path: str) -> int:
        try:
            return parse.int_value(self.fs.read(path, "memory.swap.current"))
        except KernelError:
            return 0        # no swap controller (swapaccount=0, CONFIG_SWAP off)

    def kill(self, tasks: Sequence[TaskInfo], oom: OOMEvent, *, cgroup: str | None = None) -> list[Release]:
        """A whole-cgroup kill writes ``cgroup.kill`` (Linux 5.14+) when every task
        in it may die; otherwise task by task, skipping -1000 as the kernel does.
        Nothing, if the kernel's OOM killer acted since the chain started."""
        if self.kernel_acted(oom):
            log.info("oomkit: the kernel's OOM killer acted in %s first; not killing", oom.memcg)
            return []
        inside = [t for t in tasks if cgroup is not None and is_within(t.cgroup, cgroup)]
        if cgroup is None or self.dry_run or not self._all_killable(cgroup, inside):
            return super().kill(tasks, oom, cgroup=cgroup)
        try:
            self.fs.write(cgroup, "cgroup.kill", "1")
        except KernelError as exc:
            log.debug("oomkit: cgroup.kill of %s failed (%s): killing task by task", cgroup, exc)
            return super().kill(tasks, oom, cgroup=cgroup)
        # Processes outside it that share a dying mm die by pidfd, as the kernel kills them.
        outside = [t for t in tasks if not is_within(t.cgroup, cgroup)]
        return [Release(t.pid, t.name, t.cgroup, t.rss, relief_for(oom, t.cgroup, t.rss))
                for t in inside] + super().kill(outside, oom)

    def _all_killable(self, cgroup: str, tasks: Sequence[TaskInfo]) -> bool:
        every = {pid for _path, pids in self.fs.subtree_procs(cgroup) for pid in pids}
        return every == {t.pid for t in tasks} and not any(self.protected(p) for p in every)

    def kernel_fallback(self, oom: OOMEvent) -> Fallback:
        return Fallback(note="cgroup v2: the kernel's OOM killer acts at memory.max if the "
                             "limit is reached")


class Rehearsal:
    """The engine's backend for a standing decision: everything as live, except
    that a kill *chooses* (the kernel carries it out at the real OOM), and the
    "OOM condition" is usage in the zone under ``memory.max``."""

    def __init__(self, live: CgroupV2Backend):
        self.live = live
        self.clock = live.clock
        self.zone_size = 0
        self.chosen: list[tuple[list[TaskInfo], str | None]] = []
        self.sharers: dict[int, tuple[int, ...]] = {}    # a chosen pid -> the pids sharing its mm
        self.gone: frozenset[int] = frozenset()          # a successor's rehearsal: these are dead
        # What a take reads once, for all its rehearsals (one consistent view, and
        # a take blocks the loop: under TCG each read of meminfo or a cgroup's
        # files costs a millisecond or more): its tasks and cgroups by scope, its
        # totalpages by OOM.  A raise at the headroom (the first rehearsal's, real)
        # drops the cgroups and totalpages: the limit they hold has moved.
        self._read: dict[str, LazyTasks] = {}
        self._cgroups: dict[str, LazyMapping[CgroupInfo]] = {}
        self._pages: dict[tuple[str, str], int] = {}

    def begin(self, zone_size: int, gone: Iterable[int] = ()) -> None:
        """A new rehearsal; with ``gone``, of the OOM that follows their deaths
        (a successor's, in the same take): they are not in the context, nothing
        real is done, and the tasks, cgroups and totalpages are the ones the
        take's first rehearsal read."""
        self.zone_size, self.chosen, self.sharers = zone_size, [], {}
        self.gone = frozenset(gone)
        if not self.gone:
            self._read, self._cgroups, self._pages = {}, {}, {}

    def cgroups(self, oom, scope) -> LazyMapping[CgroupInfo]:
        cgroups = self._cgroups.get(scope)
        if cgroups is None:
            cgroups = self._cgroups[scope] = self.live.cgroups(oom, scope)
        return cgroups

    def tasks(self, oom, scope) -> LazyTasks:
        tasks = self._read.get(scope)
        if tasks is None:
            tasks = self._read[scope] = self.live.tasks(oom, scope)
        gone = self.gone
        if not gone:
            return tasks
        # A successor's tasks are the take's read less the dead, given read already
        # where the victim's rehearsal read them (no I/O: a filter): the same policy
        # reads them again, and a worker then gets them with the call instead of
        # asking for them, a round trip saved per successor.
        whole = tasks.loaded(scope)
        if whole is not None:
            view = LazyTasks(tuple(t for t in whole if t.pid not in gone))
            len(view)
            return view
        view = LazyTasks(lambda: [t for t in tasks if t.pid not in gone],
                         lambda path: [t for t in tasks.in_cgroup(path) if t.pid not in gone])
        memcg = oom.memcg if oom is not None else scope
        if memcg != scope and is_within(memcg, scope) and tasks.loaded(memcg) is not None:
            view.in_cgroup(memcg)
        return view

    def task(self, pid):
        return self.live.task(pid)

    def read(self, oom: OOMEvent, memcg: str) -> tuple[TaskInfo, ...]:
        """``memcg``'s tasks as this take's rehearsals read them (read now if none did)."""
        for scope, tasks in self._read.items():
            if is_within(memcg, scope):
                return tasks.in_cgroup(memcg)
        return tuple(self.live.tasks(oom, memcg))

    def totalpages(self, oom) -> int:
        key = (str(oom.level), oom.memcg)
        pages = self._pages.get(key)
        if pages is None:
            pages = self._pages[key] = self.live.totalpages(oom)
        return pages

    def headroom(self, path) -> int:
        """None in a successor's rehearsal: a raise there would be real, now."""
        return 0 if self.gone else self.live.headroom(path)

    def protected(self, pid) -> str | None:
        return self.live.protected(pid)

    def in_flight(self) -> tuple[int, ...]:
        return self.live.in_flight()

    def set_limit(self, path, limit) -> None:
        if self.gone:       # refused before this (no headroom): never raise for a hypothesis
            raise KernelError(f"{path}: no raise in a successor's rehearsal")
        self.live.set_limit(path, limit)         # a raise at the headroom is real
        self._cgroups, self._pages = {}, {}

    def mm_sharers(self, dying: Sequence[TaskInfo], pool: Sequence[TaskInfo]) -> list[TaskInfo]:
        return self.live.mm_sharers(dying, pool)

    def kill(self, tasks: Sequence[TaskInfo], oom: OOMEvent, *, cgroup: str | None = None) -> list[Release]:
        """Choose, do not kill: what the kernel will release when it kills them.
        Only the victim (``tasks[0]``), or the group, is marked: the kernel kills
        the processes sharing a dying mm itself (``__oom_kill_process()``), and a
        marked sharer in another cgroup could win its pick with another group."""
        marked = tasks[:1] if cgroup is None else [t for t in tasks if is_within(t.cgroup, cgroup)]
        chosen = [t for t in marked if not self.live.protected(t.pid)]
        if chosen:
            self.chosen.append((chosen, cgroup))
            if cgroup is None:      # the kernel kills these with it, and reports either
                self.sharers[chosen[0].pid] = tuple(t.pid for t in tasks[1:])
        return [Release(t.pid, t.name, t.cgroup, t.rss, relief_for(oom, t.cgroup, t.rss))
                for t in tasks if not self.live.protected(t.pid)] if chosen else []

    def condition_gone(self, oom: OOMEvent) -> bool:
        """Out of the zone (a raise_limit moved memory.max up, or usage fell)."""
        if oom.level is not Level.MEMCG:
            return self.live.proc.meminfo().get("MemAvailable", 0) >= self.zone_size
        try:
            limit = self.live.fs.limit(oom.memcg)
            return limit is None or self.live.fs.usage(oom.memcg) + self.zone_size <= limit
        except CgroupGone:
            return True

    def wait_for_relief(self, oom: OOMEvent, timeout: float) -> bool:
        """A BACKOFF arms nobody: at the real OOM the kernel waits for an exiting
        victim itself (mm/oom_kill.c oom_evaluate_task(): tsk_is_oom_victim)."""
        return True

    def kernel_fallback(self, oom: OOMEvent) -> Fallback:
        return Fallback(note="no standing decision: the kernel's OOM killer decides at memory.max")


# -- standing decisions -------------------------------------------------------------------


@dataclass
class Armed:
    """One task marked for the kernel: what to put back."""

    pid: int
    name: str
    cgroup: str
    original: int            # its oom_score_adj before us
    starttime: int           # clock ticks, /proc/PID/stat field 22 (pid reuse guard)
    by: str                  # "policy:<attached cgroup>"
    value: int = OOM_SCORE_ADJ_MAX                  # what we wrote
    # the memcgs whose decision it is -> the value each wants (the highest stands)
    owners: dict[str, int] = field(default_factory=dict)
    fd: int | None = None    # pidfd: readable when it exits


@dataclass
class Episode:
    """One managed memcg with a limit: its wake-up point and standing decision
    (the facts of one v2 OOM, in one place, as mm/oom_kill.c's oom_control)."""

    memcg: str                       # "/" for the machine (a global OOM)
    level: Level = Level.MEMCG
    events: dict[str, int] = field(default_factory=dict)   # memory.events at the last look
    local_kills: int = 0                                   # memory.events.local oom_kill
    high: str | None = None          # the memory.high we replaced with a wake-up point
    armed: set[int] = field(default_factory=set)          # pids of the decision
    # pid -> the processes sharing its mm: the kernel writes their oom_score_adj
    # with it (fs/proc/base.c __set_oom_adj), may report any of them as its
    # victim, and kills them all (mm/oom_kill.c __oom_kill_process).
    companions: dict[int, tuple[int, ...]] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)  # cgroup -> original memory.oom.group
    # The decision, several deep: the rehearsal that chose the victim, then each
    # successor's (the chain's choice once those before it are dead).
    ranks: list[OOMRecord] = field(default_factory=list)
    records: dict[int, OOMRecord] = field(default_factory=dict)  # a marked pid (or sharer) -> its rank
    decided_at: str | None = None
    next_take: float | None = None   # when to look again (in the zone; always for "/")
    in_zone: bool = False            # usage was near the limit at the last look
    # In the zone: its processes at the last read, and when to read them again.
    # A task moved in (systemd scopes, runc, docker exec) makes no fork event
    # there, and may be the policy's new choice.
    members: frozenset[int] = frozenset()
    next_poll: float | None = None
    looked: float | None = None      # when its files were last read (_look)
    next_look: float | None = None   # a memory.events wake put off to then (LOOK_GAP)
    # Nested managed memcgs (place()): the decision as numbers (its values
    # alone), the ranks it was armed from (written again when what stands
    # above it changes), while it is held back for another memcg's that OOMs
    # first, that memcg, and the values the plan placed it at.
    stand: Stand | None = None
    last: list[Rank] | None = None
    held: str | None = None
    placed: tuple[int, ...] | None = None      # the values written for stand.chain

    @property
    def record(self) -> OOMRecord | None:
        """The victim's rank: what the kernel's next OOM here carries out."""
        return self.ranks[0] if self.ranks else None

    @property
    def is_armed(self) -> bool:
        """Some task stands marked by a decision of this memcg's."""
        return bool(self.ranks or self.records)

    def retire(self, rec: OOMRecord, pids: Iterable[int]) -> None:
        """``rec``'s rank was carried out on ``pids`` (its record written): the next
        rank leads.  Another task the same rehearsal chose (a handler that killed
        two) stays marked, and a kill of it later is that decision's again."""
        self.ranks = [r for r in self.ranks if r is not rec]
        for pid in pids:
            self.records.pop(pid, None)


@dataclass
class Rank:
    """One rehearsal's outcome: its record and what it chose."""

    record: OOMRecord
    chosen: list[tuple[list[TaskInfo], str | None]]
    sharers: dict[int, tuple[int, ...]]

    @property
    def victims(self) -> list[TaskInfo]:
        """The tasks it chose one by one ([] if it chose a group, or none)."""
        if not self.chosen or any(cg is not None or len(ts) != 1 for ts, cg in self.chosen):
            return []
        return [ts[0] for ts, _cg in self.chosen]

    @property
    def victim(self) -> TaskInfo | None:
        """The one task it chose (None: a group, several, or none)."""
        victims = self.victims
        return victims[0] if len(victims) == 1 else None

    def dying(self) -> set[int]:
        """Who dies when the kernel carries it out: its tasks and their mm sharers."""
        pids = {t.pid for tasks, _cg in self.chosen for t in tasks}
        return pids.union(*self.sharers.values())


class _Plan(NamedTuple):
    """:func:`place` over the decisions in ``top``'s subtree."""

    top: str
    values: dict[str, tuple[int, ...]]      # memcg -> its values, placed
    held: dict[str, str]                    # memcg -> the memcg it is held back for


@dataclass(frozen=True)
class _Gone:
    """A marked task that exited or was put back, and the decision that marked it."""

    by: str
    record: OOMRecord
    decided_at: str | None
    level: Level
    memcg: str
    at: float
    # Put back (not exited): the decision's only if the kernel's report shows the
    # value we had set, i.e. it picked the task before we put it back.
    value: int | None = None


def open_stack(fs: CgroupFS, proc: ProcFS, settings: LiveSettings, daemon: Dispatcher,
               restorer: Holder, bpf: BpfTasks | None) -> V2Stack:
    """cgroup v2's live stack: the backend, standing decisions and their wake-ups."""
    backend = CgroupV2Backend(fs, proc, dry_run=settings.dry_run, tick=daemon.heartbeat,
                              proc_cache=settings.proc_cache, bpf=bpf)
    return V2Stack(backend, daemon, restorer, settings)


class V2Stack:
    """What wakes us on v2 (``memory.events`` changes, armed tasks' exits, the
    opt-in PSI triggers) and the standing decisions they keep."""

    def __init__(self, backend: CgroupV2Backend, daemon: Dispatcher, restorer: Holder,
                 settings: LiveSettings):
        self.backend, self.fs, self.daemon, self.restorer = backend, backend.fs, daemon, restorer
        self.settings = settings
        self.rehearsal = Rehearsal(backend)
        self.decider: Engine | None = None
        self.episodes: dict[str, Episode] = {}
        # cgroup -> the managed memcgs strictly below it, in take order (as in
        # episodes): a take places and settles only the decisions of its own
        # subtree, without a scan of every managed memcg (_family()).
        self._below: dict[str, dict[str, None]] = {}
        self.global_ep: Episode | None = None       # the root attachment's, for global OOMs
        self.watched: set[str] = set()
        self.armed: dict[int, Armed] = {}
        self.inotify = notify.Inotify()
        self.watches: dict[int, str] = {}           # memory.events watch -> cgroup
        self._psi: dict[str, int] = {}              # cgroup -> PSI trigger fd (opt-in)
        self._kmsg_backlog: list[str] = []
        self.kmsg = KernelLog()
        self._reported: dict[int, float] = {}       # victim pid -> when reported (6.1 counts twice)
        # cgroup -> kills reported ahead of memory.events.local's count (their
        # kmsg lines were read with an earlier count's): later counts use them up
        self._ahead: dict[str, int] = {}
        self._forks: notify.ProcEvents | None = None   # new processes, while a memcg is in its zone
        self._gone: dict[int, _Gone] = {}           # marked tasks that exited: their decision
        self._forks_failed = False
        self._registered = False

    # -- the LiveStack interface ---------------------------------------------------------

    def paths(self) -> set[str]:
        return set(self.watched)

    def bind(self, engine: Engine) -> None:
        """Rehearsals run the daemon's attachments (failures, backoff budgets and
        ejection shared) on the rehearsal backend, without the release log line."""
        decider = Engine(self.rehearsal, engine.settings, tick=self.daemon.heartbeat)
        decider.attachments = engine.attachments
        decider.ejected = engine.ejected
        self.decider = decider

    def reconfigure(self, settings: LiveSettings) -> None:
        """Take every cgroup again with the new settings (zone, PSI, dry run)."""
        wanted = set(self.watched)
        for path in list(self.watched):
            self.release(path)
        self.settings = settings
        self.backend.dry_run = settings.dry_run
        self.backend.task_cache.resize(settings.proc_cache)
        self.sync(wanted)

    def settle(self, oom: OOMEvent, record: OOMRecord, engine: Engine,
               commit: Callable[[], None]) -> None:
        """A chain run for real (pressure, system-wide): when the kernel's killer
        took the OOM meanwhile, its kill is reported on its own: no record."""
        if record.resolved_by == "kernel" and not record.memory_freed and self.backend.kernel_acted(oom):
            log.info("oomkit: the kernel's OOM killer acted in %s while the chain ran", oom.memcg)
            return
        commit()

    def next_timer(self) -> float | None:
        times = [t for e in self._all_episodes() for t in (e.next_take, e.next_poll, e.next_look)
                 if t is not None]
        return max(0.0, min(times) - self.backend.clock.now()) if times else None

    def on_timer(self) -> None:
        self._watch_forks()
        now = self.backend.clock.now()
        g = self.global_ep
        if g is not None and g.next_take is not None and g.next_take <= now:
            self._look_global()
        for ep in list(self.episodes.values()):
            if ep.in_zone and ep.next_poll is not None and ep.next_poll <= now:
                self._poll_members(ep, now)
            if any(t is not None and t <= now for t in (ep.next_take, ep.next_look)):
                self._look(ep.memcg)

    def _poll_members(self, ep: Episode, now: float) -> None:
        """A task moved into a memcg in its zone: take the decision again now."""
        ep.next_poll = now + MEMBERS_POLL
        before, pids = ep.members, self._members(ep)
        if pids - before:
            log.debug("oomkit: %s: new tasks %s: deciding again", ep.memcg, sorted(pids - before))
            ep.next_take = now

    def _members(self, ep: Episode) -> frozenset[int]:
        try:
            ep.members = frozenset(p for _cg, pids in self.fs.subtree_procs(ep.memcg) for p in pids)
        except CgroupGone:
            log.debug("oomkit: %s gone while its tasks were read", ep.memcg)
        return ep.members

    # -- new tasks in the zone: the decision may change -----------------------------------

    def _watch_forks(self) -> None:
        """Listen to the proc connector while some memcg is in its zone: a new
        task there may be the policy's new choice (newest-task, a fork burst), and
        the rearm timer alone would leave the kernel a stale mark for up to
        ``rearm``."""
        wanted = any(ep.in_zone for ep in self._all_episodes())
        if wanted and self._forks is None and not self._forks_failed:
            try:
                self._forks = notify.ProcEvents()
            except KernelError as exc:
                self._forks_failed = True
                log.info("oomkit: no proc connector (%s): new tasks near a limit are seen at "
                         "the next take (every %g s)", exc, self.settings.rearm)
                return
            self.daemon.register(self._forks.fileno(), self._on_forks)
        elif not wanted and self._forks is not None:
            self._close_forks()

    def _close_forks(self) -> None:
        if self._forks is not None:
            self.daemon.unregister(self._forks.fileno(), close=False)
            self._forks.close()
            self._forks = None

    def _on_forks(self, mask: int) -> None:
        if self._forks is None:
            return
        children = [child for _parent, child in self._forks.forks()]
        zoned = [ep for ep in self._all_episodes() if ep.in_zone]
        if not children or not zoned:
            return
        soon = self.backend.clock.now() + FORK_DELAY
        for child in children:
            try:
                cgroup = self.backend.proc.cgroup(child, "v2")
            except TaskGone:
                continue        # gone already: no new choice
            for ep in zoned:
                if cgroup is not None and is_within(cgroup, ep.memcg):
                    ep.next_take = min(ep.next_take or soon, soon)

    def _all_episodes(self) -> list[Episode]:
        return list(self.episodes.values()) + ([self.global_ep] if self.global_ep else [])

    # -- the machine: a standing decision for global OOMs --------------------------------

    def pressure_file(self, cgroup: str) -> Path | None:
        if cgroup == "/":
            return Path(self.backend.proc.root) / "pressure" / "memory"
        return self.fs.path(cgroup, "memory.pressure")

    def watch_global(self, on: bool) -> bool:
        """The root attachment handles global OOMs: keep its standing decision
        while MemAvailable is within the zone (auto: 1/8 of MemTotal, at most
        1 GiB), looked at every second (every ``rearm`` in the zone).  True: the
        daemon needs no early (pressure) path of its own."""
        if on and self.global_ep is None:
            self.global_ep = Episode("/", Level.GLOBAL, next_take=self.backend.clock.now())
        elif not on and self.global_ep is not None:
            self._disarm_global()
        return True

    def _look_global(self) -> None:
        ep = self.global_ep
        if ep is None:
            return
        info = self.backend.proc.meminfo()
        total = info.get("MemTotal", 0)
        size = zone(total, None)
        look = Look(usage=total - info.get("MemAvailable", total), limit=total, events={}, before={})
        wake = classify(look, size, ep.in_zone)
        now = self.backend.clock.now()
        if wake is Wakeup.LEFT_ZONE:
            self._disarm_global()
        elif wake is Wakeup.NEAR_LIMIT or ep.in_zone:
            ep.in_zone = True
            self._decide(ep, size)
        ep.next_take = now + (self.settings.rearm if ep.in_zone else GLOBAL_POLL)

    def _disarm_global(self) -> None:
        """The machine has room again: its decision goes, the memcgs' come back."""
        ep = self.global_ep
        if ep is None:
            return
        was = ep.is_armed
        self._unarm(ep)
        ep.in_zone = False
        if was:
            now = self.backend.clock.now()
            for other in self.episodes.values():
                if other.in_zone:
                    other.next_take = now

    def flush(self) -> None:
        """Nothing is batched on v2: each wake-up was handled as it came."""

    def sync(self, wanted: Iterable[str]) -> None:
        if not self._registered:
            self.daemon.register(self.inotify.fileno(), self._on_inotify)
            self._registered = True
        wanted = set(wanted)
        for path in [p for p in self.watched if p not in wanted]:
            self.release(path)
        for path in sorted(wanted - self.watched):
            try:
                self._take(path)
            except CgroupGone:
                self.release(path)

    def close(self) -> None:
        self._close_forks()
        self.watch_global(False)
        self.global_ep = None
        for path in sorted(self.watched, key=lambda p: -p.count("/")):
            self.release(path)
        if self._registered:
            self.daemon.unregister(self.inotify.fileno(), close=False)
            self._registered = False
        self.inotify.close()
        self.kmsg.close()

    # -- taking and releasing a cgroup --------------------------------------------------

    def _take(self, path: str) -> None:
        # /dev/kmsg is read from where it stood when we started watching: a kernel
        # kill's "Killed process" line is written before we wake for it.
        self.kmsg.fd()
        self.watched.add(path)
        ep = Episode(path, events=self.fs.events(path),
                     local_kills=self.fs.events(path, local=True).get("oom_kill", 0))
        self.episodes[path] = ep
        for outer in above(path):
            self._below.setdefault(outer, {})[path] = None
        wd = self.inotify.add_watch(self.fs.path(path, "memory.events"), notify.IN_MODIFY)
        self.watches[wd] = path
        self._take_pressure(path)
        self._look(path)

    def _take_pressure(self, path: str) -> None:
        """The opt-in: a PSI trigger that runs the chain for real, before the limit."""
        if self.settings.pressure is None:
            return
        try:
            fd = notify.psi_trigger(self.fs.path(path, "memory.pressure"), str(self.settings.pressure))
        except KernelError as exc:
            if not self.fs.exists(path):
                raise CgroupGone(str(exc)) from exc
            log.warning("oomkit: no PSI trigger on %s (%s): no early action there", path, exc)
            return
        self._psi[path] = fd
        self.daemon.register(fd, self._on_pressure, path, events=select.EPOLLPRI)

    def release(self, path: str) -> None:
        """Stop watching ``path``: put back all we changed there."""
        self.watched.discard(path)
        ep = self.episodes.pop(path, None)
        for outer in above(path):
            below = self._below.get(outer)
            if below is not None:
                below.pop(path, None)
                if not below:
                    del self._below[outer]
        if ep is not None:
            self._disarm(ep)
            self._lift(ep)
        fd = self._psi.pop(path, None)
        if fd is not None:
            self.daemon.unregister(fd)
        for wd in [w for w, p in self.watches.items() if p == path]:
            del self.watches[wd]
            try:
                self.inotify.rm_watch(wd)
            except KernelError as exc:
                log.debug("oomkit: inotify watch on %s already gone: %s", path, exc)

    # -- one look at a memcg ------------------------------------------------------------

    def _on_inotify(self, mask: int) -> None:
        woken: dict[str, None] = {}     # each memcg looked at once per read, in order
        for wd, ev_mask, _cookie, _name in self.inotify.read():
            if ev_mask & notify.IN_Q_OVERFLOW:
                log.warning("oomkit: inotify queue overflowed: looking at every managed cgroup")
                for path in list(self.episodes):
                    self._look(path)
                continue
            watched = self.watches.get(wd)
            if ev_mask & notify.IN_IGNORED:
                self.watches.pop(wd, None)
            elif watched is not None:
                woken[watched] = None
        for path in woken:
            ep = self.episodes.get(path)
            if ep is not None:
                self._woken(ep)

    def _woken(self, ep: Episode) -> None:
        """memory.events changed: look now, or LOOK_GAP after the last look (a
        memcg at memory.max, or below one, counts a 'max' event per charge)."""
        now = self.backend.clock.now()
        if ep.looked is not None and now < ep.looked + LOOK_GAP:
            ep.next_look = ep.looked + LOOK_GAP
            return
        self._look(ep.memcg)

    def _look(self, path: str) -> None:
        """Read ``path``'s numbers, classify, act."""
        ep = self.episodes.get(path)
        if ep is None:
            return
        ep.looked, ep.next_look = self.backend.clock.now(), None
        try:
            look = self._read(ep)
        except CgroupGone:
            log.debug("oomkit: %s is gone; its removal is handled by the tree's inotify", path)
            return
        ep.events, ep.local_kills = dict(look.events), ep.local_kills + look.local_kills
        size = zone(look.limit, self.settings.headroom) if look.limit is not None else 0
        wake = classify(look, size, ep.in_zone)
        log.debug("oomkit: %s: usage %d, limit %s: %s", path, look.usage, look.limit, wake.value)
        if wake is Wakeup.KERNEL_KILLED:
            self._report_kernel_kill(path, look.local_kills)
        elif wake is Wakeup.KERNEL_ACTING:
            return          # its kill follows (oom_kill), reported then
        elif wake is Wakeup.LEFT_ZONE:
            self._disarm(ep)
        elif wake is Wakeup.NEAR_LIMIT or (ep.in_zone and ep.next_take is not None
                                           and ep.next_take <= self.backend.clock.now()):
            ep.in_zone = True
            self._decide(ep, size)
        self._set_wake_point(ep, look.limit, size)

    def _read(self, ep: Episode) -> Look:
        fs = self.fs
        local = fs.events(ep.memcg, local=True).get("oom_kill", 0)
        return Look(usage=fs.usage(ep.memcg), limit=fs.limit(ep.memcg),
                    events=fs.events(ep.memcg), before=ep.events,
                    local_kills=max(0, local - ep.local_kills))

    # -- the wake-up point ----------------------------------------------------------------

    def _set_wake_point(self, ep: Episode, limit: int | None, size: int) -> None:
        """memory.high = memory.max - zone while usage is below it; lifted in the
        zone, where a lasting memory.high would throttle a task the kernel would
        never kill (the timer looks again instead)."""
        if ep.in_zone or limit is None or size <= 0:
            self._lift(ep)
            return
        point = limit - size
        try:
            if ep.high is None:
                original = self.fs.read(ep.memcg, "memory.high").strip()
                user = parse.limit_v2(original)
                if user is not None and user <= point:
                    return          # the admin's own memory.high wakes us sooner already
                if self.fs.usage(ep.memcg) >= point:
                    return          # writing it now would reclaim at once: next look arms
                self.restorer.hold(str(self.fs.path(ep.memcg, "memory.high")), original)
                ep.high = original
            self.fs.write(ep.memcg, "memory.high", str(point))
        except CgroupGone:
            log.debug("oomkit: %s gone while setting its wake-up point", ep.memcg)

    def _lift(self, ep: Episode) -> None:
        if ep.high is None:
            return
        path = str(self.fs.path(ep.memcg, "memory.high"))
        try:
            self.fs.write(ep.memcg, "memory.high", ep.high)
        except KernelError as exc:
            log.debug("oomkit: memory.high of %s not restored (%s): gone with its cgroup", ep.memcg, exc)
        self.restorer.drop(path)
        ep.high = None

    # -- deciding and arming ----------------------------------------------------------------

    def _decide(self, ep: Episode, size: int) -> None:
        """Rehearse the chain for ``ep.memcg`` and arm what it chose, then its
        successors: a victim that frees little (a task just forked) leaves the
        memcg at its limit, and the kernel's next OOM can come microseconds
        later, before any re-take: the next choice must stand already."""
        oom = OOMEvent(ep.level, ep.memcg)
        now = self.backend.clock.now()
        ep.next_take = now + self.settings.rearm
        if self.decider is None or not self.decider.chain(oom) or self._suspended(ep):
            self._unarm(ep)
            return
        if ep.level is Level.MEMCG:
            self._members(ep)           # what this decision saw; a newcomer retakes it
            ep.next_poll = now + MEMBERS_POLL
        first = self._rehearse(oom, size, ())
        if first.record.limits and not first.chosen:
            self._raised(ep, oom, first.record)
            return
        if not first.chosen or first.record.resolved_by != "policy":
            log.debug("oomkit: %s: no standing decision (%s)", ep.memcg, first.record.resolved_by)
            self._unarm(ep)
            return
        ranks = [first]
        # The machine's decision stays one deep: its successors would be global
        # favourites across every memcg for as long as it stands.
        depth = self.settings.depth if ep.level is Level.MEMCG else 1
        while len(ranks) < depth and ranks[-1].victims:
            nxt = self._rehearse(oom, size, set().union(*(r.dying() for r in ranks)))
            if nxt.victim is None or nxt.record.resolved_by != "policy":
                break
            ranks.append(nxt)
        self._arm(ep, ranks)

    def _rehearse(self, oom: OOMEvent, size: int, gone: Iterable[int]) -> Rank:
        assert self.decider is not None
        self.rehearsal.begin(size, gone)
        record = self.decider.handle(oom)
        return Rank(record, self.rehearsal.chosen, self.rehearsal.sharers)

    def _suspended(self, ep: Episode) -> bool:
        """While the machine is near its own OOM, the root attachment's decision
        is the only one marked: a task marked for a memcg would also be the
        kernel's favourite at a global OOM (oom_badness() is the same score)."""
        g = self.global_ep
        if ep.level is Level.GLOBAL or g is None or not g.is_armed:
            return False
        log.debug("oomkit: %s: decision held back while the machine's stands", ep.memcg)
        return True

    def _raised(self, ep: Episode, oom: OOMEvent, record: OOMRecord) -> None:
        """A raise_limit at the headroom is a real release: recorded now."""
        for lim in record.limits:
            log.warning("oomkit: raised memory.max of %s from %s to %s", lim.cgroup,
                        lim.old, lim.new)
        self.daemon.write(record, oom)
        self._unarm(ep)

    def _arm(self, ep: Episode, ranks: list[Rank]) -> None:
        """Mark the victim 1000 (a group: its largest task, and oom.group) and each
        successor as :func:`grade` places it, or, nested with other managed
        memcgs' standing decisions, as :func:`place` places it (or hold it
        back); put back what no longer stands; then bring the nested decisions
        to the same plan (:meth:`_settle`)."""
        firsts, _groups = _firsts(ranks)
        stand = self._stand(ep, ranks, list(firsts.values()))
        ep.stand, ep.last = stand, ranks
        plan = self._plan(ep.memcg)
        if ep.memcg in plan.held:
            self._hold(ep, plan.held[ep.memcg])
        else:
            self._write(ep, ranks, plan.values.get(ep.memcg))
        self._settle(plan, done=ep)
        if ep.level is Level.GLOBAL:
            for other in self.episodes.values():
                if other.is_armed or other.stand is not None:
                    self._unarm(other, replan=False)    # the machine's decision alone stands now

    def _write(self, ep: Episode, ranks: list[Rank], values: Sequence[int] | None,
               replaced: bool = False) -> None:
        """Write ``ranks`` at ``values`` (the plan's; None: 1000 for the victim(s)
        and :func:`grade`'s successors as alone, a decision not nested).
        ``replaced``: the same decision placed anew (its ``decided_at`` kept)."""
        before = {p: self.armed[p].value for p in ep.armed if p in self.armed}
        firsts, groups = _firsts(ranks)
        if values is None:
            values = [OOM_SCORE_ADJ_MAX] * len(firsts)
        elif ep.stand is not None and tuple(values) != ep.stand.values:
            log.debug("oomkit: %s: values %s under the decisions above it (alone: %s)",
                      ep.memcg, list(values), list(ep.stand.values))
        ep.held, ep.placed = None, tuple(values) if ep.stand is not None else None
        want, placed = _wanted(ranks, firsts, values)
        try:
            self._fix_strays(ep, self.rehearsal.read(OOMEvent(Level.MEMCG, ep.memcg), ep.memcg))
        except CgroupGone:
            log.debug("oomkit: %s gone while its strays were looked for", ep.memcg)
        # The new victim first, the stale marks last: the kernel may OOM between
        # two writes, and must find the chain's choice at 1000 at every instant.
        for pid, (t, value, rank) in want.items():
            by_pid = dict((p, b) for b, p in self._choosers(rank.record))
            self._mark(t, ep.memcg, by_pid.get(pid) or f"policy:{rank.record.handlers[-1].cgroup}",
                       value)
        for pid in ep.armed - set(want):
            self._unmark(pid, ep.memcg)
        ep.armed = {pid for pid in want if pid in self.armed}
        ep.companions = {pid: want[pid][2].sharers.get(pid, ()) for pid in ep.armed}
        ep.records = {}
        for pid in ep.armed:
            for p in (pid, *ep.companions[pid]):
                ep.records.setdefault(p, want[pid][2].record)
        ep.ranks = [r.record for r in placed]
        ep.decided_at = ep.decided_at if replaced and ep.decided_at else _now_iso()
        for rank in placed:
            rank.record.armed = sorted(p for p in ep.armed if want[p][2] is rank)
        self._set_groups(ep, groups)
        now_armed = {p: self.armed[p].value for p in ep.armed}
        if now_armed != before:
            names = ", ".join(f"pid {p} ({self.armed[p].name}) at {v}" for p, v in now_armed.items())
            log.info("oomkit: %s near its limit: %s armed for the kernel's OOM killer, by %s",
                     ep.memcg, names or "nobody", ranks[0].record.handlers[-1].policy)

    def _stand(self, ep: Episode, ranks: list[Rank], firsts: list[TaskInfo]) -> Stand | None:
        """The decision as numbers, over the memcg as this take read it, with
        :func:`grade`'s values when it stands alone: the others (not exiting)
        at their own values (a nested memcg's marks are :func:`place`'s to
        weigh), room to grow = the limit less every task's memory (growth past
        it reclaims page cache, not rss).  None: the machine's, or no limit."""
        if ep.level is not Level.MEMCG or not firsts:
            return None
        oom = OOMEvent(Level.MEMCG, ep.memcg)
        chain = list(firsts)
        if len(ranks) > 1 and len(firsts) == len(ranks[0].victims):
            for r in ranks[1:]:
                if r.victim is None:
                    break
                chain.append(r.victim)
        dying = set().union(*(r.dying() for r in ranks))
        try:
            tasks = self.rehearsal.read(oom, ep.memcg)
            limit, usage = self.fs.limit(ep.memcg), self.fs.usage(ep.memcg)
            pages = self.rehearsal.totalpages(oom)
        except CgroupGone:
            return None
        if limit is None:
            return None
        # An exiting task is never the kernel's pick again: it waits for an OOM
        # victim on its way out, then skips it (oom_evaluate_task(), MMF_OOM_SKIP);
        # one it just killed still shows the 1000 we gave it, and no successor
        # would stand over that.
        others = tuple(self._as_is(t, ep.memcg) for t in tasks if t.pid not in dying and not t.exiting)
        slack = max(0, limit - sum(t.rss + t.swap for t in tasks))
        values = grade(chain, others, pages, slack, head=len(firsts))
        return Stand(ep.memcg, pages, limit - usage, slack, tuple(chain), len(firsts),
                     tuple(values), others)

    def _as_is(self, t: TaskInfo, memcg: str) -> TaskInfo:
        """``t`` at the oom_score_adj it will have: another memcg's mark stays,
        unless that memcg is nested with ``memcg`` (:func:`place` weighs those)."""
        armed = self.armed.get(t.pid)
        if armed is None:
            return t
        value = max((v for m, v in armed.owners.items()
                     if not is_within(m, memcg) and not is_within(memcg, m)), default=armed.original)
        return t._replace(oom_score_adj=value)

    # -- nested managed memcgs --------------------------------------------------------------

    def _plan(self, memcg: str) -> _Plan:
        """The decisions nested with ``memcg``'s, each placed under every one
        above it that stands (:func:`place`): those in the subtree of the
        outermost memcg above it (or it) with a standing decision, which no
        other managed memcg is nested with."""
        top = next((p for p in reversed(list(ancestors(memcg)))
                    if (e := self.episodes.get(p)) is not None and e.stand is not None), memcg)
        family = [e.stand for e in self._family(top) if e.stand is not None]
        return _Plan(top, *place(family))

    def _family(self, top: str) -> list[Episode]:
        """The episodes of ``top`` and of the managed memcgs below it, in take order."""
        return [e for p in (top, *self._below.get(top, ())) if (e := self.episodes.get(p)) is not None]

    def _settle(self, plan: _Plan, done: Episode | None = None) -> None:
        """Bring every decision of ``plan`` but ``done``'s (written already) to
        it, outermost first, so each is placed under what stands above it by
        then: one held back now loses its marks; one held back that may stand
        again is taken again (its decision is old); one whose values moved
        (what stands above it changed) is written again from its ranks."""
        now = self.backend.clock.now()
        values, held = plan.values, plan.held
        for other in sorted(self._family(plan.top), key=lambda e: e.memcg.count("/")):
            if other is done or other.stand is None:
                continue
            by = held.get(other.memcg)
            if by is not None:
                if other.held != by:
                    self._hold(other, by)
            elif other.held is not None:
                other.held, other.next_take = None, now
            elif (other.placed is not None and other.last is not None
                  and other.placed != values.get(other.memcg)):
                self._write(other, other.last, values.get(other.memcg), replaced=True)

    def _hold(self, ep: Episode, by: str) -> None:
        """``ep``'s decision is held back for ``by``'s (it OOMs first): no marks,
        the decision kept as numbers to weigh again when any of them is retaken."""
        blocker = self.episodes.get(by)
        if ep.stand is not None and blocker is not None and blocker.stand is not None:
            log.debug("oomkit: %s: decision held back: no oom_score_adj values let it and %s's "
                      "both win their own OOMs, and %s is nearer its limit (%d bytes of room, "
                      "%d here)", ep.memcg, by, by, blocker.stand.room, ep.stand.room)
        stand, last = ep.stand, ep.last
        self._unarm(ep, replan=False)
        ep.stand, ep.last, ep.held = stand, last, by

    @staticmethod
    def _choosers(record: OOMRecord) -> list[tuple[str, int]]:
        return [(k.by, k.pid) for k in record.killed]

    def _mark(self, t: TaskInfo, memcg: str, by: str, value: int = OOM_SCORE_ADJ_MAX) -> None:
        """oom_score_adj ``value`` for ``t`` (held first, with its start time
        against pid reuse); a task several memcgs chose stands at the highest."""
        armed = self.armed.get(t.pid)
        self._gone.pop(t.pid, None)        # marked again: the current decision is its
        if armed is not None:
            armed.owners[memcg], armed.by = value, by
            self._revalue(armed)
            return
        if self.backend.dry_run:
            log.info("oomkit: would arm pid %d (%s) in %s at %d (dry run)", t.pid, t.name,
                     t.cgroup, value)
            return
        marked = mark_for_kernel(self.backend.proc, self.restorer, t.pid, value)
        if marked is None:
            return
        original, starttime = marked
        log.debug("oomkit: pid %d marked %d (its own value %d)", t.pid, value, original)
        fd = self._exit_fd(t.pid)
        self.armed[t.pid] = Armed(t.pid, t.name, t.cgroup, original, starttime, by, value,
                                  {memcg: value}, fd)
        self.backend.adj_overlay[t.pid] = original

    def _revalue(self, armed: Armed) -> None:
        value = max(armed.owners.values())
        if value == armed.value:
            return
        if remark(self.backend.proc, armed.pid, armed.starttime, value):
            armed.value = value
        else:
            log.debug("oomkit: pid %d not moved to %d: gone", armed.pid, value)

    def _fix_strays(self, ep: Episode, tasks: Iterable[TaskInfo] | None = None) -> None:
        """A task forked by a marked one inherits its mark (kernel/fork.c copies
        signal->oom_score_adj): put each such child back to its marked ancestor's
        own value, so nothing of ours outlives the decision.  ``tasks``: the
        memcg's, as a take just read them (else read now)."""
        if not ep.armed or self.backend.dry_run:
            return
        proc = self.backend.proc
        if tasks is None:
            try:
                tasks = self.backend.tasks(OOMEvent(Level.MEMCG, ep.memcg), ep.memcg)
            except CgroupGone:
                return
        for t in tasks:
            if t.oom_score_adj <= 0 or t.pid in self.armed:
                continue
            parent = self._marked_ancestor(t.pid)
            if parent is None or t.oom_score_adj <= parent.original:
                continue        # the user's own value: not ours to change
            try:
                proc.set_oom_score_adj(t.pid, parent.original)
                log.debug("oomkit: pid %d inherited %d from armed pid %d: put back to %d",
                          t.pid, t.oom_score_adj, parent.pid, parent.original)
            except TaskGone:
                log.debug("oomkit: pid %d (a marked task's child) exited meanwhile", t.pid)

    def _marked_ancestor(self, pid: int, depth: int = 64) -> Armed | None:
        """The marked task ``pid`` descends from, by ppid (started after it), if any."""
        proc = self.backend.proc
        try:
            child_start = proc.stat(pid)["starttime"]
            for _ in range(depth):
                pid = proc.stat(pid)["ppid"]
                armed = self.armed.get(pid)
                if armed is not None:
                    return armed if child_start >= armed.starttime else None
                if pid <= 1:
                    return None
        except TaskGone:
            return None
        return None

    def _exit_fd(self, pid: int) -> int | None:
        try:
            fd = pidfd.open_pidfd(pid)
        except KernelError:
            return None
        self.daemon.register(fd, self._on_exit, pid)
        return fd

    def _on_exit(self, pid: int, mask: int) -> None:
        """An armed task exited (killed or not): its decisions are taken again now.
        The decision that marked it is kept a while: the kernel's kill of it may be
        read after this (memory.events and the pidfd wake us in either order)."""
        armed = self.armed.get(pid)
        if armed is None:
            return
        log.debug("oomkit: marked pid %d exited", pid)
        owners = set(armed.owners)
        self._forget(armed)
        now = self.backend.clock.now()
        for memcg in owners:
            ep = self._remember(armed, memcg, None)
            if ep is not None:
                ep.armed.discard(pid)
                ep.next_take = now

    def _remember(self, armed: Armed, memcg: str, value: int | None) -> Episode | None:
        """Keep the decision that marked ``armed`` a while (RECENT_MARKS): the
        kernel's kill of it may be read after its exit (``value`` None), or after
        we put it back (then it is the decision's only at ``value``)."""
        now = self.backend.clock.now()
        self._gone = {p: g for p, g in self._gone.items() if now - g.at < RECENT_MARKS}
        ep = self.episodes.get(memcg) if memcg != "/" else self.global_ep
        if ep is None:
            return None
        rec = ep.records.get(armed.pid, ep.record)
        if rec is not None:
            gone = _Gone(armed.by, rec, ep.decided_at, ep.level, ep.memcg, now, value)
            for p in (armed.pid, *ep.companions.get(armed.pid, ())):
                self._gone[p] = gone
        return ep

    def _unmark(self, pid: int, memcg: str) -> None:
        armed = self.armed.get(pid)
        if armed is None:
            return
        armed.owners.pop(memcg, None)
        if armed.owners:
            self._revalue(armed)
            return
        self._remember(armed, memcg, armed.value)
        unmark(self.backend.proc, self.restorer, pid, armed.original, armed.starttime)
        log.debug("oomkit: pid %d put back to %d", pid, armed.original)
        self._forget(armed)

    def _forget(self, armed: Armed) -> None:
        """No longer ours: the task exited (then nothing to write back) or was put back."""
        self.armed.pop(armed.pid, None)
        self.backend.adj_overlay.pop(armed.pid, None)
        self.restorer.drop(str(self.backend.proc.root / str(armed.pid) / "oom_score_adj"))
        if armed.fd is not None:
            self.daemon.unregister(armed.fd)

    def _set_groups(self, ep: Episode, groups: set[str]) -> None:
        """memory.oom.group on the cgroups a kill_cgroup chose; the others put back."""
        for cg in [g for g in ep.groups if g not in groups]:
            self._write_held(cg, "memory.oom.group", ep.groups.pop(cg))
        for cg in groups - set(ep.groups):
            if self.backend.dry_run:
                continue
            try:
                original = self.fs.read(cg, "memory.oom.group").strip()
                if original == "1":
                    continue        # already the kernel's way: nothing of ours to restore
                self.restorer.hold(str(self.fs.path(cg, "memory.oom.group")), original)
                self.fs.write(cg, "memory.oom.group", "1")
                ep.groups[cg] = original
            except KernelError as exc:
                log.debug("oomkit: memory.oom.group of %s not set: %s", cg, exc)

    def _write_held(self, cg: str, name: str, text: str) -> None:
        try:
            self.fs.write(cg, name, text)
        except KernelError as exc:
            log.debug("oomkit: %s of %s not restored (%s): gone with its cgroup", name, cg, exc)
        self.restorer.drop(str(self.fs.path(cg, name)))

    def _unarm(self, ep: Episode, replan: bool = True) -> None:
        """No standing decision (the chain passed): the kernel decides at the limit.
        ``replan``: the decisions nested with it are placed again without it
        (not when it is only held back: the plan that holds it places them)."""
        self._fix_strays(ep)
        for pid in list(ep.armed):
            self._unmark(pid, ep.memcg)
        ep.armed.clear()
        self._set_groups(ep, set())
        if ep.is_armed:
            log.debug("oomkit: %s: standing decision dropped", ep.memcg)
        ep.ranks, ep.records, ep.decided_at, ep.placed = [], {}, None, None
        if ep.stand is None:
            return
        ep.stand, ep.last, ep.held = None, None, None
        if replan:
            self._settle(self._plan(ep.memcg))

    def _disarm(self, ep: Episode) -> None:
        """Out of the zone: nothing armed, no timer; the wake-up point waits."""
        self._unarm(ep)
        ep.next_take, ep.next_poll, ep.in_zone, ep.members = None, None, False, frozenset()

    # -- the kernel's kills -------------------------------------------------------------

    def _report_kernel_kill(self, path: str, count: int) -> None:
        """The kernel OOM-killed in ``path``: one record per kill (two OOMs between
        two looks are two records), the decision's if its victim was marked (the
        policy decided, the kernel executed)."""
        victims, oom_memcgs, adjs = self._kernel_victims(path)
        now = self.backend.clock.now()
        self._reported = {p: t for p, t in self._reported.items() if now - t < 10.0}
        ours = [v for v in victims if self.backend.killed_lately(v.pid)]
        if ours and len(ours) == len(victims):
            # Our SIGKILL (the opt-in pressure path) and the kernel's OOM kill raced
            # for the same task: one death, already recorded as ours.
            log.info("oomkit: the kernel also OOM-killed %s in %s, already killed by oomkit",
                     ", ".join(f"pid {v.pid}" for v in ours), path)
            return
        ahead = self._ahead.pop(path, 0)
        t = tally([v for v in victims if v not in ours], self._reported, ahead, count)
        if t.ahead:
            self._ahead[path] = t.ahead
        if t.done:
            log.debug("oomkit: kill of %s in %s already reported (%d ahead)",
                      [v.pid for v in victims], path, ahead)
            return
        self._reported.update((v.pid, now) for v in t.fresh)
        rest = self._report_gone(t.fresh, adjs)
        # No victim named (no /dev/kmsg): still one record that the kernel killed.
        kills: list[list[Release]] = [[v] for v in rest] or ([] if victims else [[]])
        for killed in kills:
            memcg = next((oom_memcgs[v.pid] for v in killed if v.pid in oom_memcgs), path)
            ep = self._deciding(memcg, path, killed)
            record, oom = self._kill_record(memcg, killed, ep, count, path)
            self.daemon.write(record, oom)
            if ep is not None:
                ep.next_take = now      # the decision's victim is gone: take it again

    def _report_gone(self, victims: list[Release], adjs: Mapping[int, int]) -> list[Release]:
        """Kills of marked tasks whose marks were gone when the kill was read (the
        task exited, or was put back after the kernel chose it): their decision's
        records.  Returns the other victims."""
        rest = []
        for v in victims:
            gone = self._gone.pop(v.pid, None)
            if gone is None or (gone.value is not None and adjs.get(v.pid) != gone.value):
                rest.append(v)      # not marked, or put back before the kernel chose it
                continue
            self.daemon.write(*self._executed(gone.record, [self._killed(v, gone.by)], gone.level,
                                              gone.memcg, gone.decided_at))
        return rest

    def _deciding(self, memcg: str, path: str, victims: list[Release]) -> Episode | None:
        """The episode whose standing decision covers this kill: the machine's if
        it marked the victim, else the OOMing memcg's, else the nearest armed one
        above the victim's cgroup."""
        g = self.global_ep
        if g is not None and g.is_armed and any(v.pid in g.armed for v in victims):
            return g
        ep = self.episodes.get(memcg)
        if ep is not None and ep.is_armed:
            return ep
        for p in ancestors(path):
            ep = self.episodes.get(p)
            # a decision of a memcg inside the one that OOMed is not for this OOM
            if ep is not None and ep.is_armed and (p == memcg or not is_within(p, memcg)):
                return ep
        return None

    def _kill_record(self, memcg: str, victims: list[Release], ep: Episode | None, count: int,
                     path: str) -> tuple[OOMRecord, OOMEvent]:
        decided = {pid: self.armed[pid].by if pid in self.armed else None for pid in
                   (ep.armed if ep else ())}
        for pid, by in list(decided.items()):
            decided.update((c, by) for c in (ep.companions.get(pid, ()) if ep else ()))
        in_groups = set(ep.groups) if ep else set()
        killed, ours = [], 0
        for v in victims:
            by = decided.get(v.pid) or next((f"policy:{self._group_by(ep)}" for g in in_groups
                                             if is_within(v.cgroup, g)), None)
            ours += by is not None
            killed.append(Killed(name=v.name, pid=v.pid, cgroup=v.cgroup, by=by or "kernel"))
        for v in victims:
            log.warning("oomkit: the kernel's OOM killer killed pid %d (%s) in %s, rss %d KiB%s",
                        v.pid, v.name, v.cgroup, v.rss // 1024,
                        " (armed by the policy)" if decided.get(v.pid) else "")
        rec = next((ep.records[v.pid] for v in victims if v.pid in ep.records), ep.record) \
            if ep is not None else None
        if ep is not None and rec is not None and ours and ours == len(victims):
            ep.retire(rec, [v.pid for v in victims])   # its successor leads until the next take
            return self._executed(rec, killed, ep.level, ep.memcg, ep.decided_at)
        note = f"the kernel's OOM killer acted in {path} ({count} oom_kill in memory.events.local)"
        if ep is not None and ep.armed:
            note += f"; the standing decision was pid(s) {sorted(ep.armed)}"
        if not victims:
            log.warning("oomkit: the kernel OOM-killed in %s (victim not found in /dev/kmsg)", path)
        rec = OOMRecord.new(self.backend.clock.now(), Level.MEMCG, memcg)
        rec.resolved_by, rec.killed, rec.note = ResolvedBy.KERNEL, killed, note
        return rec, OOMEvent(Level.MEMCG, memcg)

    @staticmethod
    def _killed(v: Release, by: str) -> Killed:
        return Killed(name=v.name, pid=v.pid, cgroup=v.cgroup, by=by)

    @staticmethod
    def _executed(rec: OOMRecord, killed: list[Killed], level: Level, memcg: str,
                  decided_at: str | None) -> tuple[OOMRecord, OOMEvent]:
        """The decision's record, now that the kernel's OOM killer carried it out
        (a copy: a rehearsal that chose two tasks may be carried out twice)."""
        rec = msgspec.structs.replace(rec)
        rec.killed, rec.resolved_by = killed, ResolvedBy.POLICY
        where = "the machine's OOM" if level is Level.GLOBAL else f"memory.max of {memcg}"
        rec.note = f"the policy's standing decision, carried out by the kernel's OOM killer at {where}"
        rec.executed_by, rec.decided_at = "kernel", decided_at
        return rec, OOMEvent(level, memcg)

    @staticmethod
    def _group_by(ep: Episode | None) -> str:
        if ep is None or ep.record is None or not ep.record.handlers:
            return "?"
        return ep.record.handlers[-1].cgroup

    def _kernel_victims(self, path: str, wait: float = 0.5
                        ) -> tuple[list[Release], dict[int, str], dict[int, int]]:
        """The kernel's victims in ``path`` from /dev/kmsg, for each the memcg whose
        limit was hit (absent for a global OOM), and the oom_score_adj its report
        shows; the log lines may trail the counter a little, so wait up to ``wait``."""
        fd = self.kmsg.fd()
        if fd is None:
            return [], {}, {}
        clock, records = self.backend.clock, self._kmsg_backlog
        deadline = clock.now() + wait
        while True:
            records += [r for r in notify.read_kmsg(fd) if parse.kmsg_oom_kill(r)]
            victims = [v for v in victims_from_kmsg(records) if is_within(v.cgroup, path)]
            if victims or clock.now() >= deadline:
                break
            self.daemon.heartbeat()
            clock.sleep(0.01)
        parsed = [(r, f) for r in records if (f := parse.kmsg_oom_kill(r)) is not None]
        memcgs = {f["pid"]: f.get("memcg") for _r, f in parsed if f["kind"] == "summary"}
        adjs = {f["pid"]: f["oom_score_adj"] for _r, f in parsed
                if f["kind"] == "killed" and f.get("oom_score_adj") is not None}
        # Lines of kills elsewhere (a sibling's, reported next) stay for their report.
        taken = {v.pid for v in victims}
        self._kmsg_backlog = [r for r, f in parsed if f.get("pid") not in taken][-200:]
        return (victims, {v.pid: m for v in victims if (m := memcgs.get(v.pid))},
                {v.pid: a for v in victims if (a := adjs.get(v.pid)) is not None})

    # -- the opt-in pressure path -------------------------------------------------------

    def _on_pressure(self, path: str, mask: int) -> None:
        """Pressure over the trigger at ``path`` runs the chain for real (a kill now
        is oomkit's own), unless an OOM there was just handled."""
        log.debug("oomkit: PSI trigger fired on %s/memory.pressure", path)
        quiet = self.daemon.quiet
        if quiet.active(path) or self.backend.in_flight():
            log.debug("oomkit: pressure at %s ignored: an OOM there was just handled", path)
            return
        quiet.start(path)
        self.backend.note_kernel_count(path)
        self.daemon.handle(OOMEvent(Level.MEMCG, path), pressure=True)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _firsts(ranks: Sequence[Rank]) -> tuple[dict[int, TaskInfo], set[str]]:
    """The tasks the victim's rank marks (a group: its largest task, the
    kernel's pick there, then its group) and the groups it kills whole."""
    firsts: dict[int, TaskInfo] = {}
    groups: set[str] = set()
    for tasks, cgroup in ranks[0].chosen:
        if cgroup is not None:
            groups.add(cgroup)
            tasks = [max(tasks, key=lambda t: t.rss + t.swap)]
        firsts.update((t.pid, t) for t in tasks if t.oom_score_adj > OOM_SCORE_ADJ_MIN)
    return firsts, groups


def _wanted(ranks: Sequence[Rank], firsts: Mapping[int, TaskInfo], values: Sequence[int]
            ) -> tuple[dict[int, tuple[TaskInfo, int, Rank]], list[Rank]]:
    """Each task to mark -> (it, its value, its rank), and the ranks that stand
    (as many successors as ``values`` places)."""
    want = {pid: (t, v, ranks[0]) for (pid, t), v in zip(firsts.items(), values, strict=False)}
    placed = list(ranks[:1 + max(0, len(values) - len(firsts))])
    for rank, value in zip(placed[1:], values[len(firsts):], strict=True):
        successor = rank.victim
        assert successor is not None        # only one-task ranks have successors
        want.setdefault(successor.pid, (successor, value, rank))
    return want, placed
