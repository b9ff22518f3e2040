"""Nested managed memcgs on a real cgroup v2 kernel (in the VM): an outer
memcg P and a memcg C inside it (and three levels, A holding B holding C),
each with its own ``memory.max`` and its own attachment, all near their
limits.  One ``oom_score_adj`` per task serves every OOM; the task that dies
at P's OOM must be P's chain's choice, not C's marked task (``place()`` in
backends/cgroup_v2.py).  Python runs 10-25x slower in the VM: timeouts are
generous and nothing here measures speed.
"""

from __future__ import annotations

import time

from helpers.procs import score_adj as adj
from helpers.procs import vm_until as until

MiB = 1 << 20


def one_record_the_policys_kill(d, pid: int, memcg: str) -> dict:
    """The daemon wrote one record for the OOM: ``memcg``'s chain decided that
    ``pid`` die, and the kernel killed it."""
    records = d.records()
    assert len(records) == 1, records
    rec = records[0]
    assert rec["resolved_by"] == "policy" and rec["executed_by"] == "kernel", rec
    assert [(k["pid"], k["by"]) for k in rec["killed"]] == [(pid, f"policy:{memcg}")], rec
    return rec


def test_the_outer_oom_kills_the_outer_chains_choice_not_the_inner_mark(box, daemon):
    """P (112 MiB) holds C (72 MiB); largest-task is attached at C, newest-task
    at P.  In C an old task holds 56 MiB beside a sleeper: C is in its zone (the
    top 16 MiB) and its choice (the 56 MiB task) is marked.  Then a task in P outside C grows
    fast to P's limit: P's choice is that grower (the newest).  Alone, each
    decision would mark its victim 1000, and at P's OOM the kernel would kill
    the larger of the two, C's; nested, C's mark stands under P's victim (and
    still wins C's own OOM), so the grower dies, by the kernel, in one record."""
    p = box.cg("p", limit=112 * MiB, subtree=True)
    c = box.cg("p/c", limit=72 * MiB)
    x = box.cg("p/x")
    sleeper = box.sleeper(c)
    big = box.hog(c, 56)
    assert big.wait_line("allocated", 60)
    # headroom 16M: C (about 64 MiB used) well inside its zone whatever the
    # interpreter's own size; a second attachment after the fixture's [daemon] keys.
    d = daemon(box, "newest-task", at=p,
               extra=f'headroom = "16M"\n\n[[attach]]\ncgroup = "{c}"\npolicy = "largest-task"\n'
                     'params = {}\n')
    assert until(lambda: adj(big.pid) == 1000 or d.popen.poll() is not None, 60), \
        f"C's choice not marked at usage {box.fs.usage(c)}:\n{d.log}"
    grower = box.hog(x, 200, step=1)
    assert grower.wait_exit(120), f"the grower was not killed:\n{d.log}"
    assert until(lambda: d.records(), 30), f"no event record:\n{d.log}"
    time.sleep(2)
    assert big.alive(), f"C's marked task died at P's OOM:\n{d.log}"
    assert sleeper.alive()
    assert box.events(p)["oom_kill"] >= 1 and box.events(c)["oom_kill"] == 0, \
        (box.events(p), box.events(c))
    rec = one_record_the_policys_kill(d, grower.pid, p)
    assert rec["handlers"][0]["policy"] == "newest-task"
    assert d.stop() == 0
    assert adj(big.pid) == 0 and adj(sleeper.pid) == 0


def test_the_inner_oom_kills_the_inner_chains_choice_not_the_outer_mark_inside_it(box, daemon):
    """P (144 MiB) holds C (80 MiB); newest-task is attached at C, largest-task
    at P (zones: the top 32 MiB).  In C an old task m holds 48 MiB (P's choice:
    the largest in P, beside a 40 MiB holder in P outside C).  A grower moved
    into C (C's choice: the newest) brings both memcgs into their zones.  Alone,
    each decision would mark its victim 1000, and at C's OOM the kernel would
    kill m, the larger; no values let both win here (m at 1000 outranks any
    grower value at C's OOM), so C, with less room under its limit, decides
    alone and P's decision is held back: the grower dies at C's OOM, once."""
    p = box.cg("p", limit=144 * MiB, subtree=True)
    c = box.cg("p/c", limit=80 * MiB)
    x = box.cg("p/x")
    sleeper = box.sleeper(c)
    m = box.hog(c, 48)
    holder = box.hog(x, 40)
    assert m.wait_line("allocated", 60) and holder.wait_line("allocated", 60)
    d = daemon(box, "largest-task", at=p,
               extra=f'headroom = "32M"\n\n[[attach]]\ncgroup = "{c}"\npolicy = "newest-task"\n'
                     'params = {}\n')
    grower = box.hog(c, 200, step=1, delay=0.1)
    assert grower.wait_exit(180), f"the grower was not killed:\n{d.log}"
    assert until(lambda: d.records(), 30), f"no event record:\n{d.log}"
    time.sleep(2)
    assert m.alive(), f"P's marked task died at C's OOM:\n{d.log}"
    assert sleeper.alive() and holder.alive()
    assert box.events(c)["oom_kill"] >= 1, box.events(c)
    rec = one_record_the_policys_kill(d, grower.pid, c)
    assert rec["handlers"][0]["policy"] == "newest-task"
    assert "held back" in d.log, d.log
    assert d.stop() == 0
    assert adj(m.pid) == 0 and adj(sleeper.pid) == 0 and adj(holder.pid) == 0


def test_three_levels_the_outermost_oom_kills_its_choice_not_a_mark_two_levels_down(box, daemon):
    """A (108 MiB) holds B (96 MiB), which holds C (40 MiB); newest-task at A,
    largest-task at B and at C (zones: the top 16 MiB).  In C a 28 MiB worker
    beside a sleeper (C's choice), in B outside C a 56 MiB hog (B's choice):
    B (about 85 MiB) and C are in their zones.  Then a task in A outside B
    grows fast to A's limit (A's choice, the newest), reaching about 22 MiB at
    A's OOM, less than the worker.  C's worker weighed only against B's hog
    alone stands at 1000 (the hog's 1000 at B's OOM is far above it), and at
    A's OOM the kernel would kill it (7168 + 27000 points against the grower's
    5632 + 27000); placed under A's decision too (``place()``), it stands
    below the grower there, and the grower dies, by the kernel, in one record."""
    a = box.cg("a", limit=108 * MiB, subtree=True)
    b = box.cg("a/b", limit=96 * MiB, subtree=True)
    c = box.cg("a/b/c", limit=40 * MiB)
    h, x = box.cg("a/b/h"), box.cg("a/x")
    sleeper = box.sleeper(c)
    worker = box.hog(c, 28)
    hog = box.hog(h, 56)
    assert worker.wait_line("allocated", 60) and hog.wait_line("allocated", 60)
    extra = 'headroom = "16M"\n' + "".join(
        f'\n[[attach]]\ncgroup = "{cg}"\npolicy = "largest-task"\nparams = {{}}\n' for cg in (b, c))
    d = daemon(box, "newest-task", at=a, extra=extra)
    assert until(lambda: (adj(worker.pid) > 0 and adj(hog.pid) > 0) or d.popen.poll() is not None,
                 60), f"B's and C's choices not marked at {box.fs.usage(b)}, {box.fs.usage(c)}:\n{d.log}"
    grower = box.hog(x, 200, step=1)
    assert grower.wait_exit(120), f"the grower was not killed:\n{d.log}"
    assert until(lambda: d.records(), 30), f"no event record:\n{d.log}"
    time.sleep(2)
    assert worker.alive(), f"C's marked worker died at A's OOM:\n{d.log}"
    assert hog.alive(), f"B's marked hog died at A's OOM:\n{d.log}"
    assert sleeper.alive()
    assert box.events(b)["oom_kill"] == 0 and box.events(a)["oom_kill"] >= 1, \
        (box.events(a), box.events(b))
    one_record_the_policys_kill(d, grower.pid, a)
    assert d.stop() == 0
    assert adj(worker.pid) == 0 and adj(hog.pid) == 0 and adj(sleeper.pid) == 0
