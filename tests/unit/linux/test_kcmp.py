"""kcmp(KCMP_VM) finds the processes sharing an address space, on this
machine's kernel: a hog and the process it clone()d with CLONE_VM (no
CLONE_THREAD), among unrelated ones.  No root needed: the processes are ours."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from oomkit.linux import kcmp, pidfd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for helpers
from helpers.procs import SHARED_HOG, Proc, hog_argv  # noqa: E402

pytestmark = pytest.mark.skipif(kcmp.available() is not None, reason=str(kcmp.available()))


@pytest.fixture
def shared():
    """(hog pid, sharer pid); both killed afterwards through pidfds."""
    hog = Proc(hog_argv(1, script=SHARED_HOG))
    sharer_fd = None
    try:
        assert hog.wait_line("ready", 30)
        hog.go()
        line = hog.read_line(30) or ""
        assert line.startswith("sharer "), line
        sharer = int(line.split()[1])
        sharer_fd = pidfd.open_pidfd(sharer)
        yield hog.pid, sharer
    finally:
        if sharer_fd is not None:
            try:
                pidfd.send_signal(sharer_fd, signal.SIGKILL)
            except Exception:       # noqa: BLE001 (already gone)
                pass
            os.close(sharer_fd)
        hog.reap()


def test_kcmp_finds_the_process_sharing_the_mm(shared):
    hog, sharer = shared
    other = Proc([sys.executable, "-c", "import sys; sys.stdin.readline()"])
    try:
        assert kcmp.sharers([hog], [sharer, other.pid, os.getpid()]) == {sharer}
        assert kcmp.sharers([sharer], [hog, other.pid]) == {hog}
        assert kcmp.sharers([other.pid], [hog, sharer]) == set()
        # several dying processes at once: sorted by kcmp's order, then bisected
        assert kcmp.sharers([other.pid, os.getpid(), hog], [sharer, 1]) == {sharer}
    finally:
        other.reap()


def test_a_process_gone_meanwhile_shares_nothing(shared):
    hog, sharer = shared
    gone = Proc([sys.executable, "-c", "pass"])
    gone.wait_exit(30)
    gone.popen.wait(30)         # reaped: its pid names nothing now
    assert kcmp.sharers([hog], [gone.pid, sharer]) == {sharer}
    assert kcmp.sharers([gone.pid], [hog, sharer]) == set()
    gone.reap()
