"""Section 5: every built-in policy, and loading third-party policies."""

from __future__ import annotations

import importlib.metadata
import textwrap

import pytest

from oomkit import OOMPolicy, PolicyLoadError, Verdict
from oomkit.backends.base import OOMEvent
from oomkit.backends.sim import Simulator
from oomkit.config.scenario import load_scenario, resolve
from oomkit.policies import BUILTINS, load_policy_class, make_policy
from oomkit.policies.builtin import LargestCgroup, Settle
from oomtest_helpers import M, make_sim, scenario_dict

# /m (100M): big 60M, bait 10M (+1000), prot 25M (-1000, the largest-but-unkillable); big asks 20M
CONTEST = dict(cgroups=[{"path": "/m", "limit": "100M"}],
               tasks=[{"name": "big", "cgroup": "/m", "rss": "60M"},
                      {"name": "bait", "cgroup": "/m", "rss": "10M", "oom_score_adj": 1000},
                      {"name": "prot", "cgroup": "/m", "rss": "25M", "oom_score_adj": -1000}])


def first_kill(policy: str, params=None, **scenario):
    sim = Simulator(resolve(scenario_dict(**scenario, attach=[
        {"cgroup": "/", "policy": policy, "params": params or {}}])))
    result = sim.run()
    return result.ooms[0], result


def contest(**over):
    # big 60M + bait 10M + prot 25M = 95M of 100M; big asks 10M -> OOM at /m
    return {**CONTEST, "events": [{"at": 1, "task": "big", "alloc": "10M"}], **over}


def test_builtins_are_all_registered():
    assert set(BUILTINS) == {"kernel-default", "largest-task", "largest-cgroup", "newest-task",
                             "prefer-avoid", "raise-limit", "wait-for-exiting", "settle",
                             "pressure-kill"}
    assert all(BUILTINS[n].name == n for n in BUILTINS)


# -- kernel-default ---------------------------------------------------------------------

def test_kernel_default_kills_what_the_kernel_would():
    oom, result = first_kill("kernel-default", **contest())
    assert oom.handlers[0].verdict == "HANDLED"
    assert [(k.name, k.by) for k in oom.killed] == [("bait", "policy:/")]


def test_kernel_default_backs_off_while_a_victim_is_exiting():
    oom, _ = first_kill("kernel-default", exit_delay="200ms", **contest(events=[
        {"at": 1, "task": "bait", "exit": True}, {"at": 1, "task": "big", "alloc": "10M"}]))
    assert oom.handlers[0].verdict == "BACKOFF" and oom.resolved_by == "backoff"
    assert oom.killed == []


def test_kernel_default_kills_an_oom_group_whole():
    oom, result = first_kill("kernel-default", cgroups=[{"path": "/g", "oom_group": True}],
                             tasks=[{"name": "g1", "cgroup": "/g", "rss": "500M"},
                                    {"name": "g2", "cgroup": "/g", "rss": "100M"},
                                    {"name": "x", "rss": "300M"}],
                             events=[{"at": 1, "task": "x", "alloc": "200M"}])   # 1100M > 1G
    assert oom.level == "global"
    assert sorted(k.name for k in oom.killed) == ["g1", "g2"]
    # the kill of the chosen task takes its memory.oom.group, as the kernel's does
    action = oom.handlers[0].actions[0]
    assert action.action == "kill_task" and "memory.oom.group /g: 1 more" in action.error


def test_kernel_default_passes_when_nothing_is_killable():
    oom, _ = first_kill("kernel-default", tasks=[{"name": "p", "rss": "1000M", "oom_score_adj": -1000}],
                        events=[{"at": 1, "task": "p", "alloc": "100M"}])
    assert oom.handlers[0].verdict == "PASS" and oom.resolved_by == "unresolved"


# -- largest-task -------------------------------------------------------------------------

def test_largest_task_kills_the_largest_ignoring_adj_but_never_minus_1000():
    oom, _ = first_kill("largest-task", **contest())
    assert [k.name for k in oom.killed] == ["big"]        # not bait (+1000), not prot (25M, -1000)


def test_largest_task_counts_swap():
    oom, _ = first_kill("largest-task", **contest(tasks=[
        {"name": "big", "cgroup": "/m", "rss": "60M"},
        {"name": "swapper", "cgroup": "/m", "rss": "30M", "swap": "40M"}],   # 70M > 60M
        events=[{"at": 1, "task": "big", "alloc": "20M"}]))
    assert [k.name for k in oom.killed] == ["swapper"]


def test_largest_task_only_picks_tasks_in_the_ooming_cgroup():
    oom, _ = first_kill("largest-task", **contest(
        cgroups=[{"path": "/m", "limit": "100M"}, {"path": "/o"}],
        tasks=CONTEST["tasks"] + [{"name": "huge", "cgroup": "/o", "rss": "500M"}]))
    assert [k.name for k in oom.killed] == ["big"]


# -- largest-cgroup: the upstream selftest ----------------------------------------------------

SELFTEST = dict(
    cgroups=[{"path": "/oom_test", "limit": "80M"},
             {"path": "/oom_test/cg1"}, {"path": "/oom_test/cg2"},
             {"path": "/oom_test/cg3"}, {"path": "/oom_test/cg3/cg4"}, {"path": "/oom_test/cg3/cg5"}],
    tasks=[{"name": "t10", "cgroup": "/oom_test/cg1", "rss": "10M", "oom_score_adj": 1000},
           {"name": "t40", "cgroup": "/oom_test/cg2", "rss": "40M", "oom_score_adj": -1000},
           {"name": "t30", "cgroup": "/oom_test/cg3/cg4", "rss": "30M"},
           {"name": "t20", "cgroup": "/oom_test/cg3/cg5", "rss": 0}],
    # the nested pair's second member grows to 20M: 80M + 20M > 80M
    events=[{"at": 1, "task": "t20", "alloc": "20M"}],
)


def test_largest_cgroup_on_the_upstream_selftest_tree_kills_the_30M_cgroup():
    sim = make_sim(**SELFTEST, policies={"/": LargestCgroup()})
    result = sim.run()
    oom = result.ooms[0]
    assert oom.memcg == "/oom_test" and oom.resolved_by == "policy"
    assert [(k.name, k.cgroup) for k in oom.killed] == [("t30", "/oom_test/cg3/cg4")]
    assert sim.machine.cgroups["/oom_test"].events["oom_kill"] == 1
    assert len(result.ooms) == 1 and result.failed_allocations == []       # 50M + 20M fits


def test_a_passing_copy_at_oom_test_hands_the_oom_to_the_system_wide_copy():
    class PassingCopy(LargestCgroup):
        def handle_out_of_memory(self, oc, k):
            return Verdict.PASS
    sim = make_sim(**SELFTEST, policies={"/oom_test": PassingCopy(), "/": LargestCgroup()})
    oom = sim.run().ooms[0]
    assert [(h.cgroup, h.verdict) for h in oom.handlers] == [("/oom_test", "PASS"), ("/", "HANDLED")]
    assert [(k.name, k.by) for k in oom.killed] == [("t30", "policy:/")]


def test_the_kernel_would_kill_the_plus_1000_task_on_the_selftest_tree():
    oom = make_sim(**SELFTEST).run().ooms[0]
    assert [k.name for k in oom.killed] == ["t10"]


def test_largest_cgroup_treats_an_oom_group_cgroup_as_one_unit():
    sim = make_sim(cgroups=[{"path": "/m", "limit": "100M"}, {"path": "/m/g", "oom_group": True},
                            {"path": "/m/g/a"}, {"path": "/m/g/b"}, {"path": "/m/c"}],
                   tasks=[{"name": "a", "cgroup": "/m/g/a", "rss": "25M"},
                          {"name": "b", "cgroup": "/m/g/b", "rss": "25M"},
                          {"name": "c", "cgroup": "/m/c", "rss": "40M"}],
                   events=[{"at": 1, "task": "c", "alloc": "20M"}],
                   policies={"/": LargestCgroup()})
    assert sorted(sim.run().killed) == ["a", "b"]               # /m/g (50M) over /m/c (40M)


# -- newest-task ---------------------------------------------------------------------------

def test_newest_task_kills_the_most_recently_started():
    oom, result = first_kill("newest-task", **contest(events=[
        {"at": 0.5, "spawn": {"name": "young", "cgroup": "/m", "rss": "1M"}},
        {"at": 1, "task": "big", "alloc": "10M"}]))
    assert [k.name for k in oom.killed] == ["young"]


def test_newest_task_breaks_start_time_ties_by_highest_pid():
    oom, _ = first_kill("newest-task", **contest())            # all start at 0: prot is -1000
    assert [k.name for k in oom.killed] == ["bait"]


# -- prefer-avoid ----------------------------------------------------------------------------

PA = dict(cgroups=[{"path": "/m", "limit": "100M"}, {"path": "/m/batch"}, {"path": "/m/db"}],
          tasks=[{"name": "postgres", "cgroup": "/m/db", "rss": "50M"},
                 {"name": "job", "cgroup": "/m/batch", "rss": "10M"},
                 {"name": "web", "cgroup": "/m", "rss": "30M"}],
          events=[{"at": 1, "task": "web", "alloc": "20M"}])


def test_prefer_avoid_kills_a_preferred_task_first_even_if_smaller():
    oom, _ = first_kill("prefer-avoid", {"prefer": ["/m/batch*"]}, **PA)
    assert [k.name for k in oom.killed] == ["job"]


def test_prefer_avoid_kills_avoided_tasks_last():
    oom, _ = first_kill("prefer-avoid", {"avoid": ["^postgres$"]}, **PA)
    assert [k.name for k in oom.killed] == ["web"]


def test_prefer_avoid_never_kills_an_omitted_task():
    oom, result = first_kill("prefer-avoid", {"omit": ["/m/db", "web", "job"]}, **PA)
    assert oom.handlers[0].verdict == "PASS"
    assert [(k.name, k.by) for k in oom.killed] == [("postgres", "kernel")]


def test_prefer_avoid_without_lists_is_largest_first():
    oom, _ = first_kill("prefer-avoid", {}, **PA)
    assert [k.name for k in oom.killed] == ["postgres"]


@pytest.mark.parametrize("params", [{"prefer": "job"}, {"avoid": ["("]}, {"omit": [1]}])
def test_prefer_avoid_bad_params_are_a_clear_error(params):
    with pytest.raises(PolicyLoadError, match="prefer-avoid"):
        make_policy("prefer-avoid", params)


# -- prefer/avoid/omit on every killing built-in ------------------------------------------------

# /m (100M): db 50M is the largest and the kernel's choice; web 30M; job 10M, started last
LISTS = dict(cgroups=[{"path": "/m", "limit": "100M"}, {"path": "/m/batch"}, {"path": "/m/db"},
                      {"path": "/m/web"}],
             tasks=[{"name": "postgres", "cgroup": "/m/db", "rss": "50M"},
                    {"name": "web", "cgroup": "/m/web", "rss": "30M"}],
             events=[{"at": 0.5, "spawn": {"name": "job", "cgroup": "/m/batch", "rss": "10M"}},
                     {"at": 1, "task": "web", "alloc": "20M"}])
KILLERS = ["largest-task", "kernel-default", "largest-cgroup", "newest-task"]


@pytest.mark.parametrize("policy", KILLERS)
def test_every_killer_takes_prefer_avoid_omit(policy):
    assert [k.name for k in first_kill(policy, {}, **LISTS)[0].killed] != ["web"]
    oom, _ = first_kill(policy, {"avoid": ["/m/db"], "omit": ["^job$"]}, **LISTS)
    assert [k.name for k in oom.killed] == ["web"]
    oom, _ = first_kill(policy, {"prefer": ["web"]}, **LISTS)
    assert [k.name for k in oom.killed] == ["web"]


@pytest.mark.parametrize("policy", KILLERS)
def test_an_avoided_task_dies_when_nothing_else_can(policy):
    oom, _ = first_kill(policy, {"avoid": ["postgres"], "omit": ["web", "job"]}, **LISTS)
    assert oom.handlers[0].verdict == "HANDLED"
    assert [(k.name, k.by) for k in oom.killed] == [("postgres", "policy:/")]


@pytest.mark.parametrize("policy", KILLERS)
def test_an_omitted_task_never_dies_by_the_policy(policy):
    oom, _ = first_kill(policy, {"omit": ["postgres", "web", "job"]}, **LISTS)
    assert oom.handlers[0].verdict == "PASS"
    assert [k.by for k in oom.killed] == ["kernel"]


def test_kernel_default_with_lists_keeps_the_badness_order_within_a_class():
    # +1000 on web beats db's size for the kernel: avoid db changes nothing here,
    # avoid web makes db (the next by badness, not job) the victim.
    tasks = [dict(t, oom_score_adj=1000) if t["name"] == "web" else t for t in LISTS["tasks"]]
    scenario = {**LISTS, "tasks": tasks}
    assert [k.name for k in first_kill("kernel-default", {"avoid": ["/m/db"]}, **scenario)[0].killed] == ["web"]
    assert [k.name for k in first_kill("kernel-default", {"avoid": ["web"]}, **scenario)[0].killed] == ["postgres"]


def test_kernel_default_omits_an_oom_group_holding_an_omitted_task():
    oom, _ = first_kill("kernel-default", {"omit": ["^g2$"]},
                        cgroups=[{"path": "/g", "oom_group": True}],
                        tasks=[{"name": "g1", "cgroup": "/g", "rss": "500M"},
                               {"name": "g2", "cgroup": "/g", "rss": "100M"},
                               {"name": "x", "rss": "300M"}],
                        events=[{"at": 1, "task": "x", "alloc": "200M"}])
    assert [k.name for k in oom.killed] == ["x"]


@pytest.mark.parametrize("policy", KILLERS)
def test_bad_lists_are_a_clear_error_for_every_killer(policy):
    with pytest.raises(PolicyLoadError, match=f"{policy}.*avoid"):
        make_policy(policy, {"avoid": "db"})


# -- settle ------------------------------------------------------------------------------------

def settle_sim(policy: Settle):
    """/m (100M): old 40M, new 40M, nothing else; OOMs are raised by hand, as the
    v2 tripwire raises them (no failing charge: usage within the headroom of memory.max)."""
    sim = make_sim(cgroups=[{"path": "/m", "limit": "100M"}],
                   tasks=[{"name": "old", "cgroup": "/m", "rss": "40M"},
                          {"name": "new", "cgroup": "/m", "rss": "40M"}],
                   policies={"/m": policy})
    task = {t.name: t for t in sim.machine.tasks.values()}
    return sim, task


def tripwire(sim, t: float):
    sim.backend.clock.advance_to(t)
    return sim.engine.handle(OOMEvent("memcg", "/m"))


def test_settle_holds_while_the_workload_sits_under_the_limit_and_kills_once_it_climbs():
    sim, task = settle_sim(Settle(margin="4M", slack="1M"))
    sim.machine.charge(task["new"], 10 * M)                 # 90M of 100M: room 10M
    first = tripwire(sim, 1.0)
    sim.machine.charge(task["new"], 512 * 1024)             # within the slack
    second = tripwire(sim, 2.0)
    assert [h.verdict for r in (first, second) for h in r.handlers] == ["PASS", "PASS"]
    assert first.killed == second.killed == []
    sim.machine.charge(task["new"], 2 * M)                  # climbing
    third = tripwire(sim, 3.0)
    assert third.handlers[0].verdict == "HANDLED"
    assert [k.name for k in third.killed] == ["new"]     # then: prefer-avoid, the largest


def test_settle_hands_over_when_room_is_under_the_margin():
    sim, task = settle_sim(Settle(margin="16M"))
    sim.machine.charge(task["new"], 10 * M)                 # 90M: room 10M < 16M
    assert [k.name for k in tripwire(sim, 1.0).killed] == ["new"]


def test_settle_backs_off_while_a_task_gives_memory_back_and_then_params_reach_then():
    policy = Settle(then="largest-task", then_params={"avoid": ["^new$"]}, margin="1M",
                    slack="1M", grace="5s")
    sim, task = settle_sim(policy)
    sim.machine.charge(task["new"], 10 * M)
    assert tripwire(sim, 1.0).handlers[0].verdict == "PASS"
    sim.machine.uncharge(task["old"], 16 * M)               # old sheds; new takes it and more
    sim.machine.charge(task["new"], 20 * M)
    shedding = tripwire(sim, 1.5)
    assert shedding.handlers[0].verdict == "BACKOFF" and shedding.killed == []
    sim.machine.charge(task["new"], 2 * M)                   # nobody sheds now, and it climbs
    climbing = tripwire(sim, 2.0)
    assert [k.name for k in climbing.killed] == ["old"]   # new is avoided by then's params


def test_settle_stops_waiting_for_shedding_after_its_grace():
    # then = wait-for-exiting kills nobody: its PASS shows where settle handed over
    sim, task = settle_sim(Settle(then="wait-for-exiting", margin="50M", grace="2s"))
    sim.machine.charge(task["new"], 10 * M)                 # room 10M < 50M: never settled
    verdicts = []
    for t in (1.0, 1.5, 3.5):
        verdicts.append(tripwire(sim, t).handlers[0].verdict)
        sim.machine.uncharge(task["old"], 8 * M)            # old sheds all along
    assert verdicts == ["PASS", "BACKOFF", "PASS"]          # 2.5 s into the stretch > grace


def test_settle_on_a_real_oom_in_the_simulator_hands_over():
    oom, _ = first_kill("settle", {}, **contest())           # the charge does not fit: no room
    assert [k.name for k in oom.killed] == ["big"]


@pytest.mark.parametrize("params, match", [
    ({"then": "settle"}, "itself"), ({"then": "nope"}, "unknown policy"),
    ({"then_params": {"avoid": "x"}}, "avoid"), ({"margin": "lots"}, "settle"),
    ({"grace": "soon"}, "settle")])
def test_settle_bad_params_are_a_clear_error(params, match):
    with pytest.raises(PolicyLoadError, match=match):
        make_policy("settle", params)


# -- raise-limit -----------------------------------------------------------------------------

def raise_tree(parent_limit: str):
    return dict(cgroups=[{"path": "/p", "limit": parent_limit}, {"path": "/p/a", "limit": "100M"}],
                tasks=[{"name": "hog", "cgroup": "/p/a", "rss": "90M"}],
                events=[{"at": 1, "task": "hog", "alloc": "20M"}])    # needs 10M more


def test_raise_limit_raises_by_step_and_nobody_dies():
    oom, result = first_kill("raise-limit", {"step": "64M"}, **raise_tree("1G"))
    assert oom.resolved_by == "policy" and result.killed == []
    assert oom.to_dict()["limits"] == [{"cgroup": "/p/a", "old": 100 * M, "new": 164 * M}]
    assert oom.handlers[0].freed == 64 * M


def test_raise_limit_raises_at_least_what_the_charge_needs():
    oom, _ = first_kill("raise-limit", {"step": "1M"}, **raise_tree("1G"))
    assert oom.limits[0].new == 110 * M


def test_raise_limit_stops_at_its_ceiling():
    oom, _ = first_kill("raise-limit", {"step": "64M", "ceiling": "120M"}, **raise_tree("1G"))
    assert oom.limits[0].new == 120 * M
    oom, result = first_kill("raise-limit", {"step": "64M", "ceiling": "105M"}, **raise_tree("1G"))
    assert oom.limits == [] and oom.handlers[0].verdict == "PASS"   # 5M < the 10M needed


def test_raise_limit_takes_only_the_parents_headroom():
    oom, _ = first_kill("raise-limit", {"step": "64M"}, **raise_tree("130M"))
    assert oom.limits[0].new == 140 * M                        # /p: 130M - 90M used = 40M


def test_raise_limit_passes_without_headroom():
    oom, result = first_kill("raise-limit", {"step": "64M"}, **raise_tree("95M"))
    assert oom.handlers[0].verdict == "PASS" and oom.limits == []
    assert oom.resolved_by == "kernel" and result.killed == ["hog"]


def test_raise_limit_respects_the_attachments_ceiling():
    data = scenario_dict(**raise_tree("1G"), attach=[
        {"cgroup": "/", "policy": "raise-limit", "params": {"step": "64M"}, "ceiling": "115M"}])
    oom = Simulator(resolve(data)).run().ooms[0]
    assert oom.limits[0].new == 115 * M


def test_raise_limit_passes_on_a_global_oom():
    oom, _ = first_kill("raise-limit", {}, tasks=[{"name": "t", "rss": "1000M"}],
                        events=[{"at": 1, "task": "t", "alloc": "100M"}])
    assert oom.level == "global" and oom.handlers[0].verdict == "PASS"


# -- wait-for-exiting ------------------------------------------------------------------------

def exiting_tree(delay: str, rss: str = "30M"):
    return dict(exit_delay=delay, cgroups=[{"path": "/m", "limit": "100M"}],
                tasks=[{"name": "hog", "cgroup": "/m", "rss": "60M"},
                       {"name": "leaving", "cgroup": "/m", "rss": rss}],
                events=[{"at": 1, "task": "leaving", "exit": True},
                        {"at": 1, "task": "hog", "alloc": "20M"}])


def test_wait_for_exiting_backs_off_while_a_victim_is_exiting():
    oom, result = first_kill("wait-for-exiting", **exiting_tree("200ms"))
    assert oom.handlers[0].verdict == "BACKOFF" and oom.resolved_by == "backoff"
    assert result.killed == [] and result.exited == ["leaving"]


def test_wait_for_exiting_passes_when_nothing_is_exiting():
    oom, result = first_kill("wait-for-exiting", **contest())
    assert oom.handlers[0].verdict == "PASS" and oom.resolved_by == "kernel"


def test_wait_for_exiting_min_exiting():
    oom, _ = first_kill("wait-for-exiting", {"min_exiting": "50M"}, **exiting_tree("200ms"))
    assert oom.handlers[0].verdict == "PASS"


# -- loading third-party policies -----------------------------------------------------------------

POLICY_SRC = textwrap.dedent("""
    from oomkit import OOMPolicy, Verdict

    class Picky(OOMPolicy):
        name = "picky"

        def __init__(self, victim="bait"):
            self.victim = victim

        def handle_out_of_memory(self, oc, k):
            for t in oc.tasks:
                if t.name == self.victim and k.kill_task(t, "picked") > 0:
                    return Verdict.HANDLED
            return Verdict.PASS

    class NotAPolicy:
        pass
""")


def test_load_from_module_colon_class(tmp_path, monkeypatch):
    (tmp_path / "thirdparty_pol.py").write_text(POLICY_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = make_policy("thirdparty_pol:Picky", {"victim": "big"})
    assert isinstance(policy, OOMPolicy) and policy.victim == "big"
    oom, _ = first_kill("thirdparty_pol:Picky", {"victim": "big"}, **contest())
    assert oom.handlers[0].policy == "picky"
    assert [k.name for k in oom.killed] == ["big"]


def test_load_from_a_file_relative_to_the_scenario(tmp_path):
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "mine.py").write_text(POLICY_SRC)
    (tmp_path / "s.toml").write_text(textwrap.dedent("""
        [machine]
        memory = "1G"
        [[cgroup]]
        path = "/m"
        limit = "100M"
        [[task]]
        name = "big"
        cgroup = "/m"
        rss = "90M"
        [[task]]
        name = "bait"
        cgroup = "/m"
        rss = "5M"
        [[attach]]
        cgroup = "/m"
        policy = "pol/mine.py:Picky"
        params = { victim = "big" }
        [[event]]
        at = 1
        task = "bait"
        alloc = "10M"
    """))
    result = Simulator(load_scenario(tmp_path / "s.toml")).run()
    assert [(k.name, k.by) for k in result.ooms[0].killed] == [("big", "policy:/m")]


def test_load_from_the_entry_point_group(tmp_path, monkeypatch):
    (tmp_path / "ep_pol.py").write_text(POLICY_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="picky", value="ep_pol:Picky", group="oomkit.policies")
    import oomkit.policies.loader as loader
    monkeypatch.setattr(loader, "entry_points",
                        lambda group: [ep] if group == "oomkit.policies" else [])
    assert load_policy_class("picky").name == "picky"


def test_unknown_params_are_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(PolicyLoadError, match=r"largest-task.*bad params.*bogus"):
        make_policy("largest-task", {"bogus": 1})
    with pytest.raises(PolicyLoadError, match="step, ceiling"):
        make_policy("raise-limit", {"stp": "1M"})
    (tmp_path / "tp2.py").write_text(POLICY_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PolicyLoadError, match="victm"):
        make_policy("tp2:Picky", {"victm": "x"})


@pytest.mark.parametrize("ref,match", [
    ("no-such-policy", "unknown policy"),
    ("no_such_module_xyz:Cls", "does not import"),
    ("oomkit:NoSuchClass", "has no class"),
    ("oomkit:Verdict", "not an oomkit.OOMPolicy"),
    ("missing.py:Cls", "does not exist"),
])
def test_bad_references_are_a_clear_error(ref, match):
    with pytest.raises(PolicyLoadError, match=match):
        load_policy_class(ref)


def test_bad_size_param_is_a_clear_error():
    with pytest.raises(PolicyLoadError, match="raise-limit"):
        make_policy("raise-limit", {"step": "12Q"})


def test_a_fresh_load_reads_an_edited_file_and_leaves_one_module(tmp_path):
    """The daemon's reload imports policy files afresh (issue 10 item 5): the edit of
    the same size within the same second is seen (no stale bytecode), sys.modules keeps
    one module per file, and the old module goes with the last policy made from it."""
    import gc
    import sys
    import weakref

    from oomkit.policies.loader import FILE_MODULE_PREFIX

    body = "from oomkit import OOMPolicy, Verdict\nclass P(OOMPolicy):\n    V = {v}\n" \
           "    def handle_out_of_memory(self, oc, k):\n        return Verdict.PASS\n"
    path = tmp_path / "edited.py"
    path.write_text(body.format(v=1))
    first = make_policy("edited.py:P", None, tmp_path)
    old = weakref.ref(sys.modules[type(first).__module__])
    path.write_text(body.format(v=2))
    assert make_policy("edited.py:P", None, tmp_path).V == 1        # cached unless fresh
    assert make_policy("edited.py:P", None, tmp_path, fresh=True).V == 2
    assert make_policy("edited.py:P", None, tmp_path).V == 2        # and the fresh one is kept
    mine = [k for k in sys.modules if k.startswith(FILE_MODULE_PREFIX + "edited_")]
    assert len(mine) == 1
    del first
    gc.collect()
    assert old() is None
    path.write_text("raise SystemExit(1)\n")           # a failed fresh load keeps the last good one
    with pytest.raises(PolicyLoadError, match="SystemExit"):
        make_policy("edited.py:P", None, tmp_path, fresh=True)
    assert make_policy("edited.py:P", None, tmp_path).V == 2
