"""Issue 12: ``CgroupInfo.stat``, the cgroup's memory.stat in one vocabulary for
cgroup v1 and v2, read lazily; and the simulator's page cache: file pages count
in usage, are reclaimed before an OOM is declared, and ``stat`` reports them."""

from __future__ import annotations

from pathlib import Path

import pytest

from oomkit import CgroupInfo, ContextReadOnly, Verdict
from oomkit.backends.live import LiveBackend
from oomkit.context import MemoryStat
from oomkit.linux import parse
from oomkit.linux.cgroupfs import CgroupFS
from oomkit.linux.procfs import ProcFS
from oomtest_helpers import FuncPolicy, M, make_sim

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "linux"

V2_STAT = """anon 1048576
file 2097152
kernel 4096
shmem 8192
file_mapped 12288
file_dirty 0
pgscan 42
pgsteal 40
workingset_refault_anon 3
workingset_refault_file 5
pgfault 100
"""


# -- parsing (pure) --------------------------------------------------------------------------

def test_v1_names_map_to_the_v2_vocabulary_from_the_hierarchical_totals():
    stat = parse.memory_stat((FIX / "v1_memory.stat").read_text(), "v1")
    assert stat["anon"] == 6696960 and stat["file"] == 71278592      # total_rss, total_cache
    assert stat["shmem"] == 9084928 and stat["file_mapped"] == 10825728
    assert stat["swap"] == 0 and stat["file_dirty"] == 167936
    assert stat["workingset_refault"] == 0 + 46018
    assert "pgscan" not in stat and "pgsteal" not in stat            # v1 does not count them


def test_v2_names_are_kept_and_swap_comes_from_memory_swap_current():
    stat = parse.memory_stat(V2_STAT, "v2", swap=7 * M)
    assert (stat["anon"], stat["file"], stat["shmem"], stat["file_mapped"]) == (1 << 20, 2 << 20, 8192, 12288)
    assert (stat["pgscan"], stat["pgsteal"], stat["workingset_refault"]) == (42, 40, 8)
    assert stat["swap"] == 7 * M


# -- lazy and read-only ------------------------------------------------------------------------

def test_stat_is_read_on_first_use_only_once_and_is_read_only():
    reads = []
    stat = MemoryStat(lambda: reads.append(1) or {"file": 5})
    info = CgroupInfo("/a", 1, None, 0, False, (), (), {}, stat)
    assert reads == [] and not info.stat.loaded
    assert info == CgroupInfo("/a", 1, None, 0, False, (), (), {})   # comparing reads nothing
    assert reads == []
    assert info.stat["file"] == 5 and dict(info.stat) == {"file": 5} and reads == [1]
    with pytest.raises(ContextReadOnly):
        info.stat._values = {}
    with pytest.raises(TypeError):
        info.stat["file"] = 1       # type: ignore[index]


def test_a_live_policy_that_does_not_look_reads_no_memory_stat(tmp_path):
    # a v1 tree in a temp dir: memory.stat is read only when .stat is used
    root = tmp_path / "memory"
    (root / "a").mkdir(parents=True)
    files = {"memory.usage_in_bytes": "100", "memory.limit_in_bytes": "200",
             "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
             "cgroup.procs": "", "memory.stat": (FIX / "v1_memory.stat").read_text(),
             "memory.failcnt": "0"}
    for name, text in files.items():
        (root / "a" / name).write_text(text)
    backend = LiveBackend(CgroupFS(str(root), "v1"), ProcFS(str(tmp_path / "proc")))
    info = backend.cgroup_info("/a")
    (root / "a" / "memory.stat").unlink()          # any read now would fail
    assert info.usage == 100 and not info.stat.loaded
    (root / "a" / "memory.stat").write_text(files["memory.stat"])
    assert info.stat["file"] == 71278592 and info.stat.loaded


# -- the simulator's page cache -----------------------------------------------------------------

PAGECACHE = dict(
    cgroups=[{"path": "/a", "limit": "100M", "file": "30M"}, {"path": "/b", "file": "50M"}],
    tasks=[{"name": "t", "cgroup": "/a", "rss": "50M", "file": "10M"}])


def test_file_pages_count_in_usage_and_stat_reports_them():
    seen = {}

    def look(oc, k):
        seen.update({p: dict(oc.cgroups[p].stat) for p in ("/", "/a")})
        return Verdict.PASS
    sim = make_sim(**PAGECACHE, events=[{"at": 1, "task": "t", "alloc": "60M"}],
                   policies={"/": FuncPolicy(look)})
    assert sim.machine.cgroups["/a"].usage == 90 * M         # 50M anon + 40M page cache
    result = sim.run()
    # 40M of page cache were reclaimed first: 50 + 40 + 60 = 150M, 50M over; still 10M over
    assert seen["/a"]["file"] == 0 and seen["/a"]["anon"] == 50 * M
    assert seen["/a"]["pgsteal"] == seen["/a"]["pgscan"] == 40 * M // 4096
    assert seen["/"]["file"] == 50 * M                        # /b's, not reclaimed for /a's limit
    assert result.ooms[0].memcg == "/a"


def test_page_cache_is_reclaimed_before_an_oom_is_declared():
    sim = make_sim(**PAGECACHE, events=[{"at": 1, "task": "t", "alloc": "40M"}])
    result = sim.run()
    assert result.ooms == [] and result.failed_allocations == []
    a = sim.machine.cgroups["/a"]
    assert (a.usage, a.file) == (100 * M, 10 * M)            # 30M of 40M reclaimed, 90M anon
    assert result.memory_events["/a"] == {"max": 1}          # the limit was hit, no OOM


def test_a_global_shortage_reclaims_page_cache_anywhere():
    # 40M + 150M of page cache used of 200M: 100M more reclaim 90M of /b's page cache
    sim = make_sim("200M", cgroups=[{"path": "/b", "file": "150M"}],
                   tasks=[{"name": "t", "rss": "40M"}], events=[{"at": 1, "task": "t", "alloc": "100M"}])
    result = sim.run()
    assert result.ooms == [] and sim.machine.cgroups["/b"].file == 60 * M
    assert sim.machine.cgroups["/"].pgsteal == 90 * M


def test_page_cache_outlives_the_task_that_read_it():
    sim = make_sim(**PAGECACHE, events=[{"at": 1, "task": "t", "read": "5M"},
                                        {"at": 2, "task": "t", "exit": True}])
    sim.run()
    assert sim.machine.cgroups["/a"].usage == sim.machine.cgroups["/a"].file == 45 * M
