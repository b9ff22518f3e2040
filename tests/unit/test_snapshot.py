"""The event log's snapshot is taken after the chain, from what the handlers
read before they acted (issue 3 s.6: enough to replay the OOM)."""

from __future__ import annotations

from oomkit.daemon.snapshot import snapshot
from oomtest_helpers import FuncPolicy, kill_named, make_sim
from oomkit import Verdict

TREE = dict(cgroups=[{"path": "/a", "limit": "100M"}],
            tasks=[{"name": "hog", "cgroup": "/a", "rss": "60M"},
                   {"name": "small", "cgroup": "/a", "rss": "30M"}])


def handle_one(policy):
    sim = make_sim(**TREE, policies={"/a": policy})
    task = sim._by_name["hog"]
    oom = sim.machine.check(task, 20 << 20)
    record = sim.engine.handle(oom)
    return sim, oom, record


def test_the_snapshot_shows_the_victim_as_the_policy_saw_it():
    sim, oom, record = handle_one(FuncPolicy(kill_named("hog")))
    snap = snapshot(sim.backend, oom, record.contexts)
    assert snap["read"] == "before" and snap["scope"] == "/a"
    assert {t["name"] for t in snap["tasks"]} == {"hog", "small"}     # hog is dead by now
    assert "hog" not in {t.name for t in sim.backend.tasks(oom, "/a") if not t.exiting}


def test_what_no_policy_read_is_read_after_and_says_so():
    sim, oom, record = handle_one(FuncPolicy(Verdict.PASS))           # looked at nothing
    snap = snapshot(sim.backend, oom, record.contexts)
    assert snap["read"] == "after"
    assert snap["cgroups"]["/a"]["limit"] == 100 << 20
