"""The live backends: the engine's interface over real cgroupfs and /proc.

Everything here reads and writes the kernel only through :mod:`oomkit.linux`
(the one layer that touches it), with the cgroup mount and /proc root passed
in, so a temp dir stands in for the kernel in unit tests.  The context is
read lazily: a policy that looks at one cgroup does not make us read every
``/proc`` entry during an OOM.

cgroup v1 (:class:`CgroupV1Backend`) intercepts the OOM itself: the memcg has
``oom_kill_disable 1``, its tasks are paused, and the kernel's killer acts
only when we hand the OOM back.  cgroup v2 (:class:`CgroupV2Backend`) acts
before ``memory.max``, which stays the kernel's last word.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence

from oomkit import oom_kill
from oomkit.backends.base import Fallback, OOMEvent, Release, relief_for
from oomkit.context import CgroupInfo, LazyMapping, LazyTasks, TaskInfo, ancestors, parent_of
from oomkit.engine.clock import Clock, MonotonicClock
from oomkit.errors import CgroupGone, KernelError, TaskGone
from oomkit.linux import notify, parse, pidfd
from oomkit.linux._oserror import os_errors
from oomkit.linux.cgroupfs import CgroupFS
from oomkit.linux.procfs import ProcFS

log = logging.getLogger("oomkit")

PAGE = oom_kill.PAGE_SIZE
# A charge may be a 2 MiB huge page: the OOM is over once that much fits again.
CHARGE_MARGIN = 2 << 20
POLL = 0.002


class LiveBackend:
    """What v1 and v2 share: reading the context, killing by pidfd, limits."""

    version = ""

    def __init__(self, fs: CgroupFS, proc: ProcFS, *, clock: Clock | None = None,
                 protected_pids: Sequence[int] = (), dry_run: bool = False,
                 tick: Callable[[], None] = lambda: None):
        self.fs, self.proc = fs, proc
        self.clock = clock or MonotonicClock()
        self.protected_pids = {1, os.getpid(), *protected_pids}
        self.dry_run = dry_run
        self.tick = tick                  # called while we wait (the watchdog's heartbeat)
        self._in_flight: dict[int, int] = {}   # pid -> pidfd of tasks we killed
        self._hz = ProcFS.clock_ticks()

    # -- context -------------------------------------------------------------

    def cgroups(self, oom: OOMEvent, scope: str) -> Mapping[str, CgroupInfo]:
        return LazyMapping(lambda: self.fs.walk(scope), self.cgroup_info)

    def cgroup_info(self, path: str) -> CgroupInfo:
        fs = self.fs
        try:
            return CgroupInfo(path, fs.usage(path), fs.limit(path), self._swap(path), fs.oom_group(path),
                              tuple(fs.children(path)), tuple(fs.procs(path)), fs.events(path))
        except CgroupGone:
            return CgroupInfo(path, 0, None, 0, False, (), (), {})

    def tasks(self, oom: OOMEvent, scope: str) -> LazyTasks:
        return LazyTasks(lambda: self._read_tasks(scope))

    def _read_tasks(self, scope: str) -> list[TaskInfo]:
        out = []
        task_info = self.task_info
        for path, pids in self._subtree_procs(scope):
            for pid in pids:
                info = task_info(pid, path)
                if info is not None:
                    out.append(info)
        out.sort(key=lambda t: t.pid)
        return out

    def _subtree_procs(self, scope: str) -> list[tuple[str, list[int]]]:
        """(cgroup, its cgroup.procs) for ``scope`` and every cgroup below it; one
        removed meanwhile is skipped.  The same as ``fs.walk`` + ``fs.procs``, on
        plain string paths with raw ``os`` calls: during an OOM in a subtree of
        1,000 memcgs, the ``Path`` objects and text files cost half the time."""
        out = []
        stack = [(scope, str(self.fs.path(scope)))]      # validated once, at the top
        while stack:
            cg, d = stack.pop()
            try:
                with os_errors(d, CgroupGone, "list"):
                    with os.scandir(d) as it:
                        kids = [e.name for e in it if e.is_dir(follow_symlinks=False)]
                with os_errors(d, CgroupGone, "read cgroup.procs of"):
                    pids = parse.pids(_read_bytes(d + "/cgroup.procs"))
            except CgroupGone:
                continue
            out.append((cg, pids))
            prefix = "" if cg == "/" else cg
            stack.extend((f"{prefix}/{n}", f"{d}/{n}") for n in reversed(kids))
        return out

    def task_info(self, pid: int, cgroup: str) -> TaskInfo | None:
        """One task from /proc; None for kernel threads and tasks gone meanwhile."""
        try:
            status = self.proc.status(pid)
            if status.get("Kthread"):
                return None
            stat = self.proc.stat(pid)
            exiting = stat["state"] in "ZXx" or pid in self._in_flight
            return TaskInfo(pid, stat["comm"], tuple(self.proc.cmdline(pid)), cgroup,
                            status["VmRSS"], status["VmSwap"], status["VmPTE"],
                            self.proc.oom_score_adj(pid), status.get("Uid", 0),
                            stat["starttime"] / self._hz, exiting)
        except TaskGone:
            return None

    def _swap(self, path: str) -> int:
        return 0

    def totalpages(self, oom: OOMEvent) -> int:
        meminfo = self.proc.meminfo()
        swap_pages = meminfo.get("SwapTotal", 0) // PAGE
        if oom.level == "memcg":
            limit = self.fs.limit(oom.memcg)
            if limit is not None:
                return limit // PAGE + swap_pages
        return meminfo["MemTotal"] // PAGE + swap_pages

    # -- actions ---------------------------------------------------------------

    def kill(self, tasks: Sequence[TaskInfo], oom: OOMEvent, *, cgroup: str | None = None) -> list[Release]:
        out = []
        for task in tasks:
            if self.protected(task.pid):
                continue
            if self.dry_run or self._kill_one(task):
                out.append(Release(task.pid, task.name, task.cgroup, task.rss,
                                   relief_for(oom, task.cgroup, task.rss)))
        return out

    def _kill_one(self, task: TaskInfo) -> bool:
        """SIGKILL through a pidfd, only if the pid still names the task we saw."""
        try:
            fd = pidfd.open_pidfd(task.pid)
        except TaskGone:
            return False
        try:
            same = round(task.start_time * self._hz) == self.proc.stat(task.pid)["starttime"]
            if not same or pidfd.wait_exit(fd, 0):
                os.close(fd)
                return False
            pidfd.send_signal(fd, signal.SIGKILL)
        except TaskGone:
            os.close(fd)
            return False
        self._in_flight[task.pid] = fd
        try:
            pidfd.process_mrelease(fd)      # Linux 5.15+: reap its memory now, in our context
        except KernelError:
            pass                            # the exit path frees it a little later
        return True

    def set_limit(self, path: str, limit: int) -> None:
        if not self.dry_run:
            self.fs.set_limit(path, limit)

    def headroom(self, path: str) -> int:
        room = self.proc.meminfo().get("MemAvailable", 0)
        parent = parent_of(path)
        for p in ancestors(parent) if parent else ():
            try:
                limit = self.fs.limit(p)
            except CgroupGone:
                continue
            if limit is not None:
                room = min(room, limit - self.fs.usage(p))
        return max(0, room)

    def protected(self, pid: int) -> str | None:
        if pid in self.protected_pids:
            return f"pid {pid} is oomkit itself, its watchdog or init"
        return None

    # -- the OOM condition --------------------------------------------------------

    def in_flight(self) -> tuple[int, ...]:
        for pid, fd in list(self._in_flight.items()):
            if pidfd.wait_exit(fd, 0):
                os.close(fd)
                del self._in_flight[pid]
        return tuple(self._in_flight)

    def wait_for_relief(self, oom: OOMEvent, timeout: float) -> bool:
        deadline = self.clock.now() + timeout
        while not self.condition_gone(oom):
            if self.clock.now() >= deadline:
                return False
            self.tick()
            self.clock.sleep(POLL)
        return True

    def condition_gone(self, oom: OOMEvent) -> bool:
        if oom.level != "memcg":
            return self._global_gone(oom)
        try:
            limit = self.fs.limit(oom.memcg)
            return limit is None or self.fs.usage(oom.memcg) + self.margin(oom) <= limit
        except CgroupGone:
            return True

    def margin(self, oom: OOMEvent) -> int:
        return max(oom.requested or 0, CHARGE_MARGIN)

    def _global_gone(self, oom: OOMEvent) -> bool:
        return self.proc.meminfo().get("MemAvailable", 0) >= (oom.requested or 0)

    def close(self) -> None:
        for fd in self._in_flight.values():
            os.close(fd)
        self._in_flight.clear()


class CgroupV1Backend(LiveBackend):
    """cgroup v1: the OOMing memcg's tasks are paused (``oom_kill_disable 1``)
    until we release memory or hand the OOM back to the kernel."""

    version = "v1"
    HANDBACK_WAIT = 2.0

    def _swap(self, path: str) -> int:
        try:
            memsw = parse.int_value(self.fs.read(path, "memory.memsw.usage_in_bytes"))
            return max(0, memsw - self.fs.usage(path))
        except KernelError:
            return 0     # no swap accounting (swapaccount=0)

    def condition_gone(self, oom: OOMEvent) -> bool:
        if oom.level == "memcg":
            try:
                if not self.fs.oom_control(oom.memcg)["under_oom"]:
                    return True
            except CgroupGone:
                return True
        return super().condition_gone(oom)

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

    def _wait_kill(self, oom: OOMEvent, before: int) -> bool:
        deadline = self.clock.now() + self.HANDBACK_WAIT
        while self.clock.now() < deadline:
            if self._oom_kills(oom.memcg) > before:
                return True
            self.tick()
            self.clock.sleep(POLL)
        return False

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


class CgroupV2Backend(LiveBackend):
    """cgroup v2: we act before ``memory.max``; the kernel's OOM killer is
    automatic at the limit, so the fallback is to let it be."""

    version = "v2"

    def __init__(self, *args, headroom: int = 0, tripwire: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.headroom_bytes = headroom
        self.tripwire = tripwire      # memory.high = memory.max - headroom is ours to move

    def _swap(self, path: str) -> int:
        try:
            return parse.int_value(self.fs.read(path, "memory.swap.current"))
        except KernelError:
            return 0

    def margin(self, oom: OOMEvent) -> int:
        return max(super().margin(oom), self.headroom_bytes)

    def kill(self, tasks: Sequence[TaskInfo], oom: OOMEvent, *, cgroup: str | None = None) -> list[Release]:
        """A whole-cgroup kill writes ``cgroup.kill`` (Linux 5.14+) when every task
        in it may die; otherwise task by task, skipping -1000 as the kernel does."""
        if cgroup is None or self.dry_run or not self._all_killable(cgroup, tasks):
            return super().kill(tasks, oom, cgroup=cgroup)
        try:
            self.fs.write(cgroup, "cgroup.kill", "1")
        except KernelError:
            return super().kill(tasks, oom, cgroup=cgroup)
        return [Release(t.pid, t.name, t.cgroup, t.rss, relief_for(oom, t.cgroup, t.rss))
                for t in tasks]

    def _all_killable(self, cgroup: str, tasks: Sequence[TaskInfo]) -> bool:
        every = {pid for path in self.fs.walk(cgroup) for pid in self.fs.procs(path)}
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


def _read_bytes(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return b"".join(chunks)


def victims_from_kmsg(records: list[str]) -> list[Release]:
    """The kernel's own report of its kills: each "Killed process" line, with
    the victim's memcg from the "oom-kill:" summary line (mm/oom_kill.c
    dump_oom_victim() and __oom_kill_process())."""
    lines = [f for f in (parse.kmsg_oom_kill(r) for r in records) if f]
    memcgs = {f["pid"]: f.get("task_memcg") for f in lines if f["kind"] == "summary"}
    out = []
    for f in lines:
        if f["kind"] == "killed":
            rss = sum(f.get(k) or 0 for k in ("anon_rss", "file_rss", "shmem_rss"))
            out.append(Release(f["pid"], f["name"], memcgs.get(f["pid"]) or "?", rss, rss))
    return out
