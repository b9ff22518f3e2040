"""The handler deadline counts the policy's own time: oomkit's reading of the
context and its release actions are added to it (up to io_cap), and the
watchdog's heartbeat goes on while a handler runs (issue 2 s.2, issue 3 s.3)."""

from __future__ import annotations

import time

from oomkit import Verdict
from oomkit.context import LazyTasks
from oomkit.engine.guard import Guard
from oomtest_helpers import FuncPolicy, make_sim

TREE = dict(cgroups=[{"path": "/a", "limit": "100M"}],
            tasks=[{"name": "hog", "cgroup": "/a", "rss": "60M"},
                   {"name": "small", "cgroup": "/a", "rss": "30M"}],
            events=[{"at": 1.0, "task": "hog", "alloc": "20M"}],
            engine={"handler_deadline": "30ms"})


def slow_reads(sim, seconds: float) -> None:
    """Make the backend's task list as slow to read as a large /proc."""
    fast = sim.backend.tasks

    def tasks(oom, scope):
        inner = fast(oom, scope)
        return LazyTasks(lambda: (time.sleep(seconds), list(inner))[1])
    sim.backend.tasks = tasks


def largest(oc, k):
    victim = max(oc.tasks, key=lambda t: t.rss)
    return Verdict.HANDLED if k.kill_task(victim, "largest") > 0 else Verdict.PASS


def test_slow_context_reads_do_not_count_against_the_deadline():
    sim = make_sim(**TREE, policies={"/a": FuncPolicy(largest)})
    slow_reads(sim, 0.12)                      # 4x the 30 ms deadline, all of it oomkit's
    oom = sim.run().ooms[0]
    assert oom.handlers[0].verdict == "HANDLED" and oom.handlers[0].error is None
    assert oom.resolved_by == "policy"


def test_the_policys_own_time_still_does():
    def dawdle(oc, k):
        list(oc.tasks)
        time.sleep(0.12)                       # the policy's own 120 ms
        return largest(oc, k)
    sim = make_sim(**TREE, policies={"/a": FuncPolicy(dawdle)})
    slow_reads(sim, 0.05)
    oom = sim.run().ooms[0]
    assert oom.handlers[0].error.startswith("deadline")
    assert oom.resolved_by == "kernel"


def test_io_is_capped():
    sim = make_sim(**TREE, policies={"/a": FuncPolicy(largest)})
    sim.engine._guard.io_cap = 0.05            # at most 50 ms of reading on top of 30 ms
    slow_reads(sim, 0.3)
    oom = sim.run().ooms[0]
    assert oom.handlers[0].error.startswith("deadline") and oom.resolved_by == "kernel"


def test_the_heartbeat_goes_on_while_a_handler_runs():
    beats = []
    guard = Guard(0.3, tick=lambda: beats.append(time.perf_counter()), tick_every=0.02)
    outcome = guard.call(lambda: time.sleep(0.15) or "done")
    assert outcome.value == "done" and not outcome.timed_out
    assert len(beats) >= 4                     # ~0.15 s / 0.02 s, on a loaded machine fewer
    assert max(b - a for a, b in zip(beats, beats[1:])) < 0.1


def test_a_closed_guard_leaves_no_thread():
    """A reload replaces the engine: its guard's idle worker must end, not wait for
    ever on its queue (issue 10 item 5: one thread leaked per reload after an OOM)."""
    import threading

    before = threading.active_count()
    guards = [Guard(1.0) for _ in range(5)]
    for g in guards:
        assert g.call(lambda: 42).value == 42
    assert threading.active_count() == before + 5
    for g in guards:
        g.close()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
    assert guards[0].call(lambda: 7).value == 7      # closed, it still serves with a new worker
    guards[0].close()
