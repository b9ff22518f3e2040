"""BpfTasks (the BPF task iterator) on a real cgroup v2 hierarchy (the VM's 6.1 kernel).

The same object file as on the host (CO-RE): here it meets the older
``struct mm_rss_stat`` layout of mm->rss_stat (before 6.2) and the unified
hierarchy, where a task's memory cgroup is the nearest cgroup with the memory
controller on.  Skipped, with the reason BpfTasks.open() gives, where BPF
cannot be used.
"""

from __future__ import annotations

import os
import re

import pytest

from oomkit.errors import KernelError
from oomkit.linux.bpftasks import BpfTasks, cgroup_key
from oomkit.linux.procfs import ProcFS

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
CPUS = os.cpu_count() or 1
# 6.2+: percpu_counter central count vs the exact sum /proc shows (6.16+);
# before 6.2 both read the same atomics, up to per-thread caches of 64 events.
RSS_SLACK = 3 * max(64, 2 * CPUS) * CPUS * PAGE


@pytest.fixture(params=["css", "task"])
def bpf(v2, request):
    try:
        tasks = BpfTasks.open(mode=request.param)
    except KernelError as exc:
        pytest.skip(str(exc))
    try:
        yield tasks
    finally:
        tasks.close()


def test_subtree_on_v2_matches_proc(box, bpf):
    fs = box.fs
    top = box.cg("a", subtree=True)              # no processes of its own (v2's no-internal-process rule)
    y = box.cg("a/y")
    with_mem = box.cg("a/x")                     # memory on (a's subtree_control)
    no_mem = box.cg("a/x/plain")                 # x does not enable it: charged to x
    other = box.cg("b")
    s_top = box.sleeper(y)
    s_x = box.sleeper(with_mem)
    s_plain = box.sleeper(no_mem)
    box.sleeper(other)
    hog = box.hog(with_mem, 20)
    assert hog.wait_line("allocated", 120)

    def key(cg):
        return cgroup_key(fs.path(cg), fs.mount)

    ident, level = key(top)
    got = bpf.read(ident, level)
    assert bpf.read(ident) == got
    want = {s_top.pid: key(y)[0], s_x.pid: key(with_mem)[0],
            s_plain.pid: key(with_mem)[0], hog.pid: key(with_mem)[0]}
    assert {pid: cg for pid, cg, _ in got} == want
    assert [pid for pid, _, _ in bpf.read(*key(other))] != []
    assert not {pid for pid, _, _ in bpf.read(*key(other))} & set(want)

    proc = ProcFS()
    for pid, _, s in got:
        status, stat = proc.status(pid), proc.stat(pid)
        assert (s.comm, s.starttime, s.uid) == (stat["comm"], stat["starttime"], status["Uid"])
        assert s.oom_score_adj == proc.oom_score_adj(pid)
        assert s.pgtables == status["VmPTE"]
        assert s.swap == status["VmSwap"]
        assert abs(s.rss - status["VmRSS"]) <= RSS_SLACK, (pid, s.rss, status["VmRSS"])
        assert s.exiting is False
    assert {pid: s for pid, _, s in got}[hog.pid].rss >= 20 * MiB

    s_top.kill()
    assert s_top.wait_exit(30)
    assert s_top.pid not in {pid for pid, _, _ in bpf.read(ident, level)}


def test_the_task_iterator_is_the_fallback_before_6_7(v2):
    """6.1 has the cgroup iterator but not the css task iterator (6.7): open()
    falls back to the task iterator and says why."""
    major, minor = os.uname().release.split(".")[:2]
    try:
        tasks = BpfTasks.open()
    except KernelError as exc:
        pytest.skip(str(exc))
    try:
        if (int(major), int(re.match(r"\d+", minor).group())) < (6, 7):
            assert tasks.mode == "task"
            assert "dump_subtree" in tasks.fallback, tasks.fallback
        else:
            assert (tasks.mode, tasks.fallback) == ("css", None)
    finally:
        tasks.close()
