"""TaskCache: /proc fds kept between OOMs.

The logic over a fake /proc (real file names and formats, pids above any real
pid_max); what it relies on from the kernel (a kept fd re-reads fresh values;
it fails with ESRCH once its process is gone) against the real /proc with a
child process of our own (no root needed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from oomkit.linux.procfs import ProcFS
from oomkit.linux.taskcache import TaskCache

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "linux"
PID, OTHER = 5_000_101, 5_000_102
KiB = 1024


def TUPLE(pid, tag, sample):
    return pid, tag, sample


def fake_task(proc: Path, pid: int, *, rss_kb: int = 13508, adj: int = 0, start: int = 52831,
              kthread: bool = False, statm: str | None = None) -> Path:
    d = proc / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    status = (FIX / ("proc_status_kthread.txt" if kthread else "proc_status.txt")).read_text()
    (d / "status").write_text(status.replace("VmRSS:\t   13508 kB", f"VmRSS:\t{rss_kb:8d} kB"))
    stat = (FIX / "proc_stat.txt").read_text().replace("4587 (python3)", f"{pid} (python3)", 1)
    (d / "stat").write_text(stat.replace(" 52831 ", f" {start} ", 1))
    (d / "oom_score_adj").write_text(f"{adj}\n")
    (d / "statm").write_text(statm if statm is not None else f"4141 {rss_kb // 4} 1146 1 0 1013 0\n")
    return d


def set_rss(d: Path, rss_kb: int, *, statm_too: bool) -> None:
    """Rewrite in place (same inode, as the kept fd sees it) VmRSS and, if asked, statm."""
    text = (d / "status").read_text()
    old = next(line for line in text.splitlines() if line.startswith("VmRSS:"))
    (d / "status").write_text(text.replace(old, f"VmRSS:\t{rss_kb:8d} kB"))
    if statm_too:
        (d / "statm").write_text(f"4141 {rss_kb // 4} 1146 1 0 1013 0\n")


@pytest.fixture
def proc(tmp_path):
    return tmp_path / "proc"


def test_first_sight_reads_status_stat_and_adj(proc):
    fake_task(proc, PID, rss_kb=2048, adj=300)
    s = TaskCache(ProcFS(proc)).sample(PID, "/a")
    assert (s.comm, s.rss, s.pgtables, s.swap, s.oom_score_adj, s.uid, s.starttime, s.exiting) == \
        ("python3", 2048 * KiB, 68 * KiB, 0, 300, 0, 52831, False)


def test_unchanged_statm_reuses_the_last_status_and_a_changed_one_rereads_it(proc):
    d = fake_task(proc, PID, rss_kb=2048)
    cache = TaskCache(ProcFS(proc))
    assert cache.sample(PID, "/a").rss == 2048 * KiB
    set_rss(d, 4096, statm_too=False)          # cannot happen in the kernel: statm moves with VmRSS
    assert cache.sample(PID, "/a").rss == 2048 * KiB     # so it is not read
    set_rss(d, 4096, statm_too=True)
    assert cache.sample(PID, "/a").rss == 4096 * KiB


def test_capacity_zero_reads_every_task_afresh(proc):
    d = fake_task(proc, PID, rss_kb=2048)
    cache = TaskCache(ProcFS(proc), capacity=0)
    assert cache.sample(PID, "/a").rss == 2048 * KiB
    set_rss(d, 4096, statm_too=False)
    assert cache.sample(PID, "/a").rss == 4096 * KiB and len(cache) == 0


def test_oom_score_adj_is_read_at_every_look(proc):
    d = fake_task(proc, PID, adj=0)
    cache = TaskCache(ProcFS(proc))
    assert cache.sample(PID, "/a").oom_score_adj == 0
    (d / "oom_score_adj").write_text("-500\n")
    assert cache.sample(PID, "/a").oom_score_adj == -500
    assert cache.scan([("/a", [PID])], TUPLE)[0][2].oom_score_adj == -500


def test_kernel_threads_are_left_out(proc):
    fake_task(proc, PID, kthread=True)
    fake_task(proc, OTHER)
    cache = TaskCache(ProcFS(proc))
    assert [pid for pid, _tag, _s in cache.scan([("/", [PID, OTHER])], TUPLE)] == [OTHER]
    assert cache.sample(PID, "/") is None


def test_a_task_gone_between_the_listing_and_the_read_is_left_out(proc):
    fake_task(proc, OTHER)
    assert [pid for pid, _t, _s in TaskCache(ProcFS(proc)).scan([("/a", [PID, OTHER])], TUPLE)] == [OTHER]


def test_scan_forgets_tasks_their_cgroup_no_longer_lists(proc):
    fake_task(proc, PID)
    fake_task(proc, OTHER)
    cache = TaskCache(ProcFS(proc))
    cache.scan([("/a", [PID, OTHER])], TUPLE)
    assert len(cache) == 2
    cache.scan([("/b", [])], TUPLE)                   # another cgroup's scan keeps them
    assert len(cache) == 2
    assert [pid for pid, _t, _s in cache.scan([("/a", [OTHER])], TUPLE)] == [OTHER]
    assert len(cache) == 1


def test_a_task_moved_to_another_cgroup_is_kept_under_its_new_one(proc):
    fake_task(proc, PID)
    cache = TaskCache(ProcFS(proc))
    cache.scan([("/a", [PID])], TUPLE)
    assert [(pid, tag) for pid, tag, _s in cache.scan([("/b", [PID])], TUPLE)] == [(PID, "/b")]
    cache.scan([("/a", [])], TUPLE)                   # its old cgroup's scan does not forget it
    assert len(cache) == 1


def test_a_changed_start_time_is_another_process_and_is_dropped(proc):
    """The fd check is the kernel's (ESRCH, below); the start time is the
    second line of defence when status is read again by path."""
    d = fake_task(proc, PID, rss_kb=2048)
    cache = TaskCache(ProcFS(proc))
    assert cache.sample(PID, "/a") is not None
    fake_task(proc, PID, rss_kb=4096, start=99999)     # statm changes too
    assert cache.sample(PID, "/a") is None and len(cache) == 0
    assert cache.sample(PID, "/a").starttime == 99999  # read afresh as the new process
    assert d.exists()


def test_scan_keeps_what_it_made_while_the_task_and_its_cgroup_are_unchanged(proc):
    d = fake_task(proc, PID, rss_kb=2048)
    cache = TaskCache(ProcFS(proc))
    first = cache.scan([("/a", [PID])], TUPLE)[0]
    assert cache.scan([("/a", [PID])], TUPLE)[0] is first
    (d / "oom_score_adj").write_text("7\n")
    second = cache.scan([("/a", [PID])], TUPLE)[0]
    assert second is not first and second[2].oom_score_adj == 7
    assert cache.scan([("/b", [PID])], TUPLE)[0][1] == "/b"


def test_close_releases_every_fd(proc):
    import os

    fake_task(proc, PID)
    cache = TaskCache(ProcFS(proc))
    cache.sample(PID, "/a")
    before = set(os.listdir("/proc/self/fd"))
    cache.close()
    assert len(cache) == 0
    assert len(before - set(os.listdir("/proc/self/fd"))) == 2     # statm and oom_score_adj


# -- the kernel facts it relies on (real /proc, a child of ours) ----------------------------

CHILD = """
import sys
blocks = []
for line in sys.stdin:
    blocks.append(bytearray(int(line) << 20))   # touched: counted in rss at once
    print("ok", flush=True)
"""


@pytest.fixture
def child():
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def grow(child, mib: int) -> None:
    child.stdin.write(f"{mib}\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "ok"


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs a real /proc")
def test_real_proc_a_kept_fd_sees_the_task_grow(child):
    grow(child, 1)
    cache = TaskCache(ProcFS("/proc"))
    before = cache.sample(child.pid, "/x")
    grow(child, 16)
    after = cache.sample(child.pid, "/x")
    assert len(cache) == 1 and after.rss >= before.rss + 15 * (1 << 20)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs a real /proc")
def test_real_proc_a_kept_fd_fails_once_its_process_is_gone(child):
    cache = TaskCache(ProcFS("/proc"))
    assert cache.sample(child.pid, "/x") is not None
    child.kill()
    child.wait()                                # reaped: the pid is free for reuse
    assert cache.sample(child.pid, "/x") is None
    assert len(cache) == 0


def test_the_cache_leaves_the_daemon_its_fds_and_reads_the_rest_afresh(proc, monkeypatch):
    import os

    from oomkit.linux import taskcache

    pids = [PID + i for i in range(30)]
    for pid in pids:
        fake_task(proc, pid)
    others = len(os.listdir("/proc/self/fd"))
    # room for 10 entries (2 fds each) above what is open and the 1,024 reserve
    soft = others + taskcache.FD_RESERVE + 20
    monkeypatch.setattr(taskcache.resource, "getrlimit", lambda what: (soft, soft))
    cache = TaskCache(ProcFS(proc))
    assert [pid for pid, _t, _s in cache.scan([("/a", pids)], TUPLE)] == pids
    assert 8 <= len(cache) <= 10
