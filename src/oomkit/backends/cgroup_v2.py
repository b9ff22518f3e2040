"""The cgroup v2 backend: acting before the kernel's limit.

The kernel's OOM cannot be deferred on v2, so the chain runs before it and
``memory.max`` stays the kernel's last word (the fallback is automatic).
:class:`CgroupV2Backend` is the context and the release actions;
:class:`V2Events` the event source: a PSI trigger on each held cgroup's
``memory.pressure`` (POLLPRI), inotify on its ``memory.events``, an optional
``memory.high`` tripwire (Documentation/admin-guide/cgroup-v2.rst), and the
kernel's own OOM kills, reported with their victims from ``/dev/kmsg``.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from oomkit.backends.base import Fallback, OOMEvent, Release, relief_for
from oomkit.backends.live import Hub, LiveBackend, victims_from_kmsg
from oomkit.context import TaskInfo, ancestors, is_within
from oomkit.errors import CgroupGone, KernelError
from oomkit.linux import notify, parse

log = logging.getLogger("oomkit")


class CgroupV2Backend(LiveBackend):
    """cgroup v2: we act before ``memory.max``; the kernel's OOM killer is
    automatic at the limit, so the fallback is to let it be."""

    version = "v2"

    def __init__(self, *args, headroom: int = 0, tripwire: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.headroom_bytes = headroom
        self.tripwire = tripwire      # memory.high = memory.max - headroom is ours to move
        self._kernel_ooms: dict[str, int] = {}   # memcg -> its 'oom' count when we took its OOM

    # -- the kernel's OOM killer, which may act while our chain runs ------------

    def take(self, memcg: str) -> None:
        """We are about to run the chain for ``memcg``: note how many times the
        kernel's OOM killer has run there (memory.events 'oom', counted by
        mm/memcontrol.c mem_cgroup_out_of_memory before it picks a victim)."""
        try:
            self._kernel_ooms[memcg] = self.fs.events(memcg).get("oom", 0)
        except CgroupGone:
            self._kernel_ooms.pop(memcg, None)

    def kernel_acted(self, oom: OOMEvent) -> bool:
        """Has the kernel's OOM killer run in the OOMing memcg since we took the
        OOM?  Then its kill is the last word: a kill of ours now would be a
        second one (seen in the VM: the kernel killed the hog at memory.max
        while our policy, finding the hog already exiting, took the bystander)."""
        seen = self._kernel_ooms.get(oom.memcg)
        if oom.level != "memcg" or seen is None:
            return False
        try:
            return self.fs.events(oom.memcg).get("oom", 0) > seen
        except CgroupGone:
            return True

    def condition_gone(self, oom: OOMEvent) -> bool:
        return self.kernel_acted(oom) or super().condition_gone(oom)

    def cgroup_gone(self, path: str) -> None:
        super().cgroup_gone(path)
        for memcg in [m for m in self._kernel_ooms if is_within(m, path)]:
            del self._kernel_ooms[memcg]

    def _swap(self, path: str) -> int:
        try:
            return parse.int_value(self.fs.read(path, "memory.swap.current"))
        except KernelError:
            return 0

    def margin(self, oom: OOMEvent) -> int:
        return max(super().margin(oom), self.headroom_bytes)

    def kill(self, tasks: Sequence[TaskInfo], oom: OOMEvent, *, cgroup: str | None = None) -> list[Release]:
        """A whole-cgroup kill writes ``cgroup.kill`` (Linux 5.14+) when every task
        in it may die; otherwise task by task, skipping -1000 as the kernel does.
        Nothing, if the kernel's OOM killer has acted since we took the OOM: the
        kernel's own last check before a kill (mem_cgroup_out_of_memory checks
        the margin again under oom_lock), ours against its kill."""
        if self.kernel_acted(oom):
            log.info("oomkit: the kernel's OOM killer acted in %s first; not killing", oom.memcg)
            return []
        if cgroup is None or self.dry_run or not self._all_killable(cgroup, tasks):
            return super().kill(tasks, oom, cgroup=cgroup)
        try:
            self.fs.write(cgroup, "cgroup.kill", "1")
        except KernelError:
            return super().kill(tasks, oom, cgroup=cgroup)
        return [Release(t.pid, t.name, t.cgroup, t.rss, relief_for(oom, t.cgroup, t.rss))
                for t in tasks]

    def _all_killable(self, cgroup: str, tasks: Sequence[TaskInfo]) -> bool:
        every = {pid for _path, pids in self.fs.subtree_procs(cgroup) for pid in pids}
        return every == {t.pid for t in tasks} and not any(self.protected(p) for p in every)

    def set_limit(self, path: str, limit: int) -> None:
        super().set_limit(path, limit)
        # The tripwire (memory.high) moves with the limit, when it is set.
        if not self.dry_run and self.tripwire and self.headroom_bytes and self._has_tripwire(path):
            self.fs.write(path, "memory.high", str(max(0, limit - self.headroom_bytes)))

    def _has_tripwire(self, path: str) -> bool:
        try:
            return parse.limit_v2(self.fs.read(path, "memory.high")) is not None
        except KernelError:
            return False

    def kernel_fallback(self, oom: OOMEvent) -> Fallback:
        return Fallback(note="cgroup v2: the kernel's OOM killer acts at memory.max if the "
                             "limit is reached")


@dataclass
class _Held:
    """One cgroup we watch: its PSI trigger, and what to put back."""

    path: str
    fds: list[int] = field(default_factory=list)
    restore: dict[str, str] = field(default_factory=dict)     # file -> original text


class V2Events:
    """What wakes us on v2: PSI triggers, ``memory.events`` changes, and the
    kernel's own OOM kills."""

    def __init__(self, backend: CgroupV2Backend, hub: Hub, config):
        self.fs, self.backend, self.hub, self.config = backend.fs, backend, hub, config
        self.held: dict[str, _Held] = {}
        self.inotify = notify.Inotify()
        self.watches: dict[int, str] = {}           # memory.events watch -> cgroup
        self._last_events: dict[str, dict[str, int]] = {}
        self._last_local: dict[str, int] = {}       # memory.events.local oom_kill per cgroup
        self._kmsg_backlog: list[str] = []          # OOM lines read but not yet reported
        self._kmsg_fd: int | None = None
        self._registered = False

    def paths(self) -> set[str]:
        return set(self.held)

    def sync(self, wanted: Iterable[str]) -> None:
        """Watch exactly ``wanted``: release the others, take the new ones."""
        if not self._registered:
            self.hub.register(self.inotify.fileno(), self._on_inotify)
            self._registered = True
        wanted = set(wanted)
        for path in [p for p in self.held if p not in wanted]:
            self.release(path)
        for path in sorted(wanted - set(self.held)):
            held = _Held(path)
            try:
                self._take(held)
            except CgroupGone:
                self._undo(held)
                continue
            self.held[path] = held

    def _take(self, m: _Held) -> None:
        # /dev/kmsg is read from where it stood when we started watching: a kernel
        # kill's "Killed process" line is written before we wake for it.
        self._kmsg()
        self._last_events[m.path] = self.fs.events(m.path)
        self._last_local[m.path] = self.fs.events(m.path, local=True).get("oom_kill", 0)
        try:
            fd = notify.psi_trigger(self.fs.path(m.path, "memory.pressure"), str(self.config.pressure))
        except KernelError as exc:
            if not self.fs.exists(m.path):
                raise CgroupGone(str(exc)) from exc
            # PSI off (psi=0, CONFIG_PSI_DEFAULT_DISABLED) or a window the kernel refuses:
            # memory.events and the tripwire still wake us.
            log.warning("oomkit: no PSI trigger on %s (%s): memory.events only", m.path, exc)
        else:
            m.fds.append(fd)
            self.hub.register(fd, self._on_pressure, m.path, events=select.EPOLLPRI)
        wd = self.inotify.add_watch(self.fs.path(m.path, "memory.events"), notify.IN_MODIFY)
        self.watches[wd] = m.path
        limit = self.fs.limit(m.path)
        if self.config.tripwire and self.config.headroom and limit is not None:
            m.restore["memory.high"] = self.fs.read(m.path, "memory.high").strip()
            self.fs.write(m.path, "memory.high", str(max(0, limit - self.config.headroom)))

    def release(self, path: str) -> None:
        held = self.held.pop(path, None)
        if held is not None:
            self._undo(held)

    def _undo(self, m: _Held) -> None:
        for fd in m.fds:
            self.hub.unregister(fd)
        for name, text in m.restore.items():
            try:
                self.fs.write(m.path, name, text)
            except KernelError:
                pass        # the cgroup is gone with its settings

    def close(self) -> None:
        for path in list(self.held):
            self.release(path)
        if self._registered:
            self.hub.unregister(self.inotify.fileno(), close=False)
            self._registered = False
        self.inotify.close()
        if self._kmsg_fd is not None:
            os.close(self._kmsg_fd)
            self._kmsg_fd = None

    def flush(self) -> None:
        """Nothing is batched on v2: each wake-up was handled as it came."""

    def _on_inotify(self, mask: int) -> None:
        for wd, ev_mask, _cookie, _name in self.inotify.read():
            path = self.watches.get(wd)
            if ev_mask & notify.IN_IGNORED:
                self.watches.pop(wd, None)
            elif path is not None:
                self._on_events(path)

    def _on_pressure(self, path: str, mask: int) -> None:
        log.debug("oomkit: PSI trigger fired on %s/memory.pressure", path)
        self._check(path, pressure=True)

    def _check(self, path: str, pressure: bool = False) -> None:
        """The OOM condition on v2: usage within the headroom of a memory.max at or
        above ``path``, or (only when the PSI trigger woke us) pressure over its
        threshold at ``path``.  A memory.events change is not pressure."""
        for p in ancestors(path):
            if p not in self.held:
                break
            try:
                limit = self.fs.limit(p)
                if limit is not None and self.fs.usage(p) + self.backend.margin(OOMEvent("memcg", p)) > limit:
                    if self.backend.in_flight() or self.hub.hush.active(p, kernel=True):
                        log.debug("oomkit: %s near its limit while victims exit; waiting", p)
                        return
                    self.hub.hush.start(p)
                    self.backend.take(p)
                    self.hub.handle(OOMEvent("memcg", p))
                    return
            except CgroupGone:
                return
        if not pressure or path not in self.held:
            return
        # The PSI window still holds the stalls of an OOM just handled (ours or the
        # kernel's), and a cgroup's pressure includes its descendants': neither is a
        # new OOM.  Nor is pressure while our victims are still exiting.
        if self.hub.hush.active(path) or self.backend.in_flight():
            log.debug("oomkit: pressure at %s ignored: an OOM there was just handled", path)
            return
        self.hub.hush.start(path)
        self.backend.take(path)
        self.hub.handle(OOMEvent("memcg", path), pressure=True)

    def _on_events(self, path: str) -> None:
        """memory.events changed (v2): report kernel OOM kills; re-check the condition."""
        try:
            now = self.fs.events(path)
            local = self.fs.events(path, local=True).get("oom_kill", 0)
        except CgroupGone:
            return
        before = self._last_events.get(path, {})
        self._last_events[path] = now
        killed_here = local - self._last_local.get(path, 0)
        self._last_local[path] = local
        log.debug("oomkit: memory.events changed at %s: %s", path, now)
        # memory.events is hierarchical; memory.events.local counts a kill only in
        # the victim's own cgroup, so each kernel kill is reported once, there.
        if killed_here > 0:
            self._report_kernel_kill(path, killed_here)
            return      # its memory is on its way back: no condition to re-check now
        if now.get("oom", 0) > before.get("oom", 0):
            # The kernel's OOM killer is at work here right now ('oom' counts its
            # runs, mm/memcontrol.c mem_cgroup_out_of_memory; 'oom_kill' follows
            # when it has killed): its kill is the last word, and a chain run now
            # would take a second task (seen in the VM: ours killed the bystander
            # while the kernel killed the hog).  Its kill is reported when counted.
            self.hub.hush.start(path, kernel=True)
            log.debug("oomkit: the kernel's OOM killer is acting in %s; not running the chain", path)
            return
        if now.get("max", 0) > before.get("max", 0) or now.get("high", 0) > before.get("high", 0):
            self._check(path)

    def _report_kernel_kill(self, path: str, count: int) -> None:
        """The kernel OOM-killed in ``path`` (kernel 6.1 may count one kill twice):
        one report, with the victims from /dev/kmsg."""
        self.hub.hush.start(path, kernel=True)
        killed, oom_memcg = self._kernel_victims(path)
        ours = [v for v in killed if self.backend.killed_lately(v.pid)]
        if ours and len(ours) == len(killed):
            # Our SIGKILL and the kernel's OOM kill raced for the same task: one
            # death, already recorded as ours.
            log.info("oomkit: the kernel also OOM-killed %s in %s, already killed by oomkit",
                     ", ".join(f"pid {v.pid}" for v in ours), path)
            return
        killed = [v for v in killed if v not in ours]
        self.hub.kernel_killed(oom_memcg or path, killed,
                               f"the kernel's OOM killer acted in {path} ({count} oom_kill in "
                               "memory.events.local)")

    def _kernel_victims(self, path: str, wait: float = 0.5) -> tuple[list[Release], str | None]:
        """The kernel's victims in ``path`` from /dev/kmsg and the memcg whose limit
        was hit; the log lines may trail the counter a little, so wait up to ``wait``."""
        fd = self._kmsg()
        if fd is None:
            return [], None
        clock, records = self.backend.clock, self._kmsg_backlog
        deadline = clock.now() + wait
        while True:
            records += [r for r in notify.read_kmsg(fd) if parse.kmsg_oom_kill(r)]
            victims = [v for v in victims_from_kmsg(records) if is_within(v.cgroup, path)]
            if victims or clock.now() >= deadline:
                break
            self.hub.heartbeat()
            clock.sleep(0.01)
        parsed = [(r, parse.kmsg_oom_kill(r)) for r in records]
        memcgs = {f["pid"]: f.get("memcg") for _r, f in parsed if f["kind"] == "summary"}
        # Lines of kills elsewhere (a sibling's, reported next) stay for their report.
        taken = {v.pid for v in victims}
        self._kmsg_backlog = [r for r, f in parsed if f.get("pid") not in taken][-200:]
        return victims, next((memcgs[v.pid] for v in victims if memcgs.get(v.pid)), None)

    def _kmsg(self) -> int | None:
        if self._kmsg_fd is None:
            try:
                self._kmsg_fd = notify.open_kmsg()
            except KernelError:
                return None
        return self._kmsg_fd
