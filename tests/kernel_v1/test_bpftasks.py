"""BpfTasks (the BPF iterators) against /proc and cgroup.procs, on real v1 memcgs.

Each test runs in its own /oomkit-test-<random> memcg (fixture ``sandbox``),
with processes it started: a few ``sleep`` and one 20 MiB hog.  The fixture
``bpf`` runs each test with either program: "css" (the cgroup iterator, 6.7+)
and "task" (the task iterator).  Skipped, with the reason BpfTasks.open()
gives, where one cannot be used.
"""

from __future__ import annotations

import os
import re
import sys
import time

import pytest

from helpers.procs import Proc, until
from oomkit.errors import KernelError
from oomkit.linux import bpftasks
from oomkit.linux.bpftasks import BpfTasks, cgroup_key
from oomkit.linux.procfs import ProcFS
from oomkit.linux.taskcache import TaskCache

PAGE = os.sysconf("SC_PAGE_SIZE")
CPUS = os.cpu_count() or 1
# rss is read as the kernel's get_mm_counter() reads it: since 6.2 the central
# count of a percpu_counter, which lags the exact per-CPU sum that
# /proc/PID/status shows (6.16+) by less than percpu_counter_batch
# (max(32, 2 * CPUs), lib/percpu_counter.c) pages per CPU, for each of the
# three counters in rss (file, anon, shmem).
RSS_SLACK = 3 * max(32, 2 * CPUS) * CPUS * PAGE


def opened(mode: str | None = None, **kw) -> BpfTasks:
    try:
        return BpfTasks.open(mode=mode, **kw)
    except KernelError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=["css", "task"])
def bpf(request):
    tasks = opened(request.param)
    assert tasks.mode == request.param
    try:
        yield tasks
    finally:
        tasks.close()


@pytest.fixture
def both():
    css = opened("css")
    try:
        task = opened("task")
    except BaseException:
        css.close()
        raise
    try:
        yield css, task
    finally:
        css.close()
        task.close()


@pytest.fixture
def sleepers(sandbox):
    started: list[Proc] = []

    def start(cg: str, n: int = 1) -> list[Proc]:
        assert cg == sandbox.root or cg.startswith(sandbox.root + "/")
        out = []
        for _ in range(n):
            p = Proc(["sleep", "600"])
            started.append(p)
            sandbox.fs.attach(cg, p.pid)
            out.append(p)
        for p in out:           # exec'd: a read between fork and exec would name it python3
            deadline = time.monotonic() + 10
            while ProcFS().stat(p.pid)["comm"] != "sleep" and time.monotonic() < deadline:
                time.sleep(0.001)
        return out

    try:
        yield start
    finally:
        for p in started:
            p.reap()


def key(sandbox, cg: str) -> tuple[int, int]:
    return cgroup_key(sandbox.fs.path(cg), sandbox.fs.mount)


def test_reads_exactly_our_subtree_as_proc_shows_it(sandbox, bpf, sleepers):
    fs = sandbox.fs
    top = sandbox.cg("a", limit=128 << 20)
    leaf = sandbox.cg("a/x")
    other = sandbox.cg("b")                      # the target's sibling: never listed
    s_top = sleepers(top, 2)
    s_leaf = sleepers(leaf, 1)
    sleepers(other, 2)
    hog = sandbox.hog(leaf, 20, wait_allocated=60)
    ProcFS().set_oom_score_adj(s_top[0].pid, 500)
    ProcFS().set_oom_score_adj(s_leaf[0].pid, 300)   # raising needs no CAP_SYS_RESOURCE

    ident, level = key(sandbox, top)
    got = bpf.read(ident, level)
    assert bpf.read(ident) == got                # the level only spares the walk of ancestors

    memcg = {p.pid: key(sandbox, top)[0] for p in s_top}
    memcg.update({p.pid: key(sandbox, leaf)[0] for p in (*s_leaf, hog)})
    assert sorted(pid for pid, _, _ in got) == sorted(memcg)
    assert sorted(pid for _, pids in fs.subtree_procs(top) for pid in pids) == sorted(memcg)

    proc = ProcFS()
    for pid, cg_id, s in got:
        assert cg_id == memcg[pid]
        status, stat = proc.status(pid), proc.stat(pid)
        assert s.comm == stat["comm"]
        assert s.starttime == stat["starttime"]
        assert s.uid == status["Uid"]
        assert s.oom_score_adj == proc.oom_score_adj(pid)
        assert s.pgtables == status["VmPTE"]     # bytes, VmPTE is whole KiB of pages
        assert s.swap == status["VmSwap"]
        assert abs(s.rss - status["VmRSS"]) <= RSS_SLACK, (pid, s.rss, status["VmRSS"])
        assert s.exiting is False
    by_pid = {pid: s for pid, _, s in got}
    assert by_pid[s_top[0].pid].oom_score_adj == 500
    assert by_pid[s_leaf[0].pid].oom_score_adj == 300
    assert by_pid[hog.pid].rss >= 20 << 20

    # the same samples TaskCache reads from /proc, but for the approximate rss
    cache = TaskCache(proc)
    try:
        scanned = dict(cache.scan(fs.subtree_procs(top), lambda pid, tag, s: (pid, s)))
    finally:
        cache.close()
    assert {pid: s._replace(rss=0) for pid, s in scanned.items()} == \
        {pid: s._replace(rss=0) for pid, s in by_pid.items()}


def test_leaf_sibling_and_root_of_sandbox(sandbox, bpf, sleepers):
    a, b = sandbox.cg("a"), sandbox.cg("b")
    pa, pb = sleepers(a)[0].pid, sleepers(b)[0].pid
    assert [pid for pid, _, _ in bpf.read(*key(sandbox, a))] == [pa]
    assert [pid for pid, _, _ in bpf.read(*key(sandbox, b))] == [pb]
    assert sorted(pid for pid, _, _ in bpf.read(*key(sandbox, sandbox.root))) == sorted([pa, pb])
    empty = sandbox.cg("a/empty")
    assert bpf.read(*key(sandbox, empty)) == []
    assert bpf.read(*key(sandbox, empty)[:1]) == []


def test_a_task_that_exits_is_gone_at_the_next_read(sandbox, bpf, sleepers):
    cg = sandbox.cg("a")
    first, second = sleepers(cg, 2)
    k = key(sandbox, cg)
    assert sorted(pid for pid, _, _ in bpf.read(*k)) == sorted([first.pid, second.pid])
    first.kill()
    assert first.wait_exit(10)
    # a zombie now (we have not reaped it): gone from cgroup.procs, and from the read
    assert [pid for pid, _, _ in bpf.read(*k)] == [second.pid]
    first.reap()
    assert [pid for pid, _, _ in bpf.read(*k)] == [second.pid]


def test_our_own_process_and_threads(bpf):
    # Not in a sandbox: the memcg this test process runs in, read-only.  One
    # record per process (threads are not listed), ours among them.
    import threading
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        mount = "/sys/fs/cgroup/memory"
        rel = ProcFS().cgroup(os.getpid(), "v1")
        got = bpf.read(*cgroup_key(mount + rel.rstrip("/"), mount))
    finally:
        stop.set()
        t.join()
    mine = [s for pid, _, s in got if pid == os.getpid()]
    assert len(mine) == 1
    assert mine[0].comm == ProcFS().stat(os.getpid())["comm"]
    assert len({pid for pid, _, _ in got}) == len(got)


def test_closed_reader_refuses(bpf):
    bpf.close()
    with pytest.raises(KernelError, match="closed"):
        bpf.read(1)
    bpf.close()                                  # twice is fine


def test_the_live_backend_reads_the_same_tasks_with_either_reader(sandbox, bpf, sleepers):
    """CgroupV1Backend._read_tasks() through BPF (memcg ids named by the
    subtree's directory inodes) and through the /proc cache: the same tasks in
    the same cgroups; a cgroup made after the first read is named too."""
    from oomkit.backends.cgroup_v1 import CgroupV1Backend

    top = sandbox.cg("a")
    sleepers(sandbox.cg("a/x"), 2)
    sleepers(top, 1)
    with_bpf = CgroupV1Backend(sandbox.fs, ProcFS(), dry_run=True, bpf=bpf)
    with_proc = CgroupV1Backend(sandbox.fs, ProcFS(), dry_run=True)
    try:
        def seen(backend):
            return [(t.pid, t.name, t.cgroup, t.oom_score_adj, t.exiting) for t in backend._read_tasks(top)]

        assert seen(with_bpf) == seen(with_proc) and len(seen(with_proc)) == 3
        late = sleepers(sandbox.cg("a/late"), 1)[0]           # an id the backend has not met
        assert (late.pid, "sleep", f"{top}/late") in [t[:3] for t in seen(with_bpf)]
        assert seen(with_bpf) == seen(with_proc)
        # A removed subtree's link is dropped (it would hold the dying cgroup);
        # _links is the reader's link cache, looked at directly for want of a count.
        top_id = key(sandbox, top)[0]
        assert bpf.mode != "css" or top_id in bpf._links
        with_bpf.cgroup_gone(top)
        assert top_id not in bpf._links
        assert seen(with_bpf) == seen(with_proc)     # still there: read again, linked again
    finally:
        with_bpf.bpf = None              # the fixture closes the reader
        with_bpf.close()
        with_proc.close()


def kernel() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int(re.match(r"\d+", minor).group())


def test_the_default_is_the_cgroup_iterator_where_it_loads():
    tasks = opened()
    try:
        if kernel() >= (6, 7):      # the css task iterator, in an iter/cgroup program
            assert (tasks.mode, tasks.fallback) == ("css", None)
        else:
            assert tasks.mode == "task" and tasks.fallback
    finally:
        tasks.close()


def test_either_program_reads_the_same_subtree(sandbox, both, sleepers):
    css, task = both
    top, x, deep, y, b = (sandbox.cg(c) for c in ("a", "a/x", "a/x/deep", "a/y", "b"))
    for cg in (top, x, deep, y):
        sleepers(cg, 2)
    sleepers(b, 3)
    hog = sandbox.hog(y, 8, wait_allocated=60)
    for cg in (top, x, deep, b, sandbox.root):
        k = key(sandbox, cg)

        def strip(got):     # rss moves between two reads of a live hog
            return sorted((pid, m, s._replace(rss=0)) for pid, m, s in got)

        assert strip(css.read(*k)) == strip(task.read(*k)), cg
    assert hog.pid in {pid for pid, _, _ in css.read(*key(sandbox, top))}


def test_the_cgroup_iterator_visits_only_the_subtree(sandbox, sleepers):
    """Cost in proportion to the subtree, by structure: the css task iterators
    return the subtree's tasks only, never those of a sibling or the parent."""
    tasks = opened("css")
    try:
        top = sandbox.cg("a")
        sleepers(top, 2)
        sleepers(sandbox.cg("a/x"), 3)
        sandbox.cg("a/x/empty")
        b = sandbox.cg("b")
        sleepers(b, 20)                               # the sibling's
        sleepers(sandbox.root, 5)                     # the parent's
        got = tasks.read(*key(sandbox, top))
        assert len(got) == 5
        assert tasks.visits == (3, 5)                 # a, a/x, a/x/empty; their 5 processes
        assert len(tasks.read(*key(sandbox, b))) == 20
        assert tasks.visits == (1, 20)
    finally:
        tasks.close()


def test_the_records_map_grows_when_a_subtree_outgrows_it(sandbox, sleepers):
    tasks = opened("css", capacity=2)
    try:
        cg = sandbox.cg("a")
        pids = sorted(p.pid for p in sleepers(cg, 7))
        assert sorted(pid for pid, _, _ in tasks.read(*key(sandbox, cg))) == pids
        assert tasks._s.capacity >= 14
        assert sorted(pid for pid, _, _ in tasks.read(*key(sandbox, cg))) == pids
    finally:
        tasks.close()


def test_links_are_kept_per_cgroup_and_the_oldest_dropped(sandbox, sleepers, monkeypatch):
    monkeypatch.setattr(bpftasks, "LINKS", 2)
    tasks = opened("css")
    try:
        cgs = [sandbox.cg(f"c{i}") for i in range(3)]
        pids = [sleepers(cg, 1)[0].pid for cg in cgs]
        for _ in range(2):
            for cg, pid in zip(cgs, pids):
                assert [p for p, _, _ in tasks.read(*key(sandbox, cg))] == [pid]
        assert list(tasks._links) == [key(sandbox, cg)[0] for cg in cgs[1:]]
        # by path too (the same link), and a path whose cgroup is another now
        assert [p for p, _, _ in tasks.read(*key(sandbox, cgs[0]), path=sandbox.fs.path(cgs[0]))] == [pids[0]]
        assert tasks.read(key(sandbox, cgs[0])[0] + 1, path=sandbox.fs.path(cgs[0])) == []
    finally:
        tasks.close()


def test_a_removed_cgroup_reads_empty(sandbox, bpf):
    cg = sandbox.cg("gone")
    k = key(sandbox, cg)
    assert bpf.read(*k) == []
    sandbox.fs.rmdir(cg)
    assert bpf.read(*k) == []


def leader_state(pid: int) -> str:
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_leader_gone_before_its_threads_is_listed_exiting(sandbox, bpf):
    """cgroup.procs lists a process whose leader thread has exited while
    another thread lives on; so do both programs, exiting, with no memory."""
    cg = sandbox.cg("a")
    # The leader exits only once the process is in ``cg``: a migration skips an
    # exiting thread (cgroup_migrate_add_task(), kernel/cgroup/cgroup.c), and v1's
    # cgroup.procs lists the tgid of any thread it holds, so a leader that exited
    # before the move stayed behind, unlisted by both programs (seen in CI's
    # rehearsal, 2026-11-27: the test's own race, not the readers').
    code = ("import ctypes, sys, threading, time\n"
            "threading.Thread(target=time.sleep, args=(600,)).start()\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "ctypes.CDLL(None).pthread_exit(None)\n")
    p = Proc([sys.executable, "-c", code])
    try:
        sandbox.fs.attach(cg, p.pid)
        assert p.wait_line("ready", 30)
        k = key(sandbox, cg)
        p.go()
        # Wait on the event, not on time (a loaded machine): the leader thread is a
        # zombie once it is past do_exit(), exit_mm() included; its thread lives on.
        assert until(lambda: leader_state(p.pid) == "Z", 60), "the leader thread did not exit"
        # Right after the leader's exit the css task iterator may not list the
        # process for a moment (about 1 read in 7 here, idle machine): its
        # leader is moving to its css_set's dying tasks (kernel/cgroup/cgroup.c
        # cgroup_exit, css_task_iter_advance); wait for the listing, then check it.
        got: list = []
        assert until(lambda: bool(got.extend(bpf.read(*k)) or got), 10), "never listed"
        assert [pid for pid, _, _ in got] == [p.pid]
        assert sorted(pid for _, pids in sandbox.fs.subtree_procs(cg) for pid in pids) == [p.pid]
        s = got[0][2]
        assert s.exiting is True and (s.rss, s.swap, s.pgtables) == (0, 0, 0)
    finally:
        p.reap()


# -- the mm keys: the kill's search for the victim's mm sharers (issue 11 "Cost") --

@pytest.fixture
def shared_hog(sandbox):
    """``start(cg)``: a 1 MiB hog in ``cg`` and the process it clone()d with
    CLONE_VM (tests/helpers/procs.py SHARED_HOG): (hog pid, sharer pid).  The
    sharer is killed afterwards through its pidfd (the hog with the sandbox)."""
    from helpers.procs import SHARED_HOG
    from oomkit.errors import TaskGone
    from oomkit.linux import pidfd
    fds: list[int] = []

    def start(cg: str) -> tuple[int, int]:
        hog = sandbox.hog(cg, 1, script=SHARED_HOG)
        line = hog.read_line(30) or ""
        assert line.startswith("sharer "), line
        sharer = int(line.split()[1])
        fds.append(pidfd.open_pidfd(sharer))
        return hog.pid, sharer

    try:
        yield start
    finally:
        for fd in fds:
            try:
                pidfd.send_signal(fd, 9)
            except TaskGone:
                pass
            os.close(fd)


def test_a_clone_vm_sharer_has_its_victims_key_and_no_other_task_does(sandbox, bpf, sleepers, shared_hog):
    top = sandbox.cg("a")
    sleeping = sleepers(top, 3)
    hog, sharer = shared_hog(top)
    raw = bpf.read_raw(*key(sandbox, top))
    keys = dict(zip([pid for pid, _, _ in bpftasks.parse(raw)], bpftasks.mm_keys(raw), strict=True))
    assert set(keys) == {hog, sharer, *(p.pid for p in sleeping)}
    assert keys[hog] == keys[sharer] != 0
    assert len({keys[p.pid] for p in sleeping} | {keys[hog]}) == 4       # one mm each


@pytest.fixture
def searching(sandbox, bpf, monkeypatch):
    """A backend reading through ``bpf``, and the (dying, others) pid lists
    kcmp.sharers() is asked about (it still answers)."""
    from oomkit.backends.cgroup_v1 import CgroupV1Backend
    from oomkit.linux import kcmp
    asked: list[tuple[list[int], list[int]]] = []
    real = kcmp.sharers

    def sharers(dying, others):
        dying, others = list(dying), list(others)
        asked.append((dying, others))
        return real(dying, others)

    monkeypatch.setattr(kcmp, "sharers", sharers)
    backend = CgroupV1Backend(sandbox.fs, ProcFS(), dry_run=True, bpf=bpf)
    try:
        yield backend, asked
    finally:
        backend.bpf = None          # the fixture bpf closes the reader
        backend.close()


def sharers_of(backend, top: str, pid: int) -> set[int]:
    """Read ``top``'s tasks, and the pids of those sharing ``pid``'s mm (itself included)."""
    pool = backend._read_tasks(top)
    return {t.pid for t in backend.mm_sharers([t for t in pool if t.pid == pid], pool)}


def test_the_sharer_is_found_through_the_key_with_kcmp_asked_about_it_alone(
        sandbox, sleepers, shared_hog, searching):
    backend, asked = searching
    top = sandbox.cg("a")
    sleepers(sandbox.cg("a/x"), 5)
    hog, sharer = shared_hog(top)
    assert sharers_of(backend, top, hog) == {hog, sharer}
    assert asked == [([hog], sorted([hog, sharer]))]      # not the 5 sleepers
    # the sharer as the dying one finds the hog the same way
    assert sharers_of(backend, top, sharer) == {hog, sharer}
    assert asked[1] == ([sharer], sorted([hog, sharer]))


def test_tasks_the_last_read_cannot_vouch_for_are_all_asked(sandbox, bpf, sleepers, shared_hog,
                                                             searching, monkeypatch):
    """Keys go stale: the pool of an earlier read (another subtree read since),
    and a read whose every task started after it began (its keys are 0), leave
    every task to kcmp, which still finds the sharer."""
    backend, asked = searching
    top = sandbox.cg("a")
    other = sandbox.cg("b")
    sleepers(top, 4)
    sleepers(other, 1)
    hog, sharer = shared_hog(top)
    pool = backend._read_tasks(top)
    victim = next(t for t in pool if t.pid == hog)
    backend._read_tasks(other)          # the last read is another subtree's now
    assert {t.pid for t in backend.mm_sharers([victim], pool)} == {hog, sharer}
    assert sorted(asked[-1][1]) == sorted(t.pid for t in pool)      # all 6 asked
    # every task "started after the read began": the program's clock start set
    # to 1 ns after boot right before it runs, as if the read had begun then
    iterator = bpf._s.iterator

    def early(link_fd):
        bpf._s.cfg.read_start = 1
        return iterator(link_fd)

    monkeypatch.setattr(bpf._s, "iterator", early)
    assert set(bpftasks.mm_keys(bpf.read_raw(*key(sandbox, top)))) == {0}
    assert sharers_of(backend, top, hog) == {hog, sharer}
    assert len(asked[-1][1]) == 6
