"""Section 2, verdicts: the dual check (HANDLED needs a real release) and the
bounded BACKOFF (3 promises per 10 s per attachment, each kept within 500 ms)."""

from __future__ import annotations

from oomkit import Verdict
from oomkit.engine.backoff import BackoffBudget
from oomkit.policies.builtin import KernelDefault
from oomkit.policy import OOMPolicy
from oomtest_helpers import FuncPolicy, M, kill_named, make_sim

TREE = dict(cgroups=[{"path": "/a", "limit": "100M"}, {"path": "/b"}],
            tasks=[{"name": "hog", "cgroup": "/a", "rss": "60M"},
                   {"name": "small", "cgroup": "/a", "rss": "30M"},
                   {"name": "elsewhere", "cgroup": "/b", "rss": "200M"}],
            events=[{"at": 1.0, "task": "hog", "alloc": "20M"}])    # /a: 110M > 100M


# -- the dual check ---------------------------------------------------------------

def test_handled_without_any_release_is_pass_and_a_recorded_false_claim():
    liar = FuncPolicy(Verdict.HANDLED, name="liar")
    root = FuncPolicy(kill_named("small"), name="honest")
    sim = make_sim(**TREE, policies={"/a": liar, "/": root})
    oom = sim.run().ooms[0]
    first, second = oom.handlers
    assert (first.verdict, first.claimed, first.freed) == ("PASS", "HANDLED", 0)
    assert "false claim" in first.error
    assert second.policy == "honest" and second.verdict == "HANDLED"   # the chain went on
    assert oom.resolved_by == "policy"
    assert oom.to_dict()["handlers"][0]["claimed"] == "HANDLED"


def test_handled_after_a_kill_that_relieves_nothing_is_a_false_claim():
    # The root attachment may kill anywhere, but a task outside the OOMing /a
    # releases nothing for this OOM: memory_freed stays 0.
    seen = {}

    def kill_elsewhere(oc, k):
        seen["result"] = k.kill_task(next(t for t in oc.tasks if t.name == "elsewhere"), "t")
        seen["freed"] = oc.memory_freed
        return Verdict.HANDLED
    sim = make_sim(**TREE, policies={"/": FuncPolicy(kill_elsewhere)})
    result = sim.run()
    oom = result.ooms[0]
    assert seen == {"result": 0, "freed": 0}
    assert "elsewhere" in result.killed              # the kill happened ...
    assert oom.handlers[0].verdict == "PASS"          # ... but did not count
    assert oom.handlers[0].claimed == "HANDLED"
    assert oom.resolved_by == "kernel"                # and the kernel still had to act
    assert [k.by for k in oom.killed] == ["policy:/", "kernel"]


def test_handled_with_a_release_counts():
    sim = make_sim(**TREE, policies={"/a": FuncPolicy(kill_named("small"))})
    oom = sim.run().ooms[0]
    assert oom.handlers[0].verdict == "HANDLED" and oom.handlers[0].claimed is None
    assert oom.handlers[0].freed == 30 * M
    assert oom.resolved_by == "policy"


def test_pass_lets_the_next_handler_run():
    sim = make_sim(**TREE, policies={"/a": FuncPolicy(Verdict.PASS),
                                     "/": FuncPolicy(kill_named("small"))})
    oom = sim.run().ooms[0]
    assert [h.verdict for h in oom.handlers] == ["PASS", "HANDLED"]
    assert oom.handlers[0].error is None          # an honest PASS is not an error


# -- BACKOFF -----------------------------------------------------------------------

def backoff_scenario(n_promises: int, *, gap: float = 1.0, delay: str = "100ms", engine=None,
                     extra_at: float | None = None):
    """/a (100M) is full: hog 50M + d0..dN 10M each (dN has exit_delay ``delay``).
    At each step one d exits by itself and hog asks for 10M at the same instant:
    a memcg OOM that resolves itself once that d is reaped."""
    n = n_promises + (1 if extra_at is not None else 0)
    tasks = [{"name": "hog", "cgroup": "/a", "rss": "50M"}]
    tasks += [{"name": f"d{i}", "cgroup": "/a", "rss": f"{50 // n}M", "exit_delay": delay}
              for i in range(n)]
    limit = 50 + n * (50 // n)
    times = [1.0 + i * gap for i in range(n_promises)] + ([extra_at] if extra_at is not None else [])
    events = []
    for i, t in enumerate(times):
        events += [{"at": t, "task": f"d{i}", "exit": True},
                   {"at": t, "task": "hog", "alloc": f"{50 // n}M"}]
    return dict(cgroups=[{"path": "/a", "limit": f"{limit}M"}], tasks=tasks, events=events,
                engine=engine)


def test_backoff_is_accepted_when_the_promise_is_kept():
    sim = make_sim(**backoff_scenario(1), policies={"/a": FuncPolicy(Verdict.BACKOFF)})
    result = sim.run()
    oom = result.ooms[0]
    assert oom.resolved_by == "backoff"
    assert oom.handlers[0].verdict == "BACKOFF"
    assert oom.killed == [] and result.killed == []
    assert result.exited == ["d0"] and not result.failed_allocations


def test_backoff_budget_is_three_promises_per_ten_seconds_per_attachment():
    # promises at t=1,2,3 are accepted, the 4th at t=4 is over budget; at t=11.5
    # the first three have left the 10 s window and a promise is accepted again.
    sim = make_sim(**backoff_scenario(4, extra_at=11.5),
                   policies={"/a": FuncPolicy(Verdict.BACKOFF)})
    ooms = sim.run().ooms
    assert [o.t for o in ooms[:3]] == [1.0, 2.0, 3.0]
    assert [o.resolved_by for o in ooms[:3]] == ["backoff"] * 3
    over = ooms[3]
    assert over.t == 4.0
    assert (over.handlers[0].verdict, over.handlers[0].claimed) == ("PASS", "BACKOFF")
    assert "budget" in over.handlers[0].error
    assert over.resolved_by != "backoff"
    later = next(o for o in ooms if o.t >= 11.5)
    assert later.resolved_by == "backoff"


def test_backoff_budget_is_per_attachment():
    # Two attachments promising in turn: each has its own 3.
    class Alternate(OOMPolicy):
        name = "alt"

        def handle_out_of_memory(self, oc, k):
            return Verdict.BACKOFF

    sim = make_sim(**backoff_scenario(4), policies={"/a": FuncPolicy(Verdict.BACKOFF)})
    sim.engine.attachments["/a"].backoff.take(0.5)   # /a has one promise fewer
    sim.engine.attach("/", Alternate())
    ooms = sim.run().ooms
    assert [o.resolved_by for o in ooms] == ["backoff"] * 4
    assert [h.cgroup for h in ooms[2].handlers] == ["/a", "/"]   # /a over budget at t=3
    assert ooms[2].handlers[1].verdict == "BACKOFF"


def test_backoff_budget_counter():
    b = BackoffBudget(3, 10.0)
    assert [b.take(t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert b.remaining(3.0) == 0
    assert b.take(10.0) is True       # t=0 left the window [0.0+10s)
    assert b.take(10.5) is False


def test_backoff_promise_kept_within_500ms_is_accepted():
    sim = make_sim(**backoff_scenario(1, delay="450ms"), policies={"/a": FuncPolicy(Verdict.BACKOFF)})
    oom = sim.run().ooms[0]
    assert oom.resolved_by == "backoff"


def test_backoff_promise_not_kept_within_500ms_is_pass_and_recorded():
    sim = make_sim(**backoff_scenario(1, delay="600ms"))
    clock_seen = []
    sim.engine.attach("/a", FuncPolicy(Verdict.BACKOFF))
    sim.engine.attach("/", FuncPolicy(lambda oc, k: clock_seen.append(sim.backend.clock.now())
                                      or Verdict.PASS))
    result = sim.run()
    oom = result.ooms[0]
    h = oom.handlers[0]
    assert (h.verdict, h.claimed) == ("PASS", "BACKOFF")
    assert "not kept within 500 ms" in h.error
    assert oom.resolved_by != "backoff"
    # the next handler ran after exactly the 500 ms wait (OOM at t=1.0), not
    # after d0's exit at t=1.6
    assert clock_seen[0] == 1.5
    assert [h.cgroup for h in oom.handlers] == ["/a", "/"]


def test_backoff_wait_is_configurable():
    sim = make_sim(**backoff_scenario(1, delay="300ms", engine={"backoff_wait": "200ms"}),
                   policies={"/a": FuncPolicy(Verdict.BACKOFF)})
    h = sim.run().ooms[0].handlers[0]
    assert h.verdict == "PASS" and "200 ms" in h.error


def test_broken_backoff_falls_to_the_next_handler():
    sim = make_sim(**backoff_scenario(1, delay="2s"),
                   policies={"/a": FuncPolicy(Verdict.BACKOFF), "/": KernelDefault()})
    oom = sim.run().ooms[0]
    assert [h.cgroup for h in oom.handlers] == ["/a", "/"]
    # kernel-default at the root sees d0 exiting and itself waits (BACKOFF);
    # its own promise is bounded the same way and, d0 taking 2 s, is broken too.
    assert (oom.handlers[1].verdict, oom.handlers[1].claimed) == ("PASS", "BACKOFF")
    assert oom.resolved_by == "kernel" and "waits" in oom.note
    assert oom.killed == []


def test_backoff_after_a_release_ends_the_chain_as_handled_and_is_recorded():
    # BACKOFF promises nothing destructive was done; a handler that killed and
    # then said BACKOFF released memory, so the parent must not kill again.
    parent = FuncPolicy(kill_named("hog"), name="parent")
    sim = make_sim(**TREE, policies={"/a": FuncPolicy(kill_named("small", Verdict.BACKOFF)),
                                     "/": parent})
    oom = sim.run().ooms[0]
    (only,) = oom.handlers
    assert (only.verdict, only.claimed) == ("HANDLED", "BACKOFF")
    assert "BACKOFF after releasing memory" in only.error
    assert oom.resolved_by == "policy" and parent.calls == []
