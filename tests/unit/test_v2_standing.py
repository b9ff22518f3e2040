"""cgroup v2 standing decisions (backends/cgroup_v2.py): the wake-up
classification as a pure function over literals, and arming / disarming on a
fake cgroup2 tree and fake /proc (real file names and formats).

Pids are above any real pid_max (4194304): nothing here can touch a real task.
"""

from __future__ import annotations

import os

import pytest
from test_live_v2_fake import (  # noqa: F401  (fixtures)
    PID_A,
    PID_B,
    PID_C,
    MiB,
    cgroup,
    daemons,
    read,
    task,
    tree,
)

from oomkit.backends.cgroup_v2 import Look, Wakeup, classify, zone

EV = {"low": 0, "high": 0, "max": 0, "oom": 0, "oom_kill": 0}


# -- the pure parts ----------------------------------------------------------------------


@pytest.mark.parametrize("look,armed,want", [
    (Look(57 * MiB, 64 * MiB, EV, EV), False, Wakeup.NEAR_LIMIT),          # 57 + 8 > 64
    (Look(50 * MiB, 64 * MiB, EV, EV), False, Wakeup.NONE),
    (Look(57 * MiB, 64 * MiB, EV, EV), True, Wakeup.NONE),                 # already in the zone
    (Look(40 * MiB, 64 * MiB, EV, EV), True, Wakeup.LEFT_ZONE),
    (Look(57 * MiB, None, EV, EV), False, Wakeup.NONE),                    # no limit, no OOM
    (Look(64 * MiB, 64 * MiB, {**EV, "oom": 1}, EV), True, Wakeup.KERNEL_ACTING),
    (Look(10 * MiB, 64 * MiB, {**EV, "oom": 1, "oom_kill": 1}, EV, 1), True,
     Wakeup.KERNEL_KILLED),
])
def test_classify(look, armed, want):
    assert classify(look, 8 * MiB, armed) is want


def test_zone_auto_is_an_eighth_bounded():
    assert zone(64 * MiB, None) == 8 * MiB
    assert zone(16 * MiB, None) == 4 * MiB               # at least 4 MiB
    assert zone(6 * MiB, None) == 3 * MiB                # never more than half the limit
    assert zone(64 << 30, None) == 1024 * MiB            # at most 1 GiB
    assert zone(64 * MiB, 32 * MiB) == 32 * MiB          # as configured


# -- arming on a fake tree ------------------------------------------------------------------


def val(mount, rel, name) -> str:
    return read(mount, rel, name).strip()


def adj(proc, pid) -> int:
    return int((proc / str(pid) / "oom_score_adj").read_text())


def kill_lines(seq, pid, name, score, anon_kb=1024):
    """The kernel's two lines for one memcg OOM kill in /box/a (mm/oom_kill.c)."""
    return [f"6,{seq},1,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
            f"mems_allowed=0,oom_memcg=/box/a,task_memcg=/box/a,task={name},pid={pid},uid=0",
            f"3,{seq + 1},2,-;Memory cgroup out of memory: Killed process {pid} ({name}) "
            f"total-vm:60000kB, anon-rss:{anon_kb}kB, file-rss:0kB, shmem-rss:0kB, UID:0 "
            f"pgtables:200kB oom_score_adj:{score}"]


def kernel_killed(mount, monkeypatch, kmsg, kills):
    """/dev/kmsg says ``kmsg`` (a list: clear it to say nothing more) and
    /box/a's memory.events count ``kills`` OOM kills."""
    from oomkit.linux import notify
    monkeypatch.setattr(notify, "read_kmsg", lambda fd, limit=1000: kmsg[:] if kmsg else [])
    ev = f"low 0\nhigh 0\nmax 3\noom {kills}\noom_kill {kills}\noom_group_kill 0\n"
    (mount / "box" / "a" / "memory.events").write_text(ev)
    (mount / "box" / "a" / "memory.events.local").write_text(ev)


@pytest.fixture
def started(daemons):
    def start(policy="largest-task", at="/box", **daemon):
        return daemons([{"cgroup": at, "policy": policy}], **daemon)

    return start


def test_near_its_limit_the_policys_choice_is_armed_and_others_get_a_wake_point(tree, started):
    """/box/a holds 57 of 64 MiB (within auto's 8 MiB): largest-task's choice,
    the 50 MiB hog, is marked 1000 for the kernel, and its successor (the
    choice once the hog is gone: the 1 MiB sleeper) just under it; /box/job
    (10 of 64) gets memory.high = 56 MiB as its wake-up; all held for a crash
    first."""
    mount, proc = tree
    d = started()
    assert adj(proc, PID_A) == 1000 and adj(proc, PID_B) == 999
    held = d.restorer.held
    assert held[str(proc / str(PID_A) / "oom_score_adj")] == ("0", PID_A)
    assert held[str(proc / str(PID_B) / "oom_score_adj")] == ("0", PID_B)
    assert val(mount, "/box/a", "memory.high") == "max"          # armed: no throttle
    assert val(mount, "/box/job", "memory.high") == f"{56 * MiB}"
    assert held[str(mount / "box" / "job" / "memory.high")] == ("max", None)
    # a policy sees the task's own value, never our 1000
    tasks = d.backend.tasks(None, "/box/a")
    assert tasks.by_pid(PID_A).oom_score_adj == 0
    assert not (tmp := read(mount, "/box/a", "cgroup.kill")), tmp    # nothing killed


def test_leaving_the_zone_restores_and_stop_restores_everything(tree, started):
    mount, proc = tree
    d = started()
    (mount / "box" / "a" / "memory.current").write_text(f"{40 * MiB}\n")
    d.stack._look("/box/a")
    assert adj(proc, PID_A) == 0
    assert str(proc / str(PID_A) / "oom_score_adj") not in d.restorer.held
    assert val(mount, "/box/a", "memory.high") == f"{56 * MiB}"   # waiting again
    d.stop()
    assert val(mount, "/box/a", "memory.high") == "max"
    assert val(mount, "/box/job", "memory.high") == "max"
    assert d.restorer.held == {}


def test_a_new_decision_moves_the_mark(tree, started):
    """newest-task: a newer task appears in the zone; the next take moves the
    mark to it and restores the first one's own value."""
    mount, proc = tree
    task(proc, PID_A + 10, "late", 1024, adj=300)
    (proc / str(PID_A + 10) / "stat").write_text(
        (proc / str(PID_A + 10) / "stat").read_text().replace(" 52831 ", " 99999999 ", 1))
    d = started(policy="newest-task", depth=1)
    first = {p for p in (PID_A, PID_B) if adj(proc, p) == 1000}
    assert len(first) == 1
    cgroup(mount, "/box/a", current=57 * MiB, limit=64 * MiB, procs=[PID_A, PID_B, PID_A + 10])
    d.stack.episodes["/box/a"].next_take = 0
    d.stack.on_timer()
    assert adj(proc, PID_A + 10) == 1000
    assert adj(proc, first.pop()) == 0
    d.stop()
    assert adj(proc, PID_A + 10) == 300                       # the user's own value back


def test_a_minus_1000_task_is_never_touched(tree, started):
    mount, proc = tree
    (proc / str(PID_A) / "oom_score_adj").write_text("-1000\n")
    d = started()
    assert adj(proc, PID_A) == -1000
    assert adj(proc, PID_B) == 1000          # largest-task skips -1000: the next largest
    assert str(proc / str(PID_A) / "oom_score_adj") not in d.restorer.held


def test_a_policy_that_passes_arms_nobody(tree, started, tmp_path):
    mount, proc = tree
    d = started(policy="wait-for-exiting")
    assert adj(proc, PID_A) == 0 and adj(proc, PID_B) == 0
    ep = d.stack.episodes["/box/a"]
    assert not ep.is_armed and ep.in_zone           # looked at again on the timer
    assert val(mount, "/box/a", "memory.high") == "max"     # no throttle: the kernel decides


def test_raise_limit_acts_at_the_headroom_and_is_recorded(tree, started, tmp_path):
    import json

    from oomkit.daemon.eventlog import EventLog  # noqa: F401

    mount, proc = tree
    d = started(policy="raise-limit")
    assert val(mount, "/box/a", "memory.max") != f"{64 * MiB}"      # raised
    assert adj(proc, PID_A) == 0                                        # nobody armed
    d.events.close()
    records = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert records[0]["resolved_by"] == "policy" and records[0]["limits"][0]["cgroup"] == "/box/a"


def test_kill_cgroup_arms_its_group(tree, started):
    """largest-cgroup on /box: /box/a is the largest leaf; the kernel will kill
    it whole (memory.oom.group 1, held), its largest task marked."""
    mount, proc = tree
    d = started(policy="largest-cgroup")
    assert val(mount, "/box/a", "memory.oom.group") == "1"
    assert adj(proc, PID_A) == 1000 and adj(proc, PID_B) == 0
    assert d.restorer.held[str(mount / "box" / "a" / "memory.oom.group")] == ("0", None)
    d.stop()
    assert val(mount, "/box/a", "memory.oom.group") == "0"


def test_dry_run_arms_nothing(tree, started):
    mount, proc = tree
    d = started(dry_run=True)
    assert adj(proc, PID_A) == 0 and adj(proc, PID_B) == 0
    assert not any("oom_score_adj" in p for p in d.restorer.held)


def test_the_kernels_kill_of_the_armed_task_is_the_policys_one_record(tree, started, tmp_path,
                                                                     monkeypatch):
    """memory.events.local oom_kill moves in /box/a and /dev/kmsg names the armed
    hog: one record, resolved by the policy, carried out by the kernel."""
    import json

    from oomkit.linux import notify

    mount, proc = tree
    monkeypatch.setattr(notify, "open_kmsg", lambda *a, **k: os.open("/dev/null", os.O_RDONLY))
    d = started()
    kmsg = kill_lines(1, PID_A, "hog", 1000, anon_kb=51200)
    kernel_killed(mount, monkeypatch, kmsg, 1)
    d.stack._look("/box/a")
    kmsg.clear()
    d.stack._look("/box/a")                                   # nothing new: no second record
    d.events.close()
    records = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert len(records) == 1, records
    rec = records[0]
    assert rec["resolved_by"] == "policy" and rec["executed_by"] == "kernel"
    assert [(k["pid"], k["by"]) for k in rec["killed"]] == [(PID_A, "policy:/box")]
    assert rec["handlers"][0]["policy"] == "largest-task"


def test_a_child_forked_by_an_armed_task_gets_its_parents_own_value_back(tree, started):
    """fork copies oom_score_adj: a child of the armed hog starts at 1000; the
    next take puts it back to the hog's own value, and never touches a 1000
    the user set on an unrelated task."""
    mount, proc = tree
    d = started()
    assert adj(proc, PID_A) == 1000
    child, other = PID_A + 20, PID_A + 21
    task(proc, child, "child", 1024, adj=1000)
    task(proc, other, "mine", 1024, adj=1000)
    for pid, ppid in ((child, PID_A), (other, 1)):
        stat = proc / str(pid) / "stat"
        fields = stat.read_text().split(" ")
        fields[3], fields[21] = str(ppid), "99999999"     # ppid; started after the hog
        stat.write_text(" ".join(fields))
    cgroup(mount, "/box/a", current=57 * MiB, limit=64 * MiB, procs=[PID_A, PID_B, child, other])
    d.stack.episodes["/box/a"].next_take = 0
    d.stack.on_timer()
    assert adj(proc, PID_A) == 1000
    assert adj(proc, child) == 0            # the hog's own value
    assert adj(proc, other) == 1000         # the user's, untouched


def test_near_a_global_oom_the_root_attachments_decision_alone_stands(tree, started):
    """With "/" attached, MemAvailable within the machine's zone (1/8 of
    MemTotal, at most 1 GiB) marks the root chain's choice for the kernel's
    global OOM, and holds back every memcg's mark (it would be the global
    favourite too); room again: the memcgs' marks come back."""
    mount, proc = tree
    cgroup(mount, "/box/job", current=60 * MiB, limit=64 * MiB, procs=[PID_C], oom_group=True)
    meminfo = proc / "meminfo"
    normal = meminfo.read_text()
    d = started(at="/", policy="largest-task")
    assert adj(proc, PID_C) == 1000                  # /box/job near its limit: its own decision
    total = int(next(x for x in normal.splitlines() if x.startswith("MemTotal")).split()[1])
    low = "\n".join(f"MemAvailable:   {total // 40} kB" if x.startswith("MemAvailable") else x
                    for x in normal.splitlines()) + "\n"
    meminfo.write_text(low)
    d.stack.global_ep.next_take = 0
    d.stack.on_timer()
    assert adj(proc, PID_A) == 1000                  # the machine's largest task, by the root
    assert adj(proc, PID_C) == 0                     # the memcg's mark held back meanwhile
    assert d.stack.global_ep.is_armed
    meminfo.write_text(normal)
    d.stack.global_ep.next_take = 0
    d.stack.on_timer()
    d.stack.on_timer()
    assert not d.stack.global_ep.is_armed
    assert adj(proc, PID_C) == 1000                  # back
    assert adj(proc, PID_A) in (0, 1000)             # /box/a's own decision may mark it again


def test_two_kernel_kills_between_two_looks_are_two_records(tree, started, tmp_path, monkeypatch):
    """The kernel killed twice (two OOMs) before the daemon looked: one record
    each, the marked hog's as the policy's, the other (with a decision one
    deep, nothing marked it) as the kernel's own."""
    import json

    from oomkit.linux import notify

    mount, proc = tree
    monkeypatch.setattr(notify, "open_kmsg", lambda *a, **k: os.open("/dev/null", os.O_RDONLY))
    d = started(depth=1)
    kernel_killed(mount, monkeypatch, kill_lines(1, PID_A, "hog", 0) + kill_lines(3, PID_B, "sleep", 0), 2)
    d.stack._look("/box/a")
    d.events.close()
    records = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [[(k["pid"], k["by"]) for k in r["killed"]] for r in records] == [
        [(PID_A, "policy:/box")], [(PID_B, "kernel")]], records
    assert [r["resolved_by"] for r in records] == ["policy", "kernel"]


def test_memory_events_wakes_are_looked_at_at_most_every_gap(tree, started, tmp_path, monkeypatch):
    """A memcg at memory.max counts a 'max' event per charge (and so does every
    memcg above it): a memory.events wake within LOOK_GAP of the memcg's last
    look reads nothing and puts the look off to the gap's end; a kernel kill
    counted meanwhile is reported then, once.  A wake after the gap is looked
    at at once, and several events of one memcg in one read are one look."""
    import json

    from oomkit.backends import cgroup_v2
    from oomkit.linux import notify

    mount, proc = tree
    monkeypatch.setattr(notify, "open_kmsg", lambda *a, **k: os.open("/dev/null", os.O_RDONLY))
    d = started()
    stack, ep = d.stack, d.stack.episodes["/box/a"]
    assert ep.in_zone
    reads = []
    real_read = stack._read
    monkeypatch.setattr(stack, "_read", lambda e: reads.append(e.memcg) or real_read(e))
    now = d.backend.clock.now()
    ep.looked = now                                 # just looked
    kmsg = kill_lines(1, PID_A, "hog", 1000, anon_kb=51200)
    kernel_killed(mount, monkeypatch, kmsg, 1)      # memory.events written: an inotify wake
    stack._on_inotify(0)
    assert reads == [] and ep.next_look == now + cgroup_v2.LOOK_GAP
    assert not (tmp_path / "ev.jsonl").exists() or not (tmp_path / "ev.jsonl").read_text()
    timer = stack.next_timer()
    assert timer is not None and timer <= cgroup_v2.LOOK_GAP
    ep.looked, ep.next_look = now - cgroup_v2.LOOK_GAP, now    # the gap is over
    stack.on_timer()
    assert reads == ["/box/a"] and ep.next_look is None
    kmsg.clear()
    d.events.close()
    records = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [[(k["pid"], k["by"]) for k in r["killed"]] for r in records] == [[(PID_A, "policy:/box")]]
    # wakes after the gap: at once, one look per memcg for interleaved events
    job = stack.episodes["/box/job"]
    job.looked = ep.looked = d.backend.clock.now() - cgroup_v2.LOOK_GAP
    for high, rel in ((1, "a"), (1, "job"), (2, "a")):
        (mount / "box" / rel / "memory.events").write_text(f"low 0\nhigh {high}\nmax 0\noom 1\n"
                                                          f"oom_kill 1\n")
    stack._on_inotify(0)
    assert reads[1:] == ["/box/a", "/box/job"]
    assert ep.next_look is None and job.next_look is None       # no look put off for a's second event


def test_a_victim_named_twice_in_one_read_is_one_record(tree, started, tmp_path, monkeypatch):
    """/dev/kmsg names the armed hog's kill twice in one read (6.1 reports some
    kills twice; a look put off by LOOK_GAP reads both): one record, no crash."""
    import json

    from oomkit.linux import notify

    mount, proc = tree
    monkeypatch.setattr(notify, "open_kmsg", lambda *a, **k: os.open("/dev/null", os.O_RDONLY))
    d = started()
    d.stack._on_exit(PID_A, 0)                  # the marked hog exited before the kill was read
    kmsg = kill_lines(1, PID_A, "hog", 1000, anon_kb=51200) + kill_lines(3, PID_A, "hog", 1000,
                                                                         anon_kb=51200)
    kernel_killed(mount, monkeypatch, kmsg, 1)
    d.stack._look("/box/a")
    d.events.close()
    records = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [[(k["pid"], k["by"]) for k in r["killed"]] for r in records] == [[(PID_A, "policy:/box")]]


def _r(pid):
    from oomkit.backends.base import Release
    return Release(pid, f"t{pid}", "/box/a", MiB, MiB)


@pytest.mark.parametrize("victims,reported,ahead,count,want", [
    # one kill, one count: reported
    ([1], set(), 0, 1, ([1], 0, False)),
    # 6.1's second count of a kill already reported: no record
    ([1], {1}, 0, 1, ([], 0, True)),
    # two kills' lines read at one count: both reported, one ahead ...
    ([1, 2], set(), 0, 1, ([1, 2], 1, False)),
    # ... and the next count, with nothing new read, uses it up
    ([], {1, 2}, 1, 1, ([], 0, True)),
    # a count of two with one ahead and one new victim: the new one, none left ahead
    ([3], {1, 2}, 1, 2, ([3], 0, False)),
    # nothing read (no /dev/kmsg) and nothing ahead: one nameless kill
    ([], set(), 0, 1, ([], 0, False)),
])
def test_tally_reports_each_kill_once(victims, reported, ahead, count, want):
    from oomkit.backends.cgroup_v2 import tally

    t = tally([_r(p) for p in victims], reported, ahead, count)
    assert ([v.pid for v in t.fresh], t.ahead, t.done) == want


def test_victims_from_kmsg_names_each_victim_once_with_its_memcg():
    """The shared parser (v1 and v2): two kills, the first reported twice, as 6.1
    does: two victims, in order, each with the memcg of its summary line."""
    from oomkit.backends.live import victims_from_kmsg

    lines = (kill_lines(1, PID_A, "hog", 1000, anon_kb=51200) + kill_lines(3, PID_A, "hog", 1000)
             + [kill_lines(5, PID_B, "sleep", 999)[1]])
    assert [(v.pid, v.name, v.cgroup, v.rss) for v in victims_from_kmsg(lines)] == [
        (PID_A, "hog", "/box/a", 51200 * 1024), (PID_B, "sleep", "?", 1024 * 1024)]


def test_a_new_process_in_the_zone_is_decided_on_at_once(tree, started, monkeypatch):
    """The proc connector reports a fork into /box/a (in its zone): the decision
    is taken again within FORK_DELAY, not at the next rearm (500 ms), so
    newest-task's mark moves to the newcomer."""
    import time

    from oomkit.linux import notify

    mount, proc = tree
    queued: list[tuple[int, int]] = []
    r, w = os.pipe()

    class FakeProcEvents:
        def fileno(self):
            return r

        def forks(self):
            os.read(r, 64)
            out, queued[:] = list(queued), []
            return out

        def close(self):
            pass

    monkeypatch.setattr(notify, "ProcEvents", FakeProcEvents)
    d = started(policy="newest-task")
    d.stack.on_timer()                                   # in the zone: listening to forks
    new = PID_A + 30
    task(proc, new, "new", 1024)
    stat = proc / str(new) / "stat"
    fields = stat.read_text().split(" ")
    fields[21] = "99999999"
    stat.write_text(" ".join(fields))
    (proc / str(new) / "cgroup").write_text("0::/box/a\n")
    cgroup(mount, "/box/a", current=57 * MiB, limit=64 * MiB, procs=[PID_A, PID_B, new])
    queued.append((PID_A, new))
    os.write(w, b"x")
    d.reactor.poll(0)                                    # the fork wakes the daemon
    ep = d.stack.episodes["/box/a"]
    assert ep.next_take is not None and ep.next_take - d.backend.clock.now() <= 0.011
    time.sleep(0.02)
    d.stack.on_timer()
    assert adj(proc, new) == 1000
    os.close(w)


def test_a_marked_task_seen_exiting_before_its_kill_is_read_is_still_the_policys(tree, started,
                                                                              tmp_path, monkeypatch):
    """The marked hog's pidfd wakes the daemon (it exited) before memory.events
    says the kernel killed it: the decision is taken again at once, yet the
    record of that kill is still the decision that marked it."""
    import json

    from oomkit.linux import notify

    mount, proc = tree
    monkeypatch.setattr(notify, "open_kmsg", lambda *a, **k: os.open("/dev/null", os.O_RDONLY))
    d = started()
    assert adj(proc, PID_A) == 1000
    kmsg = kill_lines(1, PID_A, "hog", 1000, anon_kb=51200)
    monkeypatch.setattr(notify, "read_kmsg", lambda fd, limit=1000: kmsg[:] if kmsg else [])
    import shutil
    shutil.rmtree(proc / str(PID_A))                       # the hog is gone
    cgroup(mount, "/box/a", current=57 * MiB, limit=64 * MiB, procs=[PID_B],
           events={"oom": 1, "kill": 1}, local={"oom": 1, "kill": 1})
    d.stack._on_exit(PID_A, 0)                             # the pidfd fired first
    d.stack.on_timer()                                     # a new decision (the sleeper)
    d.stack._look("/box/a")                                # then memory.events is read
    d.events.close()
    records = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert len(records) == 1, records
    assert records[0]["resolved_by"] == "policy" and records[0]["executed_by"] == "kernel"
    assert [(k["pid"], k["by"]) for k in records[0]["killed"]] == [(PID_A, "policy:/box")]


# -- a decision several deep ----------------------------------------------------------------


def _t(pid, rss_mib, adj=0):
    from oomkit.context import TaskInfo
    return TaskInfo(pid, f"t{pid}", (), "/w", rss_mib * MiB, 0, 0, adj, 0, 0.0, False)


PAGES_96M = 96 * MiB // 4096            # totalpages of a 96 MiB memcg: 24 pages per adj unit


def test_grade_places_successors_under_the_victim_and_over_the_rest():
    """A fork burst in 96 MiB: the victim (a worker just forked, 0 MiB) at 1000
    (24000 pages of badness), then a 4 MiB worker as high as it can stand below
    it after growing by the 16 MiB of room: (24000 - 1024 - 4096 - 1) // 24 =
    786; the next worker would have to sit at 615 or lower, where the old
    48 MiB task grown by 16 MiB (16384 pages) outranks it (1024 + 615 * 24 =
    15784): the decision is two deep."""
    from oomkit.backends.cgroup_v2 import grade
    from oomkit.oom_kill import badness
    victim, w1, w2, old = _t(1, 0), _t(2, 4), _t(3, 4), _t(9, 48)
    adjs = grade([victim, w1, w2], [old], PAGES_96M, 16 * MiB)
    assert adjs == [1000, 786]
    grown = 16 * MiB
    v, s1 = victim._replace(oom_score_adj=1000), w1._replace(oom_score_adj=786)
    assert badness(v, PAGES_96M) > badness(s1._replace(rss=s1.rss + grown), PAGES_96M)
    assert badness(s1, PAGES_96M) > badness(old._replace(rss=old.rss + grown), PAGES_96M)
    assert grade([victim, w1, w2], [_t(9, 20)], PAGES_96M, 16 * MiB) == [1000, 786, 615]


@pytest.mark.parametrize("chain,others,slack,want", [
    # a 60 MiB successor under a 2 MiB victim (24512 pages): (24512 - 15360 - 1) // 24
    ([_t(1, 2), _t(2, 60)], [], 0, [1000, 381]),
    # a 4 MiB successor over a 60 MiB task, both grown by 16 MiB: 1024 + 807 * 24 > 15360 + 4096
    ([_t(1, 2), _t(2, 4)], [_t(9, 60)], 16 * MiB, [1000, 807]),
    ([_t(1, 2), _t(2, 4)], [_t(9, 70)], 16 * MiB, [1000]),    # ...not over a 70 MiB one
    ([_t(1, 2), _t(2, 4, adj=900)], [], 16 * MiB, [1000]),    # its own 900 is already higher
    ([_t(1, 2), _t(2, 4)], [_t(9, 3, adj=1000)], 0, [1000]),  # a user's 1000 (3 MiB) over 978 (the most)
    ([_t(1, 2)], [_t(9, 30)], 0, [1000]),
    ([], [], 0, []),
])
def test_grade_stops_where_the_kernel_could_pick_otherwise(chain, others, slack, want):
    from oomkit.backends.cgroup_v2 import grade
    assert grade(chain, others, PAGES_96M, slack) == want


def test_grade_below_1000_pages_is_one_deep():
    from oomkit.backends.cgroup_v2 import grade
    assert grade([_t(1, 0), _t(2, 0)], [], 999, 0) == [1000]    # totalpages/1000 == 0: adj moves nothing


def test_the_successors_kill_after_the_victims_is_the_policys_too(tree, started, tmp_path,
                                                                monkeypatch):
    """The kernel killed the hog (1000) and then, before the daemon looked, the
    sleeper (its successor): two records, each the policy's, each from its own
    rehearsal (the successor's saw no hog)."""
    import json

    from oomkit.linux import notify

    mount, proc = tree
    monkeypatch.setattr(notify, "open_kmsg", lambda *a, **k: os.open("/dev/null", os.O_RDONLY))
    d = started()
    assert adj(proc, PID_A) == 1000 and 0 < adj(proc, PID_B) < 1000
    kernel_killed(mount, monkeypatch, kill_lines(1, PID_A, "hog", 1000)
                  + kill_lines(3, PID_B, "sleep", adj(proc, PID_B)), 2)
    d.stack._look("/box/a")
    d.events.close()
    records = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [[(k["pid"], k["by"]) for k in r["killed"]] for r in records] == [
        [(PID_A, "policy:/box")], [(PID_B, "policy:/box")]], records
    assert [r["resolved_by"] for r in records] == ["policy", "policy"]
    assert [r["armed"] for r in records] == [[PID_A], [PID_B]]
    first, second = ({t["pid"] for t in r["snapshot"]["tasks"]} for r in records)
    assert PID_A in first and PID_A not in second        # the successor's rehearsal: no hog


def test_a_successor_becomes_the_victim_at_the_next_take(tree, started):
    """newest-task: the newest is the victim, the one before it its successor;
    when the victim exits, the next take moves the successor up to 1000."""
    mount, proc = tree
    d = started(policy="newest-task")
    ep = d.stack.episodes["/box/a"]
    victim = max(ep.armed, key=lambda p: d.stack.armed[p].value)
    successor = (ep.armed - {victim}).pop()
    assert adj(proc, victim) == 1000 and 0 < adj(proc, successor) < 1000
    cgroup(mount, "/box/a", current=57 * MiB, limit=64 * MiB, procs=[successor])
    d.stack._on_exit(victim, 0)
    d.stack.on_timer()
    assert adj(proc, successor) == 1000
    d.stop()
    assert adj(proc, successor) == 0 and d.restorer.held == {}


def test_a_successors_rehearsal_never_raises_a_limit(tree, started):
    """What a successor's rehearsal decides is hypothetical: no headroom to raise
    into, and a raise that got through anyway is refused, not done."""
    from oomkit.errors import KernelError
    mount, _proc = tree
    d = started()
    r = d.stack.rehearsal
    r.begin(8 * MiB, {PID_A})
    assert r.headroom("/box/a") == 0
    with pytest.raises(KernelError):
        r.set_limit("/box/a", 96 * MiB)
    assert val(mount, "/box/a", "memory.max") == f"{64 * MiB}"
    assert [t.pid for t in r.tasks(None, "/box/a")] == [PID_B]
    r.begin(8 * MiB)
    assert r.headroom("/box/a") > 0


def test_a_task_moved_into_the_zone_is_decided_on_within_a_poll(tree, started):
    """A task moved into /box/a (no fork event there: systemd scopes, runc,
    docker exec) is seen at the next read of cgroup.procs (MEMBERS_POLL), not
    the next rearm: newest-task's mark moves to it at once."""
    from oomkit.backends import cgroup_v2
    mount, proc = tree
    late = PID_A + 10
    task(proc, late, "late", 1024)
    (proc / str(late) / "stat").write_text(
        (proc / str(late) / "stat").read_text().replace(" 52831 ", " 99999999 ", 1))
    d = started(policy="newest-task")
    ep = d.stack.episodes["/box/a"]
    assert adj(proc, late) == 0 and ep.next_poll is not None
    now = d.backend.clock.now()
    assert ep.next_take > now + cgroup_v2.MEMBERS_POLL          # the rearm is far off
    cgroup(mount, "/box/a", current=57 * MiB, limit=64 * MiB, procs=[PID_A, PID_B, late])
    ep.next_poll = now                                          # the poll is due
    d.stack.on_timer()                          # reads cgroup.procs: a new pid, decides now
    assert adj(proc, late) == 1000


def test_a_victim_on_its_way_out_does_not_block_the_successors(tree, started):
    """The kernel just killed a marked task: it still shows our 1000 while it
    exits, but the kernel never picks it again, so the next decision still
    places a successor over it (it is no rival)."""
    mount, proc = tree
    dying = PID_A + 30
    task(proc, dying, "victim", 30 * 1024, adj=1000)
    stat = proc / str(dying) / "stat"
    fields = stat.read_text().split(" ")
    fields[8] = str(int(fields[8]) | 0x4)           # PF_EXITING: in do_exit()
    stat.write_text(" ".join(fields))
    cgroup(mount, "/box/a", current=57 * MiB, limit=64 * MiB, procs=[PID_A, PID_B, dying])
    d = started()
    t = d.backend.tasks(None, "/box/a").by_pid(dying)
    assert t is not None and t.exiting, t
    assert adj(proc, PID_A) == 1000 and 0 < adj(proc, PID_B) < 1000


@pytest.mark.parametrize("reported,by", [(1000, "policy:/box"), (0, "kernel")])
def test_a_kill_of_a_task_just_put_back_is_judged_by_the_kernels_report(
        tree, started, tmp_path, monkeypatch, reported, by):
    """newest-task moves its mark to a newcomer and puts the first victim back;
    the kernel's report of killing that victim comes after: at the value we had
    set (1000) the kernel picked it before the put-back, and the record is the
    decision's; at its own value (0) the choice was the kernel's."""
    import json

    from oomkit.linux import notify

    mount, proc = tree
    monkeypatch.setattr(notify, "open_kmsg", lambda *a, **k: os.open("/dev/null", os.O_RDONLY))
    monkeypatch.setattr(notify, "read_kmsg", lambda fd, limit=1000: [])
    d = started(policy="newest-task", depth=1)
    first = next(p for p in (PID_A, PID_B) if adj(proc, p) == 1000)
    late = PID_A + 10
    task(proc, late, "late", 1024)
    (proc / str(late) / "stat").write_text(
        (proc / str(late) / "stat").read_text().replace(" 52831 ", " 99999999 ", 1))
    cgroup(mount, "/box/a", current=57 * MiB, limit=64 * MiB, procs=[PID_A, PID_B, late])
    d.stack.episodes["/box/a"].next_take = 0
    d.stack.on_timer()
    assert adj(proc, late) == 1000 and adj(proc, first) == 0          # put back
    kernel_killed(mount, monkeypatch, kill_lines(1, first, "x", reported), 1)
    d.stack._look("/box/a")
    d.events.close()
    records = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [[(k["pid"], k["by"]) for k in r["killed"]] for r in records] == [[(first, by)]], records


def test_a_rehearsal_that_chose_two_tasks_is_the_policys_at_each_kill(tree, started, tmp_path,
                                                                       monkeypatch):
    """newest-task's newest is a task just forked with no memory: killing it frees
    nothing, so the handler kills the next newest too, and the rehearsal marks
    both at 1000.  The kernel kills one at an OOM and the other at the next,
    before any new take: both kills are that decision's."""
    import json

    from oomkit.linux import notify

    mount, proc = tree
    monkeypatch.setattr(notify, "open_kmsg", lambda *a, **k: os.open("/dev/null", os.O_RDONLY))
    monkeypatch.setattr(notify, "read_kmsg", lambda fd, limit=1000: [])
    fresh = PID_A + 40
    task(proc, fresh, "fresh", 0)
    (proc / str(fresh) / "stat").write_text(
        (proc / str(fresh) / "stat").read_text().replace(" 52831 ", " 99999999 ", 1))
    cgroup(mount, "/box/a", current=57 * MiB, limit=64 * MiB, procs=[PID_A, PID_B, fresh])
    d = started(policy="newest-task")
    both = {p for p in (PID_A, PID_B, fresh) if adj(proc, p) == 1000}
    assert fresh in both and len(both) == 2, {p: adj(proc, p) for p in (PID_A, PID_B, fresh)}
    other = (both - {fresh}).pop()
    kmsg = kill_lines(1, other, "x", 1000)
    kernel_killed(mount, monkeypatch, kmsg, 1)
    d.stack._look("/box/a")
    kmsg[:] = kill_lines(3, fresh, "fresh", 1000)
    kernel_killed(mount, monkeypatch, kmsg, 2)
    d.stack._look("/box/a")
    d.events.close()
    records = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [[(k["pid"], k["by"]) for k in r["killed"]] for r in records] == [
        [(other, "policy:/box")], [(fresh, "policy:/box")]], records


def test_grade_a_victims_rank_of_two_stands_at_1000_and_its_successor_below_both():
    """A handler that killed two (the first, just forked, freed nothing): both at
    1000, and the successor graded under the smaller of them, as for one."""
    from oomkit.backends.cgroup_v2 import grade
    fresh, w1, w2, old = _t(1, 0), _t(2, 4), _t(3, 4), _t(9, 48)
    assert grade([fresh, w1, w2], [old], PAGES_96M, 16 * MiB, head=2) == [1000, 1000, 786]
    assert grade([fresh, w1], [old], PAGES_96M, 16 * MiB, head=2) == [1000, 1000]


def test_two_kills_read_at_one_count_make_no_empty_record_at_the_next(tree, started, tmp_path,
                                                                     monkeypatch):
    """memory.events.local counted one kill, but /dev/kmsg already held two (the
    second counted a moment later): both are reported at once, and the next
    count, with no new lines, is theirs, not a record of a kill with no victim."""
    import json

    from oomkit.linux import notify

    mount, proc = tree
    monkeypatch.setattr(notify, "open_kmsg", lambda *a, **k: os.open("/dev/null", os.O_RDONLY))
    d = started()
    kmsg = kill_lines(1, PID_A, "hog", 1000) + kill_lines(3, PID_B, "sleep", adj(proc, PID_B))
    kernel_killed(mount, monkeypatch, kmsg, 1)
    d.stack._look("/box/a")
    kmsg.clear()
    kernel_killed(mount, monkeypatch, kmsg, 2)
    d.stack._look("/box/a")
    d.events.close()
    records = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [[k["pid"] for k in r["killed"]] for r in records] == [[PID_A], [PID_B]], records


def test_a_take_reads_the_tasks_once_for_all_its_rehearsals(tree, started, monkeypatch):
    """The victim's rehearsal, its successors' and their grading all see one read
    of the tasks: one /proc (or BPF) pass per take, whatever the depth."""
    mount, proc = tree
    d = started(policy="newest-task")
    ep = d.stack.episodes["/box/a"]
    reads = []
    real = d.backend._read_tasks
    monkeypatch.setattr(d.backend, "_read_tasks", lambda scope: reads.append(scope) or real(scope))
    d.stack._decide(ep, 8 * MiB)
    assert len(ep.armed) == 2                      # the victim and a successor
    assert reads == ["/box/a"], reads


def test_a_take_reads_totalpages_and_cgroups_once_and_asks_its_worker_for_tasks_once(
        tree, started, monkeypatch):
    """A take's successors use the victim's rehearsal's totalpages and cgroups (a
    take blocks the loop: under emulation each read costs milliseconds), and
    their policy worker gets the tasks with the call instead of asking for them."""
    from oomkit.sandbox import runner

    mount, proc = tree
    task(proc, PID_A + 10, "late", 1024)            # a third task in /box/a: depth 3
    (mount / "box" / "a" / "cgroup.procs").write_text(f"{PID_A}\n{PID_B}\n{PID_A + 10}\n")
    d = started(policy="newest-task")
    ep = d.stack.episodes["/box/a"]
    pages, infos, asked = [], [], []
    real_pages, real_info, real_answer = d.backend.totalpages, d.backend.cgroup_info, runner._Server.answer
    monkeypatch.setattr(d.backend, "totalpages", lambda oom: pages.append(oom) or real_pages(oom))
    monkeypatch.setattr(d.backend, "cgroup_info", lambda p: infos.append(p) or real_info(p))
    monkeypatch.setattr(runner._Server, "answer",
                        lambda self, req: asked.append(req[0]) or real_answer(self, req))
    rehearsals = []
    real_handle = d.stack.decider.handle
    monkeypatch.setattr(d.stack.decider, "handle", lambda oom: rehearsals.append(oom) or real_handle(oom))
    d.stack._decide(ep, 8 * MiB)
    assert len(ep.ranks) == 2 and len(rehearsals) == 4    # late, sleep (placed), hog, nobody
    assert len(pages) == 1 and infos == ["/box/a"], (pages, infos)
    assert asked.count("subtree") + asked.count("tasks") == 1, asked
    assert asked.count("kill_task") == 3, asked


def test_a_takes_ranks_and_marks_are_the_same_in_a_worker_and_in_process(tree, started):
    """The successors' tasks sent with the call change nothing a worker's policy
    decides: the same ranks, records (snapshots included) and marks as in process."""
    import msgspec

    mount, proc = tree
    task(proc, PID_A + 10, "late", 1024)
    (mount / "box" / "a" / "cgroup.procs").write_text(f"{PID_A}\n{PID_B}\n{PID_A + 10}\n")
    out = {}
    for runner in ("worker", "inprocess"):
        d = started(policy="newest-task", policy_runner=runner)
        ep = d.stack.episodes["/box/a"]
        d.stack._decide(ep, 8 * MiB)
        records = [msgspec.to_builtins(r) for r in ep.ranks]
        for r in records:
            r.pop("t", None)
            for h in r["handlers"]:
                h.pop("ms", None)
        out[runner] = (records, {p: a.value for p, a in d.stack.armed.items()})
        d.stop()
    assert len(out["worker"][0]) == 2 and out["worker"][0][1]["snapshot"]["read"] == "before"
    assert out["worker"] == out["inprocess"]
