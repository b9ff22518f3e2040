"""``oomkit run`` on a real cgroup v2 kernel (in the VM): the attached policy
decides which task dies at ``memory.max``, the kernel's OOM killer carries
it out, and nothing dies while the kernel would not have OOMed.

Each test: a fresh ``box`` (``/oomkit-test-<random>``, 256 MiB cap), cgroups
and limits made before the daemon starts, the daemon as a subprocess with
the shipped defaults, small hogs, then what the kernel and the event log say.
Python runs 10-25x slower in the VM: timeouts are generous and nothing here
measures speed.
"""

from __future__ import annotations

import os
import select
import signal
import time

from helpers.procs import score_adj as adj
from helpers.procs import vm_until as until
from oomkit.linux import notify

MiB = 1 << 20


def armed(d, pid: int, timeout: float = 60) -> bool:
    return until(lambda: adj(pid) == 1000 or d.popen.poll() is not None, timeout) and adj(pid) == 1000


# -- the wake-ups themselves ------------------------------------------------------


def test_psi_trigger_and_memory_events_wake_poll(box):
    """The v2 wake-ups: inotify IN_MODIFY on memory.events when usage crosses
    memory.high (the standing decision's wake-up point), and a PSI trigger on
    memory.pressure (POLLPRI; the opt-in pressure path)."""
    cg = box.cg("a", limit=32 * MiB)
    box.fs.write(cg, "memory.high", str(16 * MiB))      # throttle: pressure without OOM
    psi = notify.psi_trigger(box.fs.path(cg, "memory.pressure"), "some 10000 500000")
    ino = notify.Inotify()
    try:
        ino.add_watch(box.fs.path(cg, "memory.events"), notify.IN_MODIFY)
        ep = select.epoll()
        ep.register(psi, select.EPOLLPRI)
        ep.register(ino.fileno(), select.EPOLLIN)
        box.hog(cg, 24)
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while seen != {psi, ino.fileno()} and time.monotonic() < deadline:
            for fd, _mask in ep.poll(1):
                seen.add(fd)
                if fd == ino.fileno():
                    ino.read()
                else:
                    ep.unregister(psi)      # the trigger stays ready until the window ends
        assert ino.fileno() in seen, "no inotify event on memory.events"
        assert psi in seen, "the PSI trigger did not fire"
        assert box.events(cg)["high"] > 0
        ep.close()
    finally:
        os.close(psi)
        ino.close()


# -- the policy decides, the kernel executes ------------------------------------------------


def test_the_policys_victim_dies_under_fast_growth(box, daemon):
    """newest-task on a 96 MiB memcg: an old task holds 56 MiB, a bystander
    sleeps, a new task grows fast (1 MiB per step, no delay).  Alone, the
    kernel kills the old, larger task; with oomkit the new one dies (the
    policy's choice), by the kernel's own OOM kill, once."""
    cg = box.cg("a", limit=96 * MiB)
    bystander = box.sleeper(cg)
    old = box.hog(cg, 56)
    assert old.wait_line("allocated", 60)
    d = daemon(box, "newest-task")
    grower = box.hog(cg, 200, step=1)
    assert grower.wait_exit(120), f"the grower was not killed:\n{d.log}"
    assert until(lambda: d.records(), 30), f"no event record:\n{d.log}"
    time.sleep(2)
    assert old.alive(), f"the kernel's own choice (the old task) died:\n{d.log}"
    assert bystander.alive()
    ev = box.events(cg)
    assert ev["oom_kill"] >= 1, ev                     # the kernel's own kill, counted
    records = d.records()
    assert len(records) == 1, records
    rec = records[0]
    assert rec["resolved_by"] == "policy" and rec["executed_by"] == "kernel", rec
    assert [(k["pid"], k["by"]) for k in rec["killed"]] == [(grower.pid, f"policy:{box.root}")]
    assert rec["handlers"][0]["policy"] == "newest-task"
    assert adj(old.pid) == 0 and adj(bystander.pid) == 0
    assert d.stop() == 0


def test_a_workload_holding_still_in_the_headroom_survives(box, daemon):
    """A task climbs into the zone (auto: the top 16 MiB of a 128 MiB memory.max)
    to about 12 MiB under the limit, is armed, and holds still: the kernel would
    never OOM, and nothing dies for 15 s; on stop its own oom_score_adj is back."""
    cg = box.cg("a", limit=128 * MiB)
    d = daemon(box, "largest-task")
    hog = box.hog(cg, 112, step=1, delay=0.01)
    assert hog.wait_line("allocated", 120), f"the hog did not get its memory:\n{d.log}"
    assert armed(d, hog.pid), f"not armed at usage {box.fs.usage(cg)}:\n{d.log}"
    time.sleep(15)
    assert hog.alive(), f"a task holding still under memory.max was killed:\n{d.log}"
    ev = box.events(cg)
    assert ev["oom_kill"] == 0 and ev["oom"] == 0, ev
    assert d.records() == []
    assert box.fs.read(cg, "memory.high").strip() == "max"      # no throttle while armed
    assert d.stop() == 0
    assert adj(hog.pid) == 0


def test_one_oom_one_victim_under_repeated_growth(box, daemon):
    """Three growers in turn hit the limit beside a bystander: each OOM kills
    exactly the armed grower, one record each, never the bystander."""
    cg = box.cg("a", limit=64 * MiB)
    bystander = box.sleeper(cg)
    d = daemon(box, "largest-task")
    pids = []
    for _ in range(3):
        g = box.hog(cg, 128, step=1)
        pids.append(g.pid)
        assert g.wait_exit(120), f"grower not killed:\n{d.log}"
        assert until(lambda: len(d.records()) >= len(pids), 30), f"no record:\n{d.log}"
    time.sleep(2)
    records = d.records()
    assert [[k["pid"] for k in r["killed"]] for r in records] == [[p] for p in pids], records
    assert all(r["resolved_by"] == "policy" for r in records), records
    assert bystander.alive()
    assert d.stop() == 0


def test_daemon_sigkilled_mid_episode_leaves_the_kernel_deciding(box, daemon):
    """The daemon dies by SIGKILL while a task is armed: its watchdog puts the
    task's own oom_score_adj and memory.high back, and the kernel decides alone."""
    cg = box.cg("a", limit=128 * MiB)
    d = daemon(box, "newest-task")
    hog = box.hog(cg, 112, step=1, delay=0.01)
    assert hog.wait_line("allocated", 120)
    assert armed(d, hog.pid), f"not armed:\n{d.log}"
    d.popen.send_signal(signal.SIGKILL)
    d.popen.wait(30)
    assert until(lambda: adj(hog.pid) == 0, 30), f"left at {adj(hog.pid)} after the daemon died"
    assert box.fs.read(cg, "memory.high").strip() == "max"


# -- kill_cgroup: the kernel kills the group ------------------------------------------------


def _oom_group_case(box, daemon, policy):
    job = box.cg("job", limit=64 * MiB)
    keep = box.cg("keep")
    sleepers = [box.sleeper(job) for _ in range(3)]
    survivor = box.sleeper(keep)
    d = daemon(box, policy, at=job)
    hog = box.hog(job, 128, step=1)
    assert hog.wait_exit(90), f"the hog was not killed:\n{d.log}"
    for s in sleepers:
        assert s.wait_exit(10), "a task of the chosen group survived"
    assert survivor.alive(), "a task outside the chosen group was killed"
    assert until(lambda: d.records(), 30), f"no event record:\n{d.log}"
    ev = box.events(job)
    assert ev["oom_group_kill"] >= 1, ev            # the kernel killed the group
    rec = d.records()[0]
    assert rec["resolved_by"] == "policy" and rec["executed_by"] == "kernel", rec
    assert hog.pid in [k["pid"] for k in rec["killed"]]
    rc = d.stop()
    assert rc == 0, f"the daemon exited {rc}:\n{d.log}"
    assert box.fs.read(job, "memory.oom.group").strip() == "0"      # ours, put back


def test_largest_cgroup_has_the_kernel_kill_the_group(box, daemon):
    _oom_group_case(box, daemon, "largest-cgroup")


# -- raise-limit acts at the headroom --------------------------------------------------------


def test_raise_limit_raises_memory_max_and_nobody_dies(box, daemon):
    cg = box.cg("a", limit=64 * MiB)
    d = daemon(box, "raise-limit", params='{step = "32M"}')
    hog = box.hog(cg, 72, step=1, delay=0.01)
    assert hog.wait_line("allocated", 120), f"the hog did not get its memory:\n{d.log}"
    assert hog.alive()
    assert box.fs.limit(cg) >= 96 * MiB
    assert until(lambda: d.records(), 30)
    ev = box.events(cg)
    assert ev["oom_kill"] == 0, ev
    rec = d.records()[0]
    assert rec["resolved_by"] == "policy" and rec["killed"] == []
    assert rec["limits"][0]["cgroup"] == cg and rec["limits"][0]["old"] == 64 * MiB
    assert d.stop() == 0


# -- the kernel's own kills are reported ----------------------------------------------------


def test_kernel_oom_kill_without_a_decision_is_reported(box, daemon):
    """A policy that passes (wait-for-exiting, nobody exiting): no standing
    decision, the kernel decides; its kill is reported once, as the kernel's."""
    parent = box.cg("p", subtree=True)
    cg = box.cg("p/a", limit=64 * MiB)
    d = daemon(box, "wait-for-exiting")
    hog = box.hog(cg, 96)
    assert hog.wait_exit(60), "the kernel did not kill the hog"
    assert until(lambda: any(r["resolved_by"] == "kernel" for r in d.records()), 30), \
        f"the kernel kill was not reported:\n{d.log}"
    time.sleep(2)
    kernel = [r for r in d.records() if r["resolved_by"] == "kernel"]
    assert len(kernel) == 1, kernel
    rec = kernel[0]
    assert rec["memcg"] == cg, rec
    assert [(k["pid"], k["cgroup"], k["by"]) for k in rec["killed"]] == [(hog.pid, cg, "kernel")]
    assert parent
    assert d.stop() == 0


def test_small_newcomers_die_in_the_policys_order_never_the_old_task(box, daemon):
    """newest-task on 64 MiB: an old task holds 40 MiB, then small workers
    (moved in one after another, each allocating 6 MiB over ~0.3 s) push the
    memcg over its limit again and again.  The kernel's OOMs come in bursts
    (a victim's memory is not back before the next charge fails), faster than
    the daemon takes its decision again: the successors (the chain's next
    choices) already stand, and every kill is a worker, the policy's, never
    the old task the kernel would pick."""
    cg = box.cg("a", limit=64 * MiB)
    bystander = box.sleeper(cg)
    old = box.hog(cg, 40)
    assert old.wait_line("allocated", 60)
    d = daemon(box, "newest-task")
    workers = [box.hog(cg, 6, step=1, delay=0.05) for _ in range(8)]
    assert until(lambda: sum(not w.alive() for w in workers) >= 3, 180), \
        f"fewer than 3 workers killed:\n{d.log}"
    time.sleep(3)
    dead = {w.pid for w in workers if not w.alive()}
    assert old.alive(), f"the old task died (the kernel's own choice):\n{d.log}"
    assert bystander.alive()
    assert until(lambda: sum(len(r["killed"]) for r in d.records()) >= len(dead), 30), d.log
    records = d.records()
    seen = [(r["resolved_by"], r.get("executed_by"), [(k["pid"], k["by"]) for k in r["killed"]],
             r.get("note")) for r in records]
    assert {k["pid"] for r in records for k in r["killed"]} == dead, seen
    assert all(r["resolved_by"] == "policy" and r["executed_by"] == "kernel" for r in records), \
        f"{seen}\n{d.log}"
    assert d.stop() == 0
    # Live ones only: a killed worker not yet reaped by us still shows the 1000 it died with.
    left = {p.pid: adj(p.pid) for p in [old, *workers] if p.alive() and adj(p.pid) not in (0, None)}
    assert not left, f"oom_score_adj left behind: {left}\n{d.log}"
