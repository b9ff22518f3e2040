"""What the v1 event source changed survives the death of the daemon *and*
its watchdog (``systemctl kill -s KILL``, or the final SIGKILL after
``TimeoutStopSec``, takes both): ``oomkit restore`` (the unit's
ExecStopPost) or the next start puts back the true originals, and the
admin's own ``oom_kill_disable 1`` is never taken nor clobbered (issue 10,
items 3 and 7).

The "daemon" here is the real V1Events + Restorer in a process of its own,
on this test's memcgs, with a hub that only records what it is given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import oomkit
from helpers.procs import end_by_pidfd, signal_pidfd
from oomkit.linux import pidfd as _pidfd

SRC = str(Path(oomkit.__file__).resolve().parents[1])

DAEMON = textwrap.dedent("""
    import json, logging, signal, sys, time, types
    sys.path.insert(0, {src!r})
    from oomkit.backends.cgroup_v1 import V1Events
    from oomkit.daemon.restore import Restorer
    from oomkit.linux.cgroupfs import CgroupFS
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")

    class Hub:
        def register(self, fd, callback, *args, events=None): pass
        def unregister(self, fd, close=True): pass

    r = Restorer({state!r}, 30.0)
    r.start()
    ev = V1Events(types.SimpleNamespace(fs=CgroupFS({mount!r}, "v1")), Hub(), r)
    ev.sync({paths!r})
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print(json.dumps({{"watchdog": r.watchdog_pid, "held": sorted(ev.held)}}), flush=True)
    while not stop:
        r.heartbeat()
        time.sleep(0.05)
    ev.close()
    r.close()
""")


class Daemon:
    def __init__(self, tmp_path: Path, sandbox, state: Path, paths: list[str]):
        code = DAEMON.format(src=SRC, state=str(state), mount=str(sandbox.fs.mount), paths=paths)
        self.err = open(tmp_path / f"daemon-{len(list(tmp_path.glob('daemon-*')))}.err", "w+")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                     stderr=self.err, text=True)
        self.pidfd = _pidfd.open_pidfd(self.proc.pid)
        line = self.proc.stdout.readline()
        assert line, self.stderr()
        info = json.loads(line)
        self.held = info["held"]
        self.watchdog_pidfd = _pidfd.open_pidfd(info["watchdog"])

    def stderr(self) -> str:
        self.err.flush()
        return Path(self.err.name).read_text()

    def kill_both(self) -> None:
        """What systemd's SIGKILL to the unit's cgroup does, in the worst order: the
        watchdog stopped first, so it cannot hand anything back in between."""
        signal_pidfd(self.watchdog_pidfd, signal.SIGSTOP)
        signal_pidfd(self.pidfd, signal.SIGKILL)
        signal_pidfd(self.watchdog_pidfd, signal.SIGKILL)
        assert _pidfd.wait_exit(self.pidfd, 10) and _pidfd.wait_exit(self.watchdog_pidfd, 10)
        self.proc.wait(10)

    def stop(self) -> int | None:
        end_by_pidfd(self.pidfd, 10)
        end_by_pidfd(self.watchdog_pidfd, 5, sig=None)
        rc = self.proc.wait(10)
        for fd in (self.pidfd, self.watchdog_pidfd):
            os.close(fd)
        self.pidfd = self.watchdog_pidfd = -1
        self.err.close()
        return rc

    def cleanup(self) -> None:
        if self.pidfd >= 0:
            for fd in (self.pidfd, self.watchdog_pidfd):
                signal_pidfd(fd, signal.SIGKILL)
            self.stop()


def disabled(sandbox, paths) -> dict[str, bool]:
    return {p: sandbox.fs.oom_control(p)["oom_kill_disable"] for p in paths}


def setup(sandbox):
    a = sandbox.cg("a", limit=64 << 20)
    b = sandbox.cg("a/b")
    admin = sandbox.cg("admin")
    sandbox.fs.set_oom_kill_disable(admin, True)        # the admin's own: never ours
    return a, b, admin


def test_oomkit_restore_after_daemon_and_watchdog_are_killed_together(sandbox, tmp_path):
    a, b, admin = setup(sandbox)
    state = tmp_path / "state"
    d = Daemon(tmp_path, sandbox, state, [a, b, admin])
    try:
        assert d.held == [a, b]
        assert "admin or another daemon: left alone" in d.stderr() and admin in d.stderr()
        d.kill_both()
        # What was broken: nobody is left to put these back; the next OOM would hang.
        assert disabled(sandbox, [a, b, admin]) == {a: True, b: True, admin: True}
        p = subprocess.run([sys.executable, "-m", "oomkit.cli", "restore", "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": SRC})
        assert p.returncode == 0, p.stderr
        assert disabled(sandbox, [a, b, admin]) == {a: False, b: False, admin: True}
        assert p.stdout.count("restored: ") == 2, p.stdout
    finally:
        d.cleanup()


def test_a_restarted_daemon_restores_the_true_originals(sandbox, tmp_path):
    a, b, admin = setup(sandbox)
    state = tmp_path / "state"
    first = Daemon(tmp_path, sandbox, state, [a, b, admin])
    try:
        first.kill_both()
    finally:
        first.cleanup()
    second = Daemon(tmp_path, sandbox, state, [a, b, admin])
    try:
        # It found a and b at 1, but knew from the state file that the 1 was ours:
        # put back, taken again; the admin's 1 is still not taken.
        assert second.held == [a, b], second.stderr()
        assert second.stderr().count("left by a previous run: restored: ") == 2, second.stderr()
        assert "killed the previous watchdog" not in second.stderr()   # it was dead already
        assert second.stop() == 0
        assert disabled(sandbox, [a, b, admin]) == {a: False, b: False, admin: True}
        assert not (state / "state").exists()
    finally:
        second.cleanup()
