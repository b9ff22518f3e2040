"""Section 2, dispatch: the handler chain from the OOMing cgroup to the root."""

from __future__ import annotations

from oomkit import Verdict
from oomkit.backends.base import OOMEvent
from oomkit.backends.sim import Machine, SimBackend
from oomkit.engine import Engine
from oomtest_helpers import FuncPolicy, M, kill_named, make_sim

# /a (150M) > /a/b (100M).  /a/b holds hog 60M + small 30M, /a holds side 50M: 140M of /a's 150M.
TREE = dict(
    cgroups=[{"path": "/a", "limit": "150M"}, {"path": "/a/b", "limit": "100M"}],
    tasks=[{"name": "hog", "cgroup": "/a/b", "rss": "60M"},
           {"name": "small", "cgroup": "/a/b", "rss": "30M"},
           {"name": "side", "cgroup": "/a", "rss": "50M"}],
)
OOM_AT_B = [{"at": 1.0, "task": "hog", "alloc": "20M"}]    # /a/b: 110M > 100M (lowest limit hit)
OOM_AT_A = [{"at": 1.0, "task": "side", "alloc": "20M"}]   # /a: 160M > 150M; /a/b untouched


def three_passers():
    return {cg: FuncPolicy(Verdict.PASS, name=f"pass{cg}") for cg in ("/", "/a", "/a/b")}


def test_chain_runs_from_the_ooming_cgroup_up_to_the_root():
    policies = three_passers()
    sim = make_sim(**TREE, events=OOM_AT_B, policies=policies)
    oom = sim.run().ooms[0]
    assert (oom.level, oom.memcg) == ("memcg", "/a/b")
    assert [h.cgroup for h in oom.handlers] == ["/a/b", "/a", "/"]
    assert all(len(p.calls) == 1 for p in policies.values())
    assert [p.calls[0]["attached_to"] for p in policies.values()] == ["/", "/a", "/a/b"]


def test_chain_skips_attachments_below_the_ooming_cgroup():
    policies = three_passers()
    sim = make_sim(**TREE, events=OOM_AT_A, policies=policies)
    oom = sim.run().ooms[0]
    assert oom.memcg == "/a"
    assert [h.cgroup for h in oom.handlers] == ["/a", "/"]
    assert policies["/a/b"].calls == []


def test_chain_order_is_computed_by_ancestry_not_attach_order():
    engine = Engine(SimBackend(Machine(1 << 30)))
    for cg in ("/", "/x/y", "/x"):
        engine.attach(cg, FuncPolicy())
    chain = engine.chain(OOMEvent("memcg", "/x/y/z"))
    assert [a.cgroup for a in chain] == ["/x/y", "/x", "/"]


def test_whole_chain_passing_hands_the_oom_to_the_kernel_killer():
    sim = make_sim(**TREE, events=OOM_AT_B, policies=three_passers())
    result = sim.run()
    oom = result.ooms[0]
    assert oom.resolved_by == "kernel"
    # kernel: badness by rss inside /a/b -> hog (60M) over small (30M)
    assert [(k.name, k.by) for k in oom.killed] == [("hog", "kernel")]


def test_chain_stops_at_first_handled_with_memory_released():
    policies = three_passers()
    policies["/a/b"] = FuncPolicy(kill_named("small"), name="killer")
    policies["/a"] = FuncPolicy(kill_named("side"), name="second")
    sim = make_sim(**TREE, events=OOM_AT_B, policies=policies)
    result = sim.run()
    oom = result.ooms[0]
    assert [h.cgroup for h in oom.handlers] == ["/a/b"]
    assert oom.handlers[0].verdict == "HANDLED" and oom.handlers[0].freed == 30 * M
    assert oom.resolved_by == "policy"
    assert policies["/a"].calls == [] and policies["/"].calls == []
    assert result.killed == ["small"] and "side" in result.survivors


def test_chain_stops_at_handled_even_if_the_release_was_not_enough():
    # The kernel's rule: HANDLED with bpf_memory_freed ends the chain; the
    # allocation is retried (and may OOM again), the next handler is not run now.
    def kill_small_once(oc, k):
        small = [t for t in oc.tasks if t.name == "small"]
        return Verdict.HANDLED if small and k.kill_task(small[0], "t") > 0 else Verdict.PASS
    policies = three_passers()
    policies["/a/b"] = FuncPolicy(kill_small_once)
    sim = make_sim(**TREE, events=[{"at": 1.0, "task": "hog", "alloc": "50M"}], policies=policies)
    result = sim.run()
    first = result.ooms[0]
    assert [h.cgroup for h in first.handlers] == ["/a/b"]
    assert first.resolved_by == "policy"
    # 60M + 50M > 100M even without small: the retried allocation OOMs again,
    # and this time the whole chain passes and the kernel kills hog.
    assert len(result.ooms) == 2
    assert [h.cgroup for h in result.ooms[1].handlers] == ["/a/b", "/a", "/"]
    assert result.killed == ["small", "hog"]


def test_chain_stops_as_soon_as_the_condition_is_gone_so_no_second_kill():
    policies = three_passers()
    # kills small (relieves the OOM: 90-30+20 <= 100) but says PASS
    policies["/a/b"] = FuncPolicy(kill_named("small", Verdict.PASS))
    policies["/a"] = FuncPolicy(kill_named("side"))   # would kill needlessly
    sim = make_sim(**TREE, events=OOM_AT_B, policies=policies)
    result = sim.run()
    oom = result.ooms[0]
    assert [h.cgroup for h in oom.handlers] == ["/a/b"]
    assert policies["/a"].calls == []
    assert result.killed == ["small"]
    assert oom.resolved_by == "policy"       # memory was released, just not claimed
    assert len(result.ooms) == 1 and not result.failed_allocations


def test_global_oom_runs_only_the_root_attachment():
    policies = three_passers()
    sim = make_sim("200M", **{**TREE, "tasks": TREE["tasks"] + [
        {"name": "rooted", "cgroup": "/", "rss": "40M"}]},
        events=[{"at": 1.0, "task": "rooted", "alloc": "30M"}], policies=policies)
    oom = sim.run().ooms[0]
    assert (oom.level, oom.memcg) == ("global", "/")
    assert [h.cgroup for h in oom.handlers] == ["/"]
    assert policies["/"].calls[0]["level"] == "global"
    assert policies["/a"].calls == [] and policies["/a/b"].calls == []


def test_numa_oom_runs_only_the_root_attachment():
    policies = {"/": FuncPolicy(Verdict.PASS), "/a": FuncPolicy(Verdict.PASS)}
    sim = make_sim("200M", numa_nodes=2, cgroups=[{"path": "/a"}],
                   tasks=[{"name": "filler", "cgroup": "/a", "rss": "90M", "nodes": [0]},
                          {"name": "bound", "cgroup": "/a", "rss": 0, "nodes": [0]}],
                   events=[{"at": 1.0, "task": "bound", "alloc": "20M"}], policies=policies)
    oom = sim.run().ooms[0]
    assert oom.level == "numa" and oom.nodes == (0,)
    assert [h.cgroup for h in oom.handlers] == ["/"]
    assert policies["/a"].calls == []
