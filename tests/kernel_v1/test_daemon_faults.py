"""The fault suite (issue 10): ``oomkit run`` on real v1 memcgs meets the
faults an operator meets.  Each test asserts that no OOM stays paused longer
than the watchdog timeout plus a margin, that nothing is left at
``oom_kill_disable 1``, and that no record that could be written is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers.daemon import DaemonProc, check_record, killed_pids
from helpers.memcg import rmdir_patiently
from helpers.procs import SHARED_HOG, signal_pidfd, watchdogs_of
from oomkit.linux import pidfd as _pidfd

MiB = 1 << 20
MARGIN = 5.0        # seconds on top of the watchdog timeout, for a loaded machine


def nothing_disabled(sandbox, keep=()) -> dict[str, bool]:
    """Every memcg of the sandbox still at oom_kill_disable 1, except ``keep``."""
    return {cg: True for cg in sandbox.fs.walk(sandbox.root)
            if cg not in keep and sandbox.fs.oom_control(cg)["oom_kill_disable"]}


def oom_resolved_within(sandbox, cg: str, mib: int, timeout: float):
    t0 = time.monotonic()
    hog = sandbox.hog(cg, mib)
    assert hog.wait_exit(timeout), f"the OOM in {cg} stayed paused over {timeout} s"
    return hog, time.monotonic() - t0


def test_an_event_log_that_fails_never_stops_the_daemon(sandbox, oomkit_daemon, tmp_path):
    a = sandbox.cg("a", limit=24 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}], run=False)
    d.event_log.mkdir()                       # a directory where the log should be
    d.start()
    hog, took = oom_resolved_within(sandbox, a, 40, 1 + MARGIN)
    assert d.wait_line("cannot write the event log", 5), d.stderr()
    hog2, _ = oom_resolved_within(sandbox, a, 40, 1 + MARGIN)
    assert d.alive(), d.stderr()
    assert d.stderr().count("cannot write the event log") == 1      # once per episode
    os.rmdir(d.event_log)                     # fixed; SIGHUP (logrotate's) writes what waited
    d.signal(signal.SIGHUP)
    events = d.wait_events(2)
    assert [killed_pids(e) for e in events] == [{hog.pid}, {hog2.pid}], d.stderr()
    check_record(events[0], a, "policy")
    assert d.wait_line("is written again", 5)
    assert d.stop() == 0, d.stderr()
    assert nothing_disabled(sandbox) == {}
    assert "Traceback" not in d.stderr()


def test_dev_full_as_the_event_log(sandbox, oomkit_daemon):
    a = sandbox.cg("a", limit=24 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}], run=False)
    d.event_log = Path("/dev/full")
    d.write_config([{"cgroup": a, "policy": "largest-task"}])
    d.start()
    oom_resolved_within(sandbox, a, 40, 1 + MARGIN)
    assert d.wait_line("cannot write the event log /dev/full", 5), d.stderr()
    oom_resolved_within(sandbox, a, 40, 1 + MARGIN)
    assert d.alive(), d.stderr()
    assert d.stop() == 0
    assert nothing_disabled(sandbox) == {}


def kill_both(d: DaemonProc) -> None:
    """``systemctl kill -s KILL``: the daemon and its watchdog at once (the watchdog
    stopped first, so it cannot hand anything back in between)."""
    assert d.watchdog_pidfd >= 0
    signal_pidfd(d.watchdog_pidfd, signal.SIGSTOP)
    signal_pidfd(d.pidfd, signal.SIGKILL)
    signal_pidfd(d.watchdog_pidfd, signal.SIGKILL)
    assert _pidfd.wait_exit(d.pidfd, 10) and _pidfd.wait_exit(d.watchdog_pidfd, 10)


def test_daemon_and_watchdog_killed_together_then_restarted(sandbox, oomkit_daemon, tmp_path):
    a = sandbox.cg("a", limit=24 * MiB)
    b = sandbox.cg("a/b")
    admin = sandbox.cg("admin", limit=24 * MiB)
    sandbox.fs.set_oom_kill_disable(admin, True)          # the admin's own
    attach = [{"cgroup": a, "policy": "largest-task"}, {"cgroup": admin, "policy": "largest-task"}]
    d = oomkit_daemon(attach)
    assert d.wait_line("left alone", 5) and admin in d.stderr()
    kill_both(d)
    assert nothing_disabled(sandbox, keep=[admin]) == {a: True, b: True}   # left paused-to-be
    again = oomkit_daemon(attach, name="oomkit", state_dir=str(d.state_dir))
    assert again.stderr().count("left by a previous run: restored: ") == 2, again.stderr()
    hog, took = oom_resolved_within(sandbox, b, 40, 1 + MARGIN)
    ev = again.wait_events(1)
    assert ev and killed_pids(ev[-1]) == {hog.pid} and ev[-1]["resolved_by"] == "policy"
    assert again.stop() == 0
    assert nothing_disabled(sandbox, keep=[admin]) == {}
    assert sandbox.fs.oom_control(admin)["oom_kill_disable"] is True     # never clobbered


def test_oomkit_restore_after_both_were_killed(sandbox, oomkit_daemon):
    a = sandbox.cg("a", limit=24 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}])
    kill_both(d)
    assert nothing_disabled(sandbox) == {a: True}
    p = subprocess.run([sys.executable, "-m", "oomkit.cli", "restore", "--state-dir", str(d.state_dir)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "restored: " in p.stdout, p.stderr
    assert nothing_disabled(sandbox) == {}


def test_a_second_daemon_is_refused_and_leaves_the_first_armed(sandbox, oomkit_daemon):
    a = sandbox.cg("a", limit=24 * MiB)
    first = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}])
    second = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}], name="second", run=False,
                           state_dir=str(first.state_dir))
    p = subprocess.run([sys.executable, "-m", "oomkit.cli", "run", "--config", str(second.config)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert f"another oomkit (pid {first.pid}) is running" in p.stderr
    assert p.stderr.splitlines()[-1].startswith("oomkit: another oomkit") and "Traceback" not in p.stderr
    assert sandbox.fs.oom_control(a)["oom_kill_disable"] is True         # not disarmed
    hog, _ = oom_resolved_within(sandbox, a, 40, 1 + MARGIN)
    assert killed_pids(first.wait_events(1)[0]) == {hog.pid}
    assert len(watchdogs_of(first.pid)) == 1


def test_the_daemon_refuses_to_manage_the_cgroup_it_runs_in(sandbox, oomkit_daemon, tmp_path):
    """Issue 10 item 8: attached to its own memcg (or one above it), the daemon's
    OOM there would pause the daemon itself: it refuses to start, in one line."""
    a = sandbox.cg("a", limit=64 * MiB)
    home = sandbox.cg("a/home")
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}], run=False)
    procs = sandbox.fs.path(home, "cgroup.procs")
    # Join our own memcg (one of the sandbox's), then become `oomkit run`.
    code = (f"import os, sys; open({str(procs)!r}, 'w').write(str(os.getpid())); "
            f"sys.argv = ['oomkit', 'run', '--config', {str(d.config)!r}]; "
            "from oomkit.cli import main; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    last = p.stderr.splitlines()[-1]
    assert last.startswith(f"oomkit: oomkit runs in {home}: refusing to manage {a}, {home}"), p.stderr
    assert "Traceback" not in p.stderr
    assert nothing_disabled(sandbox) == {}


def test_the_shipped_config_never_attaches_the_daemons_own_slice():
    from oomkit.config.daemon import load_daemon_config
    from oomkit.daemon.attachments import own_cgroups

    config = load_daemon_config(Path(__file__).resolve().parents[2] / "contrib" / "oomkit.toml")
    service = Path(__file__).resolve().parents[2] / "contrib" / "oomkit.service"
    slice_ = [ln.split("=", 1)[1].strip() for ln in service.read_text().splitlines()
              if ln.startswith("Slice=")][0]
    mine = own_cgroups(f"/{slice_}/oomkit.service")
    assert all(not (a.cgroup in mine or f"/{slice_}/oomkit.service".startswith(a.cgroup.rstrip("/*") + "/")
                    or a.cgroup == "/") for a in config.attach), config.attach


# -- SIGHUP: reload faults (issue 10 item 5) -----------------------------------------------

VERSIONED = '''
from oomkit import OOMPolicy, Verdict

class Versioned(OOMPolicy):
    """Kills the largest task in version 1; passes (the kernel kills) in version 2."""
    def handle_out_of_memory(self, oc, k):
        if VERSION == 2:
            return Verdict.PASS
        victim = max(oc.tasks, key=lambda t: t.rss)
        return Verdict.HANDLED if k.kill_task(victim, "largest") > 0 else Verdict.PASS

VERSION = {version}
'''

AT_IMPORT = {
    "sys.exit() at import": "import sys\nsys.exit(3)\n",
    "KeyboardInterrupt at import": "raise KeyboardInterrupt('at import')\n",
    "RecursionError at import": "def f(n):\n    return f(n + 1)\nf(0)\n",
}


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def reload_and_wait(d: DaemonProc, what: str, timeout: float = 10.0) -> str:
    n = len(d.lines)
    d.signal(signal.SIGHUP)
    line = d.wait_line(what, timeout, n)
    assert line, (what, d.stderr())
    return line


def test_reload_faults_never_stop_the_daemon(sandbox, oomkit_daemon, tmp_path):
    """A config that crashes validation, a policy that exits or raises anything at
    import: each is one 'reload failed' line, the daemon goes on with the running
    policy, and every OOM is handled by it in time and recorded."""
    a = sandbox.cg("a", limit=24 * MiB)
    attach = [{"cgroup": a, "policy": "largest-task"}]
    # A generous handler deadline: this test is about reloads, not a loaded machine's 50 ms.
    d = oomkit_daemon(attach, watchdog_timeout="1s", handler_deadline="1s")
    good = d.config.read_text()
    bad = {
        "TOML nested 2,000 deep": good.replace("[daemon]", "[daemon]\nx = " + "[" * 2000 + "]" * 2000),
        "a 400-digit size": good.replace('policy = "largest-task"', 'policy = "raise-limit"\nparams = '
                                         '{step = "' + "9" * 400 + 'M"}'),
        "a 400-digit integer": good.replace('policy = "largest-task"', 'policy = "raise-limit"\nparams = '
                                            '{step = ' + "9" * 400 + '}'),
    }
    for what, body in AT_IMPORT.items():
        name = what.split()[0].replace(".", "_").replace("(", "").replace(")", "") + ".py"
        (tmp_path / name).write_text(body + "\nfrom oomkit import OOMPolicy\n"
                                     "class P(OOMPolicy):\n    def handle_out_of_memory(self, oc, k):\n"
                                     "        return None\n")
        bad[what] = good.replace('"largest-task"', f'"{name}:P"')
    for i, (what, text) in enumerate(bad.items()):
        d.config.write_text(text)
        line = reload_and_wait(d, "reload failed, keeping the running configuration")
        assert d.alive(), (what, d.stderr())
        hog, took = oom_resolved_within(sandbox, a, 40, 1 + MARGIN)
        events = d.wait_events(i + 1)
        assert len(events) == i + 1 and killed_pids(events[-1]) == {hog.pid}, (what, line, d.stderr())
        assert events[-1]["resolved_by"] == "policy", (what, events[-1])
        check_record(events[-1], a, "policy")
        assert [h["policy"] for h in events[-1]["handlers"]] == ["largest-task"], what
    assert "oomkit-watchdog" not in d.stderr()          # never handed back on our silence
    assert "Traceback" not in d.stderr(), d.stderr()
    assert d.stop() == 0, d.stderr()
    assert nothing_disabled(sandbox) == {}


def test_a_policy_import_slower_than_the_watchdog_timeout(sandbox, oomkit_daemon, tmp_path):
    """The import runs beside the loop: an OOM meanwhile is handled by the running
    policy at once, and the watchdog (1 s) never hears silence; then the reload applies."""
    a = sandbox.cg("a", limit=24 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}], watchdog_timeout="1s")
    (tmp_path / "slow_import.py").write_text(
        "import sys, time\nprint('slow import started', file=sys.stderr, flush=True)\ntime.sleep(4)\n"
        + VERSIONED.format(version=2))
    d.write_config([{"cgroup": a, "policy": "slow_import.py:Versioned"}])
    reload_and_wait(d, "slow import started")
    hog, took = oom_resolved_within(sandbox, a, 40, 1 + MARGIN)
    ev = d.wait_events(1)[0]
    check_record(ev, a, "policy")
    assert killed_pids(ev) == {hog.pid} and ev["latency_ms"] < 1000, ev
    assert [h["policy"] for h in ev["handlers"]] == ["largest-task"]
    assert d.wait_line("reloaded", 15), d.stderr()
    assert "oomkit-watchdog" not in d.stderr(), d.stderr()
    assert sandbox.fs.oom_control(a)["oom_kill_disable"] is True
    hog2, _ = oom_resolved_within(sandbox, a, 40, 1 + MARGIN)      # version 2: PASS, the kernel kills
    ev2 = d.wait_events(2)[1]
    check_record(ev2, a, "kernel")
    assert [k["by"] for k in ev2["killed"]] == ["kernel"] and killed_pids(ev2) == {hog2.pid}
    assert d.stop() == 0, d.stderr()
    assert nothing_disabled(sandbox) == {}


def test_an_edited_policy_file_is_read_again_on_reload(sandbox, oomkit_daemon, tmp_path):
    a = sandbox.cg("a", limit=24 * MiB)
    policy = tmp_path / "versioned.py"
    policy.write_text(VERSIONED.format(version=1))
    d = oomkit_daemon([{"cgroup": a, "policy": "versioned.py:Versioned"}])
    hog, _ = oom_resolved_within(sandbox, a, 40, 1 + MARGIN)
    ev = d.wait_events(1)[0]
    check_record(ev, a, "policy")
    policy.write_text(VERSIONED.format(version=2))      # same size, same second: no stale cache
    reload_and_wait(d, "reloaded")
    hog2, _ = oom_resolved_within(sandbox, a, 40, 1 + MARGIN)
    ev2 = d.wait_events(2)[1]
    check_record(ev2, a, "kernel")
    assert ev2["handlers"][0]["verdict"] == "PASS" and killed_pids(ev2) == {hog2.pid}
    assert d.stop() == 0, d.stderr()


def test_dry_run_from_the_command_line_survives_reload(sandbox, oomkit_daemon):
    a = sandbox.cg("a", limit=24 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}], args=("--dry-run",))
    reload_and_wait(d, "reloaded")
    hog, _ = oom_resolved_within(sandbox, a, 40, 1 + MARGIN)
    ev = d.wait_events(1)[0]
    check_record(ev, a, "kernel")
    # the policy's choice is recorded, not carried out: the kernel killed
    assert ev["dry_run"] is True and "dry run" in ev["note"], ev
    assert [k["by"] for k in ev["killed"]][-1] == "kernel" and killed_pids(ev) == {hog.pid}, ev
    assert d.stop() == 0, d.stderr()


def test_no_thread_left_per_reload(sandbox, oomkit_daemon):
    """After an OOM the engine has a handler thread: a reload replaces the engine
    and must end that thread (one leaked per reload before)."""
    a = sandbox.cg("a", limit=24 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}])
    oom_resolved_within(sandbox, a, 40, 1 + MARGIN)
    assert d.wait_events(1)
    before = threads(d.pid)
    for i in range(5):
        reload_and_wait(d, "reloaded")
        oom_resolved_within(sandbox, a, 40, 1 + MARGIN)
        assert len(d.wait_events(i + 2)) == i + 2
    deadline = time.monotonic() + 10
    while threads(d.pid) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threads(d.pid) == before, d.stderr()
    assert d.stop() == 0, d.stderr()


# -- the safety net (issue 10 item 2): a claimed release that did not end the OOM ------------

def test_an_oom_still_pending_after_a_claimed_release_goes_to_the_kernel(sandbox, oomkit_daemon):
    """The policy kills a process whose memory does not go away: its mm is shared
    with a process in another memcg (CLONE_VM), so the kill uncharges nothing and
    the other task waiting in the OOM stays paused, with no new notification.
    A short grace after the claimed release, the OOM goes to the kernel, and the
    record says so."""
    a = sandbox.cg("a", limit=48 * MiB)
    b = sandbox.cg("b")
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}])
    p = sandbox.hog(a, 24, script=SHARED_HOG)
    line = p.read_line(30) or ""
    assert line.startswith("sharer "), line
    sharer = int(line.split()[1])
    sharer_fd = _pidfd.open_pidfd(sharer)
    try:
        sandbox.fs.attach(b, sharer)           # the mm's pages stay charged to a
        assert p.read_line(30) == "allocated"
        w, took = oom_resolved_within(sandbox, a, 40, 10 + MARGIN)
        ev = d.wait_events(1)[0]
        check_record(ev, a, "kernel")
        [h] = ev["handlers"]
        assert h["verdict"] == "HANDLED" and h["freed"] > 0, h           # the claim
        assert [(k["pid"], k["by"]) for k in ev["killed"]] == [(p.pid, f"policy:{a}"), (w.pid, "kernel")], ev
        assert "still under OOM" in ev["note"] and "handed to the kernel" in ev["note"], ev["note"]
        assert sandbox.fs.oom_control(a)["oom_kill_disable"] is True     # taken back
        assert not _pidfd.wait_exit(sharer_fd, 0)                         # in b: not the kernel's to kill
        assert "Traceback" not in d.stderr()
    finally:
        signal_pidfd(sharer_fd, signal.SIGKILL)
        os.close(sharer_fd)
    print(f"OOM pending after a release that freed nothing -> kernel kill: {took * 1000:.0f} ms")


# -- a memcg removed while its OOM is handled (issue 10 item 6) -------------------------------

REMOVED_MIDWAY = '''
import os, sys, time
from oomkit import OOMPolicy, Verdict

class KillAfterRemoval(OOMPolicy):
    """Waits, inside the handler, until the test has removed the OOMing memcg
    (what a container runtime does once its last task died), then acts."""
    def __init__(self, marker, read_first):
        self.marker, self.read_first = marker, read_first

    def handle_out_of_memory(self, oc, k):
        tasks = list(oc.tasks) if self.read_first else None
        print("handling", oc.memcg, file=sys.stderr, flush=True)
        deadline = time.monotonic() + 5
        while os.path.exists(self.marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        tasks = list(oc.tasks) if tasks is None else tasks
        usage = oc.cgroups[oc.memcg].usage
        freed = sum(k.kill_task(t, "after removal") for t in tasks)
        return Verdict.HANDLED if freed > 0 else Verdict.PASS
'''


import pytest  # noqa: E402


@pytest.mark.parametrize("read_first", [True, False])
def test_a_memcg_removed_while_its_oom_is_handled(sandbox, oomkit_daemon, tmp_path, read_first):
    """The handler is still running when the memcg's last task is killed and the
    memcg removed: the daemon records what it could, stays up, and the next OOM
    elsewhere is handled as usual."""
    (tmp_path / "removed.py").write_text(REMOVED_MIDWAY)
    sandbox.cg("a")
    gone = sandbox.cg("a/gone", limit=24 * MiB)
    marker = tmp_path / "memcg-still-there"
    marker.write_text("")
    d = oomkit_daemon([{"cgroup": gone, "policy": "removed.py:KillAfterRemoval",
                        "params": {"marker": str(marker), "read_first": read_first}},
                       {"cgroup": sandbox.cg("b", limit=24 * MiB), "policy": "largest-task"}],
                      handler_deadline="10s")
    hog = sandbox.hog(gone, 40)
    assert d.wait_line("handling", 10 + MARGIN), d.stderr()
    hog.kill()
    assert hog.wait_exit(5)
    assert rmdir_patiently(sandbox.fs, gone)
    marker.unlink()                                   # the handler goes on
    ev = d.wait_events(1, timeout=10 + MARGIN)
    assert len(ev) == 1, d.stderr()
    assert ev[0]["memcg"] == gone and ev[0]["resolved_by"] in ("kernel", "policy"), ev[0]
    print({k: ev[0].get(k) for k in ("resolved_by", "note", "handlers", "killed")})
    assert d.alive(), d.stderr()
    b = f"{sandbox.root}/b"
    hog2, _ = oom_resolved_within(sandbox, b, 40, 1 + MARGIN)
    ev = d.wait_events(2)
    assert len(ev) == 2 and killed_pids(ev[1]) == {hog2.pid}, d.stderr()
    check_record(ev[1], b, "policy")
    assert "Traceback" not in d.stderr(), d.stderr()
    assert d.stop() == 0, d.stderr()
    assert nothing_disabled(sandbox) == {}
