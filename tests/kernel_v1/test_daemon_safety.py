"""``oomkit run`` on real v1 memcgs when things go wrong: the daemon killed or
stopped mid-OOM (the watchdog hands the OOM back), policies that hang or
raise (the kernel acts, the daemon stays, the policy is ejected), SIGHUP with
a bad and a good file, SIGTERM restoring every setting, memcgs created
later, and ``oomkit run`` without root.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.daemon import brief, check_record, killed_pids
from helpers.procs import until, watchdogs_of
from oomkit.linux.pidfd import send_signal

MiB = 1 << 20

SLOW = '''
import time
from oomkit import OOMPolicy, Verdict

class Slow(OOMPolicy):
    name = "slow"
    def handle_out_of_memory(self, oc, k):
        time.sleep(30)
        return Verdict.PASS
'''

BAD = '''
from oomkit import OOMPolicy, Verdict

class Loop(OOMPolicy):
    name = "loop"
    def handle_out_of_memory(self, oc, k):
        while True:
            pass

class Sleep(OOMPolicy):
    name = "sleep"
    def handle_out_of_memory(self, oc, k):
        import time
        time.sleep(30)
        return Verdict.PASS

class Raise(OOMPolicy):
    name = "raise"
    def handle_out_of_memory(self, oc, k):
        raise RuntimeError("policy bug")

class Wrong(OOMPolicy):
    name = "wrong"
    def handle_out_of_memory(self, oc, k):
        return 1
'''


def write(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)


def cpu_seconds(pid: int, over: float) -> float:
    """CPU time (user + system) the process used during the next ``over`` seconds."""
    def ticks():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    t0 = ticks()
    time.sleep(over)
    return (ticks() - t0) / os.sysconf("SC_CLK_TCK")


def wait_under_oom(sandbox, cg: str, timeout: float = 60) -> float:
    t0 = time.monotonic()
    assert until(lambda: sandbox.fs.oom_control(cg)["under_oom"], timeout), f"{cg} never went under OOM"
    return time.monotonic() - t0


@pytest.mark.parametrize("where", ["attached", "created-later"])
def test_daemon_sigkilled_mid_oom_kernel_takes_over(sandbox, oomkit_daemon, tmp_path, where):
    write(tmp_path, "slow.py", SLOW)
    top = sandbox.cg("top", limit=24 * MiB)
    # A handler that sleeps keeps the daemon inside the OOM; the watchdog's
    # silence timeout is long, so only the daemon's death can wake it.
    d = oomkit_daemon([{"cgroup": top, "policy": "slow.py:Slow"}], handler_deadline="20s",
                      watchdog_timeout="30s")
    wd = d.watchdog_pid
    assert wd is not None and d.watchdog_alive()
    a = top
    if where == "created-later":    # a memcg the daemon picked up while running
        a = sandbox.cg("top/late", limit=24 * MiB)
        assert until(lambda: sandbox.fs.oom_control(a)["oom_kill_disable"], 1)
        time.sleep(0.1)
    hog = sandbox.hog(a, 40)
    wait_under_oom(sandbox, a)
    time.sleep(0.3)
    assert hog.alive() and sandbox.fs.oom_control(a)["under_oom"]    # still paused: held by the daemon
    t0 = time.monotonic()
    d.signal(signal.SIGKILL)
    assert hog.wait_exit(2), "the kernel did not take over within 2 s"
    took = time.monotonic() - t0
    assert sandbox.fs.oom_control(a)["oom_kill"] == 1
    assert sandbox.fs.oom_control(a)["oom_kill_disable"] is False
    assert until(lambda: not d.watchdog_alive(), 2), "the watchdog outlived its work"
    assert d.wait_line("oomkit-watchdog: daemon eof", 2) is not None
    assert d.events() == []
    print(f"SIGKILL -> kernel kill: {took * 1000:.1f} ms")


def test_daemon_stopped_watchdog_hands_back(sandbox, oomkit_daemon):
    a = sandbox.cg("a", limit=24 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}], watchdog_timeout="500ms")
    d.signal(signal.SIGSTOP)
    try:
        hog = sandbox.hog(a, 40)
        wait_under_oom(sandbox, a)
        t0 = time.monotonic()
        assert hog.wait_exit(2), "the watchdog did not hand the OOM back within 2 s"
        took = time.monotonic() - t0
        assert sandbox.fs.oom_control(a)["oom_kill"] == 1
        assert sandbox.fs.oom_control(a)["oom_kill_disable"] is False
        assert d.wait_line("oomkit-watchdog: daemon silence", 2) is not None
    finally:
        d.signal(signal.SIGCONT)
    print(f"daemon stopped: OOM -> kernel kill {took * 1000:.1f} ms")
    # That watchdog is gone: the daemon, woken, starts another, tells it every
    # memcg it holds and takes them again; the next OOM is its own again.
    assert until(lambda: not d.watchdog_alive(), 2)
    assert d.wait_line("replaced by pid", 5), d.stderr()
    assert until(lambda: sandbox.fs.oom_control(a)["oom_kill_disable"], 5), d.stderr()
    assert d.alive(), d.stderr()
    # The kernel's kill while the daemon was stopped is in the log too (its
    # oom_kill count moved with no record of ours), then hog2's, the policy's.
    events = d.wait_events(1)
    assert events and events[0]["resolved_by"] == "kernel", events
    assert "handed the OOM back" in events[0]["note"], events[0]
    assert killed_pids(events[0]) == {hog.pid}, events[0]
    hog2 = sandbox.hog(a, 40)
    assert hog2.wait_exit(10)
    events = d.wait_events(2)
    assert len(events) == 2 and killed_pids(events[1]) == {hog2.pid}, d.stderr()
    assert events[1]["resolved_by"] == "policy", events[1]
    assert "Traceback" not in d.stderr(), d.stderr()


def test_a_stopped_watchdog_is_noticed_and_replaced(sandbox, oomkit_daemon, tmp_path):
    """Issue 10 item 9: a SIGSTOPped watchdog would leave the daemon's OOMs
    unguarded (and, its pipe full after hours, hang the daemon): the daemon
    sees it no longer answers, replaces it, and the new one guards every memcg."""
    write(tmp_path, "slow.py", SLOW)
    a = sandbox.cg("a", limit=24 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "slow.py:Slow"}], watchdog_timeout="500ms",
                      handler_deadline="20s")
    old = d.watchdog_pidfd
    send_signal(old, signal.SIGSTOP)
    try:
        assert d.wait_line("has not answered", 5), d.stderr()
        assert d.wait_line("replaced by pid", 5), d.stderr()
    finally:
        if d.watchdog_alive():
            send_signal(old, signal.SIGKILL)
    # The new watchdog holds a: the daemon's death mid-OOM hands it back.
    assert until(lambda: len(watchdogs_of(d.pid)) == 1, 5)
    hog = sandbox.hog(a, 40)
    wait_under_oom(sandbox, a)
    d.signal(signal.SIGKILL)
    assert hog.wait_exit(5), "the new watchdog did not hand the OOM back"
    assert sandbox.fs.oom_control(a)["oom_kill_disable"] is False


def test_watchdog_killed_daemon_replaces_it(sandbox, oomkit_daemon):
    fs = sandbox.fs
    a = sandbox.cg("a", limit=64 * MiB)
    tree = [a] + [sandbox.cg(f"a/{n}") for n in ("b", "c", "d")]
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}])
    assert all(fs.oom_control(cg)["oom_kill_disable"] for cg in tree)
    # Someone kills the watchdog (it hands nothing back then): the daemon starts
    # another and tells it everything it holds; its own death is still covered.
    send_signal(d.watchdog_pidfd, signal.SIGKILL)
    assert d.wait_line("replaced by pid", 5), d.stderr()
    assert all(fs.oom_control(cg)["oom_kill_disable"] for cg in tree)
    assert until(lambda: len(watchdogs_of(d.pid)) == 1, 5)
    d.signal(signal.SIGKILL)
    assert until(lambda: not any(fs.oom_control(cg)["oom_kill_disable"] for cg in tree), 5), \
        "the new watchdog did not hand the memcgs back"
    assert "Traceback" not in d.stderr(), d.stderr()


@pytest.mark.parametrize("policy, error", [
    ("Loop", "deadline"), ("Sleep", "deadline"), ("Raise", "RuntimeError: policy bug"),
    ("Wrong", "not a Verdict"),
])
def test_bad_policy_kernel_takes_over_then_ejected(sandbox, oomkit_daemon, tmp_path, policy, error):
    write(tmp_path, "bad.py", BAD)
    a = sandbox.cg("a", limit=24 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": f"bad.py:{policy}"}])
    for i in range(4):
        hog = sandbox.hog(a, 40)
        assert hog.wait_exit(5), f"OOM {i + 1}: nobody killed the hog"
        events = d.wait_events(i + 1)
        assert len(events) == i + 1, (d.stderr(), brief(events))
        ev = events[-1]
        check_record(ev, a, "kernel")
        assert sandbox.fs.oom_control(a)["oom_kill"] == i + 1
        assert [k["by"] for k in ev["killed"]] == ["kernel"]
        if i < 3:
            [h] = ev["handlers"]
            assert h["verdict"] == "PASS" and error in h["error"], h
            assert ev.get("ejected", []) == ([a] if i == 2 else [])
        else:   # ejected: the kernel alone
            assert ev["handlers"] == []
        assert d.alive(), d.stderr()
        assert sandbox.fs.oom_control(a)["oom_kill_disable"] is True
    assert d.wait_line(f"ejected policy {policy.lower()} at {a} after 3 consecutive failures", 1)
    # an abandoned handler does not keep running (a busy loop gets HandlerDeadline)
    assert cpu_seconds(d.pid, 0.5) < 0.25
    print(f"{policy}: latency_ms {[e['latency_ms'] for e in d.events()]}")


def test_sighup_bad_file_keeps_config_good_file_applies(sandbox, oomkit_daemon, tmp_path):
    a = sandbox.cg("a", limit=32 * MiB)
    attach = [{"cgroup": a, "policy": "largest-task"}]
    d = oomkit_daemon(attach)
    good_text = d.config.read_text()

    bad_files = {
        "toml": good_text + "\n[[attach\n",
        "policy": good_text.replace('"largest-task"', '"no-such-policy"'),
        "params": good_text.replace('policy = "largest-task"',
                                    'policy = "raise-limit"\nparams = {step = "lots"}'),
        "unknown key": good_text.replace("[daemon]", "[daemon]\nfrobnicate = 1"),
    }
    for i, (what, text) in enumerate(bad_files.items()):
        n = len(d.lines)
        d.config.write_text(text)
        d.signal(signal.SIGHUP)
        assert d.wait_line("reload failed, keeping the running configuration", 5, n), (what, d.stderr())
    assert d.alive()
    assert sandbox.fs.oom_control(a)["oom_kill_disable"] is True
    hog = sandbox.hog(a, 48)
    ev = d.wait_events(1)[0]
    check_record(ev, a, "policy")
    assert [h["policy"] for h in ev["handlers"]] == ["largest-task"]
    assert killed_pids(ev) == {hog.pid}

    n = len(d.lines)
    d.write_config([{"cgroup": a, "policy": "raise-limit", "params": {"step": "32M"}}])
    d.signal(signal.SIGHUP)
    assert d.wait_line("reloaded", 5, n), d.stderr()
    hog2 = sandbox.hog(a, 48)
    events = d.wait_events(2)
    assert len(events) == 2
    check_record(events[1], a, "policy")
    assert [h["policy"] for h in events[1]["handlers"]] == ["raise-limit"]
    assert events[1]["killed"] == [] and sandbox.fs.limit(a) == 64 * MiB
    assert hog2.wait_line("allocated", 10)

    # a reload that moves the attachment gives a back and takes b
    b = sandbox.cg("b", limit=24 * MiB)
    n = len(d.lines)
    d.write_config([{"cgroup": b, "policy": "largest-task"}])
    d.signal(signal.SIGHUP)
    assert d.wait_line("reloaded", 5, n), d.stderr()
    assert sandbox.fs.oom_control(a)["oom_kill_disable"] is False
    assert sandbox.fs.oom_control(b)["oom_kill_disable"] is True
    hog3 = sandbox.hog(b, 40)
    events = d.wait_events(3)
    assert len(events) == 3 and killed_pids(events[2]) == {hog3.pid}
    check_record(events[2], b, "policy")


def test_sigterm_restores_every_setting(sandbox, oomkit_daemon):
    fs = sandbox.fs
    a = sandbox.cg("a", limit=64 * MiB)
    tree = [a, sandbox.cg("a/b"), sandbox.cg("a/b/c"), sandbox.cg("a/d")]
    fs.set_oom_kill_disable(tree[3], True)          # already set before oomkit: must stay so
    other = sandbox.cg("other")                       # not attached: never touched
    before = {cg: fs.oom_control(cg)["oom_kill_disable"] for cg in tree + [other]}
    limits = {cg: fs.limit(cg) for cg in tree + [other]}
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}])
    assert all(fs.oom_control(cg)["oom_kill_disable"] for cg in tree)
    assert fs.oom_control(other)["oom_kill_disable"] is False
    # one OOM handled on the way, and one memcg created while running
    late = sandbox.cg("a/late")
    assert until(lambda: fs.oom_control(late)["oom_kill_disable"], 2)
    before[late] = False
    hog = sandbox.hog(tree[2], 80)
    assert d.wait_events(1) and hog.wait_exit(5)
    wd = d.watchdog_pid
    assert wd is not None
    rc = d.stop()
    assert rc == 0, d.stderr()
    assert "every setting restored" in d.stderr()
    assert {cg: fs.oom_control(cg)["oom_kill_disable"] for cg in before} == before
    assert {cg: fs.limit(cg) for cg in limits} == limits
    assert not os.path.exists(f"/proc/{wd}") or open(f"/proc/{wd}/stat").read().split()[2] == "Z"
    assert "oomkit-watchdog" not in d.stderr()      # a "bye": it handed nothing back itself


def test_new_memcgs_are_picked_up(sandbox, oomkit_daemon):
    fs = sandbox.fs
    jobs = sandbox.cg("jobs")
    svc = sandbox.cg("svc")
    d = oomkit_daemon([{"cgroup": f"{jobs}/*", "policy": "largest-task"},
                       {"cgroup": svc, "policy": "newest-task"}])
    assert fs.oom_control(jobs)["oom_kill_disable"] is False     # the glob's parent is not ours to hold
    t0 = time.monotonic()
    j1 = sandbox.cg("jobs/j1", limit=24 * MiB)
    x = sandbox.cg("svc/x")
    y = sandbox.cg("svc/x/y", limit=24 * MiB)
    picked = {}
    for cg in (j1, x, y):
        # (within 1 s on an idle machine, see picked; 10 s leaves room for a loaded one)
        assert until(lambda: fs.oom_control(cg)["oom_kill_disable"], 10.0), f"{cg} not picked up within 10 s"
        picked[cg] = round((time.monotonic() - t0) * 1000, 1)
    hog = sandbox.hog(j1, 40)
    ev = d.wait_events(1)[0]
    check_record(ev, j1, "policy")
    assert [(h["cgroup"], h["policy"]) for h in ev["handlers"]] == [(j1, "largest-task")]
    assert killed_pids(ev) == {hog.pid}
    hog2 = sandbox.hog(y, 40)
    events = d.wait_events(2)
    check_record(events[1], y, "policy")
    assert [(h["cgroup"], h["policy"]) for h in events[1]["handlers"]] == [(svc, "newest-task")]
    assert killed_pids(events[1]) == {hog2.pid}
    # a removed memcg is dropped without fuss
    assert hog.wait_exit(5) and hog2.wait_exit(5)
    assert sandbox._rmdir(y) and sandbox._rmdir(j1)
    time.sleep(0.2)
    assert d.alive(), d.stderr()
    assert "Traceback" not in d.stderr()
    print(f"picked up after (ms): {picked}")


def test_run_without_root_says_so_in_one_line(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[daemon]\ncgroup = "v1"\n')
    os.chmod(tmp_path, 0o755)
    cfg.chmod(0o644)
    # The interpreter's packages live under /root here, which another uid cannot
    # read; so the real-uid switch is tried first, else geteuid is made to lie.
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", "import oomkit.cli"], capture_output=True)
    if probe.returncode == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
               sys.executable, "-m", "oomkit.cli", "run", "--config", str(cfg)]
    else:
        cmd = [sys.executable, "-c", "import os, sys; os.geteuid = lambda: 65534; "
               "sys.argv[0] = 'oomkit'; from oomkit.cli import main; main()",
               "run", "--config", str(cfg)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "needs root" in lines[0]
    assert r.stdout == ""
