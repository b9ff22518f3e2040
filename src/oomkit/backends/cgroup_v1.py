"""The cgroup v1 backend: a true interception point.

For every memcg it holds, oomkit writes ``oom_kill_disable 1`` to
``memory.oom_control`` and registers an eventfd through
``cgroup.event_control`` (Documentation/admin-guide/cgroup-v1/memory.rst,
section 10): when a limit is hit the kernel pauses the OOMing tasks and wakes
us, and acts itself only when we hand the OOM back (``oom_kill_disable 0``).

:class:`CgroupV1Backend` is the context and the release actions;
:class:`V1Events` the event source (what woke us).  A paused OOM must never
outlive the daemon: every memcg taken is held by the daemon's
:class:`~oomkit.daemon.restore.Restorer` first (the state file and the
watchdog), so ``oom_kill_disable 0`` is written back whatever kills us.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from oomkit.backends.base import Fallback, OOMEvent, Release, relief_for
from oomkit.backends.live import (
    POLL,
    Dispatcher,
    Holder,
    KernelLog,
    LiveBackend,
    LiveSettings,
    mark_for_kernel,
    unmark,
    victims_from_kmsg,
)
from oomkit.context import Level, TaskInfo, ancestors, is_within, parent_of
from oomkit.errors import CgroupGone, KernelError
from oomkit.linux import notify, parse
from oomkit.schema import Killed, OOMRecord, ResolvedBy

if TYPE_CHECKING:  # pragma: no cover
    from oomkit.engine.chain import Engine
    from oomkit.linux.bpftasks import BpfTasks
    from oomkit.linux.cgroupfs import CgroupFS
    from oomkit.linux.procfs import ProcFS

log = logging.getLogger("oomkit")


def open_stack(fs: CgroupFS, proc: ProcFS, settings: LiveSettings, daemon: Dispatcher,
               restorer: Holder, bpf: BpfTasks | None) -> V1Events:
    """cgroup v1's live stack: the backend and the OOM eventfds that wake the daemon."""
    cls = KernelExecutesV1 if settings.executor == "kernel" else CgroupV1Backend
    backend = cls(fs, proc, dry_run=settings.dry_run, tick=daemon.heartbeat,
                  proc_cache=settings.proc_cache, bpf=bpf)
    if isinstance(backend, KernelExecutesV1):
        backend.holder = restorer
    return V1Events(backend, daemon, restorer)


class CgroupV1Backend(LiveBackend):
    """cgroup v1: the OOMing memcg's tasks are paused (``oom_kill_disable 1``)
    until we release memory or hand the OOM back to the kernel."""

    version = "v1"
    HANDBACK_WAIT = 2.0
    SETTLE = 0.5
    VICTIM_EXIT = 1.0       # the safety net: how long our victims may take to exit,
    GRACE = 0.25            # then how long a released OOM may take to clear
    CLEAR_FOR = 0.03        # under_oom must stay 0 this long to end an OOM (_stays_clear)

    def _swap(self, path: str) -> int:
        try:
            memsw = parse.int_value(self.fs.read(path, "memory.memsw.usage_in_bytes"))
            return max(0, memsw - self.fs.usage(path))
        except KernelError:
            return 0     # no swap accounting (swapaccount=0)

    def condition_gone(self, oom: OOMEvent) -> bool:
        if oom.level == "memcg":
            try:
                if not self._under_oom(oom.memcg):
                    return self._stays_clear(oom)
            except CgroupGone:
                return True
        return super().condition_gone(oom)

    def _under_oom(self, path: str) -> bool:
        return bool(self.fs.oom_control(path)["under_oom"])

    def _stays_clear(self, oom: OOMEvent) -> bool:
        """``under_oom`` 0: over once there is room for the charge (the woken tasks'
        retry succeeds), or once it stays 0 for ``CLEAR_FOR``.  One 0 alone is not
        the OOM's end: any uncharge in the memcg (another task's exit, a dead task's
        kernel memory freed after RCU) or a raised limit wakes the paused tasks
        (memcg1_oom_recover), and a woken task drops ``under_oom`` while it retries
        its charge, raising it again and re-notifying when the retry fails
        (memcg1_oom_synchronize, mm/memcontrol-v1.c).  Measured on 6.18: a 4 MiB
        uncharge under a paused hog left ``under_oom`` 0 for ~3 ms before it paused
        again."""
        paused = False

        def settled() -> bool:
            nonlocal paused
            paused = self._under_oom(oom.memcg)
            return paused or self.usage_below_limit(oom)

        try:
            self.poll_until(settled, self.CLEAR_FOR)
        except CgroupGone:
            return True
        return not paused

    def kernel_fallback(self, oom: OOMEvent) -> Fallback:
        """Hand the OOM back (``oom_kill_disable 0``: the kernel kills at once),
        wait for an ``oom_kill`` count below it to move, then take it back."""
        if oom.level != "memcg":
            return Fallback(note="global OOM: the kernel's OOM killer acts on its own")
        kmsg = self._open_kmsg()
        before = self._oom_kills(oom.memcg)
        threads = self._threads(oom.memcg)
        try:
            self.fs.set_oom_kill_disable(oom.memcg, False)
            moved = self._wait_kill(oom, before)
            if moved:
                # Leave the OOM with the kernel until its victim's memory is back:
                # a charge retried meanwhile then meets the kernel's own wait for
                # its exiting victim, not a second hand-back that could kill again.
                self._wait_handed_back(oom)
        finally:
            self._retake(oom.memcg)
        victims = self._ours(self._kmsg_victims(kmsg), threads)
        if victims:
            return Fallback(killed=victims)
        if moved:
            return Fallback(killed=[Release(-1, "?", oom.memcg, 0, 0)], note="the kernel killed "
                            "(victim not read: /dev/kmsg unavailable)")
        return Fallback(note="handed back to the kernel; no oom_kill seen within "
                             f"{self.HANDBACK_WAIT:g}s")

    def _wait_handed_back(self, oom: OOMEvent) -> None:
        """Until no task is in the kernel's OOM path (``under_oom`` 0: with
        ``oom_kill_disable`` 0 the kernel marks it only around its own kill,
        mem_cgroup_oom()) or the charge has room, at most ``SETTLE``.  Not
        ``condition_gone``'s 30 ms wait for a dip: handed back, the kernel kills
        again whenever a charge still fails once its victim is reaped, so the OOM
        is taken back as soon as the kernel's kill is through (CI's rehearsal saw
        a second kernel kill, of another task, in that wait)."""
        try:
            self.poll_until(lambda: not self._under_oom(oom.memcg) or self.usage_below_limit(oom),
                            self.SETTLE)
        except CgroupGone:
            log.debug("oomkit: %s removed while handed back: nothing left to wait for", oom.memcg)

    def usage_below_limit(self, oom: OOMEvent) -> bool:
        """The charge fits again by usage alone (``under_oom`` aside)."""
        return super().condition_gone(oom)

    def _wait_kill(self, oom: OOMEvent, before: int) -> bool:
        return self.poll_until(lambda: self._oom_kills(oom.memcg) > before, self.HANDBACK_WAIT)

    def _oom_kills(self, top: str) -> int:
        """The v1 ``oom_kill`` count is local to the victim's memcg: sum the subtree."""
        total = 0
        for path in self.fs.walk(top):
            try:
                total += self.fs.oom_control(path)["oom_kill"]
            except CgroupGone:
                pass
        return total

    def _threads(self, top: str) -> dict[int, str]:
        """Every thread id under ``top`` and its memcg (the kernel names its victim
        by the thread it picked, which need not be the thread-group leader)."""
        out: dict[int, str] = {}
        for path in self.fs.walk(top):
            try:
                out.update((tid, path) for tid in parse.pids(self.fs.read(path, "tasks")))
            except CgroupGone:
                pass
        return out

    @staticmethod
    def _ours(victims: list[Release], threads: dict[int, str]) -> list[Release]:
        """Only the kernel's kills in this subtree (/dev/kmsg also has other OOMs on the
        host), each with its memcg: the kernel rate-limits (10 per 5 s) the summary
        line that names it, but never the "Killed process" line."""
        return [v if v.cgroup != "?" else dataclasses.replace(v, cgroup=threads[v.pid])
                for v in victims if v.pid in threads]

    def _retake(self, path: str) -> None:
        try:
            self.fs.set_oom_kill_disable(path, True)
        except CgroupGone:
            pass

    @staticmethod
    def _open_kmsg() -> int | None:
        try:
            return notify.open_kmsg()
        except KernelError:
            return None

    @staticmethod
    def _kmsg_victims(fd: int | None) -> list[Release]:
        if fd is None:
            return []
        try:
            records = notify.read_kmsg(fd)
        finally:
            os.close(fd)
        return victims_from_kmsg(records)


class KernelExecutesV1(CgroupV1Backend):
    """``executor = "kernel"``: the chain decides while the OOM is paused, and the
    kernel's own OOM killer carries the decision out.  A policy's kill marks its
    victim (``oom_score_adj`` 1000, held first) instead of killing it; after the
    chain the paused OOM is handed back (``oom_kill_disable 0``), the kernel kills
    the marked task through its own path (OOM reaper, ``oom_kill`` in
    ``memory.oom_control``, its report), and interception is taken back.  A
    whole-cgroup kill has no v1 counterpart (``memory.oom.group`` is v2's): it
    is oomkit's own, task by task."""

    holder: Holder

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.marked: dict[int, tuple[int, int]] = {}     # pid -> (original, starttime)

    def kill(self, tasks: Sequence[TaskInfo], oom: OOMEvent, *, cgroup: str | None = None) -> list[Release]:
        if cgroup is not None or self.dry_run or oom.level != Level.MEMCG:
            return super().kill(tasks, oom, cgroup=cgroup)
        out = []
        for t in tasks:
            if self.protected(t.pid):
                continue
            marked = mark_for_kernel(self.proc, self.holder, t.pid)
            if marked is not None:
                self.marked[t.pid] = marked
                out.append(Release(t.pid, t.name, t.cgroup, t.rss, relief_for(oom, t.cgroup, t.rss)))
        return out

    def execute(self, oom: OOMEvent, record: OOMRecord) -> None:
        """Hand the paused OOM back so the kernel kills what the chain marked."""
        if not self.marked:
            return
        marked, self.marked = self.marked, {}
        chosen = {k.pid: k.by for k in record.killed}
        try:
            outcome = self.kernel_fallback(oom)
        finally:
            for pid, (original, starttime) in marked.items():
                unmark(self.proc, self.holder, pid, original, starttime)
        record.killed = [Killed(name=r.name, pid=r.pid, cgroup=r.cgroup, by=chosen.get(r.pid, "kernel"))
                         for r in outcome.killed]
        record.executed_by = "kernel"
        if any(k.by == "kernel" for k in record.killed) or not record.killed:
            record.resolved_by = ResolvedBy.KERNEL
            record.note = (f"the kernel's OOM killer did not take the marked task(s) {sorted(marked)}"
                           + (f": {outcome.note}" if outcome.note else ""))


@dataclass
class _Net:
    """A claimed release the safety net watches until its OOM clears (or not)."""

    oom: OOMEvent
    record: OOMRecord
    engine: Engine
    commit: Callable[[], None]
    victims_by: float                  # our victims may take until then to exit
    grace_end: float | None = None     # then the OOM has until then to clear


@dataclass
class _Held:
    """One memcg we hold: its eventfd, and whether we flipped oom_kill_disable."""

    path: str
    eventfd: notify.OOMEventFD | None = None
    flipped: bool = False        # we wrote oom_kill_disable 1: put back 0 on release
    # Children that existed before this memcg was at 1 because of us: their own 1, if
    # they have one, is not inherited from us (v1 copies the parent's value at mkdir).
    preexisting: frozenset[str] = frozenset()
    kills: int = 0               # its oom_kill count as last accounted for (kernel kills we recorded)


class V1Events:
    """What wakes us on v1: the OOM eventfd of every held memcg.

    A memcg is taken only if its ``oom_kill_disable`` is 0, or 1 inherited at
    mkdir from a memcg we hold: any other 1 is the admin's or another daemon's
    (the restorer already put back what a previous run of ours left), and
    taking it would pause one OOM for two handlers, or hand it back on our
    exit behind its owner's back."""

    def __init__(self, backend: CgroupV1Backend, hub: Dispatcher, restorer: Holder):
        self.backend = backend
        self.fs, self.hub, self.restorer = backend.fs, hub, restorer
        if hasattr(restorer, "on_handback"):
            restorer.on_handback.append(self.rearm)
        self.held: dict[str, _Held] = {}
        self._notified: set[str] = set()
        self._foreign: set[str] = set()     # left alone, said once
        self._nets: list[_Net] = []         # claimed releases the safety net still watches
        self.kmsg = KernelLog()             # for kernel kills we did not ask for (a hand-back)

    def bind(self, engine: Engine) -> None:
        """v1 needs no engine of its own: the OOM waits for the daemon's chain."""

    def reconfigure(self, settings: LiveSettings) -> None:
        self.backend.dry_run = settings.dry_run
        self.backend.task_cache.resize(settings.proc_cache)

    def settle(self, oom: OOMEvent, record: OOMRecord, engine: Engine,
               commit: Callable[[], None]) -> None:
        """The kernel executes what the chain marked (``executor = "kernel"``); a dry
        run released nothing, and the OOM is still paused: the kernel decides.  A
        claimed release gets the safety net before its record is committed."""
        if isinstance(self.backend, KernelExecutesV1):
            self.backend.execute(oom, record)
        if self.backend.dry_run and record.resolved_by != "kernel":
            record.note = "dry run: nothing released; handed to the kernel"
            engine.fall_back(oom, record)
        if record.resolved_by in (ResolvedBy.KERNEL, ResolvedBy.UNRESOLVED) and oom.level == Level.MEMCG:
            self._accounted(oom.memcg)      # the kernel's kills here are this record's
        elif record.resolved_by in (ResolvedBy.POLICY, ResolvedBy.BACKOFF) and oom.level == Level.MEMCG:
            net = _Net(oom, record, engine, commit, self.backend.clock.now() + self.backend.VICTIM_EXIT)
            if self._check(net) is None:
                self._nets.append(net)      # looked at again on the timer, off this OOM's path
            return
        commit()

    def _check(self, net: _Net) -> bool | None:
        """One look for the safety net (issue 10 item 2): the chain took a release
        as the end of the OOM, yet is it still paused (e.g. the victim's mm lives
        on in a process of another memcg)?  Not once ``under_oom`` clears, nor when
        a new notification came (a task retried its charge and OOMed again: a new
        OOM, which the loop reads).  Our victims may exit first (the kernel too
        waits for its exiting victim), then the OOM has a grace to clear.  None:
        look again; else the record is committed (handed to the kernel if True)."""
        backend, oom = self.backend, net.oom
        try:
            paused = bool(self.fs.oom_control(oom.memcg)["under_oom"])
        except CgroupGone:
            paused = False
        now = backend.clock.now()
        if paused and not self._notified_below(oom.memcg):
            if net.grace_end is None and (not backend.in_flight() or now >= net.victims_by):
                net.grace_end = now + backend.GRACE
            if net.grace_end is None or now < net.grace_end:
                return None
            paused = not backend.usage_below_limit(oom)
        else:
            paused = False
        if paused:
            claimed = net.record.resolved_by
            net.engine.fall_back(oom, net.record)
            self._accounted(oom.memcg)
            why = (f"still under OOM {backend.GRACE:g}s after the {claimed} release "
                   "(its memory did not come back): handed to the kernel")
            net.record.note = f"{why}; {net.record.note}" if net.record.note else why
            log.warning("oomkit: %s: %s", oom.memcg, why)
        net.commit()
        return paused

    def _notified_below(self, top: str) -> bool:
        """Is an OOM notification of ``top`` or a memcg below it waiting to be read?
        Polled, not read: the loop reads it and handles that OOM."""
        fds = [h.eventfd.fileno() for p, h in self.held.items()
               if h.eventfd is not None and is_within(p, top)]
        if not fds:
            return False
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    def pressure_file(self, cgroup: str) -> Path | None:
        """cgroup v1 has no per-cgroup PSI: only the root, system-wide."""
        return Path(self.backend.proc.root) / "pressure" / "memory" if cgroup == "/" else None

    def watch_global(self, on: bool) -> bool:
        """v1 keeps the daemon's pressure path for global OOMs (not built: a
        standing decision there, as v2 keeps)."""
        return False

    def next_timer(self) -> float | None:
        """While a safety net is open, look every few ms; otherwise no timer."""
        return POLL * 5 if self._nets else None

    def on_timer(self) -> None:
        self._nets = [net for net in self._nets if self._check(net) is None]

    def paths(self) -> set[str]:
        return set(self.held)

    def sync(self, wanted: Iterable[str]) -> None:
        """Hold exactly ``wanted``: release the others, take the new ones."""
        wanted = set(wanted)
        for path in [p for p in self.held if p not in wanted]:
            self.release(path)
        self._foreign &= wanted
        for path in sorted(wanted - set(self.held)):
            self._take(path)

    def _take(self, path: str) -> None:
        held = _Held(path)
        try:
            disabled = self.fs.oom_control(path)["oom_kill_disable"]
            parent = self.held.get(parent_of(path) or "")
            inherited = parent is not None and path not in parent.preexisting
            if disabled and not inherited:
                self._leave_alone(path)
                return
            self._foreign.discard(path)
            # Held first: from the write on, a paused OOM must not outlive us.
            self.restorer.hold(self._control(path), "0")
            held.flipped = True
            if not disabled:
                # Listed before the write: a child made after it inherits our 1.
                held.preexisting = frozenset(self.fs.children(path))
                self.fs.set_oom_kill_disable(path, True)
            held.kills = self.fs.oom_control(path)["oom_kill"]
            self.kmsg.fd()
            held.eventfd = notify.register_oom_eventfd(self.fs, path)
            self.hub.register(held.eventfd.fileno(), self._on_eventfd, path)
        except CgroupGone:
            self._undo(held)
            return
        self.held[path] = held

    def _leave_alone(self, path: str) -> None:
        if path not in self._foreign:
            self._foreign.add(path)
            log.warning("oomkit: %s already has oom_kill_disable 1, set by the admin or another "
                        "daemon: left alone, its OOMs are not handled here (to hand it to "
                        "oomkit: write 0 to its memory.oom_control, then reload)", path)

    def rearm(self) -> None:
        """The watchdog put every setting back (it heard nothing from us for its
        timeout) and was replaced: pause OOMs again where we hold them, and
        record what the kernel's killer did meanwhile (no record is lost that
        could be written: the kernel counted each kill in oom_kill)."""
        for held in self.held.values():
            if held.flipped:
                try:
                    self.fs.set_oom_kill_disable(held.path, True)
                except KernelError as exc:
                    log.debug("oomkit: %s not re-armed: %s", held.path, exc)
        self._record_unseen_kills("the watchdog handed the OOM back (the daemon was silent past "
                                  "watchdog_timeout); the kernel's OOM killer acted")

    def _accounted(self, top: str) -> None:
        """The kernel kills below ``top`` so far are in a record (our fallback's)."""
        for path, held in self.held.items():
            if is_within(path, top):
                try:
                    held.kills = self.fs.oom_control(path)["oom_kill"]
                except CgroupGone:
                    log.debug("oomkit: %s gone before its kill count was read", path)

    def _record_unseen_kills(self, why: str) -> None:
        """One record per memcg whose oom_kill moved with no record of ours."""
        moved: dict[str, int] = {}
        for path, held in self.held.items():
            try:
                now = self.fs.oom_control(path)["oom_kill"]
            except CgroupGone:
                continue
            if now > held.kills:
                moved[path], held.kills = now - held.kills, now
        if not moved:
            return
        fd = self.kmsg.fd()
        victims = victims_from_kmsg(notify.read_kmsg(fd)) if fd is not None else []
        for path, count in sorted(moved.items()):
            here = [v for v in victims if v.cgroup == path]
            record = OOMRecord.new(self.backend.clock.now(), Level.MEMCG, path)
            record.resolved_by = ResolvedBy.KERNEL
            record.killed = [Killed(name=v.name, pid=v.pid, cgroup=v.cgroup, by="kernel") for v in here]
            record.note = f"{why} ({count} oom_kill in {path})"
            log.warning("oomkit: %s: %s", path, record.note)
            self.hub.write(record, OOMEvent(Level.MEMCG, path))

    def release(self, path: str) -> None:
        held = self.held.pop(path, None)
        if held is not None:
            self._undo(held)

    def _undo(self, held: _Held) -> None:
        if held.eventfd is not None:
            self.hub.unregister(held.eventfd.fileno(), close=False)
            held.eventfd.close()
        if not held.flipped:
            return
        try:
            self.fs.set_oom_kill_disable(held.path, False)
        except KernelError as exc:
            log.debug("oomkit: %s not put back (gone with its settings?): %s", held.path, exc)
        try:
            self.restorer.drop(self._control(held.path))
        except KernelError as exc:
            log.debug("oomkit: the watchdog is gone (%s); %s is restored anyway", exc, held.path)

    def _control(self, path: str) -> str:
        return str(self.fs.path(path, "memory.oom_control"))

    def close(self) -> None:
        handback = getattr(self.restorer, "on_handback", None)
        if handback is not None and self.rearm in handback:
            handback.remove(self.rearm)     # a restarted stack (Daemon._contain) rearms its own
        self.kmsg.close()
        for net in self._nets:              # no record is lost: committed as they stand
            net.record.note = ((net.record.note + "; ") if net.record.note else "") + \
                "the daemon stopped before the safety net's last look"
            net.commit()
        self._nets.clear()
        for path in list(self.held):
            self.release(path)

    def _on_eventfd(self, path: str, mask: int) -> None:
        held = self.held.get(path)
        if held is None or held.eventfd is None:
            return
        try:
            held.eventfd.read()
            held.eventfd.under_oom()
        except CgroupGone:
            # The eventfd fires once more when its cgroup goes: the daemon matches
            # what it manages to the tree again, which releases this one.
            self.hub.changed()
            return
        self._notified.add(path)

    def flush(self) -> None:
        """After a batch of wake-ups: v1 wakes the eventfd of the OOMing memcg and
        of every descendant, all reading under_oom 1: the OOMing one is the topmost
        under OOM, and it is handled once."""
        if not self._notified:
            return
        tops = {top for top in map(self._topmost_under_oom, self._notified) if top is not None}
        self._notified.clear()
        for top in sorted(tops):
            # Every OOM of a storm holds the loop for its handling: the watchdog must
            # keep hearing from us, or it hands the rest back to the kernel.
            self.hub.heartbeat()
            self.hub.handle(OOMEvent(Level.MEMCG, top))

    def _topmost_under_oom(self, path: str) -> str | None:
        top = None
        for p in ancestors(path):
            if p not in self.held:
                break
            try:
                if self.fs.oom_control(p)["under_oom"]:
                    top = p
            except CgroupGone:
                break
        return top
