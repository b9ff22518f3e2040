"""The live backends: the engine's interface over real cgroupfs and /proc.

Everything here reads and writes the kernel only through :mod:`oomkit.linux`
(the one layer that touches it), with the cgroup mount and /proc root passed
in, so a temp dir stands in for the kernel in unit tests.  The context is
read lazily: a policy that looks at one cgroup does not make us read every
``/proc`` entry during an OOM.

What the two live backends share is here: :class:`LiveBackend` (reading
the context, killing by pidfd, limits), the :class:`Hub` their event sources
report to (the daemon), and :class:`Hush`.  cgroup v1 (``cgroup_v1.py``)
intercepts the OOM itself; cgroup v2 (``cgroup_v2.py``) acts before
``memory.max``, which stays the kernel's last word.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from oomkit import oom_kill
from oomkit.backends.base import Fallback, OOMEvent, Release, relief_for
from oomkit.config.common import DEPTH_DEFAULT, PROC_CACHE_DEFAULT
from oomkit.context import (
    CgroupInfo,
    LazyMapping,
    LazyTasks,
    MemoryStat,
    TaskInfo,
    ancestors,
    is_within,
    parent_of,
)
from oomkit.engine.clock import Clock, MonotonicClock
from oomkit.errors import CgroupGone, KernelError, TaskGone
from oomkit.linux import kcmp, notify, parse, pidfd
from oomkit.linux.bpftasks import BpfTasks, cgroup_key
from oomkit.linux.cgroupfs import CgroupFS
from oomkit.linux.procfs import ProcFS
from oomkit.linux.taskcache import TaskCache, TaskSample

if TYPE_CHECKING:  # pragma: no cover
    from oomkit.config.daemon import PSITrigger
    from oomkit.engine.chain import Engine
    from oomkit.schema import OOMRecord

log = logging.getLogger("oomkit")

PAGE = oom_kill.PAGE_SIZE
# A charge may be a 2 MiB huge page: the OOM is over once that much fits again.
CHARGE_MARGIN = 2 << 20
POLL = 0.002
RECENT = 10.0       # seconds a kill of ours is remembered (killed_lately)


@dataclass(frozen=True)
class LiveSettings:
    """What a live stack is opened and reconfigured from (the daemon's config, typed)."""

    dry_run: bool = False
    proc_cache: int = PROC_CACHE_DEFAULT
    headroom: int | None = None          # v2: the standing decision's zone; None: auto
    pressure: PSITrigger | None = None   # v2: a PSI trigger that runs the chain early; None: off
    rearm: float = 0.5                   # v2: seconds between two takes of a standing decision
    depth: int = DEPTH_DEFAULT           # v2: the chain's victim and its successors, marked at once
    executor: str = "daemon"             # v1: who kills the chain's victim, "daemon" or "kernel"


class Dispatcher(Protocol):
    """What a live stack needs from the daemon that runs it."""

    quiet: QuietPeriod

    def register(self, fd: int, callback: Callable, *args, events: int = ...) -> None:
        """Call ``callback(*args, mask)`` when ``fd`` is ready."""

    def unregister(self, fd: int, close: bool = True) -> None: ...

    def handle(self, oom: OOMEvent, pressure: bool = False) -> None:
        """Run the chain for this OOM and record it."""

    def write(self, record: OOMRecord, oom: OOMEvent, *, detected_at: str | None = None,
              resolved_at: str | None = None, latency_ms: float | None = None) -> None:
        """Append one OOM record to the event log, with the daemon's timing."""

    def heartbeat(self) -> None:
        """We are alive (the watchdog's heartbeat), during a long wait."""

    def changed(self) -> None:
        """The cgroup tree changed: match what we manage to it again."""


class Holder(Protocol):
    """Where every kernel setting the daemon changes is held, so that it is put
    back even if the daemon dies (``oomkit.daemon.restore.Restorer``)."""

    def hold(self, path: str, restore: str, *, pid: int | None = None,
             starttime: int | None = None) -> None: ...

    def drop(self, path: str) -> None: ...

    def heartbeat(self) -> None: ...


class LiveStack(Protocol):
    """A hierarchy's live side, opened once by the daemon (``open_stack`` in
    ``cgroup_v1`` and ``cgroup_v2``): the backend the engine drives and the event
    source that wakes the daemon."""

    @property
    def backend(self) -> LiveBackend:
        """The backend the engine drives."""

    def paths(self) -> set[str]:
        """The cgroups watched now."""

    def sync(self, wanted: Iterable[str]) -> None:
        """Watch exactly ``wanted``: restore and drop the others, take the new ones."""

    def bind(self, engine: Engine) -> None:
        """The engine whose attachments decide (rebuilt on reload)."""

    def reconfigure(self, settings: LiveSettings) -> None:
        """New settings on reload: take every watched cgroup again with them."""

    def settle(self, oom: OOMEvent, record: OOMRecord, engine: Engine,
               commit: Callable[[], None]) -> None:
        """After the chain: finish the OOM, and ``commit()`` its record once it is
        what happened (now or on a later timer), or never when there is none."""

    def pressure_file(self, cgroup: str) -> Path | None:
        """Where a PSI trigger for ``cgroup`` is opened, or None (no per-cgroup PSI)."""

    def watch_global(self, on: bool) -> bool:
        """The root attachment handles global OOMs (``on``): True if this stack
        keeps a standing decision for them, False if the daemon's pressure path does."""

    def next_timer(self) -> float | None:
        """Seconds until :meth:`on_timer` wants to run, or None."""

    def on_timer(self) -> None: ...

    def flush(self) -> None:
        """End of a batch of wake-ups."""

    def close(self) -> None:
        """Restore every setting changed, close every fd."""


class QuietPeriod:
    """For one PSI window after an OOM at or around a cgroup, pressure alone
    starts no new OOM there: the window still holds the stalls of the OOM just
    handled, and a cgroup's pressure includes its descendants'."""

    def __init__(self, window: float, clock: Clock):
        self.window, self.clock = window, clock
        self._until: dict[str, float] = {}

    def start(self, path: str) -> None:
        self._until[path] = self.clock.now() + self.window

    def active(self, path: str) -> bool:
        """Is ``path`` (or a cgroup above or below it) quiet?"""
        now = self.clock.now()
        for p, until in list(self._until.items()):
            if until <= now:
                del self._until[p]
            elif is_within(p, path) or is_within(path, p):
                return True
        return False


class Cmdline(Sequence[str]):
    """A task's argv, read from ``/proc/PID/cmdline`` only if a policy looks at
    it: one file fewer per task when an OOM reads a large subtree."""

    __slots__ = ("_proc", "_pid", "_argv")

    def __init__(self, proc: ProcFS, pid: int):
        self._proc, self._pid = proc, pid
        self._argv: tuple[str, ...] | None = None

    def _get(self) -> tuple[str, ...]:
        if self._argv is None:
            try:
                self._argv = tuple(self._proc.cmdline(self._pid))
            except TaskGone:    # exited: no argv, as /proc/PID/cmdline of a zombie reads
                self._argv = ()
        return self._argv

    def __getitem__(self, index):
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())

    def __eq__(self, other: object) -> bool:
        return tuple(self._get()) == (tuple(other) if isinstance(other, Sequence) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._get())


class LiveBackend:
    """What v1 and v2 share: reading the context, killing by pidfd, limits."""

    version = ""

    def __init__(self, fs: CgroupFS, proc: ProcFS, *, clock: Clock | None = None,
                 protected_pids: Sequence[int] = (), dry_run: bool = False,
                 tick: Callable[[], None] = lambda: None, proc_cache: int = PROC_CACHE_DEFAULT,
                 bpf: BpfTasks | None = None):
        self.fs, self.proc = fs, proc
        # How an OOM's tasks are read: with ``bpf``, the BPF reader's one read
        # of the subtree per OOM (linux/bpftasks.py); otherwise /proc through fds
        # kept between OOMs, two small files per task (linux/taskcache.py).
        # Single tasks (task(), task_info()) always come from /proc.
        self.bpf = bpf
        self.task_cache = TaskCache(proc, proc_cache)
        self._cgroup_paths: dict[int, str] = {}     # BPF's memcg ids -> cgroup
        self._scope_ids: dict[str, int] = {}        # subtrees read through BPF -> their ids
        self._bpf_scope = "/"
        self._bpf_lock = threading.Lock()
        self._bpf_make = self._bpf_info   # one bound method: bpf.read() keeps what it made per make
        self.clock = clock or MonotonicClock()
        self.protected_pids = {1, os.getpid(), *protected_pids}
        self.dry_run = dry_run
        self.tick = tick                  # called while we wait (the watchdog's heartbeat)
        self._in_flight: dict[int, int] = {}   # pid -> pidfd of tasks we killed
        self._killed: dict[int, float] = {}    # pid -> when we killed it, for RECENT seconds
        # v2's armed tasks: pid -> the oom_score_adj they had before we marked them,
        # which is what a policy sees (never our 1000).
        self.adj_overlay: dict[int, int] = {}
        self._hz = ProcFS.clock_ticks()

    # -- context -------------------------------------------------------------

    def cgroups(self, oom: OOMEvent, scope: str) -> LazyMapping:
        return LazyMapping(lambda: self.fs.walk(scope), self.cgroup_info,
                           has=lambda path: self._has_cgroup(scope, path))

    def _has_cgroup(self, scope: str, path: str) -> bool:
        try:
            return is_within(path, scope) and self.fs.exists(path)
        except ValueError:      # not a cgroup path ("..", relative): no such cgroup
            return False

    def cgroup_info(self, path: str) -> CgroupInfo:
        fs = self.fs
        try:
            return CgroupInfo(path, fs.usage(path), fs.limit(path), self._swap(path), fs.oom_group(path),
                              tuple(fs.children(path)), tuple(fs.procs(path)), fs.events(path),
                              MemoryStat(lambda: self._memory_stat(path)))
        except CgroupGone:      # removed meanwhile: an empty cgroup, what the engine expects
            log.debug("oomkit: %s removed while it was read: seen empty", path)
            return CgroupInfo(path, 0, None, 0, False, (), (), {})

    def _memory_stat(self, path: str) -> dict[str, int]:
        """memory.stat, read when a policy first looks at ``CgroupInfo.stat``."""
        try:
            swap = self._swap(path) if self.fs.version == "v2" else None
            return self.fs.memory_stat(path, swap)
        except CgroupGone:
            log.debug("oomkit: %s went away before its memory.stat was read", path)
            return {}

    def tasks(self, oom: OOMEvent, scope: str) -> LazyTasks:
        return LazyTasks(lambda: self._read_tasks(scope),
                         lambda path: self._read_tasks(path) if is_within(path, scope) else ())

    def _read_tasks(self, scope: str) -> list[TaskInfo]:
        if self.bpf is not None:
            out = self._read_tasks_bpf(scope)
        else:
            out = self.task_cache.scan(self.fs.subtree_procs(scope), self._info)
        out = self._with_victims(out)
        out.sort()      # by pid: a TaskInfo is a tuple that starts with its (unique) pid
        return out

    def _with_victims(self, tasks: list[TaskInfo]) -> list[TaskInfo]:
        """Our victims on their way out are exiting, and an armed task shows its
        own oom_score_adj (neither is in what the readers keep between OOMs)."""
        dying, adj = self._in_flight, self.adj_overlay
        if not dying and not adj:
            return tasks
        out = []
        for t in tasks:
            if t.pid in dying and not t.exiting:
                t = t._replace(exiting=True)
            if t.pid in adj:
                t = t._replace(oom_score_adj=adj[t.pid])
            out.append(t)
        return out

    def _read_tasks_bpf(self, scope: str) -> list[TaskInfo]:
        path = self.fs.path(scope)
        top, level = cgroup_key(path, self.fs.mount)
        bpf = self.bpf
        if bpf is None:     # _read_tasks() reads through BPF only when it is there
            raise RuntimeError("no BPF task reader")
        with self._bpf_lock:
            self._bpf_scope = scope
            self._scope_ids[scope] = top
            return bpf.read(top, level, self._bpf_make, path=path)

    def cgroup_gone(self, path: str) -> None:
        """``path`` was removed: forget what was kept for it and below (the BPF
        reader's link to it holds the cgroup in the kernel until dropped)."""
        with self._bpf_lock:
            for scope, ident in list(self._scope_ids.items()):
                if is_within(scope, path):
                    del self._scope_ids[scope]
                    if self.bpf is not None:
                        self.bpf.forget(ident)
            for ident, cg in list(self._cgroup_paths.items()):
                if is_within(cg, path):
                    del self._cgroup_paths[ident]

    def _bpf_info(self, pid: int, memcg_id: int, s: TaskSample) -> TaskInfo:
        """A task from the iterator's record (made once per distinct record):
        its memcg id named through the ids of the subtree's directories, read
        again when an id is new (a cgroup made since)."""
        path = self._cgroup_paths.get(memcg_id)
        if path is None:
            if len(self._cgroup_paths) > 65536:        # cgroups come and go: stay bounded
                self._cgroup_paths.clear()
            self._cgroup_paths.update(self.fs.cgroup_ids(self._bpf_scope))
            path = self._cgroup_paths.get(memcg_id) or self._cgroup_of(pid)
        return self._info(pid, path, s)

    def _cgroup_of(self, pid: int) -> str:
        """/proc/PID/cgroup, for a task in a cgroup made and gone between two looks."""
        try:
            return self.proc.cgroup(pid, self.fs.version) or self._bpf_scope
        except TaskGone:
            log.debug("oomkit: pid %d gone before its cgroup was read: counted in %s",
                      pid, self._bpf_scope)
            return self._bpf_scope

    def _info(self, pid: int, cgroup: str, s: TaskSample) -> TaskInfo:
        # Exiting: a zombie or dead, or in do_exit() (PF_EXITING: killed by
        # anyone, or leaving by itself); _read_tasks() adds our own victims.
        # The argv is a lazy Sequence (read only if a policy looks), typed as the tuple it acts as.
        argv = cast("tuple[str, ...]", Cmdline(self.proc, pid))
        return TaskInfo(pid, s.comm, argv, cgroup, s.rss, s.swap, s.pgtables,
                        s.oom_score_adj, s.uid, s.starttime / self._hz, s.exiting)

    def warm(self, scope: str) -> int:
        """Read every task of ``scope`` now, before any OOM there, so that an OOM
        re-reads only what changed (the /proc cache's fds, or the BPF reader's
        parsed records): the daemon does it when it takes a cgroup.  How many
        tasks it read."""
        return len(self._read_tasks(scope))

    def task(self, pid: int) -> TaskInfo | None:
        try:
            cgroup = self.proc.cgroup(pid, self.fs.version)
        except TaskGone:        # None: the task is gone, the contract of task()
            return None
        return self.task_info(pid, cgroup) if cgroup is not None else None

    def task_info(self, pid: int, cgroup: str) -> TaskInfo | None:
        """One task from /proc; None for kernel threads and tasks gone meanwhile."""
        cache = self.task_cache
        with cache.lock:
            s = cache.sample(pid, cgroup)
        return None if s is None else self._with_victims([self._info(pid, cgroup, s)])[0]

    def _swap(self, path: str) -> int:
        return 0

    def kernel_fallback(self, oom: OOMEvent) -> Fallback:
        """What the kernel's own OOM killer does when the chain fails: each hierarchy's own."""
        raise NotImplementedError

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

    def mm_sharers(self, dying: Sequence[TaskInfo], pool: Sequence[TaskInfo]) -> list[TaskInfo]:
        """The tasks of ``pool`` sharing an mm with one of ``dying`` (kcmp(2)).
        The kernel looks at every process of the machine; we at ``pool``, the
        OOM's own tasks: a sharer outside the OOMing memcg is not found.

        With the BPF reader, kcmp looks only at the tasks its last read cannot
        clear (``BpfTasks.mm_candidates``: the dying ones' mm keys, and every
        task it does not vouch for), not at each task of the memcg: one kcmp
        per task was 51-65 ms at 10,000 tasks (bench/RESULTS.md 3b).  The
        keys only narrow the search; kcmp still confirms each sharer."""
        if not dying or not pool:
            return []
        if self.bpf is not None:
            narrowed = self.bpf.mm_candidates(dying, pool)
            if narrowed is not None:
                pool = narrowed
                if not pool:
                    return []
        found = kcmp.sharers((t.pid for t in dying), (t.pid for t in pool))
        return [t for t in pool if t.pid in found]

    def _kill_one(self, task: TaskInfo) -> bool:
        """SIGKILL through a pidfd, only if the pid still names the task we saw
        (then ``process_mrelease`` reaps its memory at once, Linux 5.15+); the
        pidfd stays open to tell when the victim is gone (``in_flight``)."""
        fd = pidfd.kill_keeping_pidfd(task.pid, round(task.start_time * self._hz),
                                      proc_root=str(self.proc.root))
        if fd is None:
            return False
        self._in_flight[task.pid] = fd
        now = self.clock.now()
        self._killed = {pid: t for pid, t in self._killed.items() if now - t < RECENT}
        self._killed[task.pid] = now
        return True

    def killed_lately(self, pid: int) -> bool:
        """Did we kill ``pid`` in the last few seconds?  The kernel may OOM-kill our
        victim too when it charges at the limit before our SIGKILL lands: that
        is one death, already ours (v2 reports kernel kills)."""
        t = self._killed.get(pid)
        return t is not None and self.clock.now() - t < RECENT

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
                log.debug("oomkit: %s removed meanwhile: no limit of its counted", p)
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
        return self.poll_until(lambda: self.condition_gone(oom), timeout)

    def poll_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Ask ``done`` every ``POLL`` until it says yes (True) or ``timeout`` has
        passed (False); the heartbeat ticks meanwhile (the watchdog must keep
        hearing from a daemon that waits on the kernel)."""
        deadline = self.clock.now() + timeout
        while not done():
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
        except CgroupGone:      # a memcg removed cannot be under pressure: the OOM is over
            return True

    def margin(self, oom: OOMEvent) -> int:
        return max(oom.requested or 0, CHARGE_MARGIN)

    def _global_gone(self, oom: OOMEvent) -> bool:
        return self.proc.meminfo().get("MemAvailable", 0) >= (oom.requested or 0)

    def close(self) -> None:
        for fd in self._in_flight.values():
            os.close(fd)
        self._in_flight.clear()
        self.task_cache.close()
        if self.bpf is not None:
            self.bpf.close()


OOM_SCORE_ADJ_MAX = 1000      # include/uapi/linux/oom.h
OOM_SCORE_ADJ_MIN = -1000


def mark_for_kernel(proc: ProcFS, holder: Holder, pid: int,
                    value: int = OOM_SCORE_ADJ_MAX) -> tuple[int, int] | None:
    """Mark ``pid`` for the kernel's OOM killer: ``oom_score_adj`` ``value`` (1000
    by default, so that oom_badness(), mm/oom_kill.c ``points += adj *
    totalpages / 1000``, ranks it above every task at 0 or below).  The original
    is held first (with the start time, against pid reuse).  (original,
    starttime), or None: gone, -1000 (never touched: the kernel never picks
    it), or already above ``value`` (a mark only ever raises)."""
    try:
        starttime = proc.stat(pid)["starttime"]
        original = proc.oom_score_adj(pid)
        if original <= OOM_SCORE_ADJ_MIN or original > value:
            return None
        holder.hold(str(proc.root / str(pid) / "oom_score_adj"), str(original),
                    pid=pid, starttime=starttime)
        proc.set_oom_score_adj(pid, value)
    except TaskGone:
        return None
    return original, starttime


def remark(proc: ProcFS, pid: int, starttime: int, value: int) -> bool:
    """Move a marked task's ``oom_score_adj`` to ``value`` (its original stays
    held); False if it is gone (or its pid reused)."""
    try:
        if proc.stat(pid)["starttime"] != starttime:
            return False
        proc.set_oom_score_adj(pid, value)
    except TaskGone:
        return False
    return True


def unmark(proc: ProcFS, holder: Holder, pid: int, original: int, starttime: int) -> None:
    """Put a marked task's own ``oom_score_adj`` back (if it is still that task)."""
    try:
        if proc.stat(pid)["starttime"] == starttime:
            proc.set_oom_score_adj(pid, original)
    except TaskGone:
        log.debug("oomkit: marked pid %d exited before it was put back", pid)
    holder.drop(str(proc.root / str(pid) / "oom_score_adj"))


class KernelLog:
    """/dev/kmsg, for the kernel's own reports of its kills: opened on first use
    (from where it stood then: a kill's lines are written before we wake for it)
    and, if it cannot be, not tried again (kernel victims go unnamed)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._failed = False

    def fd(self) -> int | None:
        if self._fd is None and not self._failed:
            try:
                self._fd = notify.open_kmsg()
            except KernelError as exc:
                log.debug("oomkit: /dev/kmsg unavailable (%s): kernel victims unnamed", exc)
                self._failed = True
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def victims_from_kmsg(records: list[str]) -> list[Release]:
    """The kernel's own report of its kills: each "Killed process" line, with
    the victim's memcg from the "oom-kill:" summary line (mm/oom_kill.c
    dump_oom_victim() and __oom_kill_process()).  Each victim once, in order: a
    read may name one twice (6.1 reports some memcg kills twice; a look put off
    on v2 reads both lines at once), and a killed pid is one death."""
    lines = [f for f in (parse.kmsg_oom_kill(r) for r in records) if f]
    memcgs = {f["pid"]: f.get("task_memcg") for f in lines if f["kind"] == "summary"}
    out: dict[int, Release] = {}
    for f in lines:
        if f["kind"] == "killed" and f["pid"] not in out:
            rss = sum(f.get(k) or 0 for k in ("anon_rss", "file_rss", "shmem_rss"))
            out[f["pid"]] = Release(f["pid"], f["name"], memcgs.get(f["pid"]) or "?", rss, rss)
    return list(out.values())
