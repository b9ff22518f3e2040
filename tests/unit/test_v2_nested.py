"""Nested managed memcgs on cgroup v2 (backends/cgroup_v2.py ``nest()``): an
outer memcg P and a memcg C inside it, both near their limits, each with its
own standing decision.  One oom_score_adj per task serves both OOMs, whose
oom_badness() differ in totalpages (the OOMing memcg's limit) and candidates
(its subtree).  The pure function over literals, then the daemon on the fake
cgroup2 tree.  Pids are above any real pid_max: nothing here touches a real task.
"""

from __future__ import annotations

import logging

import pytest
from test_live_v2_fake import PID_A, PID_B, PID_C, MiB, cgroup, daemons, tree  # noqa: F401

from oomkit.backends.cgroup_v2 import Stand, nest
from oomkit.context import TaskInfo
from oomkit.oom_kill import badness

P_PAGES, C_PAGES = 112 * MiB // 4096, 72 * MiB // 4096      # 28 and 18 pages per adj unit


def _t(pid, rss_mib, adj=0):
    return TaskInfo(pid, f"t{pid}", (), "/w", rss_mib * MiB, 0, 0, adj, 0, 0.0, False)


def outer(chain, values, room=14 * MiB, slack=14 * MiB):
    return Stand("/p", P_PAGES, room, slack, tuple(chain), 1, tuple(values), ())


def inner(chain, values, others=(), room=7 * MiB, slack=7 * MiB):
    return Stand("/p/c", C_PAGES, room, slack, tuple(chain), 1, tuple(values), tuple(others))


def test_the_inner_mark_stands_under_the_outer_victim_and_still_wins_its_own_oom():
    """P's choice g (10 MiB, at 1000: 2560 + 28000 = 30560 points at P's OOM);
    C's choice big (58 MiB, 14848 pages) beside a 1 MiB sleeper.  big may stand
    at most (30560 - 14848 - 3584 (P's 14 MiB of slack) - 1) // 28 = 433: at
    P's OOM, grown by that slack, 30556 < 30560; at C's OOM 14848 + 433 * 18 =
    22642 over the sleeper's 256, grown by C's 7 MiB (1792), 2048."""
    g, big, sleeper = _t(1, 10), _t(2, 58), _t(3, 1)
    kept, capped = nest(outer([g], [1000]), inner([big], [1000], [sleeper]))
    assert (kept, capped) == ((1000,), (433,))
    grown = big._replace(rss=big.rss + 14 * MiB, oom_score_adj=433)
    assert badness(grown, P_PAGES) < badness(g._replace(oom_score_adj=1000), P_PAGES)
    assert badness(big._replace(oom_score_adj=433), C_PAGES) > badness(
        sleeper._replace(rss=sleeper.rss + 7 * MiB), C_PAGES)


def test_the_outer_choice_inside_the_inner_memcg_is_weighed_at_its_value():
    """P's choice is C's sleeper s (1 MiB) at 1000, a candidate of C's OOM too:
    big (58 MiB) under it at P's OOM is at most (256 + 28000 - 14848 - 3584 - 1)
    // 28 = 350, and at C's OOM 14848 + 350 * 18 = 21148 still outranks s at
    1000 (256 + 18000) grown by 1792: both stand.  A 40 MiB big cannot (its
    ceiling 515 gives 19510 against 20048): the memcg with less room stands
    alone, the other is held back (None)."""
    s = _t(3, 1)
    assert nest(outer([s], [1000]), inner([_t(2, 58)], [1000], [s])) == ((1000,), (350,))
    small = _t(2, 40)
    assert nest(outer([s], [1000]), inner([small], [1000], [s])) == (None, (1000,))  # C: 7 MiB room
    assert nest(outer([s], [1000], room=5 * MiB), inner([small], [1000], [s])) == ((1000,), None)


def test_the_same_victim_for_both_stands_at_1000():
    big = _t(2, 58)
    assert nest(outer([big], [1000]), inner([big], [1000], [_t(3, 1)])) == ((1000,), (1000,))


def test_an_inner_successor_is_graded_under_its_capped_victim_and_the_outer_floor():
    """C's decision two deep (big, then w of 4 MiB): big at 433 as above, w under
    it at C's OOM ((22642 - 1024 - 1792 - 1) // 18 = 1101) and under g at P's
    ((30560 - 1024 - 3584 - 1) // 28 = 926): 432, one below big."""
    g, big, w = _t(1, 10), _t(2, 58), _t(4, 4)
    assert nest(outer([g], [1000]), inner([big, w], [1000, 999])) == ((1000,), (433, 432))


# -- the daemon on the fake tree ------------------------------------------------------------


def adj(proc, pid) -> int:
    return int((proc / str(pid) / "oom_score_adj").read_text())


def newest(proc, pid):
    stat = proc / str(pid) / "stat"
    fields = stat.read_text().split(" ")
    fields[21] = "99999999"         # started last: newest-task's choice
    stat.write_text(" ".join(fields))


def winner(proc, pids, totalpages):
    """The kernel's pick among ``pids`` at their oom_score_adj now (oom_badness())."""
    tasks = {p: _t(p, 0) for p in pids}
    rss = {PID_A: 50, PID_B: 1, PID_C: 8}       # the tree's tasks, MiB
    score = {p: badness(t._replace(rss=rss[p] * MiB, oom_score_adj=adj(proc, p)), totalpages)
             for p, t in tasks.items()}
    return max(score, key=lambda p: score[p])


@pytest.fixture
def nested(tree, daemons):
    """/box (256 MiB) near its limit with newest-task, /box/a (64 MiB, 57 used)
    inside it with largest-task: both decide."""
    def start(box_policy="newest-task", a_policy="largest-task", box_current=250 * MiB, **kw):
        mount, _proc = tree
        cgroup(mount, "/box", current=box_current, limit=256 * MiB)
        return daemons([{"cgroup": "/box", "policy": box_policy},
                        {"cgroup": "/box/a", "policy": a_policy}], **kw)

    return start


BOX, A = 256 * MiB // 4096, 64 * MiB // 4096


def test_each_oom_finds_its_own_chains_choice_on_top(tree, nested):
    """/box's choice is the job (8 MiB, in /box/job), /box/a's the 50 MiB hog.
    Alone both would be at 1000, and at /box's OOM the hog would win; nested,
    the hog stands under the job at /box's OOM and still tops /box/a's; stop
    puts every value back."""
    mount, proc = tree
    newest(proc, PID_C)
    d = nested()
    assert adj(proc, PID_C) == 1000
    assert 0 < adj(proc, PID_A) < 1000
    assert winner(proc, [PID_A, PID_B, PID_C], BOX) == PID_C       # /box's OOM
    assert winner(proc, [PID_A, PID_B], A) == PID_A                # /box/a's OOM
    d.stop()
    assert [adj(proc, p) for p in (PID_A, PID_B, PID_C)] == [0, 0, 0]
    assert d.restorer.held == {}


@pytest.mark.parametrize("box_current,stands,held", [
    (250 * MiB, "/box", "/box/a"),      # /box has 6 MiB of room, /box/a 7: /box OOMs first
    (240 * MiB, "/box/a", "/box"),      # /box has 16 MiB: /box/a OOMs first
])
def test_where_no_values_serve_both_the_nearer_memcg_decides(tree, nested, caplog, box_current,
                                                             stands, held):
    """/box's choice is /box/a's sleeper (1 MiB), /box/a's the 50 MiB hog: with
    /box's 197 MiB of slack the hog may stand at most at 31 under it, where the
    sleeper at 1000 outranks it at /box/a's OOM.  The memcg with less room keeps
    its decision alone (its victim at 1000, the kernel picks it there), the
    other's is held back, said in the debug log, and comes back when the first
    leaves its zone."""
    mount, proc = tree
    newest(proc, PID_B)
    with caplog.at_level(logging.DEBUG, logger="oomkit"):
        d = nested(box_current=box_current)
    eps = d.stack.episodes
    victim = {"/box": PID_B, "/box/a": PID_A}
    assert adj(proc, victim[stands]) == 1000 and eps[stands].is_armed
    assert not eps[held].is_armed and eps[held].held == stands
    assert all(held not in a.owners for a in d.stack.armed.values())     # none of its marks
    assert f"{held}: decision held back" in caplog.text
    if stands == "/box":
        assert winner(proc, [PID_A, PID_B, PID_C], BOX) == PID_B
    else:
        assert winner(proc, [PID_A, PID_B], A) == PID_A
    # the standing one leaves its zone: the other's decision comes back
    cgroup(mount, stands, current=(80 if stands == "/box" else 20) * MiB,
           limit=(256 if stands == "/box" else 64) * MiB,
           procs=[] if stands == "/box" else [PID_A, PID_B])
    d.stack._look(stands)
    assert eps[held].held is None and eps[held].next_take is not None
    eps[held].next_take = 0
    d.stack.on_timer()
    assert adj(proc, victim[held]) == 1000 and eps[held].is_armed
    d.stop()
    assert d.restorer.held == {}


def test_one_side_not_armed_leaves_the_other_alone(tree, nested):
    """/box/a out of its zone (20 of 64 MiB): /box's choice stands at 1000, and
    /box/a's tasks at /box's own grades; /box out of its zone: /box/a's hog
    stands at 1000, its successor as alone."""
    mount, proc = tree
    newest(proc, PID_C)
    cgroup(mount, "/box/a", current=20 * MiB, limit=64 * MiB, procs=[PID_A, PID_B])
    d = nested()
    eps = d.stack.episodes
    assert not eps["/box/a"].is_armed and eps["/box/a"].stand is None
    stand = eps["/box"].stand
    assert stand is not None and [adj(proc, t.pid) for t in stand.chain] == list(stand.values)
    assert adj(proc, PID_C) == 1000
    d.stop()
    cgroup(mount, "/box/a", current=57 * MiB, limit=64 * MiB, procs=[PID_A, PID_B])
    d2 = nested(box_current=80 * MiB)
    assert not d2.stack.episodes["/box"].is_armed
    assert adj(proc, PID_A) == 1000
    stand = d2.stack.episodes["/box/a"].stand
    assert stand is not None and [adj(proc, t.pid) for t in stand.chain] == list(stand.values)


def test_a_kill_at_the_outer_oom_of_an_inner_mark_is_not_the_inner_decisions(tree, nested,
                                                                          tmp_path, monkeypatch):
    """/box/a's decision stands and /box's is held back; the kernel's OOM at
    /box (its report names oom_memcg=/box) kills /box/a's marked hog: /box/a's
    decision was for /box/a's OOM, so the record is the kernel's own."""
    import json
    import os

    from oomkit.linux import notify

    mount, proc = tree
    newest(proc, PID_B)
    monkeypatch.setattr(notify, "open_kmsg", lambda *a, **k: os.open("/dev/null", os.O_RDONLY))
    d = nested(box_current=240 * MiB)
    assert d.stack.episodes["/box"].held == "/box/a" and adj(proc, PID_A) == 1000
    kmsg = [f"6,1,1,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
            f"mems_allowed=0,oom_memcg=/box,task_memcg=/box/a,task=hog,pid={PID_A},uid=0",
            f"3,2,2,-;Memory cgroup out of memory: Killed process {PID_A} (hog) "
            f"total-vm:60000kB, anon-rss:51200kB, file-rss:0kB, shmem-rss:0kB, UID:0 "
            f"pgtables:200kB oom_score_adj:1000"]
    monkeypatch.setattr(notify, "read_kmsg", lambda fd, limit=1000: kmsg[:])
    cgroup(mount, "/box/a", current=57 * MiB, limit=64 * MiB, procs=[PID_A, PID_B],
           events={"oom": 0, "kill": 1}, local={"kill": 1})
    d.stack._look("/box/a")
    d.events.close()
    records = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [(r["resolved_by"], [(k["pid"], k["by"]) for k in r["killed"]]) for r in records] == [
        ("kernel", [(PID_A, "kernel")])], records
