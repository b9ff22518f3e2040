"""Section 3: the kernel's own OOM killer (mm/oom_kill.c), as fallback and as
kernel-default.  Pure functions over TaskInfo/CgroupInfo, plus totalpages
and the unresolved case through the simulated kernel."""

from __future__ import annotations

import pytest

from oomkit import CgroupInfo, TaskInfo
from oomkit.backends.base import OOMEvent
from oomkit.backends.sim import Machine, SimBackend
from oomkit.context import parent_of
from oomkit.oom_kill import badness, oom_group, select_bad_process
from oomtest_helpers import PAGE, G, M, make_sim


def T(pid, cgroup="/m", rss=0, adj=0, *, swap=0, pgtables=0, exiting=False, nodes=None):
    return TaskInfo(pid, f"t{pid}", (), cgroup, rss, swap, pgtables, adj, 0, 0.0, exiting, nodes)


def tree(*paths, groups=()):
    """CgroupInfo for ``paths`` (and "/"), children in the order given."""
    children: dict[str, list[str]] = {"/": []}
    for p in paths:
        children.setdefault(p, [])
        children.setdefault(parent_of(p), []).append(p)
    return {p: CgroupInfo(p, 0, None, 0, p in groups, tuple(ch), (), {}) for p, ch in children.items()}


def select(tasks, cgroups, level="memcg", memcg="/m", nodes=(), totalpages=1000):
    return select_bad_process(tasks, cgroups, level=level, memcg=memcg, nodes=nodes,
                              totalpages=totalpages)


# -- oom_badness() -------------------------------------------------------------------------

def test_badness_is_rss_plus_swap_plus_pagetables_in_whole_pages():
    t = T(1, rss=10 * PAGE + 100, swap=PAGE - 1, pgtables=2 * PAGE)
    assert badness(t, totalpages=1000) == 10 + 0 + 2        # each field floored to pages


def test_badness_adds_adj_times_totalpages_div_1000_divided_first():
    t = T(1, rss=10 * PAGE, adj=500)
    assert badness(t, totalpages=2999) == 10 + 500 * 2      # 2999 // 1000 = 2, not 2.999
    assert badness(t, totalpages=999) == 10                 # 999 // 1000 = 0: adj has no effect


def test_badness_may_go_negative():
    assert badness(T(1, rss=10 * PAGE, adj=-500), totalpages=1999) == 10 - 500


def test_minus_1000_has_no_badness_but_minus_999_has():
    assert badness(T(1, rss=G, adj=-1000), totalpages=1000) is None
    assert badness(T(1, rss=10 * PAGE, adj=-999), totalpages=2000) == 10 - 1998


# -- select_bad_process() -------------------------------------------------------------------

def test_the_highest_badness_is_chosen_adj_included():
    cg = tree("/m")
    big, favoured = T(100, rss=50 * M), T(101, rss=1 * M, adj=1000)
    d = select([big, favoured], cg, totalpages=25_600)      # adj: 1000 * 25 pages > 12,800
    assert d.victim == favoured and d.points == 256 + 1000 * 25
    assert d.victims == (favoured,) and d.group is None


def test_minus_1000_is_never_chosen():
    cg = tree("/m")
    d = select([T(100, rss=G, adj=-1000), T(101, rss=PAGE)], cg)
    assert d.victim.pid == 101
    nothing = select([T(100, rss=G, adj=-1000)], cg)
    assert nothing.victim is None and not nothing.kills and nothing.waiting_for is None


def test_only_tasks_inside_the_ooming_memcg_are_candidates():
    cg = tree("/m", "/m/c", "/other")
    outside, inside = T(100, "/other", rss=G), T(101, "/m/c", rss=M)
    assert select([outside, inside], cg).victim == inside
    assert select([outside], cg).victim is None


def test_global_oom_considers_every_task():
    cg = tree("/m", "/other")
    d = select([T(100, "/m", rss=M), T(101, "/other", rss=G)], cg, level="global", memcg="/")
    assert d.victim.pid == 101


def test_tie_last_evaluated_wins_globally_in_pid_order():
    cg = tree("/m")
    d = select([T(101, rss=M), T(100, rss=M)], cg, level="global", memcg="/")
    assert d.victim.pid == 101


@pytest.mark.parametrize("order,winner", [(("/m/a", "/m/b"), 100), (("/m/b", "/m/a"), 101)])
def test_tie_last_evaluated_wins_memcg_in_preorder_then_pid(order, winner):
    # mem_cgroup_scan_tasks(): cgroups in pre-order (children in creation order),
    # so the task of the cgroup visited last wins a tie, whatever the pids.
    cg = tree("/m", *order)
    d = select([T(100, "/m/b", rss=M), T(101, "/m/a", rss=M)], cg, memcg="/m")
    assert d.victim.pid == winner


def test_the_cgroup_tree_is_read_only_where_tied_tasks_part(monkeypatch):
    """On a live backend every cgroup looked up is files read: a clear winner
    needs only its own ancestors (memory.oom.group); a tie across cgroups, the
    children of the cgroup where their branches part."""
    from oomkit.context import LazyMapping

    cg = tree("/m", "/m/a", "/m/b", "/m/c", "/m/c/x")
    read = []
    lazy = LazyMapping(lambda: list(cg), lambda p: read.append(p) or cg[p])
    clear = [T(100, "/m/a", rss=G), T(101, "/m/b", rss=M), T(102, "/m/c/x", rss=M)]
    assert select(clear, lazy).victim.pid == 100
    assert sorted(read) == ["/m", "/m/a"]
    read.clear()
    lazy = LazyMapping(lambda: list(cg), lambda p: read.append(p) or cg[p])
    tie = [T(100, "/m/c/x", rss=M), T(101, "/m/a", rss=M), T(102, "/m/b", rss=1)]
    assert select(tie, lazy).victim.pid == 100         # /m/c/x comes after /m/a in pre-order
    assert "/m/b" not in read and "/m" in read


def test_numa_oom_considers_tasks_that_may_use_the_constrained_nodes():
    cg = tree("/m")
    tasks = [T(100, rss=G, nodes=(1,)), T(101, rss=M, nodes=(0, 1)), T(102, rss=2 * M)]
    d = select(tasks, cg, level="numa", memcg="/", nodes=(0,))
    assert d.victim.pid == 102                # pid 100 is bound elsewhere
    assert select(tasks[:1], cg, level="numa", memcg="/", nodes=(0,)).victim is None


# -- exiting victims ------------------------------------------------------------------------

def test_an_exiting_candidate_makes_the_kernel_wait():
    cg = tree("/m")
    dying = T(101, rss=M, exiting=True)
    d = select([T(100, rss=G), dying], cg)
    assert d.waiting_for == dying and not d.kills


def test_an_exiting_task_outside_the_ooming_memcg_is_not_waited_for():
    cg = tree("/m", "/other")
    d = select([T(100, "/other", rss=M, exiting=True), T(101, "/m", rss=M)], cg)
    assert d.waiting_for is None and d.victim.pid == 101


# -- memory.oom.group ----------------------------------------------------------------------

def test_oom_group_kills_the_highest_group_ancestor_within_the_ooming_memcg():
    cg = tree("/m", "/m/g", "/m/g/leaf", "/m/other", groups=("/m/g", "/m/g/leaf"))
    victim = T(102, "/m/g/leaf", rss=G)
    tasks = [T(100, "/m/g", rss=M), T(101, "/m/g", rss=M, adj=-1000),
             T(103, "/m/g/leaf", rss=M, exiting=False), victim, T(104, "/m/other", rss=M),
             T(105, "/m/g/leaf", rss=M, adj=-1000)]
    d = select(tasks, cg)
    assert d.victim == victim and d.group == "/m/g"
    # victim first, then every other killable member in pid order; -1000 skipped
    assert [t.pid for t in d.victims] == [102, 100, 103]


def test_oom_group_above_the_ooming_memcg_is_not_used():
    cg = tree("/x", "/x/m", "/x/m/leaf", groups=("/x",))
    victim = T(100, "/x/m/leaf", rss=M)
    assert oom_group(victim, cg, "/x/m") is None
    assert select([victim, T(101, "/x/m", rss=PAGE)], cg, memcg="/x/m").victims == (victim,)


def test_oom_group_on_the_ooming_memcg_itself_kills_it_whole():
    cg = tree("/m", "/m/a", groups=("/m",))
    d = select([T(100, "/m/a", rss=G), T(101, "/m", rss=M)], cg)
    assert d.group == "/m" and [t.pid for t in d.victims] == [100, 101]


def test_oom_group_for_a_global_oom_is_the_highest_below_the_root():
    cg = tree("/a", "/a/b", groups=("/a", "/a/b"))
    victim = T(100, "/a/b", rss=M)
    assert oom_group(victim, cg, "/") == "/a"
    assert oom_group(T(101, "/", rss=M), cg, "/") is None


# -- totalpages (oom_constrained) -------------------------------------------------------------

def test_totalpages_for_memcg_global_and_numa():
    m = Machine(8 * G, swap=G, numa_nodes=4)
    m.add_cgroup("/m", 100 * M + 100, False)
    b = SimBackend(m)
    swap_pages = G // PAGE
    assert b.totalpages(OOMEvent("memcg", "/m")) == (100 * M) // PAGE + swap_pages
    assert b.totalpages(OOMEvent("global", "/")) == 8 * G // PAGE + swap_pages
    assert b.totalpages(OOMEvent("numa", "/", nodes=(1, 3))) == 4 * G // PAGE + swap_pages


def test_the_context_carries_the_same_totalpages():
    from oomkit import Verdict
    from oomtest_helpers import FuncPolicy
    seen = []
    sim = make_sim("1G", swap="256M", cgroups=[{"path": "/m", "limit": "100M"}],
                   tasks=[{"name": "t", "cgroup": "/m", "rss": "90M"}],
                   events=[{"at": 1, "task": "t", "alloc": "20M"}],
                   policies={"/": FuncPolicy(lambda oc, k: seen.append(oc.totalpages) or Verdict.PASS)})
    sim.run()
    assert seen == [(100 * M + 256 * M) // PAGE]


# -- through the simulated kernel --------------------------------------------------------------

def test_fallback_kills_what_the_kernel_would():
    # a small +1000 task is chosen over a big one: adj * (limit pages // 1000) dominates
    sim = make_sim(cgroups=[{"path": "/m", "limit": "100M"}],
                   tasks=[{"name": "big", "cgroup": "/m", "rss": "80M"},
                          {"name": "bait", "cgroup": "/m", "rss": "10M", "oom_score_adj": 1000}],
                   events=[{"at": 1, "task": "big", "alloc": "15M"}])   # 105M > 100M
    result = sim.run()
    assert [k.name for k in result.ooms[0].killed] == ["bait"]
    assert result.ooms[0].resolved_by == "kernel"


def test_nothing_killable_is_recorded_unresolved_and_the_run_ends():
    sim = make_sim(cgroups=[{"path": "/m", "limit": "100M"}],
                   tasks=[{"name": "p", "cgroup": "/m", "rss": "90M", "oom_score_adj": -1000}],
                   events=[{"at": 1, "task": "p", "alloc": "20M"}])
    result = sim.run()
    assert len(result.ooms) == 1
    assert result.ooms[0].resolved_by == "unresolved"
    assert "no killable" in result.ooms[0].note
    assert result.to_dict()["failed_allocations"] == [{"t": 1.0, "task": "p", "alloc": 20 * M, "oom": 0}]
    assert result.survivors == ["p"]


def test_fallback_group_kill_through_the_simulator():
    sim = make_sim(cgroups=[{"path": "/m", "limit": "100M"}, {"path": "/m/g", "oom_group": True}],
                   tasks=[{"name": "g1", "cgroup": "/m/g", "rss": "50M"},
                          {"name": "g2", "cgroup": "/m/g", "rss": "10M"},
                          {"name": "keep", "cgroup": "/m/g", "rss": "5M", "oom_score_adj": -1000},
                          {"name": "out", "cgroup": "/m", "rss": "20M"}],
                   events=[{"at": 1, "task": "out", "alloc": "20M"}])
    result = sim.run()
    assert sorted(result.killed) == ["g1", "g2"]
    assert sorted(result.survivors) == ["keep", "out"]
    assert sim.machine.cgroups["/m/g"].events["oom_group_kill"] == 1


# -- the simulator's index of the global choice agrees with the scan --------------------

def test_global_index_always_agrees_with_select_bad_process():
    import random

    from oomkit.context import TaskInfo
    from oomkit.oom_kill import GlobalIndex, select_bad_process

    rng = random.Random(7)
    for trial in range(300):
        totalpages = rng.choice((1000, 262_144, 2_000_000))
        index = GlobalIndex(totalpages)
        tasks = {}
        for _ in range(rng.randrange(0, 40)):
            pid = rng.randrange(100, 160)
            t = TaskInfo(pid, f"t{pid}", (), "/", rng.choice((0, 4096, 8192)) * rng.randrange(4),
                         rng.choice((0, 4096)), 0, rng.choice((-1000, -500, 0, 0, 0, 300, 1000)),
                         0, 0.0, rng.random() < 0.05)
            if rng.random() < 0.1 and pid in tasks:      # a task goes away
                del tasks[pid]
                index.remove(pid)
                continue
            tasks[pid] = t
            index.update(t)
        ordered = sorted(tasks.values())
        want = select_bad_process(ordered, {}, level="global", memcg="/", nodes=(),
                                  totalpages=totalpages)
        pid, points, waiting = index.select()
        assert waiting == (want.waiting_for.pid if want.waiting_for else None), trial
        assert pid == (want.victim.pid if want.victim else None), trial
        assert points == want.points, trial
