"""Killing without pid-reuse races: pidfd_open, pidfd_send_signal, process_mrelease.

A pidfd names one process for its whole life: once open, a signal sent
through it can never reach a later process that got the same pid
(pidfd_open(2), Linux 5.3+).  process_mrelease(2) (Linux 5.15+) then frees a
killed process's memory at once, instead of waiting for its exit path.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal

from oomkit.errors import KernelError, TaskGone
from oomkit.linux._oserror import os_errors, translate

log = logging.getLogger("oomkit")

# New syscalls share one number on every architecture since Linux 5.1
# (include/uapi/asm-generic/unistd.h), except alpha (+110) and the mips ABIs,
# whose tables are offset by 4000/5000/6000.
_NR_PROCESS_MRELEASE = {"alpha": 558}.get(os.uname().machine, 448)

_libc = None


def _libc_syscall():
    # ctypes is imported on first use only: it costs ~1 MiB of the daemon's RSS
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def open_pidfd(pid: int) -> int:
    """A close-on-exec pidfd for ``pid``; TaskGone if there is no such process."""
    with os_errors(f"pid {pid}", TaskGone, "pidfd_open"):
        return os.pidfd_open(pid)


def send_signal(pidfd: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process behind ``pidfd``; TaskGone if it already exited (ESRCH)."""
    with os_errors(f"pidfd {pidfd}", TaskGone, "pidfd_send_signal"):
        signal.pidfd_send_signal(pidfd, sig)


def process_mrelease(pidfd: int) -> bool:
    """Reap the memory of a process that is being killed, now, in our context.

    True when the memory is released: the kernel reaped it, or the process
    already exited and its mm is gone (ESRCH).  False when the kernel lacks
    the syscall (ENOSYS, before 5.15).  The process must already be dying
    (SIGKILL sent): otherwise the kernel says EINVAL, a KernelError.
    """
    import ctypes
    res = _libc_syscall().syscall(_NR_PROCESS_MRELEASE, ctypes.c_int(pidfd), ctypes.c_uint(0))
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        return False
    if err == errno.ESRCH:
        return True
    raise translate(OSError(err, os.strerror(err)), f"pidfd {pidfd}", TaskGone, "process_mrelease")


def wait_exit(pidfd: int, timeout: float | None) -> bool:
    """Wait until the process exits (a pidfd polls readable then); True if it did."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else int(timeout * 1000)))


def start_ticks(pid: int, proc_root: str = "/proc") -> int:
    """The process's start time in clock ticks after boot (/proc/PID/stat field 22)."""
    from oomkit.linux.procfs import ProcFS
    return ProcFS(proc_root).stat(pid)["starttime"]


def kill_pid_safely(pid: int, expect_start_time: int, *, proc_root: str = "/proc",
                    mrelease: bool = True) -> bool:
    """SIGKILL ``pid`` only if it is still the process the caller looked at.

    True when our SIGKILL was delivered; see :func:`kill_keeping_pidfd`.
    """
    fd = kill_keeping_pidfd(pid, expect_start_time, proc_root=proc_root, mrelease=mrelease)
    if fd is None:
        return False
    os.close(fd)
    return True


def kill_keeping_pidfd(pid: int, expect_start_time: int, *, proc_root: str = "/proc",
                       mrelease: bool = True) -> int | None:
    """SIGKILL ``pid`` only if it is still the process the caller looked at, and
    return its pidfd (the caller closes it; it polls readable once the victim
    has exited), or None when nothing was killed.

    ``expect_start_time`` is that process's starttime in clock ticks, as
    :meth:`ProcFS.stat` gives it.  The pidfd is opened *before* the start
    time is re-read, so a match proves the pidfd names the caller's process,
    and the signal cannot hit a process that reused the pid.  Then
    process_mrelease frees its memory at once (where the kernel has it).

    None when the process had already exited (a zombie included) or the pid
    now belongs to another process.  Never raises TaskGone; NotPermitted and
    other KernelErrors do propagate.
    """
    try:
        pidfd = open_pidfd(pid)
    except TaskGone:        # exited already: None, "nothing was killed" (the docstring's contract)
        return None
    try:
        killed = _kill_if_same(pidfd, pid, expect_start_time, proc_root, mrelease)
    except BaseException:
        os.close(pidfd)
        raise
    if not killed:
        os.close(pidfd)
        return None
    return pidfd


def _kill_if_same(pidfd: int, pid: int, expect_start_time: int, proc_root: str,
                  mrelease: bool) -> bool:
    try:
        if start_ticks(pid, proc_root) != expect_start_time:
            return False
        if wait_exit(pidfd, 0):
            return False  # exited already (a zombie): the signal would do nothing
        send_signal(pidfd, signal.SIGKILL)
    except TaskGone:        # exited meanwhile: not killed by us, what False says
        return False
    if mrelease:
        try:
            process_mrelease(pidfd)
        except KernelError as exc:
            # the kill is done; the exit path frees the memory a little later
            log.debug("oomkit: process_mrelease of pid %d not done (%s): its exit frees it", pid, exc)
    return True
