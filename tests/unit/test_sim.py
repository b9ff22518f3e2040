"""Section 4: the simulated kernel: where OOMs are raised, retries, exit_delay,
termination and byte-identical output."""

from __future__ import annotations

import os
import subprocess
import sys

from oomkit import Verdict
from oomkit.backends.sim.simulator import MAX_RETRIES
from oomtest_helpers import FuncPolicy, M, make_sim


def test_memcg_oom_is_raised_at_the_lowest_limit_hit():
    # /p 300M > /p/c 50M: the charge crosses /p/c's limit, not /p's
    sim = make_sim(cgroups=[{"path": "/p", "limit": "300M"}, {"path": "/p/c", "limit": "50M"}],
                   tasks=[{"name": "t", "cgroup": "/p/c", "rss": "40M"}],
                   events=[{"at": 1, "task": "t", "alloc": "20M"}])
    oom = sim.run().ooms[0]
    assert (oom.level, oom.memcg, oom.trigger, oom.requested) == ("memcg", "/p/c", "t", 20 * M)


def test_memcg_oom_at_an_ancestor_when_only_its_limit_is_hit():
    sim = make_sim(cgroups=[{"path": "/p", "limit": "100M"}, {"path": "/p/c", "limit": "80M"},
                            {"path": "/p/d"}],
                   tasks=[{"name": "t", "cgroup": "/p/c", "rss": "30M"},
                          {"name": "u", "cgroup": "/p/d", "rss": "50M"}],
                   events=[{"at": 1, "task": "t", "alloc": "30M"}])   # /p/c 60 <= 80; /p 110 > 100
    oom = sim.run().ooms[0]
    assert oom.memcg == "/p"


def test_memcg_oom_counts_memory_events():
    sim = make_sim(cgroups=[{"path": "/p", "limit": "100M"}, {"path": "/p/c", "limit": "50M"}],
                   tasks=[{"name": "t", "cgroup": "/p/c", "rss": "40M", "oom_score_adj": -1000}],
                   events=[{"at": 1, "task": "t", "alloc": "20M"}])
    sim.run()
    events = sim.machine.cgroups["/p/c"].events
    assert (events["max"], events["oom"], events["oom_kill"]) == (1, 1, 0)


def test_global_oom_when_machine_memory_is_exhausted():
    sim = make_sim("100M", cgroups=[{"path": "/a"}],
                   tasks=[{"name": "t", "cgroup": "/a", "rss": "90M"}],
                   events=[{"at": 1, "task": "t", "alloc": "20M"}])
    oom = sim.run().ooms[0]
    assert (oom.level, oom.memcg, oom.nodes) == ("global", "/", ())


def test_numa_oom_for_a_task_bound_to_nodes_that_are_full():
    # 2 nodes of 100M; bound to node 0 which holds 90M already; node 1 is empty
    tasks = [{"name": "filler", "rss": "90M", "nodes": [0]},
             {"name": "bound", "rss": 0, "nodes": [0]},
             {"name": "free", "rss": 0}]
    sim = make_sim("200M", numa_nodes=2, tasks=tasks,
                   events=[{"at": 1, "task": "bound", "alloc": "20M"}])
    result = sim.run()
    oom = result.ooms[0]
    assert (oom.level, oom.memcg, oom.nodes) == ("numa", "/", (0,))
    assert oom.to_dict()["nodes"] == [0]
    # the kernel kills a task that holds memory on node 0: filler, not the empty "free"
    assert [k.name for k in oom.killed] == ["filler"]


def test_an_unbound_task_spills_to_other_nodes_without_an_oom():
    sim = make_sim("200M", numa_nodes=2,
                   tasks=[{"name": "filler", "rss": "90M", "nodes": [0]}, {"name": "any", "rss": 0}],
                   events=[{"at": 1, "task": "any", "alloc": "100M"}])
    result = sim.run()
    assert result.ooms == [] and sim.machine.used == 190 * M


def test_the_allocation_is_retried_after_handling():
    sim = make_sim(cgroups=[{"path": "/a", "limit": "100M"}],
                   tasks=[{"name": "hog", "cgroup": "/a", "rss": "50M"},
                          {"name": "victim", "cgroup": "/a", "rss": "40M", "oom_score_adj": 500}],
                   events=[{"at": 1, "task": "hog", "alloc": "30M"}])
    result = sim.run()
    assert result.killed == ["victim"] and result.survivors == ["hog"]
    assert result.to_dict()["final"]["/a"] == {"usage": 80 * M, "limit": 100 * M}   # the 30M went in
    assert result.failed_allocations == []


def test_exit_delay_holds_the_victims_memory_until_it_is_reaped():
    sim = make_sim(exit_delay="300ms", cgroups=[{"path": "/a", "limit": "100M"}],
                   tasks=[{"name": "hog", "cgroup": "/a", "rss": "50M"},
                          {"name": "victim", "cgroup": "/a", "rss": "40M", "oom_score_adj": 500},
                          {"name": "probe", "cgroup": "/a", "rss": 0}],
                   events=[{"at": 1.0, "task": "hog", "alloc": "30M"},
                           {"at": 1.1, "task": "probe", "alloc": "11M"}])   # 90M + 11M > 100M
    result = sim.run()
    first, second = result.ooms
    assert [k.name for k in first.killed] == ["victim"]
    # at t=1.1 victim is still exiting (reaped at 1.3) and charged: probe OOMs,
    # and the kernel waits for the exiting victim rather than killing again
    assert second.t == 1.1 and second.killed == []
    assert second.resolved_by == "kernel" and "waits for exiting victim" in second.note
    assert result.killed == ["victim"] and result.failed_allocations == []
    assert result.final["/a"].usage == (50 + 30 + 11) * M   # both retried after the reap


def test_exit_delay_per_task_and_self_exit():
    sim = make_sim(tasks=[{"name": "slow", "rss": "10M", "exit_delay": "2s"},
                          {"name": "quick", "rss": "10M"}],
                   events=[{"at": 1, "task": "slow", "exit": True},
                           {"at": 1, "task": "quick", "exit": True}])
    result = sim.run()
    assert result.exited == ["quick", "slow"] and result.killed == []


def test_free_and_spawn_events():
    sim = make_sim(cgroups=[{"path": "/a", "limit": "100M"}],
                   tasks=[{"name": "t", "cgroup": "/a", "rss": "60M"}],
                   events=[{"at": 1, "task": "t", "free": "20M"},
                           {"at": 2, "spawn": {"name": "n", "cgroup": "/a", "rss": "50M"}}])
    result = sim.run()
    assert result.ooms == [] and sorted(result.survivors) == ["n", "t"]
    assert result.final["/a"].usage == 90 * M


def test_retries_are_bounded():
    # hog asks for more than the limit: every retry OOMs again and the kernel
    # kills one more small task; after MAX_RETRIES the allocation fails.
    smalls = [{"name": f"s{i}", "cgroup": "/a", "rss": "5M"} for i in range(15)]
    sim = make_sim(cgroups=[{"path": "/a", "limit": "100M"}],
                   tasks=[{"name": "hog", "cgroup": "/a", "rss": 0}, *smalls],
                   events=[{"at": 1, "task": "hog", "alloc": "200M"}])
    result = sim.run()
    assert len(result.ooms) == MAX_RETRIES + 1
    assert len(result.killed) == MAX_RETRIES + 1
    assert [f.task for f in result.failed_allocations] == ["hog"]


def test_nothing_loops_forever_when_a_policy_keeps_buying_a_page():
    def one_page(oc, k):
        limit = oc.cgroups[oc.memcg].limit
        return Verdict.HANDLED if k.raise_limit(oc.memcg, limit + 4096, "a page") > 0 else Verdict.PASS
    sim = make_sim(cgroups=[{"path": "/a", "limit": "100M"}],
                   tasks=[{"name": "hog", "cgroup": "/a", "rss": "100M", "oom_score_adj": -1000}],
                   events=[{"at": 1, "task": "hog", "alloc": "50M"}],
                   policies={"/": FuncPolicy(one_page)})
    result = sim.run()
    assert len(result.ooms) == MAX_RETRIES + 1
    assert all(o.resolved_by == "policy" for o in result.ooms)
    assert result.failed_allocations and result.failed_allocations[0].task == "hog"


def test_nothing_loops_forever_when_a_policy_always_backs_off():
    sim = make_sim(cgroups=[{"path": "/a", "limit": "100M"}],
                   tasks=[{"name": "hog", "cgroup": "/a", "rss": "100M", "oom_score_adj": -1000}],
                   events=[{"at": 1, "task": "hog", "alloc": "1M"}],
                   policies={"/": FuncPolicy(Verdict.BACKOFF)})
    result = sim.run()
    assert [o.resolved_by for o in result.ooms] == ["unresolved"]
    assert len(result.failed_allocations) == 1


# -- determinism ----------------------------------------------------------------------

DETERMINISM = """
[machine]
memory = "512M"
swap = "64M"
numa_nodes = 2
exit_delay = "50ms"

[[cgroup]]
path = "/svc"
limit = "200M"
[[cgroup]]
path = "/svc/db"
oom_group = true
[[cgroup]]
path = "/batch"
limit = "150M"

[[task]]
name = "db"
cgroup = "/svc/db"
rss = "90M"
oom_score_adj = -500
[[task]]
name = "db-helper"
cgroup = "/svc/db"
rss = "20M"
[[task]]
name = "web"
cgroup = "/svc"
rss = "60M"
[[task]]
name = "job1"
cgroup = "/batch"
rss = "60M"
[[task]]
name = "job2"
cgroup = "/batch"
rss = "50M"
nodes = [1]

[[attach]]
cgroup = "/batch"
policy = "newest-task"
[[attach]]
cgroup = "/"
policy = "prefer-avoid"
params = { avoid = ["^db"], prefer = ["/batch/*"] }

[[event]]
at = 0.5
task = "web"
alloc = "40M"
[[event]]
at = 1.0
task = "job1"
alloc = "60M"
[[event]]
at = 1.0
spawn = { name = "job3", cgroup = "/batch", rss = "30M" }
[[event]]
at = 2.0
task = "job2"
alloc = "200M"
"""


def test_two_runs_of_one_scenario_give_byte_identical_json(tmp_path):
    path = tmp_path / "det.toml"
    path.write_text(DETERMINISM)
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-m", "oomkit.cli", "simulate", "--json", str(path)],
                              capture_output=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
    import json
    data = json.loads(outs[0])
    assert len(data["ooms"]) >= 2                 # the scenario exercises several OOMs
    assert {o["level"] for o in data["ooms"]} >= {"memcg"}
    for key in ("ooms", "survivors", "killed", "final"):
        assert key in data
    for oom in data["ooms"]:
        assert set(oom) >= {"t", "level", "memcg", "trigger", "handlers", "resolved_by", "killed",
                            "limits"}
        assert oom["resolved_by"] in ("policy", "backoff", "kernel", "unresolved")
        for k in oom["killed"]:
            assert set(k) == {"name", "pid", "cgroup", "by"}
            assert k["by"] == "kernel" or k["by"].startswith("policy:/")
        for h in oom["handlers"]:
            assert set(h) >= {"cgroup", "policy", "verdict", "freed", "error"}
