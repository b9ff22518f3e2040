"""pidfd kills on our own child processes, inotify/eventfd plumbing on temp dirs, error mapping.

No cgroups are touched here: the children are plain ``sleep``-like
processes this test starts, killed only through their pidfd.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys

import pytest

from oomkit.errors import CgroupGone, KernelError, NotPermitted, TaskGone
from oomkit.linux import notify, pidfd
from oomkit.linux._oserror import translate
from oomkit.linux.cgroupfs import CgroupFS
from oomkit.linux.procfs import ProcFS


@pytest.fixture
def child():
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    fd = pidfd.open_pidfd(p.pid)
    try:
        yield p
    finally:
        try:
            pidfd.send_signal(fd)
        except TaskGone:
            pass
        os.close(fd)
        p.stdin.close()
        p.wait(10)


# --- errors ------------------------------------------------------------------

@pytest.mark.parametrize("code, gone, cls", [
    (errno.ENOENT, CgroupGone, CgroupGone),
    (errno.ENODEV, CgroupGone, CgroupGone),
    (errno.ENOENT, TaskGone, TaskGone),
    (errno.ESRCH, CgroupGone, TaskGone),
    (errno.EPERM, CgroupGone, NotPermitted),
    (errno.EACCES, TaskGone, NotPermitted),
    (errno.EBUSY, CgroupGone, KernelError),
    (errno.ENOENT, KernelError, KernelError),
])
def test_translate(code, gone, cls):
    err = translate(OSError(code, os.strerror(code)), "/x/y", gone, "read")
    assert type(err) is cls and err.errno == code and err.path == "/x/y"
    assert "/x/y" in str(err)


# --- pidfd -------------------------------------------------------------------

def test_open_pidfd_of_no_process():
    with pytest.raises(TaskGone):
        pidfd.open_pidfd(2**22 + 12345)  # above pid_max's ceiling


def test_kill_pid_safely(child):
    start = ProcFS().stat(child.pid)["starttime"]
    assert pidfd.kill_pid_safely(child.pid, start + 1) is False   # "reused pid": untouched
    assert child.poll() is None
    assert pidfd.kill_pid_safely(child.pid, start) is True
    assert child.wait(5) == -9
    assert pidfd.kill_pid_safely(child.pid, start) is False       # reaped: gone


def test_kill_pid_safely_zombie_is_false(child):
    start = ProcFS().stat(child.pid)["starttime"]
    fd = pidfd.open_pidfd(child.pid)
    try:
        pidfd.send_signal(fd)
        assert pidfd.wait_exit(fd, 5)
        assert ProcFS().stat(child.pid)["state"] == "Z"
        # the kernel accepts a signal to a zombie without error, which is why
        # kill_pid_safely polls the pidfd before it signals
        pidfd.send_signal(fd, 0)
        assert pidfd.kill_pid_safely(child.pid, start) is False
    finally:
        os.close(fd)


def test_process_mrelease_needs_a_dying_process(child):
    fd = pidfd.open_pidfd(child.pid)
    try:
        with pytest.raises(KernelError) as info:
            pidfd.process_mrelease(fd)
        assert info.value.errno == errno.EINVAL
        pidfd.send_signal(fd)
        assert pidfd.process_mrelease(fd) is True
        assert pidfd.wait_exit(fd, 5)
    finally:
        os.close(fd)


def test_wait_exit_times_out_on_live_process(child):
    fd = pidfd.open_pidfd(child.pid)
    try:
        assert pidfd.wait_exit(fd, 0.01) is False
    finally:
        os.close(fd)


# --- notify plumbing ---------------------------------------------------------

def test_register_oom_eventfd_writes_event_control(tmp_path):
    cg = tmp_path / "a"
    cg.mkdir()
    (cg / "memory.oom_control").write_text("oom_kill_disable 1\nunder_oom 1\noom_kill 0\n")
    (cg / "cgroup.event_control").write_text("")
    fs = CgroupFS(tmp_path, "v1")
    with notify.register_oom_eventfd(fs, "/a") as ev:
        assert (cg / "cgroup.event_control").read_text() == f"{ev.fd} {ev.control_fd}"
        assert ev.read() == 0
        os.eventfd_write(ev.fd, 1)
        assert ev.read() == 1
        assert ev.under_oom() is True
    assert ev.fd == -1


def test_register_oom_eventfd_on_missing_cgroup(tmp_path):
    with pytest.raises(CgroupGone):
        notify.register_oom_eventfd(CgroupFS(tmp_path, "v1"), "/nope")


def test_inotify_create_and_modify(tmp_path):
    with notify.Inotify() as ino:
        ep = select.epoll()
        ep.register(ino, select.EPOLLIN)
        wd = ino.add_watch(tmp_path, notify.IN_CREATE | notify.IN_ONLYDIR)
        assert ino.read() == []
        (tmp_path / "job1").mkdir()
        assert ep.poll(5)
        assert ino.read() == [(wd, notify.IN_CREATE | notify.IN_ISDIR, 0, "job1")]
        events = tmp_path / "memory.events"
        events.write_text("oom 0\n")
        wd2 = ino.add_watch(events, notify.IN_MODIFY)
        events.write_text("oom 1\n")
        assert ep.poll(5)
        assert (wd2, notify.IN_MODIFY, 0, "") in ino.read()
        ino.rm_watch(wd2)
        ep.close()
    with pytest.raises(CgroupGone):
        notify.Inotify().add_watch(tmp_path / "nope", notify.IN_CREATE)


def test_psi_trigger_on_missing_file(tmp_path):
    with pytest.raises(CgroupGone):
        notify.psi_trigger(tmp_path / "memory.pressure")
