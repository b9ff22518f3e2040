"""A live worker kept off its CPU is not failed for it (issue 11: the "stalls"
under load).  The kernel adds a run-queue wait to /proc/PID/schedstat only
when the task next runs, so at the deadline a worker still waiting shows
none of it; the runner looks at its state instead (R, and less than its
deadline of CPU used).  Reproduced here without a loaded machine: the worker
pinned to one CPU, and a short SCHED_FIFO busy loop (ours, ended by time, by
RLIMIT_RTTIME and by pidfd) taking that CPU once the policy has started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers.procs import end_by_pidfd
from oomkit.engine.attachment import Recipe
from oomkit.linux import pidfd as _pidfd
from oomkit.sandbox.runner import Confinement, Worker, WorkerRunner, wall_allowance

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or len(os.sched_getaffinity(0)) < 2,
                                reason="needs root (SCHED_FIFO, pinning another uid's worker) and 2 CPUs")

POLICY = '''
import os
from oomkit import OOMPolicy, Verdict

class Busy(OOMPolicy):
    """handle_cgroup_online computes (state R) until the file it is given exists."""
    def handle_cgroup_online(self, path):
        while not os.path.exists(path):
            pass
        return None

    def handle_out_of_memory(self, oc, k):
        return Verdict.PASS
'''

# Ours, on the worker's CPU at SCHED_FIFO: told the worker's CPU time before the
# call, it polls it (sleeping 0.2 ms between looks: a real-time task wakes at
# once, whatever else the machine runs) until the worker has run, then makes
# the go file and spins for 0.25 s of wall time.  RLIMIT_RTTIME kills it past
# 0.6 s of RT CPU without a blocking call whatever happens (sched(7)).
HOG = ("import resource, sys, time\n"
       "resource.setrlimit(resource.RLIMIT_RTTIME, (600000, 600000))\n"
       "def ran():\n"
       "    with open(f'/proc/{sys.argv[1]}/schedstat') as f:\n"
       "        return int(f.read().split()[0])\n"
       "print('ready', flush=True)\n"
       "before = int(input())\n"
       "give_up = time.monotonic() + 20\n"
       "while ran() == before and time.monotonic() < give_up:\n"
       "    time.sleep(0.0002)\n"
       "open(sys.argv[2], 'w').close()\n"
       "end = time.monotonic() + 0.25\n"
       "while time.monotonic() < end:\n"
       "    pass\n")


def ran_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def test_a_worker_on_a_run_queue_at_its_deadline_is_given_its_time(tmp_path):
    (tmp_path / "busy.py").write_text(POLICY)
    seen = Path(tempfile.mkdtemp(prefix="oomkit-test-"))   # /tmp's: the worker (nobody) can look
    seen.chmod(0o755)
    go = seen / "go"
    cpus = sorted(os.sched_getaffinity(0))
    mine = os.sched_getaffinity(0)
    runner = WorkerRunner(0.100, clock="wall", io_cap=1.0, confinement=Confinement())
    worker = Worker(Recipe("busy.py:Busy", {}, str(tmp_path)), runner.confinement)
    worker.wait_ready(time.monotonic() + 30)
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(worker.pid), str(go)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    hog_fd = _pidfd.open_pidfd(hog.pid)
    try:
        assert hog.stdout.readline().strip() == "ready"
        os.sched_setaffinity(worker.pid, {cpus[0]})
        os.sched_setaffinity(hog.pid, {cpus[0]})
        os.sched_setaffinity(0, set(cpus[1:]))
        os.sched_setscheduler(hog.pid, os.SCHED_FIFO, os.sched_param(1))
        hog.stdin.write(f"{ran_ns(worker.pid)}\n")
        hog.stdin.flush()
        started = time.monotonic()
        outcome, worker = runner.online(worker, str(go))
        took = time.monotonic() - started
        # The hog held the worker's CPU for 250 ms of the call, past its 100 ms
        # deadline; the policy used well under a millisecond of CPU before it.
        assert go.exists() and took > 0.2, took
        assert not outcome.timed_out and outcome.error is None, outcome
    finally:
        os.sched_setaffinity(0, mine)
        end_by_pidfd(hog_fd, 5)
        os.close(hog_fd)
        hog.wait(timeout=5)
        runner.stop(worker)
        shutil.rmtree(seen)


def test_the_wall_allowance_counts_a_wait_still_on_the_run_queue():
    ms = 0.001
    # Sleeping (not runnable) at its deadline, with no wait counted: it had its time.
    assert wall_allowance(50 * ms, 1.0, 60 * ms, 0, 5 * ms, 0, runnable=False) == pytest.approx(50 * ms)
    # Runnable with 5 ms of CPU used: look again shortly, the deadline not yet spent.
    assert wall_allowance(50 * ms, 1.0, 300 * ms, 0, 5 * ms, 0, runnable=True) == pytest.approx(305 * ms)
    # Runnable but it has used its 50 ms of CPU: a runaway, timed out.
    assert wall_allowance(50 * ms, 1.0, 300 * ms, 0, 50 * ms, 0, runnable=True) == pytest.approx(50 * ms)
    # Waits and oomkit's own time counted, up to io_cap in all.
    assert wall_allowance(50 * ms, 1.0, 60 * ms, 10 * ms, 5 * ms, 30 * ms, runnable=False) == pytest.approx(90 * ms)
    assert wall_allowance(50 * ms, 1.0, 2.0, 0, 5 * ms, 0, runnable=True) == pytest.approx(1.05)
    # Not run at all since the call: all of it is the machine's (up to io_cap).
    assert wall_allowance(50 * ms, 1.0, 400 * ms, 0, 0, 0, runnable=False) == pytest.approx(450 * ms)
