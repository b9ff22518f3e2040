"""Pressure for policies (issue 12): PSI triggers, handle_psi_event,
k.declare_oom, handle_cgroup_online, in the simulator and the engine."""

from __future__ import annotations

import errno

import msgspec
import pytest

from oomkit import OOMPolicy, PressureTrigger, Verdict
from oomkit.config.scenario import resolve
from oomkit.errors import ConfigError, PolicyLoadError
from oomkit.policies import make_policy
from oomkit.schema import OOMRecord
from oomtest_helpers import FuncPolicy, G, M, make_sim, scenario_dict


class Recorder(FuncPolicy):
    """Asks for ``triggers``; keeps every event; ``on_event(event, k)`` may declare."""

    def __init__(self, triggers, on_event=None, fn=Verdict.PASS):
        super().__init__(fn, name="recorder")
        self.triggers, self.on_event = list(triggers), on_event
        self.events, self.results, self.online = [], [], []

    def psi_triggers(self):
        return self.triggers

    def handle_psi_event(self, event, k):
        self.events.append(event)
        if self.on_event:
            self.results.append(self.on_event(event, k))

    def handle_cgroup_online(self, cgroup):
        self.online.append(cgroup)


def pressure(at, cgroup, some=None, full=None):
    p = {"cgroup": cgroup}
    if some is not None:
        p["some"] = some
    if full is not None:
        p["full"] = full
    return {"at": at, "pressure": p}


CGROUPS = [{"path": "/a", "limit": "512M"}, {"path": "/a/b"}, {"path": "/c"}]
TASKS = [{"name": "a1", "cgroup": "/a", "rss": "100M"}, {"name": "b1", "cgroup": "/a/b", "rss": "200M"},
         {"name": "c1", "cgroup": "/c", "rss": "50M"}]


def run(policy, events, at="/", **kw):
    sim = make_sim("4G", cgroups=CGROUPS, tasks=TASKS, events=events, policies={at: policy}, **kw)
    return sim, sim.run()


# -- threshold and window, as Documentation/accounting/psi.rst ---------------------------

def test_a_trigger_fires_when_the_stall_in_its_window_reaches_the_threshold_once_per_window():
    rec = Recorder([PressureTrigger("/a", "full", threshold=1.0, window=2.0)])
    run(rec, [pressure(0, "/a", full="50%"), pressure(10, "/a", full="0%")])
    # 50% of 2 s is 1 s: reached at t=2, then at most once per window
    assert [e.at for e in rec.events] == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert rec.events[0].full == 10.0       # mean over the last 10 s at t=2: 1 s stalled
    assert rec.events[-1].full == 50.0


def test_below_the_threshold_no_event():
    rec = Recorder([PressureTrigger("/a", "full", threshold=1.0, window=2.0)])
    run(rec, [pressure(0, "/a", full="49%"), pressure(10, "/a", full="0%")])
    assert rec.events == []


def test_pressure_for_part_of_a_window_counts_its_share():
    rec = Recorder([PressureTrigger.percent("/a", "some", 50, window=4.0)])
    # 100% for 1.5 s, then nothing: 1.5 s < 2 s, never enough in any 4 s window
    run(rec, [pressure(1, "/a", some="100%"), pressure(2.5, "/a", some="0%"), pressure(20, "/c", some="0%")])
    assert rec.events == []
    rec = Recorder([PressureTrigger.percent("/a", "some", 50, window=4.0)])
    run(rec, [pressure(1, "/a", some="100%"), pressure(3.0, "/a", some="0%"), pressure(20, "/c", some="0%")])
    assert [e.at for e in rec.events] == [3.2]      # on the 0.4 s grid: [-0.8, 3.2] holds 2 s


def test_some_goes_up_to_ancestors_full_does_not():
    rec = Recorder([PressureTrigger("/a", "some", 1.0, 2.0), PressureTrigger("/a", "full", 1.0, 2.0)])
    run(rec, [pressure(0, "/a/b", some="80%", full="80%"), pressure(4, "/a/b", some="0%")])
    assert {e.trigger.kind for e in rec.events} == {"some"}


def test_a_cgroup_with_no_running_task_has_no_pressure():
    rec = Recorder([PressureTrigger("/c", "full", 1.0, 2.0)])
    run(rec, [pressure(0, "/c", full="100%"), {"at": 0.5, "task": "c1", "exit": True},
              pressure(10, "/c", full="0%")])
    assert rec.events == []       # 0.5 s of stall, then nobody left to stall


def test_a_trigger_outside_the_attachment_or_refused_by_the_kernel_is_ignored(caplog):
    rec = Recorder([PressureTrigger("/c", "full", 1.0, 2.0), PressureTrigger("/a", "full", 1.0, 20.0),
                    PressureTrigger("/a", "full", 3.0, 2.0), "full 1 2"])
    sim, _ = run(rec, [pressure(0, "/a", full="100%"), pressure(0, "/c", full="100%"),
                       pressure(6, "/a", full="0%")], at="/a")
    assert rec.events == []
    text = caplog.text
    assert "/c is outside /a" in text and "window 20s is outside" in text
    assert "threshold 3s is not within" in text and "is not a PressureTrigger" in text


def test_pressure_runs_are_deterministic():
    def once():
        rec = Recorder([PressureTrigger("/a", "some", 0.7, 1.3)])
        run(rec, [pressure(0.3, "/a/b", some="61%"), pressure(7.7, "/a", some="13%"),
                  pressure(15, "/a", some="0%")])
        return [(e.at, e.some) for e in rec.events]
    assert once() == once() and once()


# -- k.declare_oom ---------------------------------------------------------------------

def declare(cgroup, reason="test"):
    return lambda event, k: k.declare_oom(cgroup, reason)


def test_declare_oom_runs_the_chain_for_that_memcg_and_the_record_says_who():
    def kill_b(oc, k):
        return Verdict.HANDLED if k.kill_cgroup("/a/b", "pressure") > 0 else Verdict.PASS
    rec = Recorder([PressureTrigger("/a", "full", 1.0, 2.0)], declare("/a", "too much"), kill_b)
    sim, result = run(rec, [pressure(0, "/a", full="60%"), pressure(5, "/a", full="0%")])
    oom = result.ooms[0]      # a1 stays in /a under pressure: it declares again at t=4
    # 1.2 s of 2 s stalled at t=1.67: on the 0.2 s grid, 1.8
    assert (oom.t, oom.level, oom.memcg, oom.resolved_by) == (1.8, "memcg", "/a", "policy")
    assert (oom.declared_by, oom.declared_reason, oom.declared_via) == \
        ("recorder at /", "too much", "handle_psi_event")
    assert [k.name for k in oom.killed] == ["b1"]
    assert rec.results[0] == 0
    assert rec.calls[0]["memcg"] == "/a"


def test_a_declared_oom_no_handler_relieves_goes_to_the_kernel_killer():
    rec = Recorder([PressureTrigger("/a", "full", 1.0, 2.0)], declare("/a"), Verdict.PASS)
    _, result = run(rec, [pressure(0, "/a", full="60%"), pressure(3, "/a", full="0%")])
    [oom] = result.ooms
    assert oom.resolved_by == "kernel" and [k.by for k in oom.killed] == ["kernel"]
    assert [k.name for k in oom.killed] == ["b1"]         # the largest in /a: as out_of_memory()


def test_declare_oom_at_the_root_is_a_global_oom():
    rec = Recorder([PressureTrigger("/", "some", 1.0, 2.0)], declare("/"))
    _, result = run(rec, [pressure(0, "/c", some="90%"), pressure(3, "/c", some="0%")])
    assert [(o.level, o.memcg) for o in result.ooms] == [("global", "/")]


@pytest.mark.parametrize("target,code", [("/c", errno.EPERM), ("/a/nope", errno.ESRCH),
                                         ("a", errno.EPERM)])
def test_declare_oom_outside_the_scope_or_of_no_cgroup_is_refused(target, code):
    rec = Recorder([PressureTrigger("/a", "full", 1.0, 2.0)], declare(target))
    _, result = run(rec, [pressure(0, "/a", full="60%"), pressure(3, "/a", full="0%")], at="/a")
    assert result.ooms == [] and rec.results == [-code]


def test_declaring_in_a_loop_is_bounded_by_the_budget():
    rec = Recorder([PressureTrigger("/c", "full", 0.5, 0.5)], declare("/a"), Verdict.PASS)
    _, result = run(rec, [pressure(0, "/c", full="100%"), pressure(10, "/c", full="0%")],
                    engine={"declare_budget": 2, "declare_window": "60s"})
    assert len(result.ooms) == 2
    assert rec.results[:2] == [0, 0] and set(rec.results[2:]) == {-errno.EAGAIN}
    assert len(rec.results) > 5


def test_declare_oom_from_an_oom_handler_is_refused_ebusy_and_recorded():
    seen = []
    def handler(oc, k):
        seen.append(k.declare_oom("/a", "recursion"))
        return Verdict.PASS
    sim = make_sim("4G", cgroups=CGROUPS, tasks=TASKS, policies={"/": FuncPolicy(handler)},
                   events=[{"at": 1, "task": "a1", "alloc": "400M"}])
    result = sim.run()
    assert seen and seen[0] == -errno.EBUSY
    [action] = result.ooms[0].handlers[0].actions
    assert (action.action, action.result) == ("declare_oom", -errno.EBUSY)


def test_a_k_kept_from_a_psi_event_is_revoked_and_busy_inside_a_chain():
    kept = []
    def keep(event, k):
        kept.append(k)
    later = []
    def handler(oc, k):
        later.append(kept[0].declare_oom("/a", "late"))
        return Verdict.PASS
    rec = Recorder([PressureTrigger("/a", "full", 1.0, 2.0)], keep, handler)
    _, result = run(rec, [pressure(0, "/a", full="60%"), pressure(2.5, "/a", full="0%"),
                          {"at": 3, "task": "a1", "alloc": "400M"}])
    assert later == [-errno.ETIME]
    assert all(o.declared_by is None for o in result.ooms)


def test_an_engine_refuses_declarations_while_a_chain_runs():
    from oomkit.engine.pressure import PressureCalls
    sim = make_sim("4G", cgroups=CGROUPS, tasks=TASKS, policies={"/": FuncPolicy()})
    att = sim.engine.attachments["/"]
    calls = PressureCalls(sim.engine, att, "handle_psi_event")
    sim.engine.busy = True
    assert calls.declare_oom("/a") == -errno.EBUSY
    sim.engine.busy = False
    assert calls.declare_oom("/a") == 0 and calls.declare_oom("/a") == 0
    assert [o.memcg for o in calls.declared] == ["/a"]


def test_a_failing_psi_callback_counts_as_a_failure_and_is_ejected():
    def boom(event, k):
        raise RuntimeError("bad policy")
    rec = Recorder([PressureTrigger("/a", "full", 0.5, 0.5)], boom)
    sim, result = run(rec, [pressure(0, "/a", full="100%"), pressure(5, "/a", full="0%")])
    assert len(rec.events) == 3 and result.ejected == ["/"]


# -- handle_cgroup_online ---------------------------------------------------------------

def test_cgroup_online_reaches_the_policies_above_and_their_triggers_are_asked_again():
    rec = Recorder([])
    other = Recorder([])
    sim = make_sim("4G", cgroups=CGROUPS, tasks=TASKS, policies={"/a": rec, "/c": other})
    assert sim.engine.psi_triggers() == []
    rec.triggers.append(PressureTrigger("/a/b", "some", 1.0, 2.0))
    sim.engine.cgroup_online("/a/b")
    assert rec.online == ["/a/b"] and other.online == []
    assert sim.engine.cgroup_online("/c/d") is None and other.online == ["/c/d"]
    assert [t.cgroup for _att, t in sim.engine.psi_triggers()] == ["/a/b"]


# -- the scenario -------------------------------------------------------------------------

@pytest.mark.parametrize("p,where,text", [
    ({"cgroup": "/x", "full": "10%"}, "event[0].pressure.cgroup", "no cgroup '/x'"),
    ({"cgroup": "/a", "full": "140%"}, "event[0].pressure.full", "is not a percentage"),
    ({"cgroup": "/a", "some": "-1%"}, "event[0].pressure.some", "is not a percentage"),
    ({"cgroup": "/a", "some": "nan"}, "event[0].pressure.some", "is not a percentage"),
    ({"cgroup": "/a", "some": "lots"}, "event[0].pressure.some", "is not a percentage"),
    ({"cgroup": "/a", "some": "10%", "full": "20%"}, "event[0].pressure.full", "more than some"),
    ({"cgroup": "/a"}, "event[0].pressure", "needs some, full or both"),
])
def test_bad_pressure_events_are_one_clear_error(p, where, text):
    with pytest.raises(ConfigError) as err:
        resolve(scenario_dict(cgroups=[{"path": "/a"}], events=[{"at": 0, "pressure": p}]))
    assert err.value.where == where and text in str(err.value)
    assert "\n" not in str(err.value)


def test_a_pressure_event_names_no_task():
    with pytest.raises(ConfigError, match="names a cgroup, not a task"):
        resolve(scenario_dict(cgroups=[{"path": "/a"}], tasks=[{"name": "t", "cgroup": "/a"}],
                              events=[{"at": 0, "task": "t", "pressure": {"cgroup": "/a", "some": 1}}]))


def test_full_alone_sets_some_to_it():
    s = resolve(scenario_dict(cgroups=[{"path": "/a"}],
                              events=[{"at": 0, "pressure": {"cgroup": "/a", "full": "25%"}}]))
    assert (s.events[0].pressure.some, s.events[0].pressure.full) == (0.25, 0.25)


# -- the record ---------------------------------------------------------------------------

def test_an_old_record_without_the_declared_fields_still_reads():
    old = (b'{"t":1.0,"level":"memcg","memcg":"/a","trigger":null,"requested":null,"handlers":[],'
           b'"resolved_by":"kernel","killed":[],"limits":[]}')
    rec = msgspec.json.decode(old, type=OOMRecord)
    assert rec.declared_by is None and rec.declared_reason is None and rec.declared_via is None
    assert b"declared" not in msgspec.json.encode(rec)


# -- the built-in -----------------------------------------------------------------------------

def test_pressure_kill_needs_sustained_pressure_for_its_duration():
    policy = make_policy("pressure-kill", {"cgroups": ["/a/b"], "threshold": "50%", "duration": "6s",
                                           "window": "2s"})
    _, result = run(policy, [pressure(0, "/a/b", full="60%"), pressure(30, "/a/b", full="0%")], at="/a")
    [oom] = result.ooms
    # fires at 1.7 s (1 s stalled in 2 s, on the 0.2 s grid), then each 2 s: 6 s later, 7.7 s
    assert (oom.t, oom.memcg, oom.declared_by) == (7.8, "/a/b", "pressure-kill at /a")
    assert [k.name for k in oom.killed] == ["b1"]


def test_pressure_kill_a_gap_starts_the_stretch_again():
    policy = make_policy("pressure-kill", {"cgroups": ["/a/b"], "threshold": "50%", "duration": "6s",
                                           "window": "2s"})
    events = [pressure(0, "/a/b", full="60%"), pressure(5, "/a/b", full="0%"),
              pressure(10, "/a/b", full="60%"), pressure(14, "/a/b", full="0%"), pressure(30, "/c", some=0)]
    _, result = run(policy, events, at="/a")
    assert result.ooms == []


def test_pressure_kill_prefers_and_omits_as_the_other_builtins():
    args = {"cgroups": ["/"], "threshold": "50%", "duration": "2s", "window": "2s"}
    events = [pressure(0, "/", full="60%"), pressure(8, "/", full="0%")]
    _, result = run(make_policy("pressure-kill", args), events)
    assert [k.name for k in result.ooms[0].killed] == ["b1"]          # the largest leaf
    _, result = run(make_policy("pressure-kill", {**args, "prefer": ["/c"]}), events)
    assert [k.name for k in result.ooms[0].killed] == ["c1"]
    assert result.ooms[0].level == "global"


@pytest.mark.parametrize("params,text", [
    ({}, "cgroups must be a list"), ({"cgroups": "/a"}, "cgroups must be a list"),
    ({"cgroups": ["/a"], "threshold": "0%"}, "not a percentage"),
    ({"cgroups": ["/a"], "threshold": "x"}, "not a percentage"),
    ({"cgroups": ["/a"], "window": "30s"}, "window 30s is outside"),
    ({"cgroups": ["a"], "window": "2s"}, "not an absolute cgroup path"),
    ({"cgroups": ["/a"], "kind": "most"}, "kind 'most'"),
])
def test_pressure_kill_bad_params_are_refused(params, text):
    with pytest.raises(PolicyLoadError, match=text):
        make_policy("pressure-kill", params)


def test_a_policy_without_pressure_callbacks_has_none():
    class Plain(OOMPolicy):
        def handle_out_of_memory(self, oc, k):
            return Verdict.PASS
    p = Plain()
    assert list(p.psi_triggers()) == [] and p.handle_psi_event(None, None) is None
    assert p.handle_cgroup_online("/x") is None


def test_trigger_spec_is_the_kernels_line():
    assert PressureTrigger("/a", "some", 0.15, 2.0).spec() == "some 150000 2000000"
    assert PressureTrigger.percent("/a", "full", 10, 10.0).threshold == pytest.approx(1.0)
    assert G and M


# -- through the policy sandbox (a worker process per attachment) ---------------------------

POLICY_FILE = """
from oomkit import OOMPolicy, PressureTrigger, Verdict

class Declarer(OOMPolicy):
    name = "declarer"
    def psi_triggers(self):
        return [PressureTrigger("/a", "full", 1.0, 2.0), "junk"]
    def handle_psi_event(self, event, k):
        got = k.declare_oom("/a", f"at {event.at} full {event.full}")
        again = k.declare_oom("/c", "outside")
        print("declared", got, int(again), k.now())
    def handle_out_of_memory(self, oc, k):
        return Verdict.HANDLED if k.kill_cgroup("/a/b", "psi") > 0 else Verdict.PASS
"""


def test_a_policy_in_its_worker_declares_through_the_daemon(tmp_path, capfd, caplog):
    from oomkit.backends.sim import Simulator
    (tmp_path / "declarer.py").write_text(POLICY_FILE)
    data = scenario_dict("4G", cgroups=CGROUPS, tasks=TASKS,
                         attach=[{"cgroup": "/a", "policy": "declarer.py:Declarer"}],
                         events=[pressure(0, "/a", full="60%"), pressure(3, "/a", full="0%")])
    scenario = resolve(data, str(tmp_path / "s.toml"), tmp_path)
    sim = Simulator(scenario)
    assert sim.engine.attachments["/a"].worker is not None
    result = sim.run()
    sim.engine.close()
    [oom] = result.ooms
    assert (oom.t, oom.memcg, oom.declared_by, oom.declared_reason) == \
        (1.8, "/a", "declarer at /a", "at 1.8 full 10.8")
    assert [k.name for k in oom.killed] == ["b1"]
    assert "is not a PressureTrigger" in caplog.text
