"""``oomkit run`` on real v1 memcgs: each built-in policy kills the expected
victim, a PASS goes up the chain, a failing chain reaches the kernel,
``raise-limit`` resolves without a kill, BACKOFF while a victim exits.

Each test has its own sandbox (``/oomkit-test-<random>``) and its own daemon,
attached only to cgroups inside it.
"""

from __future__ import annotations

import errno
import os
import sys
import time

import pytest

from helpers.daemon import brief, check_record, killed_pids
from helpers.procs import until
from oomkit.errors import KernelError, TaskGone
from oomkit.linux.procfs import ProcFS

MiB = 1 << 20


def set_adj(pid: int, value: int) -> None:
    ProcFS().set_oom_score_adj(pid, value)


def task_tree(sandbox):
    """a (limit 52M): old 24M, small 8M (oom_score_adj +1000), then young 24M
    hits the limit at about 20M (task RSS also counts the interpreter, ~10M)."""
    a = sandbox.cg("a", limit=52 * MiB)
    cgs = {n: sandbox.cg(f"a/{n}") for n in ("old", "small", "young")}
    return a, cgs


def start_task_tree(sandbox, cgs):
    old = sandbox.hog(cgs["old"], 24, wait_allocated=60)
    small = sandbox.hog(cgs["small"], 8, wait_allocated=60)
    set_adj(small.pid, 1000)
    young = sandbox.hog(cgs["young"], 24)
    return {"old": old, "small": small, "young": young}


@pytest.mark.parametrize("policy, params, victim", [
    ("largest-task", {}, "old"),
    ("newest-task", {}, "young"),
    ("kernel-default", {}, "small"),        # oom_score_adj +1000 outweighs size
    ("prefer-avoid", {"avoid": ["{root}/a/old"], "omit": ["{root}/a/small"]}, "young"),
    ("prefer-avoid", {"prefer": ["{root}/a/small"]}, "small"),
])
def test_task_policy_kills_expected_victim(sandbox, oomkit_daemon, policy, params, victim):
    a, cgs = task_tree(sandbox)
    params = {k: [p.format(root=sandbox.root) for p in v] for k, v in params.items()}
    d = oomkit_daemon([{"cgroup": a, "policy": policy, "params": params}])
    assert sandbox.fs.oom_control(a)["oom_kill_disable"] is True
    hogs = start_task_tree(sandbox, cgs)
    ev = d.wait_events(1)[0]
    check_record(ev, a, "policy")
    assert killed_pids(ev) == {hogs[victim].pid}, ev["killed"]
    assert ev["killed"][0]["cgroup"] == cgs[victim]
    assert ev["killed"][0]["by"] == f"policy:{a}"
    [h] = ev["handlers"]
    assert (h["cgroup"], h["policy"], h["verdict"]) == (a, policy, "HANDLED")
    assert h["freed"] > 0 and h["actions"][0]["action"] == "kill_task"
    assert {t["pid"] for t in ev["snapshot"]["tasks"]} >= {x.pid for n, x in hogs.items()}
    assert hogs[victim].wait_exit(5)
    for name, hog in hogs.items():
        if name != victim:
            assert hog.alive(), f"{name} was killed too"
    # a kill by oomkit is not the kernel's: no oom_kill counted anywhere
    assert all(sandbox.fs.oom_control(c)["oom_kill"] == 0 for c in [a, *cgs.values()])
    assert d.wait_line(f"oomkit: killed pid {hogs[victim].pid} (python", 2) is not None
    print(f"{policy}: latency_ms {ev['latency_ms']}, handler ms {h.get('ms')}")


def selftest_tree(sandbox, with_protected: bool):
    """The upstream selftest tree, scaled down: t with c1 5M (oom_score_adj
    +1000), c2 20M (-1000), and a nested pair n/c3 15M and n/c4 10M.  c4 is
    started last, after t's limit was set a few MiB above what the others
    hold (about 40M), so it hits the limit while holding the least."""
    t = sandbox.cg("t", limit=128 * MiB)
    cg = {"c1": sandbox.cg("t/c1"), "n": sandbox.cg("t/n")}
    cg["c3"], cg["c4"] = sandbox.cg("t/n/c3"), sandbox.cg("t/n/c4")
    hogs = {"c1": sandbox.hog(cg["c1"], 5, wait_allocated=60)}
    set_adj(hogs["c1"].pid, 1000)
    if with_protected:
        cg["c2"] = sandbox.cg("t/c2")
        hogs["c2"] = sandbox.hog(cg["c2"], 20, wait_allocated=60)
        try:
            set_adj(hogs["c2"].pid, -1000)
        except (KernelError, TaskGone) as exc:
            if getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM):
                pytest.skip("lowering oom_score_adj to -1000 needs CAP_SYS_RESOURCE, which this "
                            f"sandbox lacks even as root ({exc})")
            raise
    hogs["c3"] = sandbox.hog(cg["c3"], 15, wait_allocated=60)
    sandbox.fs.set_limit(t, sandbox.fs.usage(t) + 5 * MiB)
    return t, cg, hogs


@pytest.mark.parametrize("with_protected", [False, True], ids=["no-c2", "c2-at-minus-1000"])
def test_largest_cgroup_selftest_tree(sandbox, oomkit_daemon, with_protected):
    t, cg, hogs = selftest_tree(sandbox, with_protected)
    d = oomkit_daemon([{"cgroup": t, "policy": "largest-cgroup"}])
    hogs["c4"] = sandbox.hog(cg["c4"], 10)
    ev = d.wait_events(1)[0]
    check_record(ev, t, "policy")
    # c3, the nested 15M one: not c1 (+1000, the kernel's pick), not c2 (-1000)
    assert killed_pids(ev) == {hogs["c3"].pid}, ev
    [h] = ev["handlers"]
    assert h["policy"] == "largest-cgroup" and h["verdict"] == "HANDLED"
    assert h["actions"][0]["action"] == "kill_cgroup" and h["actions"][0]["target"] == cg["c3"]
    assert hogs["c3"].wait_exit(5)
    assert hogs["c4"].wait_line("allocated", 10)
    assert all(hogs[n].alive() for n in hogs if n != "c3"), (
        {n: hogs[n].alive() for n in hogs}, d.events()[1:], d.stderr())
    assert sandbox.fs.oom_control(cg["c3"])["oom_kill"] == 0
    print(f"largest-cgroup: latency_ms {ev['latency_ms']}")


def test_kernel_default_on_selftest_tree_picks_plus_1000(sandbox, oomkit_daemon):
    t, cg, hogs = selftest_tree(sandbox, False)
    d = oomkit_daemon([{"cgroup": t, "policy": "kernel-default"}])
    hogs["c4"] = sandbox.hog(cg["c4"], 10)
    ev = d.wait_events(1)[0]
    check_record(ev, t, "policy")
    assert killed_pids(ev) == {hogs["c1"].pid}


def test_pass_hands_oom_to_parent_policy(sandbox, oomkit_daemon):
    p = sandbox.cg("p")
    c = sandbox.cg("p/c", limit=32 * MiB)
    # wait-for-exiting PASSes (nothing is exiting); largest-task at the parent acts
    d = oomkit_daemon([{"cgroup": c, "policy": "wait-for-exiting"},
                       {"cgroup": p, "policy": "largest-task"}])
    big = sandbox.hog(c, 20, wait_allocated=60)
    trigger = sandbox.hog(c, 20)
    ev = d.wait_events(1)[0]
    check_record(ev, c, "policy")
    assert [(h["cgroup"], h["policy"], h["verdict"]) for h in ev["handlers"]] == [
        (c, "wait-for-exiting", "PASS"), (p, "largest-task", "HANDLED")]
    assert killed_pids(ev) == {big.pid}
    assert ev["killed"][0]["by"] == f"policy:{p}"
    assert big.wait_exit(5)
    assert trigger.wait_line("allocated", 10)


def burn_oom_report_ratelimit(sandbox, n: int = 11) -> None:
    """Make the kernel OOM-kill ``n`` hogs in a memcg of ours that oomkit does not
    manage: past 10 in 5 s the kernel stops printing the report that names the
    victim's memcg (oom_kill_process(): __ratelimit(&oom_rs)), not "Killed process"."""
    z = sandbox.cg("unmanaged", limit=8 * MiB)
    for _ in range(n):
        hog = sandbox.hog(z, 16)
        assert hog.wait_exit(5)
        hog.reap()


@pytest.mark.parametrize("ratelimited", [False, True], ids=["report", "report-ratelimited"])
def test_failing_chain_reaches_kernel(sandbox, oomkit_daemon, ratelimited):
    p = sandbox.cg("p", limit=32 * MiB)
    c = sandbox.cg("p/c")
    d = oomkit_daemon([{"cgroup": p, "policy": "wait-for-exiting"}])
    if ratelimited:
        burn_oom_report_ratelimit(sandbox)
    assert sandbox.fs.oom_control(c)["oom_kill_disable"] is True     # managed below the attachment
    hog = sandbox.hog(c, 64)
    ev = d.wait_events(1)[0]
    check_record(ev, p, "kernel")
    assert [h["verdict"] for h in ev["handlers"]] == ["PASS"]
    assert hog.wait_exit(5)
    # the v1 oom_kill count is local to the victim's memcg: it moves in c, not p
    assert sandbox.fs.oom_control(c)["oom_kill"] == 1
    assert sandbox.fs.oom_control(p)["oom_kill"] == 0
    # the kernel's victim, read from /dev/kmsg; its comm is the interpreter's file name
    # as the hog was started ("python" or "python3", cut to TASK_COMM_LEN - 1)
    comm = os.path.basename(sys.executable)[:15]
    assert ev["killed"] == [{"name": comm, "pid": hog.pid, "cgroup": c, "by": "kernel"}]
    assert d.wait_line(f"oomkit: killed pid {hog.pid} ({comm}) in {c}", 2), d.stderr()
    # interception is taken back after the kernel acted
    assert sandbox.fs.oom_control(p)["oom_kill_disable"] is True
    assert d.alive()
    print(f"chain failed -> kernel: latency_ms {ev['latency_ms']}")


def test_raise_limit_resolves_without_kill(sandbox, oomkit_daemon):
    a = sandbox.cg("a", limit=32 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "raise-limit", "params": {"step": "32M"}}])
    hog = sandbox.hog(a, 48)
    ev = d.wait_events(1)[0]
    check_record(ev, a, "policy")
    assert ev["killed"] == []
    assert ev["limits"] == [{"cgroup": a, "old": 32 * MiB, "new": 64 * MiB}]
    [h] = ev["handlers"]
    assert h["verdict"] == "HANDLED" and h["actions"][0]["action"] == "raise_limit"
    assert hog.wait_line("allocated", 10) and hog.alive()
    assert sandbox.fs.limit(a) == 64 * MiB
    assert sandbox.fs.oom_control(a)["oom_kill"] == 0
    assert len(d.events()) == 1
    # raise_limit has its own warning line on stderr (as a kill has).
    line = d.wait_line(f"oomkit: raised the limit of {a} from 32M to 64M, by raise-limit at {a}: ", 10)
    assert line is not None, d.stderr()
    print(f"raise-limit: latency_ms {ev['latency_ms']}")


# A hog whose main thread exits (the leader becomes a zombie, state Z) while a
# second thread keeps its memory until told to go: a victim that is exiting
# but has not freed its memory yet.
EXITING_HOG = r"""
import ctypes, os, sys, threading
libc = ctypes.CDLL(None)
libc.prctl(1, 9)
mib = int(sys.argv[1])
print("ready", flush=True)
if not sys.stdin.readline():
    sys.exit(0)
chunks = [b"\x01" * (1 << 20) for _ in range(mib)]
# Once the memcg is full any new page would pause this thread in the OOM
# too: it waits and exits through calls prepared in advance.
read, leave, buf = libc.read, libc._exit, ctypes.create_string_buffer(8)
def last():
    read(0, buf, 1)
    leave(0)
threading.Thread(target=last).start()
print("allocated", flush=True)
libc.pthread_exit(None)
"""


def test_backoff_while_victim_exits(sandbox, oomkit_daemon):
    a = sandbox.cg("a", limit=28 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "wait-for-exiting"}], backoff_wait="3s")
    exiting = sandbox.hog(a, 16, wait_allocated=60, script=EXITING_HOG)
    assert until(lambda: ProcFS().stat(exiting.pid)["state"] == "Z", 5)
    hog = sandbox.hog(a, 20)
    assert until(lambda: sandbox.fs.oom_control(a)["under_oom"], 10)
    # the daemon now waits for the promise; let the exiting victim finish
    time.sleep(0.3)
    exiting.popen.stdin.write("go\n")
    exiting.popen.stdin.flush()
    ev = d.wait_events(1)[0]
    check_record(ev, a, "backoff")
    assert 250 <= ev["latency_ms"] < 3000
    [h] = ev["handlers"]
    assert (h["policy"], h["verdict"]) == ("wait-for-exiting", "BACKOFF")
    assert ev["killed"] == []
    assert exiting.wait_exit(5)
    assert hog.wait_line("allocated", 10) and hog.alive()
    assert sandbox.fs.oom_control(a)["oom_kill"] == 0
    print(f"backoff: latency_ms {ev['latency_ms']}")


def test_dry_run_decides_then_hands_to_kernel(sandbox, oomkit_daemon):
    # Room to spare once one hog is gone (24 MiB): the kernel's own retries after
    # its kill then never meet the limit again, so it kills exactly once.
    a = sandbox.cg("a", limit=48 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}], dry_run=True)
    assert "(dry run)" in d.wait_line("oomkit: running", 0)
    big = sandbox.hog(a, 32, wait_allocated=60)
    trigger = sandbox.hog(a, 24)
    ev = d.wait_events(1)[0]
    check_record(ev, a, "kernel")
    assert ev["dry_run"] is True and "dry run" in ev["note"]
    [h] = ev["handlers"]
    assert h["verdict"] == "HANDLED" and h["actions"][0]["target"] == f"pid {big.pid}"
    mine = [k for k in ev["killed"] if k["by"] != "kernel"]
    assert [k["pid"] for k in mine] == [big.pid]          # what it would have killed
    theirs = [k["pid"] for k in ev["killed"] if k["by"] == "kernel"]
    assert len(theirs) == 1 and theirs[0] in (big.pid, trigger.pid)
    assert d.wait_line(f"oomkit: would kill pid {big.pid}", 2)
    assert until(lambda: not big.alive() or not trigger.alive(), 5)
    assert sum(sandbox.fs.oom_control(c)["oom_kill"] for c in [a]) == 1


def test_two_memcgs_oom_at_once(sandbox, oomkit_daemon):
    p = sandbox.cg("p")
    x = sandbox.cg("p/x", limit=24 * MiB)
    y = sandbox.cg("p/y", limit=24 * MiB)
    d = oomkit_daemon([{"cgroup": f"{p}/*", "policy": "largest-task"}])
    hx = sandbox.hog(x, 40)
    hy = sandbox.hog(y, 40)
    events = d.wait_events(2)
    assert sorted(e["memcg"] for e in events) == [x, y], events
    for e in events:
        check_record(e, e["memcg"], "policy")
        assert killed_pids(e) == {hx.pid if e["memcg"] == x else hy.pid}
    assert hx.wait_exit(5) and hy.wait_exit(5)


@pytest.mark.parametrize("policy, victim", [("newest-task", "young"), ("largest-task", "old")])
def test_executor_kernel_the_kernel_kills_the_policys_choice(sandbox, oomkit_daemon, policy, victim):
    """executor = "kernel": the chain decides while the OOM is paused, marks its
    victim oom_score_adj 1000 and hands the OOM back; the kernel's OOM killer
    kills exactly that task (counted in memory.oom_control oom_kill, the
    kernel's own accounting), and the record is the policy's."""
    a, cgs = task_tree(sandbox)
    d = oomkit_daemon([{"cgroup": a, "policy": policy}], executor="kernel")
    hogs = start_task_tree(sandbox, cgs)
    ev = d.wait_events(1)[0]
    assert ev["resolved_by"] == "policy" and ev["executed_by"] == "kernel", (brief([ev]), d.stderr())
    assert killed_pids(ev) == {hogs[victim].pid}, ev["killed"]
    assert ev["killed"][0]["by"] == f"policy:{a}"
    assert hogs[victim].wait_exit(5)
    for name, hog in hogs.items():
        if name != victim:
            assert hog.alive(), f"{name} was killed too"
            # its own value back once the OOM is settled (a loaded machine may see a
            # second, short OOM meanwhile, with its own mark for a moment)
            own = 1000 if name == "small" else 0
            assert until(lambda: ProcFS().oom_score_adj(hog.pid) == own, 10), name
    assert sandbox.fs.oom_control(cgs[victim])["oom_kill"] >= 1      # the kernel's kill
    assert sandbox.fs.oom_control(a)["oom_kill_disable"] is True      # interception taken back
    print(f"executor kernel, {policy}: latency_ms {ev['latency_ms']}")
