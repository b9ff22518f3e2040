"""Issue 12: a policy's kill is the kernel OOM killer's kill (``bpf_oom_kill_process()``
kills "in exactly the same way the OOM killer does"): memory.oom.group and every
process sharing a dying mm, decided once (``oom_kill.oom_kill_set``) for the kernel
model and ``k.kill_task`` / ``k.kill_cgroup`` alike, every victim recorded."""

from __future__ import annotations

import pytest

from oomkit import TaskInfo, Verdict
from oomkit.backends.sim import Simulator
from oomkit.config.scenario import resolve
from oomkit.errors import ConfigError
from oomkit.oom_kill import oom_kill_set
from oomtest_helpers import FuncPolicy, M, kill_named, make_sim, scenario_dict


def T(pid, cgroup="/m", adj=0, exiting=False):
    return TaskInfo(pid, f"t{pid}", (), cgroup, M, 0, 0, adj, 0, 0.0, exiting, None)


def by_mm(mms):
    """A sharers function from a literal pid -> mm id map."""
    def sharers(dying, pool):
        wanted = {mms[t.pid] for t in dying if t.pid in mms}
        return [t for t in pool if mms.get(t.pid) in wanted]
    return sharers


# -- the pure rule ---------------------------------------------------------------------------

def test_a_kill_without_group_or_sharers_is_the_victim_alone():
    v = T(1)
    assert oom_kill_set(v, None, [v, T(2)], by_mm({})).victims == (v,)


def test_a_group_kill_spares_minus_1000_exiting_and_spared_tasks():
    v, a, b, c, d, out = T(5, "/g/x"), T(2, "/g"), T(3, "/g/y", adj=-1000), T(4, "/g", exiting=True), \
        T(6, "/g"), T(1, "/h")
    kill = oom_kill_set(v, "/g", [out, a, b, c, v, d], spared=lambda pid: pid == 6)
    assert kill.members == (v, a)          # the victim first, then the group in pid order
    assert kill.group == "/g" and kill.sharers == ()


def test_sharers_of_every_dying_process_die_even_at_minus_1000_but_not_init():
    # __oom_kill_process() spares only init and kernel threads among the sharers
    v, g2, s1, s2, s3, init, other = T(10, "/g"), T(11, "/g"), T(20, "/a", adj=-1000), T(21, "/b"), \
        T(22, "/b", exiting=True), T(1, "/"), T(30, "/a")
    mms = {10: "A", 20: "A", 1: "A", 11: "B", 21: "B", 22: "B", 30: "C"}
    kill = oom_kill_set(v, "/g", [v, g2, s1, s2, s3, init, other], by_mm(mms),
                        spared=lambda pid: pid == 1)
    assert [t.pid for t in kill.members] == [10, 11]
    assert [t.pid for t in kill.sharers] == [20, 21]
    assert [t.pid for t in kill.victims] == [10, 11, 20, 21]


def test_a_cgroup_kill_has_no_victim_of_its_own():
    a, b, s = T(2, "/g"), T(3, "/g/y"), T(9, "/o")
    kill = oom_kill_set(None, "/g", [a, b, s], by_mm({3: "X", 9: "X"}))
    assert [t.pid for t in kill.victims] == [2, 3, 9]


# -- memory.oom.group through k.kill_task, as the kernel model ---------------------------------

GROUPS = dict(
    memory="1G",
    cgroups=[{"path": "/top", "limit": "300M"},
             {"path": "/top/g", "oom_group": True},
             {"path": "/top/g/inner", "oom_group": True},
             {"path": "/top/other"}],
    tasks=[{"name": "victim", "cgroup": "/top/g/inner", "rss": "100M"},
           {"name": "mate", "cgroup": "/top/g", "rss": "50M"},
           {"name": "keeper", "cgroup": "/top/g", "rss": "10M", "oom_score_adj": -1000},
           {"name": "bystander", "cgroup": "/top/other", "rss": "60M"}],
    events=[{"at": 1, "task": "bystander", "alloc": "100M"}])


def killed(result, i=0):
    return sorted(k.name for k in result.ooms[i].killed)


def test_kill_task_in_an_oom_group_kills_the_highest_group_up_to_the_ooming_memcg():
    sim = make_sim(**GROUPS, policies={"/": FuncPolicy(kill_named("victim"))})
    result = sim.run()
    oom = result.ooms[0]
    assert oom.memcg == "/top" and oom.resolved_by == "policy"
    assert killed(result) == ["mate", "victim"]        # /top/g whole, but its -1000 task
    assert "keeper" in result.survivors and "bystander" in result.survivors
    action = oom.handlers[0].actions[0]
    assert action.action == "kill_task" and action.result == 150 * M
    assert action.error == "memory.oom.group /top/g: 1 more"
    assert result.memory_events["/top/g"]["oom_group_kill"] == 1
    assert result.memory_events["/top/g"]["oom_kill"] == 2


def test_the_group_stops_at_the_ooming_memcg():
    # the OOM is in /top/g/inner itself: /top/g is above the OOM domain, so the kill is inner's
    scenario = dict(GROUPS, cgroups=[*GROUPS["cgroups"][:2],
                                     {"path": "/top/g/inner", "oom_group": True, "limit": "120M"},
                                     GROUPS["cgroups"][3]],
                    events=[{"at": 1, "task": "victim", "alloc": "30M"}])
    result = make_sim(**scenario, policies={"/": FuncPolicy(kill_named("victim"))}).run()
    assert result.ooms[0].memcg == "/top/g/inner"
    assert killed(result) == ["victim"]


def test_a_policy_kill_and_the_kernel_kill_the_same_set():
    # kernel-default picks "victim" (the largest in /top) and so does the kernel alone
    policy = Simulator(resolve(scenario_dict(**GROUPS, attach=[
        {"cgroup": "/", "policy": "kernel-default"}]))).run()
    kernel = make_sim(**GROUPS).run()
    assert policy.ooms[0].resolved_by == "policy" and kernel.ooms[0].resolved_by == "kernel"
    assert killed(policy) == killed(kernel) == ["mate", "victim"]
    assert policy.memory_events == kernel.memory_events


# -- processes sharing an mm -------------------------------------------------------------------

SHARED = dict(
    memory="1G",
    cgroups=[{"path": "/m", "limit": "200M"}],
    tasks=[{"name": "parent", "cgroup": "/m", "rss": "120M"},
           {"name": "clone", "cgroup": "/m", "mm": "parent"},     # clone(CLONE_VM), no CLONE_THREAD
           {"name": "small", "cgroup": "/m", "rss": "30M"}],
    events=[{"at": 1, "task": "small", "alloc": "80M"}])


def test_a_sharer_shows_the_mm_it_shares_and_holds_no_memory_of_its_own():
    seen = {}

    def look(oc, k):
        seen.update({t.name: t.rss for t in oc.tasks})
        return Verdict.PASS
    sim = make_sim(**SHARED, policies={"/": FuncPolicy(look)})
    assert sim.machine.cgroups["/m"].usage == 150 * M      # the mm is charged once
    sim.run()
    assert seen == {"parent": 120 * M, "clone": 120 * M, "small": 30 * M}


@pytest.mark.parametrize("victim", ["parent", "clone"])
def test_kill_task_kills_every_process_sharing_the_victims_mm(victim):
    sim = make_sim(**SHARED, policies={"/": FuncPolicy(kill_named(victim))})
    result = sim.run()
    oom = result.ooms[0]
    assert oom.resolved_by == "policy"
    assert killed(result) == ["clone", "parent"]
    action = oom.handlers[0].actions[0]
    assert action.result == 120 * M and action.error == "1 sharing its mm"   # counted once
    assert result.failed_allocations == [] and result.final["/m"].usage == 110 * M


def test_without_its_sharer_the_mm_would_stay():
    # the machine's rule, checked directly: the mm goes with its last user
    sim = make_sim(**SHARED)
    parent, clone = (sim._by_name[n] for n in ("parent", "clone"))
    sim.machine.reap(parent)
    assert sim.machine.cgroups["/m"].usage == 150 * M
    sim.machine.reap(clone)
    assert sim.machine.cgroups["/m"].usage == 30 * M


def test_the_kernel_model_kills_the_sharers_too():
    result = make_sim(**SHARED).run()
    assert result.ooms[0].resolved_by == "kernel"
    assert killed(result) == ["clone", "parent"]
    assert result.failed_allocations == []


def test_a_sharer_outside_the_ooming_memcg_is_the_kernels_to_find():
    # the kernel looks at every process (for_each_process); a policy's kill sees the OOM's tasks
    scenario = dict(SHARED, cgroups=[*SHARED["cgroups"], {"path": "/elsewhere"}],
                    tasks=[SHARED["tasks"][0], {"name": "clone", "cgroup": "/elsewhere", "mm": "parent"},
                           SHARED["tasks"][2]])
    assert killed(make_sim(**scenario).run()) == ["clone", "parent"]
    policy = make_sim(**scenario, policies={"/m": FuncPolicy(kill_named("parent"))}).run()
    assert policy.ooms[0].handlers[0].actions[0].result == 0     # the mm stays: nothing released
    assert "clone" in policy.survivors


def test_kill_cgroup_takes_the_sharers_of_its_tasks():
    scenario = dict(SHARED, cgroups=[*SHARED["cgroups"], {"path": "/m/job"}],
                    tasks=[{"name": "parent", "cgroup": "/m/job", "rss": "120M"},
                           {"name": "clone", "cgroup": "/m", "mm": "parent"},
                           {"name": "small", "cgroup": "/m", "rss": "30M"}])

    def fn(oc, k):
        k.kill_cgroup("/m/job", "t")
        return Verdict.HANDLED
    result = make_sim(**scenario, policies={"/": FuncPolicy(fn)}).run()
    assert killed(result) == ["clone", "parent"]
    assert result.ooms[0].handlers[0].actions[0].error == "1 sharing their mm"


@pytest.mark.parametrize("task, where", [
    ({"name": "c", "mm": "nobody"}, "task[1].mm"),
    ({"name": "c", "mm": "p", "rss": "1M"}, "task[1].rss"),
])
def test_bad_mm_keys_are_one_clear_error(task, where):
    with pytest.raises(ConfigError) as err:
        resolve(scenario_dict(tasks=[{"name": "p", "rss": "1M"}, task]))
    assert where in str(err.value)
