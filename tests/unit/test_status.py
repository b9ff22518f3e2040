"""``oomkit status`` without a daemon, and the counts the daemon keeps (literals)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

from oomkit.context import Level
from oomkit.daemon.status import StatusBook
from oomkit.schema import HandlerRecord, Killed, OOMRecord, ResolvedBy


def oomkit_status(state_dir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oomkit.cli", "status", "--state-dir", str(state_dir), *args],
                          capture_output=True, text=True, timeout=60)


def test_no_state_dir_means_no_daemon(tmp_path):
    r = oomkit_status(tmp_path / "none")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"oomkit: no oomkit daemon is running (no state dir {tmp_path / 'none'})\n"


def test_status_refuses_while_another_lock_holder_has_not_written(tmp_path):
    """A lock held by someone else's pid with no status file: said, exit 1, no traceback."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        r = oomkit_status(state)
        assert r.returncode == 1 and "pid 4242" in r.stderr and "has not written" in r.stderr, r.stderr
    finally:
        os.close(fd)
    r = oomkit_status(state)
    assert r.returncode == 1 and "nobody holds" in r.stderr


def test_book_counts_per_attachment():
    book = StatusBook()
    r = OOMRecord.new(1.0, Level.MEMCG, "/a/x")
    h1, h2 = HandlerRecord.new("/a/x", "largest-task"), HandlerRecord.new("/a", "settle")
    h2.error = "timeout"
    r.handlers = [h1, h2]
    r.killed = [Killed(name="hog", pid=7, cgroup="/a/x", by="policy:/a/x"),
                Killed(name="k", pid=8, cgroup="/a/x", by="kernel")]
    r.resolved_by = ResolvedBy.POLICY
    book.record(r)
    r2 = OOMRecord.new(2.0, Level.MEMCG, "/a/y")
    r2.handlers = [HandlerRecord.new("/a", "settle")]
    r2.resolved_by = ResolvedBy.KERNEL
    book.record(r2)
    x, a = book.counts("/a/x"), book.counts("/a")
    assert (x.ooms, x.resolved, x.kills, x.failures) == (1, {"policy": 1}, 1, 0)
    assert (a.ooms, a.resolved, a.kills, a.failures) == (2, {"policy": 1, "kernel": 1}, 0, 1)
    assert book.ooms == 2 and book.ooms_by == {"memcg/policy": 1, "memcg/kernel": 1}
    assert book.kills_by == {"policy:/a/x": 1, "kernel": 1}
    assert [o.memcg for o in book.last] == ["/a/x", "/a/y"]
    assert book.last[0].policies == ["largest-task@/a/x", "settle@/a"]
