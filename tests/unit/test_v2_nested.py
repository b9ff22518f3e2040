"""Nested managed memcgs on cgroup v2 (backends/cgroup_v2.py ``place()``): an
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

from oomkit.backends.cgroup_v2 import Stand, place
from oomkit.context import TaskInfo
from oomkit.oom_kill import badness

P_PAGES, C_PAGES = 112 * MiB // 4096, 72 * MiB // 4096      # 28 and 18 pages per adj unit


def nest(outer, inner):
    """:func:`place` for two (``inner``'s memcg inside ``outer``'s): the outer's
    values and the inner's, None for the one held back."""
    values, _held = place([outer, inner])
    return values.get(outer.memcg), values.get(inner.memcg)


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


# -- three levels, pure: /p ⊃ /p/b ⊃ /p/b/c -------------------------------------------------

A_PAGES, B_PAGES, CC_PAGES = 256 * MiB // 4096, 96 * MiB // 4096, 24 * MiB // 4096  # 65, 24, 6 a unit
JOB, HOG, WORKER, SLEEPER = _t(1, 8), _t(2, 50), _t(4, 16), _t(3, 1)


def level(memcg, pages, chain, values, others=(), room=6 * MiB, slack=0):
    return Stand(memcg, pages, room, slack, tuple(chain), 1, tuple(values), tuple(others))


def three_stands(b_chain=(HOG,), b_values=(1000,), c_chain=(WORKER,), c_values=(1000,)):
    """/p (256 MiB, 181 of slack) chose the job, /p/b (96 MiB, 29 of slack) the
    hog, /p/b/c (24 MiB, 7 of slack) the worker beside the sleeper."""
    rest = [t for t in (HOG, WORKER, SLEEPER) if t not in b_chain]
    return [level("/p", A_PAGES, [JOB], [1000], [HOG, WORKER, SLEEPER], slack=181 * MiB),
            level("/p/b", B_PAGES, b_chain, b_values, rest, slack=29 * MiB),
            level("/p/b/c", CC_PAGES, c_chain, c_values,
                  [t for t in (SLEEPER,) if t not in c_chain], room=3 * MiB, slack=7 * MiB)]


def test_the_innermost_is_placed_under_every_level_above_at_its_placed_values():
    """The job at 1000 scores 2048 + 65000 = 67048 at /p's OOM.  The hog stands
    at most at (67048 - 12800 - 46336 (181 MiB) - 1) // 65 = 121 (15704 at
    /p/b's OOM).  The worker: under /p (67048 - 4096 - 46336 - 1) // 65 = 255,
    under /p/b at the hog's placed 121 (15704 - 4096 - 7424 - 1) // 24 = 174:
    174, and at /p/b/c's OOM 4096 + 1044 = 5140 over the sleeper grown by 7 MiB
    (2048).  Weighed against /p/b alone (the hog at 1000: 36800 points), as
    before, it would stand at 1000, and at /p's OOM 4096 + 65000 = 69096 would
    outrank the job; at /p/b's, 4096 + 24000 the hog at 121."""
    a, b, c = three_stands()
    values, held = place([c, a, b])                 # any order: outermost first inside
    assert (values, held) == ({"/p": (1000,), "/p/b": (121,), "/p/b/c": (174,)}, {})
    assert nest(b, c) == ((1000,), (1000,))         # the nearest alone: the old weighing
    at = {t.pid: v for t, v in [(JOB, 1000), (HOG, 121), (WORKER, 174)]}

    def score(t, pages, grow=0):
        return badness(t._replace(rss=t.rss + grow, oom_score_adj=at.get(t.pid, 0)), pages)

    assert score(WORKER, A_PAGES, 181 * MiB) < score(JOB, A_PAGES)
    assert score(WORKER, B_PAGES, 29 * MiB) < score(HOG, B_PAGES)
    assert score(WORKER, CC_PAGES) > score(SLEEPER, CC_PAGES, 7 * MiB)


def test_the_outermost_ceiling_binds_where_the_middle_one_is_looser():
    """/p and /p/b both chose the sleeper (in /p/b, outside /p/b/c) at 1000:
    256 + 65000 = 65256 at /p's OOM, 256 + 24000 = 24256 at /p/b's.  The
    worker (/p/b/c's choice) under /p/b alone may stand at (24256 - 4096 -
    7424 - 1) // 24 = 530, but at /p's OOM, grown by /p's 181 MiB, 4096 +
    46336 + 34450 = 84882 would outrank the sleeper; under /p it stands at
    (65256 - 4096 - 46336 - 1) // 65 = 228: 4096 + 46336 + 14820 = 65252."""
    a = level("/p", A_PAGES, [SLEEPER], [1000], [JOB, HOG, WORKER], slack=181 * MiB)
    b = level("/p/b", B_PAGES, [SLEEPER], [1000], [HOG, WORKER], slack=29 * MiB)
    c = level("/p/b/c", CC_PAGES, [WORKER], [1000], room=3 * MiB, slack=7 * MiB)
    assert place([a, b, c]) == ({"/p": (1000,), "/p/b": (1000,), "/p/b/c": (228,)}, {})
    assert nest(b, c) == ((1000,), (530,))
    grown = WORKER._replace(rss=WORKER.rss + 181 * MiB, oom_score_adj=228)
    assert badness(grown, A_PAGES) < badness(SLEEPER._replace(oom_score_adj=1000), A_PAGES)


def test_a_task_marked_above_stands_at_that_mark_not_above():
    """/p/b's decision two deep (the hog, then the worker, then the sleeper,
    alone at 1000, 999, 849): the hog at 121 as above, the worker under it at
    min(120, (15704 - 4096 - 7424 - 1) // 24 = 174, 255) = 120; the sleeper not
    (below 0 under the worker's 6976 less 7424 of slack).  /p/b/c's victim is
    the worker, marked 120 by /p/b: it stands at 120 there, however high its
    ceilings (255 under /p); its successor the sleeper cannot stand under /p/b
    ((6976 - 256 - 7424 - 1) // 24 < 0): /p/b/c's decision is one deep."""
    a, b, c = three_stands(b_chain=(HOG, WORKER, SLEEPER), b_values=(1000, 999, 849),
                           c_chain=(WORKER, SLEEPER), c_values=(1000, 999))
    values, held = place([a, b, c])
    assert (values, held) == ({"/p": (1000,), "/p/b": (121, 120), "/p/b/c": (120,)}, {})


def test_a_blocker_further_up_is_held_back_and_those_under_it_placed_again():
    """/p chose the sleeper (inside /p/b/c) at 1000: 256 + 65000 = 65256 at /p's
    OOM, with 1 MiB (256 pages) of slack.  /p/b (80 MiB: 20 a unit, 13 of
    slack) places its hog under it at (65256 - 12800 - 256 - 1) // 65 = 803:
    12800 + 16060 = 28860 at its OOM, over the sleeper at 1000 (20256) grown
    by 3328.  /p/b/c (40 MiB: 10 a unit, 23 of slack, 4 MiB of room) under
    /p/b alone: 1000; under /p too at most (65256 - 4096 - 256 - 1) // 65 =
    936, and 4096 + 9360 = 13456 loses its own OOM to the sleeper at 1000
    (10256) grown by 5888.  /p is the nearest whose inclusion fails, and has
    more room (6 MiB): /p is held back for /p/b/c, and /p/b placed again
    without it, at 1000.  With more room than /p, /p/b/c is held back instead."""
    def stands(c_room):
        return [level("/p", A_PAGES, [SLEEPER], [1000], [JOB, HOG, WORKER], slack=1 * MiB),
                level("/p/b", 80 * MiB // 4096, [HOG], [1000], [WORKER, SLEEPER], room=5 * MiB,
                      slack=13 * MiB),
                level("/p/b/c", 40 * MiB // 4096, [WORKER], [1000], [SLEEPER], room=c_room,
                      slack=23 * MiB)]

    assert place(stands(4 * MiB)) == ({"/p/b": (1000,), "/p/b/c": (1000,)}, {"/p": "/p/b/c"})
    assert place(stands(7 * MiB)) == ({"/p": (1000,), "/p/b": (803,)}, {"/p/b/c": "/p"})


def test_a_memcg_held_back_for_one_held_back_itself_stands_again():
    """/p and /p/b both chose the sleeper (inside /p/b/c) at 1000; /p/b/c's
    worker loses its own OOM to it under either: under /p/b at most (24256 -
    4096 - 7424 - 1) // 24 = 530, 4096 + 3180 = 7276 against 256 + 6000 +
    1792 = 8048; under /p at most 228.  /p/b (the nearer blocker) has more
    room than /p/b/c (6 MiB to 4): it would be held back for it, but /p has
    less (2 MiB), so /p/b/c is held back for /p in any case, and /p/b, held
    back for nothing, stands."""
    a = level("/p", A_PAGES, [SLEEPER], [1000], [JOB, HOG, WORKER], room=2 * MiB, slack=181 * MiB)
    b = level("/p/b", B_PAGES, [SLEEPER], [1000], [HOG, WORKER], slack=29 * MiB)
    c = level("/p/b/c", CC_PAGES, [WORKER], [1000], [SLEEPER], room=4 * MiB, slack=7 * MiB)
    assert place([a, b, c]) == ({"/p": (1000,), "/p/b": (1000,)}, {"/p/b/c": "/p"})
    assert place([b, c]) == ({"/p/b/c": (1000,)}, {"/p/b": "/p/b/c"})     # /p gone: /p/b waits


# -- the daemon on the fake tree ------------------------------------------------------------


def adj(proc, pid) -> int:
    return int((proc / str(pid) / "oom_score_adj").read_text())


def newest(proc, pid):
    stat = proc / str(pid) / "stat"
    fields = stat.read_text().split(" ")
    fields[21] = "99999999"         # started last: newest-task's choice
    stat.write_text(" ".join(fields))


PID_D, PID_E = 5_000_004, 5_000_005
RSS = {PID_A: 50, PID_B: 1, PID_C: 8, PID_D: 16, PID_E: 180}  # MiB: hog, sleep, job, worker, filler
PTE = 68 * 1024                                      # every fake task's VmPTE


def pick(proc, pids, totalpages):
    """The kernel's pick among ``pids`` at the oom_score_adj written now:
    oom_badness() (rss + page tables + adj * totalpages / 1000), the last of
    equal scores (oom_evaluate_task() keeps a later tie)."""
    score = {p: badness(TaskInfo(p, "", (), "/", RSS[p] * MiB, 0, PTE, adj(proc, p), 0, 0.0,
                                 False), totalpages) for p in pids}
    return max(reversed(list(score)), key=lambda p: score[p])


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
    assert pick(proc, [PID_A, PID_B, PID_C], BOX) == PID_C       # /box's OOM
    assert pick(proc, [PID_A, PID_B], A) == PID_A                # /box/a's OOM
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
        assert pick(proc, [PID_A, PID_B, PID_C], BOX) == PID_B
    else:
        assert pick(proc, [PID_A, PID_B], A) == PID_A
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


# -- three levels: /box ⊃ /box/a ⊃ /box/a/c ----------------------------------------------

@pytest.fixture
def three(tree, daemons):
    """/box (256 MiB, 250 used) with newest-task: its choice the 8 MiB job in
    /box/job; /box/a (96 MiB, 90 used) with largest-task: the 50 MiB hog;
    /box/a/c (24 MiB, 21 used) inside it with largest-task: the 16 MiB worker
    (beside a 1 MiB sleeper).  All three near their limits."""
    from test_live_v2_fake import task

    def start(newest_pid=PID_C, a=(90, 96), c=(21, 24), filler=False, **kw):
        mount, proc = tree
        task(proc, PID_D, "worker", 16 * 1024)
        newest(proc, newest_pid)
        if filler:              # /box's slack down to 1 MiB
            task(proc, PID_E, "filler", 180 * 1024)
            cgroup(mount, "/box/job", current=190 * MiB, procs=[PID_C, PID_E])
        cgroup(mount, "/box", current=250 * MiB, limit=256 * MiB)
        cgroup(mount, "/box/a", current=a[0] * MiB, limit=a[1] * MiB, procs=[PID_A])
        cgroup(mount, "/box/a/c", current=c[0] * MiB, limit=c[1] * MiB, procs=[PID_D, PID_B])
        return daemons([{"cgroup": "/box", "policy": "newest-task"},
                        {"cgroup": "/box/a", "policy": "largest-task"},
                        {"cgroup": "/box/a/c", "policy": "largest-task"}], **kw)

    return start


BOX3, A3, C3 = 256 * MiB // 4096, 96 * MiB // 4096, 24 * MiB // 4096
EVERY = [PID_A, PID_B, PID_C, PID_D]


def test_the_innermost_mark_stays_under_the_outermost_choice_at_its_oom(tree, three):
    """Gap (a): /box's job at 1000 scores 2048 + 17 + 65000 = 67065 at /box's
    OOM.  /box/a's hog stands under it (121).  Weighed against /box/a's hog
    alone (at 1000: 12817 + 24000), /box/a/c's worker could stand at 1000,
    and at /box's OOM score 4113 + 65000 = 69113: the kernel would kill the
    worker, not /box's choice.  Under both, it stands lower, and /box's OOM
    picks the job."""
    _mount, proc = tree
    d = three(depth=1)
    assert adj(proc, PID_C) == 1000
    assert adj(proc, PID_D) < 1000
    assert pick(proc, EVERY, BOX3) == PID_C
    d.stop()
    assert d.restorer.held == {}


def chain_on_top(d, proc, memcg, pids, totalpages):
    """At ``memcg``'s OOM the kernel picks its chain's victim, then (that one
    dead) each successor in turn, at the values written now."""
    ep = d.stack.episodes[memcg]
    assert ep.stand is not None and ep.placed is not None and ep.held is None
    chain = [t.pid for t in ep.stand.chain][:len(ep.placed)]
    assert [adj(proc, p) for p in chain] == [max(v, adj(proc, p)) for p, v in zip(chain, ep.placed)]
    for k, pid in enumerate(chain):
        assert pick(proc, [p for p in pids if p not in chain[:k]], totalpages) == pid, (memcg, k)
    return chain


@pytest.mark.parametrize("depth", [1, 4, 8])
def test_each_of_three_ooms_finds_its_own_chain_on_top(tree, three, depth):
    """At /box's OOM (its four tasks), /box/a's (three) and /box/a/c's (two) the
    kernel's pick at the values written is that memcg's own choice, and then
    each successor its decision placed, in order; stop puts every value back."""
    _mount, proc = tree
    d = three(depth=depth)
    assert chain_on_top(d, proc, "/box", EVERY, BOX3)[0] == PID_C
    assert chain_on_top(d, proc, "/box/a", [PID_A, PID_B, PID_D], A3)[0] == PID_A
    assert chain_on_top(d, proc, "/box/a/c", [PID_B, PID_D], C3)[0] == PID_D
    d.stop()
    assert [adj(proc, p) for p in EVERY] == [0, 0, 0, 0]
    assert d.restorer.held == {}


def test_a_blocker_two_levels_up_is_held_back_and_the_middle_placed_again(tree, three, caplog):
    """test_a_blocker_further_up_is_held_back_and_those_under_it_placed_again on
    the fake tree: /box's choice is the sleeper in /box/a/c; at 1000, grown by
    /box/a/c's 23 MiB of slack, it would outrank /box/a/c's worker at its OOM
    under any value /box allows the worker (936), and /box/a/c has the less
    room (4 MiB to 6): /box is held back (the
    sleeper unmarked), /box/a's hog written again at 1000, not at the 803 it
    stood at under /box.  When /box/a/c leaves its zone /box's decision comes
    back, and /box/a's hog goes back under it.  stop puts everything back."""
    mount, proc = tree
    with caplog.at_level(logging.DEBUG, logger="oomkit"):
        d = three(newest_pid=PID_B, a=(75, 80), c=(36, 40), filler=True, depth=1)
    eps = d.stack.episodes
    assert eps["/box"].held == "/box/a/c" and not eps["/box"].is_armed
    assert "/box: decision held back" in caplog.text
    assert [adj(proc, p) for p in (PID_B, PID_A, PID_D)] == [0, 1000, 1000]
    chain_on_top(d, proc, "/box/a", [PID_A, PID_B, PID_D], 80 * MiB // 4096)
    chain_on_top(d, proc, "/box/a/c", [PID_B, PID_D], 40 * MiB // 4096)
    cgroup(mount, "/box/a/c", current=20 * MiB, limit=40 * MiB, procs=[PID_D, PID_B])
    d.stack._look("/box/a/c")
    assert eps["/box"].held is None and eps["/box"].next_take is not None
    eps["/box"].next_take = 0
    d.stack.on_timer()
    assert [adj(proc, p) for p in (PID_B, PID_A, PID_D)] == [1000, 803, 0]
    chain_on_top(d, proc, "/box", [*EVERY, PID_E], BOX3)
    chain_on_top(d, proc, "/box/a", [PID_A, PID_B, PID_D], 80 * MiB // 4096)
    d.stop()
    assert [adj(proc, p) for p in (*EVERY, PID_E)] == [0] * 5
    assert d.restorer.held == {}


def test_a_decision_outside_the_nested_ones_leaves_their_values_alone(tree, daemons):
    """/solo (a managed memcg beside /box, near its limit) decides after /box
    and /box/a have placed theirs: its task stands at 1000, and /box/a's hog
    stays under /box's job (not written again as a decision alone)."""
    from test_live_v2_fake import task

    mount, proc = tree
    newest(proc, PID_C)
    task(proc, PID_E, "solo", 4 * 1024)
    cgroup(mount, "/box", current=250 * MiB, limit=256 * MiB)
    cgroup(mount, "/solo", current=30 * MiB, limit=32 * MiB, procs=[PID_E])
    d = daemons([{"cgroup": "/box", "policy": "newest-task"},
                 {"cgroup": "/box/a", "policy": "largest-task"},
                 {"cgroup": "/solo", "policy": "largest-task"}])
    hog = adj(proc, PID_A)
    assert 0 < hog < 1000 and adj(proc, PID_C) == 1000 and adj(proc, PID_E) == 1000
    d.stack.episodes["/solo"].next_take = 0
    d.stack._look("/solo")
    assert (adj(proc, PID_A), adj(proc, PID_C), adj(proc, PID_E)) == (hog, 1000, 1000)
    d.stop()
    assert d.restorer.held == {}


def test_a_family_is_its_subtree_of_managed_memcgs_in_take_order(tree, daemons):
    """_plan() and _settle() visit only the episodes in the subtree of the plan's
    top (an index kept at take and release), in take order, as a scan of every
    episode filtered by is_within() would: a memcg released leaves it, one taken
    again comes last, a memcg beside the family is never in it."""
    from oomkit.context import is_within

    mount, _proc = tree
    cgroup(mount, "/box", current=250 * MiB, limit=256 * MiB)
    cgroup(mount, "/solo", current=10 * MiB, limit=32 * MiB)
    d = daemons([{"cgroup": "/box", "policy": "newest-task"},
                 {"cgroup": "/solo", "policy": "largest-task"}])
    stack = d.stack

    def scanned(top):
        return [e.memcg for e in stack.episodes.values() if is_within(e.memcg, top)]

    def family(top):
        return [e.memcg for e in stack._family(top)]

    for top in ("/", "/box", "/box/a", "/box/job", "/solo", "/box/gone"):
        assert family(top) == scanned(top)
    assert family("/box") == ["/box", "/box/a", "/box/job"]
    stack.release("/box/a")
    assert family("/box") == scanned("/box") == ["/box", "/box/job"]
    stack.sync({*stack.watched, "/box/a"})
    assert family("/box") == scanned("/box") == ["/box", "/box/job", "/box/a"]
    assert family("/") == scanned("/")
    d.stop()
    assert stack._below == {} and stack.episodes == {}
