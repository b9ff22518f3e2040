"""Per-task /proc files kept open between OOMs, so that an OOM reads only what changed.

Reading a task afresh costs three opens (``status``, ``stat``,
``oom_score_adj``): about 30 us on the bench machine, most of it the path walk
and the kernel formatting ``status``.  An fd kept open re-reads in 1-2 us:
``pread`` at offset 0 makes the seq_file render the file again
(fs/seq_file.c ``seq_read_iter``), and ``oom_score_adj`` is a plain read
(fs/proc/base.c ``oom_score_adj_read``).  So each cached task costs one
``pread`` of ``statm`` and one of ``oom_score_adj`` per OOM; ``status`` and
``stat`` are read again only when ``statm`` changed.

Why ``statm`` stands for the rest: its seven counters move with every page the
task maps, unmaps, faults in or swaps out (fs/proc/task_mmu.c ``task_statm``),
so while it reads byte for byte as it did, ``VmRSS``, ``VmSwap`` and ``VmPTE``
are taken as unchanged.  Two things can slip through: a swap-out exactly
balanced by faults between two OOMs, and a task that entered ``do_exit()``
(``PF_EXITING``) without having released its mm yet; both last until its
``statm`` next changes, which for an exiting task is within its exit.

Why an entry can never describe another process: an fd on ``/proc/PID/...``
holds the process (its ``struct pid``), not the number.  Once the process is
gone every read fails with ESRCH (``proc_single_show``, ``get_proc_task``),
even if the number has been reused, and the entry is dropped and read afresh.

Cost: two fds per cached task, plus the page the seq_file keeps for ``statm``
from its first read until close: about 4.5 KiB of kernel memory per task.
The cache leaves the rest of the daemon the fds it holds plus a reserve (at
least 1,024, and an eighth of RLIMIT_NOFILE), counted when its room is used
up; a task it has no room for is read afresh, as without a cache.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, TypeVar, cast

from oomkit.errors import TaskGone
from oomkit.linux import parse
from oomkit.linux.procfs import ProcFS

log = logging.getLogger("oomkit")

_O = os.O_RDONLY | os.O_CLOEXEC
T = TypeVar("T")
R = TypeVar("R")
# fds always left to the rest of the daemon (v1 takes three per managed memcg),
# beyond those it holds: at least this many, and an eighth of RLIMIT_NOFILE.
FD_RESERVE = 1024


class TaskSample(NamedTuple):
    """One process as /proc shows it: memory in bytes, start time in clock ticks."""

    comm: str
    rss: int
    swap: int
    pgtables: int
    oom_score_adj: int
    uid: int
    starttime: int
    exiting: bool       # zombie or dead, or in do_exit() (PF_EXITING)


class _Entry:
    __slots__ = ("statm_fd", "adj_fd", "statm", "adj", "sample", "tag", "made")

    def __init__(self, statm_fd: int, adj_fd: int, tag: object):
        self.statm_fd, self.adj_fd, self.tag = statm_fd, adj_fd, tag
        self.statm = self.adj = b""
        self.sample: TaskSample | None = None     # None: a kernel thread
        self.made: object = None                  # scan()'s make(pid, tag, sample), kept while both hold


class TaskCache:
    """Samples of processes by tgid, read through fds kept between calls.

    ``capacity`` caps the processes kept (0: keep none, read every task afresh).
    ``tag`` is the caller's (the cgroup a task was met in): :meth:`scan`
    forgets a task that its tag's group no longer lists.  Hold :attr:`lock`
    around :meth:`sample` (:meth:`scan` takes it): a handler abandoned by the
    guard may still be reading on its worker thread when the next OOM comes.
    """

    def __init__(self, proc: ProcFS, capacity: int = 10_000):
        self.proc = proc
        self.capacity = capacity
        self._entries: dict[int, _Entry] = {}
        self._by_tag: dict[object, set[int]] = {}
        self._room = 0                  # new entries allowed before fds are counted again
        self._counted = False           # counted during this scan (at most once: it lists /proc/self/fd)
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def sample(self, pid: int, tag: object = None) -> TaskSample | None:
        """The process now; None for a kernel thread or one gone (:class:`TaskGone` never escapes)."""
        entry = self._entries.get(pid)
        if entry is not None:
            try:
                statm = os.pread(entry.statm_fd, 512, 0)
                adj = os.pread(entry.adj_fd, 32, 0)
            except OSError:     # ESRCH: gone, its number maybe reused
                self._drop(pid)
            else:
                if entry.tag != tag:
                    self._retag(pid, entry, tag)
                if statm != entry.statm:
                    return self._refresh(pid, entry, statm, adj)
                if adj != entry.adj and entry.sample is not None:
                    entry.sample = entry.sample._replace(oom_score_adj=int(adj))
                    entry.adj, entry.made = adj, None
                return entry.sample
        return self._first(pid, tag)

    def _first(self, pid: int, tag: object) -> TaskSample | None:
        entry = self._open(pid, tag)
        if entry is None:           # no room: read afresh, keep nothing
            try:
                return self._read(pid, None)
            except TaskGone:    # None, the contract of sample()
                return None
        self._entries[pid] = entry
        self._by_tag.setdefault(tag, set()).add(pid)
        try:
            statm = os.pread(entry.statm_fd, 512, 0)
            adj = os.pread(entry.adj_fd, 32, 0)
        except OSError:         # gone already (ESRCH): None, the contract of sample()
            self._drop(pid)
            return None
        return self._refresh(pid, entry, statm, adj)

    def _refresh(self, pid: int, entry: _Entry, statm: bytes, adj: bytes) -> TaskSample | None:
        """Read ``status`` and ``stat`` by path, then check that the fds' process
        is still there: while it lives, its number cannot name another."""
        old = entry.sample
        try:
            sample = self._read(pid, old.starttime if old is not None else None)
            os.pread(entry.statm_fd, 1, 0)
        except (TaskGone, OSError):     # gone, or its number reused: None, the contract of sample()
            self._drop(pid)
            return None
        # adj and statm as the fds read them, before _read(): a change since
        # then shows at the next look, and _read() has the newer values.
        entry.statm, entry.adj, entry.sample, entry.made = statm, adj, sample, None
        return sample

    def _read(self, pid: int, starttime: int | None) -> TaskSample | None:
        """``status`` + ``stat`` + ``oom_score_adj`` by path; None for a kernel
        thread.  :class:`TaskGone` if the task is gone or (``starttime`` given)
        the number now names another process."""
        proc = self.proc
        status = proc.status(pid)
        if status.get("Kthread"):
            return None
        stat = proc.stat(pid)
        adj = proc.oom_score_adj(pid)
        if starttime is not None and stat["starttime"] != starttime:
            raise TaskGone(f"pid {pid} is another process now")
        exiting = stat["state"] in "ZXx" or bool(stat["flags"] & parse.PF_EXITING)
        return TaskSample(stat["comm"], status["VmRSS"], status["VmSwap"], status["VmPTE"],
                          adj, status.get("Uid", 0), stat["starttime"], exiting)

    def _open(self, pid: int, tag: object) -> _Entry | None:
        if len(self._entries) >= self.capacity or not self._has_room():
            return None
        base = f"{self.proc.root}/{int(pid)}/"
        try:
            statm_fd = os.open(base + "statm", _O)
        except OSError as exc:
            log.debug("oomkit: pid %d not cached (%s): read afresh", pid, exc)
            return None
        try:
            adj_fd = os.open(base + "oom_score_adj", _O)
        except OSError as exc:
            log.debug("oomkit: pid %d not cached (%s): read afresh", pid, exc)
            os.close(statm_fd)
            return None
        self._room -= 1
        return _Entry(statm_fd, adj_fd, tag)

    def _has_room(self) -> bool:
        """Room for one more entry under RLIMIT_NOFILE, counted again when used up."""
        if self._room <= 0 and not self._counted:
            self._counted = True
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            try:
                others = len(os.listdir("/proc/self/fd")) - 2 * len(self._entries)
            except OSError as exc:
                log.debug("oomkit: open fds not counted (%s): no more tasks cached", exc)
                return False
            reserve = max(FD_RESERVE, soft // 8)
            self._room = (soft - others - reserve) // 2 - len(self._entries)
        return self._room > 0

    def scan(self, groups: Iterable[tuple[T, Sequence[int]]],
             make: Callable[[int, T, TaskSample], R]) -> list[R]:
        """``make(pid, tag, sample)`` for every process of every (tag, pids)
        group, kernel threads and tasks gone left out.  A cached process whose
        sample and tag are unchanged gets the object made last time (it should
        be immutable).  Cached processes of these tags that are not among their
        pids any more are forgotten."""
        out: list[R] = []
        append, entries, pread, sample = out.append, self._entries, os.pread, self.sample
        with self.lock:
            self._counted = False
            for tag, pids in groups:
                for pid in pids:
                    # The common case inlined (it runs for every task of the subtree):
                    # cached, same cgroup, neither file changed.
                    e = entries.get(pid)
                    if e is not None and e.tag == tag:
                        try:
                            if pread(e.statm_fd, 512, 0) == e.statm and pread(e.adj_fd, 32, 0) == e.adj:
                                if e.made is not None:
                                    append(cast(R, e.made))     # made by this make(): an R
                                elif e.sample is not None:
                                    e.made = make(pid, tag, e.sample)
                                    append(e.made)
                                continue
                        except OSError:     # gone: sample() below says so (None)
                            pass
                    s = sample(pid, tag)
                    if s is not None:
                        made = make(pid, tag, s)
                        e = entries.get(pid)
                        if e is not None:
                            e.made = made
                        append(made)
                known = self._by_tag.get(tag)
                if known:
                    for pid in known.difference(pids):
                        self._drop(pid)
        return out

    def _retag(self, pid: int, entry: _Entry, tag: object) -> None:
        self._untag(pid, entry.tag)
        entry.tag, entry.made = tag, None
        self._by_tag.setdefault(tag, set()).add(pid)

    def _untag(self, pid: int, tag: object) -> None:
        known = self._by_tag.get(tag)
        if known is not None:
            known.discard(pid)
            if not known:
                del self._by_tag[tag]

    def resize(self, capacity: int) -> None:
        """A new cap; a smaller one forgets everything (tasks are read afresh once)."""
        with self.lock:
            if capacity < len(self._entries):
                self.close()
            self.capacity = capacity

    def _drop(self, pid: int) -> None:
        entry = self._entries.pop(pid, None)
        if entry is not None:
            self._untag(pid, entry.tag)
            os.close(entry.statm_fd)
            os.close(entry.adj_fd)

    def close(self) -> None:
        for pid in list(self._entries):
            self._drop(pid)
