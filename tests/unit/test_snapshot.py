"""The snapshot in the daemon's records is the context as the first handler saw
it (issue 3 s.6: enough to replay the OOM; issue 10 s.12: not re-read after
the kill), and replaying it gives the right counterfactual."""

from __future__ import annotations

import msgspec

from oomkit import Verdict
from oomkit.engine.chain import Engine, EngineSettings
from oomkit.replay import replay_record
from oomkit.schema import OOMRecord, ResolvedBy
from oomtest_helpers import FuncPolicy, M, kill_named, make_sim

TREE = dict(cgroups=[{"path": "/a", "limit": "100M"}, {"path": "/a/b"}],
            tasks=[{"name": "hog", "cgroup": "/a", "rss": "60M"},
                   {"name": "small", "cgroup": "/a/b", "rss": "30M"}])


def handle_one(policy, *, snapshot: bool = True) -> tuple:
    sim = make_sim(**TREE)
    engine = Engine(sim.backend, EngineSettings(snapshot=snapshot))
    engine.attach("/a", policy)
    oom = sim.machine.check(sim._by_name["hog"], 20 * M)
    return sim, oom, engine.handle(oom)


def test_the_snapshot_shows_the_victim_as_the_policy_saw_it():
    sim, oom, record = handle_one(FuncPolicy(kill_named("hog")))
    snap = record.snapshot
    assert snap.read == "before" and snap.scope == "/a"
    assert {t.name for t in snap.tasks} == {"hog", "small"}     # hog is dead by now
    assert "hog" not in {t.name for t in sim.backend.tasks(oom, "/a") if not t.exiting}


def test_what_no_policy_read_is_read_before_the_kernels_kill():
    """The policy looked at nothing and passed: the OOMing memcg's tasks are
    read before the kernel's killer acts, so its victim is in the snapshot."""
    sim, oom, record = handle_one(FuncPolicy(Verdict.PASS))      # looked at nothing
    snap = record.snapshot
    assert snap.read == "before"
    assert [k.name for k in record.killed] == ["hog"]
    assert {t.name for t in snap.tasks} == {"hog", "small"}
    assert snap.cgroups["/a"].limit == 100 * M


def test_the_cgroups_are_read_before_the_kill_even_if_no_policy_read_them():
    # The policy looks at nothing and passes; the kernel's killer takes hog.
    # Read after the kill, /a would show 30M used and hog gone (issue 10 s.12).
    sim, oom, record = handle_one(FuncPolicy(Verdict.PASS))
    assert [k.name for k in record.killed] == ["hog"]
    a = record.snapshot.cgroups["/a"]
    assert a.usage == 90 * M and a.pids == [sim._by_name["hog"].pid]
    assert a.events.get("oom_kill", 0) == 0
    assert record.snapshot.cgroups["/a/b"].usage == 30 * M


def test_the_first_handler_sees_the_values_the_snapshot_keeps():
    seen = {}

    def look(oc, k):
        seen.update({p: oc.cgroups[p].usage for p in ("/a", "/a/b")})
        return kill_named("hog")(oc, k)

    _, _, record = handle_one(FuncPolicy(look))
    assert seen == {p: c.usage for p, c in record.snapshot.cgroups.items()} == {"/a": 90 * M,
                                                                               "/a/b": 30 * M}


def test_the_simulator_records_no_snapshot():
    _, _, record = handle_one(FuncPolicy(kill_named("hog")), snapshot=False)
    assert record.snapshot is None and "snapshot" not in record.to_dict()


def test_replaying_the_kernel_alone_kills_as_the_kernel_would(tmp_path):
    # The recorded OOM was resolved by the kernel after a policy passed; replayed
    # with no policy, the kernel alone must act again (not "cleared by itself").
    _, _, record = handle_one(FuncPolicy(Verdict.PASS))
    log = tmp_path / "events.jsonl"
    log.write_bytes(msgspec.json.encode(record) + b"\n")
    replayed = replay_record(log, -1, {})
    assert replayed.resolved_by == ResolvedBy.KERNEL and replayed.killed, replayed
    assert replayed.note is None


def test_a_record_reads_back_as_it_was_written():
    _, _, record = handle_one(FuncPolicy(kill_named("hog")))
    again = msgspec.json.decode(msgspec.json.encode(record), type=OOMRecord)
    assert again == record and again.to_dict() == record.to_dict()


def test_a_copy_of_a_snapshot_backend_is_on_its_own():
    from oomkit.backends.base import OOMEvent
    from oomkit.backends.snapshot import SnapshotBackend
    from oomkit.schema import CgroupState, Snapshot, TaskState

    snap = Snapshot(scope="/a", totalpages=1000, read="before",
                    cgroups={"/a": CgroupState(usage=100, limit=100, pids=[1])},
                    tasks=[TaskState(pid=1, name="x", cgroup="/a", rss=100)])
    base = SnapshotBackend(snap)
    one, two = base.copy(), base.copy()
    oom = OOMEvent("memcg", "/a", (), 10, None)
    assert [r.pid for r in one.kill([one.task(1)], oom)] == [1]
    one.set_limit("/a", 500)
    assert one.task(1).exiting and one.condition_gone(oom)
    for other in (two, base):     # neither the other copy nor the original moved
        assert not other.task(1).exiting and not other.condition_gone(oom)
        assert other.cgroups(oom, "/a")["/a"].limit == 100


def test_a_policy_above_that_kills_by_pid_leaves_its_victim_in_the_snapshot():
    """A policy attached above the OOMing memcg kills by pid: the victim is in
    the snapshot as the policy's view had it before the kill."""
    sim = make_sim(**TREE)
    engine = Engine(sim.backend, EngineSettings(snapshot=True))
    hog = sim._by_name["hog"]
    engine.attach("/", FuncPolicy(lambda oc, k: Verdict.HANDLED if k.kill_task(hog.pid, "by pid") > 0
                                  else Verdict.PASS))
    oom = sim.machine.check(hog, 20 * M)
    record = engine.handle(oom)
    assert [k.name for k in record.killed] == ["hog"]
    snap = record.snapshot
    assert {t.name for t in snap.tasks} == {"hog", "small"}, snap.tasks
    assert next(t for t in snap.tasks if t.name == "hog").rss == 60 * M


def test_tasks_read_after_the_chain_get_its_victims_back():
    from oomkit.context import TaskInfo
    from oomkit.engine.snapshot import _with_victims

    def t(pid, cgroup, rss, exiting=False):
        return TaskInfo(pid, f"t{pid}", (), cgroup, rss, 0, 0, 0, 0, 0.0, exiting)

    after = (t(1, "/a", 5), t(2, "/a", 60, exiting=True))      # 2 killed, still exiting
    victims = [t(2, "/a", 60), t(9, "/b", 7)]                  # 9 outside the OOM's scope
    assert _with_victims(after, victims, "/a") == (t(1, "/a", 5), t(2, "/a", 60))
    assert _with_victims(None, victims[:1], "/a") == (t(2, "/a", 60),)
    assert _with_victims(after, [], "/a") == after


def test_a_task_seen_again_as_the_same_object_keeps_its_state_and_others_are_converted():
    """A standing decision's rehearsals snapshot the same read again and again:
    a TaskInfo seen in the previous snapshot is not converted again; a new
    object (even an equal one) is, and a state is only ever its own task's."""
    from oomkit.context import TaskInfo
    from oomkit.engine.snapshot import _states
    from oomkit.schema import TaskState

    a = TaskInfo(7, "a", ("a", "-x"), "/w", 1 * M, 0, 0, 0, 0, 1.0, False)
    b = TaskInfo(8, "b", ("b",), "/w", 2 * M, 0, 0, 300, 0, 2.0, False, (0,))
    first: dict = {}
    one = _states([a, b], ({}, first))
    assert one == [TaskState.of(a), TaskState.of(b)]
    second: dict = {}
    b2 = b._replace(oom_score_adj=0)             # another read: another object
    two = _states([a, b2], (first, second))
    assert two[0] is one[0] and two[1] is not one[1] and two[1] == TaskState.of(b2)
    assert set(second) == {id(a), id(b2)}        # only those seen now are kept
