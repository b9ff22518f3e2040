"""Section 2, release actions ``k``: scope, -1000, refusals as oomkit.Refused,
only relief for this OOM counts, raise_limit's bounds, one policy per cgroup."""

from __future__ import annotations

import errno

import pytest

from oomkit import AttachError, ConfigError, Refused, Verdict
from oomkit.config.scenario import resolve
from oomtest_helpers import FuncPolicy, M, make_sim, scenario_dict, task_named

# /p (200M) holds /p/a (100M) and /p/b (50M); /q is unlimited.
# /p/a: a1 60M, a2 30M, prot 5M (-1000) = 95M; /p/b: b1 40M; /p = 135M.  /q: q1 20M.
TREE = dict(
    cgroups=[{"path": "/p", "limit": "200M"}, {"path": "/p/a", "limit": "100M"},
             {"path": "/p/b", "limit": "50M"}, {"path": "/q"}],
    tasks=[{"name": "a1", "cgroup": "/p/a", "rss": "60M"},
           {"name": "a2", "cgroup": "/p/a", "rss": "30M"},
           {"name": "prot", "cgroup": "/p/a", "rss": "5M", "oom_score_adj": -1000},
           {"name": "b1", "cgroup": "/p/b", "rss": "40M"},
           {"name": "q1", "cgroup": "/q", "rss": "20M"}],
    events=[{"at": 1.0, "task": "a1", "alloc": "20M"}],     # /p/a: 115M > 100M
)


def run_with(cgroup: str, fn, *, ceiling: int | None = None):
    """Attach a policy running ``fn(oc, k) -> results`` at ``cgroup``; return
    (what fn returned, the first OOM's record, the run's result)."""
    out = {}

    def handler(oc, k):
        out["value"] = fn(oc, k)
        return Verdict.PASS
    sim = make_sim(**TREE)
    sim.engine.attach(cgroup, FuncPolicy(handler), ceiling=ceiling)
    result = sim.run()
    return out["value"], result.ooms[0], result


def pid_of(name: str) -> int:
    return 100 + [t["name"] for t in TREE["tasks"]].index(name)   # pids in file order from 100


# -- scope -----------------------------------------------------------------------------

def test_kill_cgroup_outside_the_attached_subtree_is_refused_eperm():
    value, oom, result = run_with("/p/a", lambda oc, k: k.kill_cgroup("/p/b", "out of scope"))
    assert isinstance(value, Refused) and value == -errno.EPERM
    assert "outside /p/a" in value.reason
    assert "b1" in result.survivors


def test_kill_task_outside_the_attached_subtree_is_refused_eperm():
    value, oom, result = run_with("/p/a", lambda oc, k: k.kill_task(pid_of("q1"), "out of scope"))
    assert isinstance(value, Refused) and value == -errno.EPERM, value
    assert "q1" in result.survivors


def test_raise_limit_outside_the_attached_subtree_is_refused_eperm():
    value, _, _ = run_with("/p/a", lambda oc, k: k.raise_limit("/p/b", 60 * M, "out of scope"))
    assert value == -errno.EPERM


def test_the_root_attachment_acts_anywhere_but_a_kill_elsewhere_releases_nothing():
    def fn(oc, k):
        return k.kill_task(task_named(oc, "q1"), "elsewhere"), oc.memory_freed
    (released, freed), oom, result = run_with("/", fn)
    assert not isinstance(released, Refused) and released == 0 and freed == 0
    assert "q1" in result.killed
    assert oom.to_dict()["killed"][0] == {"name": "q1", "pid": pid_of("q1"), "cgroup": "/q", "by": "policy:/"}


def test_a_kill_inside_the_ooming_cgroup_releases_its_memory():
    def fn(oc, k):
        return k.kill_task(task_named(oc, "a2"), "inside"), oc.memory_freed
    (released, freed), oom, _ = run_with("/p", fn)
    assert released == freed == 30 * M
    assert oom.handlers[0].freed == 30 * M


def test_a_kill_in_a_sibling_within_scope_releases_nothing_for_this_oom():
    # attached at /p, the OOM is at /p/a: b1 in /p/b is in scope but not in /p/a
    value, oom, result = run_with("/p", lambda oc, k: k.kill_task(task_named(oc, "b1"), "sibling"))
    assert value == 0 and "b1" in result.killed


# -- -1000 and other refusals ---------------------------------------------------------------

def test_oom_score_adj_minus_1000_is_refused_even_to_the_root():
    value, oom, result = run_with("/", lambda oc, k: k.kill_task(task_named(oc, "prot"), "no"))
    assert isinstance(value, Refused) and value == -errno.EPERM
    assert "-1000" in value.reason
    assert "prot" in result.survivors


def test_a_rebuilt_taskinfo_cannot_smuggle_a_minus_1000_task_past_the_check():
    def fn(oc, k):
        return k.kill_task(task_named(oc, "prot")._replace(oom_score_adj=0), "sneaky")
    value, _, result = run_with("/", fn)
    assert value == -errno.EPERM and "prot" in result.survivors


def test_kill_cgroup_skips_minus_1000_members():
    value, oom, result = run_with("/p", lambda oc, k: k.kill_cgroup("/p/a", "group"))
    assert value == 90 * M                      # a1 + a2, not prot
    assert sorted(k.name for k in oom.killed if k.by == "policy:/p") == ["a1", "a2"]
    assert "prot" in result.survivors
    assert "skipped 1" in oom.handlers[0].actions[0].error


def test_a_refused_action_returns_refused_with_a_reason_and_is_recorded():
    value, oom, _ = run_with("/p/a", lambda oc, k: k.kill_task(task_named(oc, "prot"), "why not"))
    assert isinstance(value, int) and value < 0
    assert value.errno_name == "EPERM" and value.reason
    assert "EPERM" in repr(value)
    act = oom.handlers[0].actions[0]
    assert (act.action, act.reason, act.result) == ("kill_task", "why not", -errno.EPERM)
    assert act.error.startswith("EPERM: ")
    assert oom.to_dict()["handlers"][0]["actions"][0]["result"] == -errno.EPERM


def test_unknown_pid_is_refused_esrch():
    value, _, _ = run_with("/", lambda oc, k: k.kill_task(99999, "ghost"))
    assert value == -errno.ESRCH


def test_every_action_is_recorded_in_order():
    def fn(oc, k):
        return [k.kill_task(task_named(oc, "prot"), "1"), k.kill_cgroup("/q", "2"),
                k.kill_task(task_named(oc, "a2"), "3")]
    values, oom, _ = run_with("/", fn)
    acts = oom.handlers[0].actions
    assert [(a.action, a.reason) for a in acts] == [("kill_task", "1"), ("kill_cgroup", "2"),
                                                    ("kill_task", "3")]
    assert [a.result for a in acts] == [int(v) for v in values] == [-errno.EPERM, 0, 30 * M]


# -- raise_limit --------------------------------------------------------------------------

def test_raise_limit_within_the_parents_headroom_counts_the_added_headroom():
    # /p: 200M limit, 135M used -> /p/a may grow by 65M, to 165M
    def fn(oc, k):
        return k.headroom("/p/a"), k.raise_limit("/p/a", 165 * M, "buy room")
    (room, value), oom, result = run_with("/p/a", fn)
    assert room == 65 * M and value == 65 * M
    assert oom.to_dict()["limits"] == [{"cgroup": "/p/a", "old": 100 * M, "new": 165 * M}]
    assert result.final["/p/a"].limit == 165 * M
    assert oom.resolved_by == "policy" and result.killed == []


def test_raise_limit_beyond_the_parents_headroom_is_refused():
    value, oom, result = run_with("/p/a", lambda oc, k: k.raise_limit("/p/a", 166 * M, "too much"))
    assert value == -errno.EPERM and "headroom" in value.reason
    assert oom.limits == [] and result.final["/p/a"].limit == 100 * M


def test_raise_limit_above_the_attachment_ceiling_is_refused():
    value, _, _ = run_with("/p/a", lambda oc, k: k.raise_limit("/p/a", 130 * M, "x"), ceiling=120 * M)
    assert value == -errno.EPERM and "ceiling" in value.reason
    value, _, _ = run_with("/p/a", lambda oc, k: (k.headroom("/p/a"),
                                                 k.raise_limit("/p/a", 120 * M, "x")),
                           ceiling=120 * M)
    assert value == (20 * M, 20 * M)


def test_raise_limit_counts_only_for_the_limit_that_was_hit():
    # attached at /p; the OOM is at /p/a; raising /p/b is allowed but relieves nothing
    value, oom, result = run_with("/p", lambda oc, k: k.raise_limit("/p/b", 60 * M, "wrong one"))
    assert value == 0
    assert oom.to_dict()["limits"] == [{"cgroup": "/p/b", "old": 50 * M, "new": 60 * M}]
    assert oom.handlers[0].freed == 0


@pytest.mark.parametrize("path,new", [("/p/a", 100 * M), ("/p/a", 90 * M), ("/q", 1 << 30)])
def test_raise_limit_must_raise_an_existing_limit(path, new):
    value, _, _ = run_with("/", lambda oc, k: k.raise_limit(path, new, "x"))
    assert value == -errno.EINVAL


# -- attachment ----------------------------------------------------------------------------

def test_attaching_twice_to_one_cgroup_is_an_error():
    sim = make_sim(**TREE, policies={"/p": FuncPolicy()})
    with pytest.raises(AttachError, match="already has"):
        sim.engine.attach("/p", FuncPolicy())
    assert isinstance(AttachError("x"), ConfigError)


def test_two_attachments_on_one_cgroup_in_a_scenario_are_rejected():
    data = scenario_dict(**TREE, attach=[{"cgroup": "/p", "policy": "largest-task"},
                                         {"cgroup": "/p", "policy": "newest-task"}])
    with pytest.raises(ConfigError, match=r"attach\[1\]\.cgroup.*already has a policy"):
        resolve(data, "s.toml")


def test_a_second_raise_in_one_handler_starts_from_the_first():
    def twice(oc, k):
        first = k.raise_limit("/p/a", 110 * M, "first")
        room_after = k.headroom("/p/a")
        lower = k.raise_limit("/p/a", 105 * M, "not above the raised limit")
        second = k.raise_limit("/p/a", 130 * M, "second")
        return first, room_after, lower, second
    (first, room_after, lower, second), oom, result = run_with("/p", twice)
    assert (first, second) == (10 * M, 20 * M)           # each counts what it added
    assert lower == -errno.EINVAL
    assert room_after == 200 * M - 135 * M               # /p's free room: usage did not change
    assert [(lim.old, lim.new) for lim in oom.limits] == [(100 * M, 110 * M),
                                                                (110 * M, 130 * M)]
    assert result.final["/p/a"].limit == 130 * M
