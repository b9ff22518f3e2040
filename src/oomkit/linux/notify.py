"""Wake-ups from the kernel, as non-blocking fds for ``select.epoll``.

- v1: an eventfd registered on ``memory.oom_control`` through
  ``cgroup.event_control`` fires when the memcg (or an ancestor) is under OOM
  and when the cgroup is removed (Documentation/admin-guide/cgroup-v1/memory.rst
  section 10, mm/memcontrol-v1.c).
- PSI triggers on ``memory.pressure`` / ``/proc/pressure/memory`` wake poll()
  with POLLPRI (Documentation/accounting/psi.rst).
- inotify: IN_CREATE on cgroup directories for new cgroups, IN_MODIFY on v2
  ``memory.events``.
- /dev/kmsg for the OOM killer's own report (see :func:`parse.kmsg_oom_kill`).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct

from oomkit.errors import CgroupGone, KernelError
from oomkit.linux import parse
from oomkit.linux._oserror import os_errors, translate

log = logging.getLogger("oomkit")

# --- v1 OOM eventfd --------------------------------------------------------


class OOMEventFD:
    """A registered v1 OOM notification: the eventfd and the memory.oom_control fd.

    The kernel needs the control fd only during registration, but we keep it
    open as long as the eventfd: reading ``under_oom`` through it needs no
    path lookup, and it fails with ENODEV (-> CgroupGone) once the cgroup is
    removed, which tells the two reasons the eventfd fires apart.
    Usable with epoll directly (``fileno()`` is the eventfd).
    """

    def __init__(self, cg: str, efd: int, control_fd: int):
        self.cg, self.fd, self.control_fd = cg, efd, control_fd

    def fileno(self) -> int:
        return self.fd

    def read(self) -> int:
        """How many notifications came since the last read (0 if none: the fd is non-blocking)."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise translate(exc, f"eventfd of {self.cg}", CgroupGone, "read") from exc

    def oom_control(self) -> dict:
        """memory.oom_control re-read through the held fd; CgroupGone once the cgroup is removed."""
        with os_errors(f"memory.oom_control of {self.cg}", CgroupGone, "read"):
            text = os.pread(self.control_fd, 4096, 0).decode()
        return parse.oom_control(text)

    def under_oom(self) -> bool:
        return self.oom_control()["under_oom"]

    def close(self) -> None:
        """Close both fds; closing the eventfd unregisters the event in the kernel."""
        for fd in (self.fd, self.control_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.control_fd = -1

    def __enter__(self) -> OOMEventFD:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def register_oom_eventfd(fs, cg: str) -> OOMEventFD:
    """Register an eventfd for OOM notifications of v1 memcg ``cg`` on CgroupFS ``fs``.

    Writes "<eventfd> <fd of memory.oom_control>" to ``cgroup.event_control``.
    The eventfd fires when ``cg`` or any ancestor is under OOM, and once more
    when ``cg`` is removed (mm/memcontrol-v1.c memcg_event_remove).
    """
    control = fs.open(cg, "memory.oom_control")
    try:
        with os_errors(None, KernelError, "eventfd"):
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    except KernelError:
        os.close(control)
        raise
    try:
        fs.write(cg, "cgroup.event_control", f"{efd} {control}")
    except KernelError:
        os.close(efd)
        os.close(control)
        raise
    return OOMEventFD(cg, efd, control)


# --- PSI triggers ----------------------------------------------------------


def psi_trigger(path: str | os.PathLike, spec: str = "some 150000 2000000") -> int:
    """Open a PSI trigger: "<some|full> <stall us> <window us>"; poll the fd for POLLPRI.

    The trigger lives as long as the fd.  The kernel wants the window between
    500 ms and 10 s and, unless the opener has CAP_SYS_RESOURCE, a multiple
    of 2 s (kernel/sched/psi.c psi_trigger_create); hence the default.  A
    cgroup's ``memory.pressure`` and ``/proc/pressure/memory`` both take
    triggers.  The spec is written with its NUL: psi_write() overwrites the
    last byte written with one.
    """
    path = str(path)
    fd = _open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, spec.encode() + b"\0")
    except OSError as exc:
        os.close(fd)
        err = translate(exc, path, CgroupGone, f"PSI trigger {spec!r} on")
        if exc.errno == errno.EINVAL:
            err.args = (err.args[0] + " (window 500000..10000000 us; without CAP_SYS_RESOURCE"
                        " a multiple of 2000000)",)
        raise err from exc
    return fd


def _open(path: str, flags: int) -> int:
    with os_errors(path, CgroupGone, "open"):
        return os.open(path, flags)


# --- inotify -----------------------------------------------------------------

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_Q_OVERFLOW = 0x00004000     # the queue overflowed: events were lost (inotify(7))
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


class Inotify:
    """A non-blocking inotify fd (inotify(7)) through libc, for epoll.

    Watch a cgroup directory with IN_CREATE|IN_DELETE to see child cgroups
    come and go; watch a v2 ``memory.events`` with IN_MODIFY (cgroup-v2.rst:
    "a value change in this file generates a file modified event").
    """

    def __init__(self):
        from oomkit.linux.pidfd import _libc_syscall  # one lazy ctypes handle
        self._libc = _libc_syscall()
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise self._error("inotify_init1", None)
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def add_watch(self, path: str | os.PathLike, mask: int) -> int:
        """Watch ``path``; returns the watch descriptor (wd) events will carry."""
        import ctypes
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            raise self._error("inotify_add_watch", str(path))
        return wd

    def rm_watch(self, wd: int) -> None:
        if self._libc.inotify_rm_watch(self.fd, wd) < 0:
            import ctypes
            err = ctypes.get_errno()
            if err != errno.EINVAL:  # EINVAL: the kernel already dropped it (IN_IGNORED)
                raise self._error("inotify_rm_watch", None)

    def read(self) -> list[tuple[int, int, int, str]]:
        """All pending events as (wd, mask, cookie, name); [] if none."""
        try:
            buf = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return []
        except OSError as exc:
            raise translate(exc, "inotify", KernelError, "read") from exc
        return parse.inotify_events(buf)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _error(call: str, path: str | None) -> KernelError:
        import ctypes
        err = ctypes.get_errno()
        return translate(OSError(err, os.strerror(err)), path, CgroupGone, call)


# --- /dev/kmsg ---------------------------------------------------------------


_NETLINK_CONNECTOR = 11        # include/uapi/linux/netlink.h
_CN_IDX_PROC = 1               # include/uapi/linux/connector.h
_CN_VAL_PROC = 1
_PROC_CN_MCAST_LISTEN = 1      # include/uapi/linux/cn_proc.h
_PROC_CN_MCAST_IGNORE = 2


class ProcEvents:
    """The kernel's proc connector: a wake-up for every new process on the
    machine (drivers/connector/cn_proc.c; CONFIG_PROC_EVENTS, CAP_NET_ADMIN).
    :meth:`forks` reads what is queued, as (parent tgid, child tgid)."""

    def __init__(self) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC, _NETLINK_CONNECTOR)
        except OSError as exc:
            raise translate(exc, "netlink connector", what="open the proc connector") from exc
        try:
            sock.bind((0, _CN_IDX_PROC))
            sock.send(self._op(_PROC_CN_MCAST_LISTEN))
        except OSError as exc:
            sock.close()
            raise translate(exc, "netlink connector", what="listen to the proc connector") from exc
        self._sock = sock

    @staticmethod
    def _op(op: int) -> bytes:
        payload = struct.pack("=I", op)
        cn = struct.pack("=IIIIHH", _CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(payload), 0) + payload
        return struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, os.getpid()) + cn   # NLMSG_DONE

    def fileno(self) -> int:
        return self._sock.fileno()

    def forks(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        while True:
            try:
                buf = self._sock.recv(65536)
            except BlockingIOError:
                return out
            except OSError as exc:
                # ENOBUFS: the socket overflowed and events were lost; the caller's
                # timer still looks, so go on with what was read.
                log.debug("oomkit: proc connector read failed (%s): events lost", exc)
                return out
            out += parse.proc_forks(buf)

    def close(self) -> None:
        try:
            self._sock.send(self._op(_PROC_CN_MCAST_IGNORE))
        except OSError as exc:
            log.debug("oomkit: proc connector: unsubscribe failed (%s); closing anyway", exc)
        self._sock.close()


def open_kmsg(path: str = "/dev/kmsg", from_end: bool = True) -> int:
    """A non-blocking /dev/kmsg fd, positioned after the last record by default."""
    with os_errors(path, KernelError, "open"):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if from_end:
            os.lseek(fd, 0, os.SEEK_END)
    return fd


def read_kmsg(fd: int, limit: int = 1000) -> list[str]:
    """The records that are ready (one read(2) returns one record).

    EPIPE means records were overwritten before we read them; the next read
    goes on from the oldest one left (Documentation/ABI/testing/dev-kmsg).
    """
    out: list[str] = []
    while len(out) < limit:
        try:
            out.append(os.read(fd, 8192).decode("utf-8", "replace"))
        except BlockingIOError:
            break
        except BrokenPipeError:
            log.debug("oomkit: /dev/kmsg records overwritten before we read them: reading on "
                      "from the oldest left")
            continue
        except OSError as exc:
            raise translate(exc, "/dev/kmsg", KernelError, "read") from exc
    return out
