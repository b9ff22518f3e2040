"""Section 2, failures: an exception or a handler over its deadline counts as
PASS and is recorded; late actions are revoked; 3 consecutive failures eject
the attachment (the counter resets on success)."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from oomkit import Refused, Verdict
from oomkit.backends.base import OOMEvent
from oomtest_helpers import FuncPolicy, M, kill_named, make_sim, task_named

TREE = dict(cgroups=[{"path": "/a", "limit": "100M"}],
            tasks=[{"name": "hog", "cgroup": "/a", "rss": "60M"},
                   {"name": "small", "cgroup": "/a", "rss": "30M"}],
            events=[{"at": 1.0, "task": "hog", "alloc": "20M"}])
OOM_A = OOMEvent("memcg", "/a", requested=20 * M, trigger="hog")


def boom(oc, k):
    raise RuntimeError("boom")


def test_exception_is_pass_and_recorded_and_the_chain_goes_on():
    sim = make_sim(**TREE, policies={"/a": FuncPolicy(boom), "/": FuncPolicy(kill_named("small"))})
    oom = sim.run().ooms[0]
    h = oom.handlers[0]
    assert h.verdict == "PASS"
    assert h.error == "RuntimeError: boom"
    assert oom.to_dict()["handlers"][0]["error"] == "RuntimeError: boom"
    assert oom.handlers[1].verdict == "HANDLED" and oom.resolved_by == "policy"


def test_returning_something_other_than_a_verdict_is_a_failure():
    sim = make_sim(**TREE, policies={"/a": FuncPolicy(lambda oc, k: 1)})
    h = sim.run().ooms[0].handlers[0]
    assert h.verdict == "PASS" and "not a Verdict" in h.error
    assert sim.engine.attachments["/a"].failures == 1


def test_whole_chain_failing_falls_back_to_the_kernel():
    sim = make_sim(**TREE, policies={"/a": FuncPolicy(boom)})
    oom = sim.run().ooms[0]
    assert oom.resolved_by == "kernel"
    assert [k.name for k in oom.killed] == ["hog"]


# -- ejection ------------------------------------------------------------------------

UNKILLABLE = dict(cgroups=[{"path": "/a", "limit": "100M"}],
                  tasks=[{"name": "p", "cgroup": "/a", "rss": "90M", "oom_score_adj": -1000}])


def test_three_consecutive_failures_eject_the_attachment():
    policy = FuncPolicy(boom)
    sim = make_sim(**UNKILLABLE, policies={"/a": policy})
    records = [sim.engine.handle(OOM_A) for _ in range(4)]
    assert [r.ejected for r in records] == [[], [], ["/a"], []]
    assert "/a" not in sim.engine.attachments and sim.engine.ejected == ["/a"]
    assert len(policy.calls) == 3
    assert records[3].handlers == []           # the kernel's own policy took over
    assert records[2].to_dict()["ejected"] == ["/a"]


def test_failure_counter_resets_on_success():
    script = iter([boom, boom, lambda oc, k: Verdict.PASS, boom, boom, boom])
    policy = FuncPolicy(lambda oc, k: next(script)(oc, k))
    sim = make_sim(**UNKILLABLE, policies={"/a": policy})
    ejected_after = []
    for i in range(6):
        if sim.engine.handle(OOM_A).ejected:
            ejected_after.append(i + 1)
    assert ejected_after == [6]                # not 5: the PASS at call 3 reset the count


def test_ejection_is_reported_by_the_simulator():
    sim = make_sim(**{**UNKILLABLE, "tasks": UNKILLABLE["tasks"] + [
        {"name": "hog", "cgroup": "/a", "rss": 0, "oom_score_adj": -1000}]},
        events=[{"at": float(i), "task": "hog", "alloc": "20M"} for i in range(1, 5)],
        policies={"/a": FuncPolicy(boom)})
    result = sim.run()
    assert [o.resolved_by for o in result.ooms] == ["unresolved"] * 4
    assert [o.ejected for o in result.ooms] == [[], [], ["/a"], []]
    assert result.ejected == ["/a"]
    assert result.to_dict()["ejected"] == ["/a"]


# -- the deadline (wall time) ------------------------------------------------------------

def test_handler_over_its_deadline_is_pass_and_its_late_actions_are_revoked():
    late: list = []
    done = threading.Event()

    def slow(oc, k):
        victim = task_named(oc, "small")
        try:
            time.sleep(0.3)               # past the 20 ms deadline
        except BaseException:             # noqa: BLE001 - swallow the engine's stop on purpose
            pass
        late.append(k.kill_task(victim, "too late"))
        done.set()
        return Verdict.HANDLED

    sim = make_sim(**TREE, engine={"handler_deadline": "20ms"}, policies={"/a": FuncPolicy(slow)})
    t0 = time.perf_counter()
    result = sim.run()
    assert time.perf_counter() - t0 < 0.25          # the engine did not wait for the handler
    h = result.ooms[0].handlers[0]
    assert h.verdict == "PASS" and h.error.startswith("deadline")
    assert "20 ms" in h.error
    assert result.ooms[0].resolved_by == "kernel"   # kernel killed hog, the largest
    assert done.wait(2.0)
    assert isinstance(late[0], Refused) and late[0] == -errno.ETIME
    assert "deadline" in late[0].reason
    small = next(t for t in sim.machine.tasks.values() if t.name == "small")
    assert small.state == "running"                 # the late kill did nothing


def test_a_runaway_python_loop_is_stopped_after_the_deadline():
    stopped = threading.Event()

    def spin(oc, k):
        try:
            while True:
                pass
        finally:
            stopped.set()
    sim = make_sim(**TREE, engine={"handler_deadline": "20ms"}, policies={"/a": FuncPolicy(spin)})
    h = sim.run().ooms[0].handlers[0]
    assert h.verdict == "PASS" and h.error.startswith("deadline")
    assert stopped.wait(2.0)


def test_deadline_failures_count_towards_ejection():
    sim = make_sim(**UNKILLABLE, engine={"handler_deadline": "20ms"},
                   policies={"/a": FuncPolicy(lambda oc, k: time.sleep(0.1))})
    records = [sim.engine.handle(OOM_A) for _ in range(3)]
    assert all(r.handlers[0].error.startswith("deadline") for r in records)
    assert records[2].ejected == ["/a"]


# -- the deterministic budget (simulator) -----------------------------------------------

def busy(oc, k):
    n = 0
    for _ in range(100_000):
        n += 1
    return Verdict.PASS


def test_handler_over_its_line_budget_is_pass_and_recorded():
    sim = make_sim(**TREE, engine={"handler_budget": 500, "handler_deadline": "10s"},
                   policies={"/a": FuncPolicy(busy)})
    h = sim.run().ooms[0].handlers[0]
    assert h.verdict == "PASS"
    assert "budget of 500 lines" in h.error


def test_handler_within_its_line_budget_runs_normally():
    sim = make_sim(**TREE, engine={"handler_budget": 5000},
                   policies={"/a": FuncPolicy(kill_named("small"))})
    h = sim.run().ooms[0].handlers[0]
    assert h.verdict == "HANDLED" and h.error is None


def test_line_budget_fails_the_same_way_every_run():
    def run():
        sim = make_sim(**TREE, engine={"handler_budget": 300, "handler_deadline": "10s"},
                       policies={"/a": FuncPolicy(busy)})
        return sim.run().to_dict()
    assert run() == run()


@pytest.mark.parametrize("bad", [0, -5])
def test_line_budget_must_be_positive(bad):
    from oomkit import ConfigError
    with pytest.raises(ConfigError, match="handler_budget"):
        make_sim(**TREE, engine={"handler_budget": bad})
