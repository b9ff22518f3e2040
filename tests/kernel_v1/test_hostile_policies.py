"""Hostile policies against the live daemon on real v1 memcgs (issue 11): the
policy runs in its worker (the daemon's default runner) and tries what a
policy inside the daemon's process could do.  Each case ends with the rule
intact: the daemon alive, no relief that did not happen (the kernel kills the
hog, the record says so), no kill outside the subtree (a process of ours
outside the sandbox's memcgs lives on), no cgroupfs write (a memcg of ours
the daemon does not manage stays at oom_kill_disable 0, the limit stays),
ejection after 3 failures, each OOM resolved by the kernel within seconds,
and nothing left at oom_kill_disable 1 once the daemon stops.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers.daemon import brief, check_record
from helpers.procs import end_by_pidfd
from oomkit.linux import pidfd as _pidfd

MiB = 1 << 20

HOSTILE = '''
import os, re, signal
from oomkit import OOMPolicy, Verdict

class KillOutside(OOMPolicy):
    """os.kill() on a process outside the subtree, then k.kill_task() on it."""
    name = "kill-outside"
    def __init__(self, victim=0):
        self.victim = int(victim)
    def handle_out_of_memory(self, oc, k):
        for how in (lambda: os.kill(self.victim, signal.SIGKILL),
                    lambda: os.kill(-1, signal.SIGKILL),
                    lambda: os.killpg(0, signal.SIGKILL)):
            try:
                how()
            except BaseException:
                pass
        refused = k.kill_task(self.victim, "not mine")
        raise RuntimeError(f"tried everything; kill_task: {refused!r}")

class WriteCgroupfs(OOMPolicy):
    """Writes oom_kill_disable of a memcg, and the OOMing memcg's limit (fake relief)."""
    name = "write-cgroupfs"
    def __init__(self, mount="", other=""):
        self.mount, self.other = mount, other
    def handle_out_of_memory(self, oc, k):
        wrote = []
        for path, value in ((self.mount + self.other + "/memory.oom_control", "1"),
                            (self.mount + oc.memcg + "/memory.limit_in_bytes", str(1 << 30))):
            try:
                with open(path, "w") as f:
                    f.write(value)
                wrote.append(path)
            except OSError:
                pass
        raise RuntimeError(f"tried everything; wrote {wrote}")

class Regex(OOMPolicy):
    """A catastrophic regex: one C call that never lets go of the GIL."""
    name = "regex"
    def handle_out_of_memory(self, oc, k):
        re.match(r"(a+)+$", "a" * 64 + "b")
        return Verdict.PASS

class Busy(OOMPolicy):
    """A loop that swallows every exception, the asynchronous stop's too."""
    name = "busy"
    def handle_out_of_memory(self, oc, k):
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass

class Exit(OOMPolicy):
    name = "exit"
    def handle_out_of_memory(self, oc, k):
        os._exit(0)

class Gigabyte(OOMPolicy):
    """1 GiB, every page touched."""
    name = "gigabyte"
    def handle_out_of_memory(self, oc, k):
        self.hoard = bytearray(1 << 30)
        return Verdict.PASS
'''

CASES = {
    "KillOutside": "RuntimeError: tried everything; kill_task: Refused",
    "WriteCgroupfs": "RuntimeError: tried everything; wrote []",
    "Regex": "deadline",
    "Busy": "deadline",
    "Exit": "worker",
    "Gigabyte": "MemoryError",
}


@pytest.fixture
def bystander():
    """A process of ours outside every memcg of the sandbox: no policy may kill it."""
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    fd = _pidfd.open_pidfd(p.pid)
    try:
        yield p.pid, fd
    finally:
        end_by_pidfd(fd, 5)
        p.wait(10)
        p.stdin.close()


@pytest.mark.parametrize("policy", sorted(CASES))
def test_hostile_policy_rule_intact(sandbox, oomkit_daemon, tmp_path: Path, bystander, policy):
    (tmp_path / "hostile.py").write_text(HOSTILE)
    victim, victim_fd = bystander
    fs = sandbox.fs
    a = sandbox.cg("a", limit=24 * MiB)
    other = sandbox.cg("other", limit=24 * MiB)       # ours, not managed: stays at 0
    params = {"KillOutside": {"victim": victim},
              "WriteCgroupfs": {"mount": str(fs.mount), "other": other}}.get(policy, {})
    d = oomkit_daemon([{"cgroup": a, "policy": f"hostile.py:{policy}", "params": params}])
    for i in range(4):
        hog = sandbox.hog(a, 40)
        assert hog.wait_exit(10), f"{policy}: OOM {i + 1} stayed paused"
        events = d.wait_events(i + 1)
        assert len(events) == i + 1, (d.stderr(), brief(events))
        ev = events[-1]
        check_record(ev, a, "kernel")           # no relief that did not happen
        assert [k["by"] for k in ev["killed"]] == ["kernel"], ev
        assert fs.oom_control(a)["oom_kill"] == i + 1
        assert ev["latency_ms"] < 5000, ev       # the deadline, a replaced worker, a loaded machine
        if i < 3:
            [h] = ev["handlers"]
            assert h["verdict"] == "PASS" and CASES[policy] in h["error"], h
            assert h["freed"] == 0 and all((act["result"] or 0) <= 0 for act in h["actions"]), h
            assert ev.get("ejected", []) == ([a] if i == 2 else [])
        else:
            assert ev["handlers"] == []         # ejected: the kernel alone
        assert d.alive(), d.stderr()
        assert not _pidfd.wait_exit(victim_fd, 0), "a process outside the subtree was killed"
        assert fs.oom_control(other)["oom_kill_disable"] is False
        assert fs.limit(a) == 24 * MiB
        assert fs.oom_control(a)["oom_kill_disable"] is True
    assert d.wait_line(f"at {a} after 3 consecutive failures", 1), d.stderr()
    assert "Traceback" not in d.stderr(), d.stderr()
    assert d.stop() == 0, d.stderr()
    assert not any(fs.oom_control(cg)["oom_kill_disable"] for cg in fs.walk(sandbox.root))
