"""The worker's seccomp filter: a small classic-BPF program assembled here and
installed with ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)`` (seccomp(2)).

It refuses, with EPERM, what a policy must never do itself: signal a process
(kill, tkill, tgkill, rt_*sigqueueinfo, pidfd_send_signal, pidfd_open,
process_mrelease), open a file for writing (open/openat with O_WRONLY,
O_RDWR, O_CREAT, O_TRUNC or O_APPEND; creat; openat2, whose flags sit behind
a pointer the filter cannot read), change the file system (unlink, rename,
mkdir, chmod, chown, xattrs, mount ...), start a program or a process
(execve, fork, vfork; clone only for threads), open sockets, BPF, io_uring
(it would bypass the filter), ptrace and writing another process's memory.
Everything else is allowed: reading, the worker's own pipe, memory.

Deny-listing is enough here because the filter is one layer of three: the
worker also runs as an unprivileged uid with no capabilities (when oomkit is
root) and can only *ask* the daemon for a release action.

x86_64 only (the syscall numbers are arch/x86/entry/syscalls/syscall_64.tbl);
on any other architecture :func:`install` returns False and says why, and the
worker runs with the uid drop and rlimits alone.
"""

from __future__ import annotations

import errno
import os
import struct

# linux/filter.h, linux/seccomp.h, linux/audit.h
_LD_W_ABS = 0x20          # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15             # BPF_JMP | BPF_JEQ | BPF_K
_JSET_K = 0x45            # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06             # BPF_RET | BPF_K
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_KILL_PROCESS = 0x80000000
AUDIT_ARCH_X86_64 = 0xC000003E
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

_NR, _ARCH = 0, 4


def _arg_lo(i: int) -> int:
    """Offset of the low 32 bits of syscall argument ``i`` in struct seccomp_data
    (little-endian)."""
    return 16 + 8 * i


# Refused outright (x86_64 numbers).
DENIED = {
    # signals and process killing
    "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
    "pidfd_send_signal": 424, "pidfd_open": 434, "process_mrelease": 448, "pidfd_getfd": 438,
    # other processes
    "ptrace": 101, "process_vm_writev": 311, "process_vm_readv": 310, "kcmp": 312,
    # new programs and processes (clone is checked below: threads only)
    "execve": 59, "execveat": 322, "fork": 57, "vfork": 58,
    # writing the file system
    "creat": 85, "openat2": 437, "truncate": 76, "unlink": 87, "unlinkat": 263,
    "rename": 82, "renameat": 264, "renameat2": 316, "mkdir": 83, "mkdirat": 258, "rmdir": 84,
    "link": 86, "linkat": 265, "symlink": 88, "symlinkat": 266, "mknod": 133, "mknodat": 259,
    "chmod": 90, "fchmod": 91, "fchmodat": 268, "chown": 92, "fchown": 93, "lchown": 94,
    "fchownat": 260, "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197,
    "lremovexattr": 198, "fremovexattr": 199, "utimensat": 280, "utimes": 235, "utime": 132,
    "name_to_handle_at": 303, "open_by_handle_at": 304,
    # mounts, namespaces, the machine
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "setns": 308, "unshare": 272,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "swapon": 167, "swapoff": 168, "reboot": 169,
    "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173,
    # sockets, BPF, io_uring (its requests would not pass this filter), keys, perf
    "socket": 41, "socketpair": 53, "connect": 42, "bpf": 321, "perf_event_open": 298,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "userfaultfd": 323, "fanotify_init": 300, "keyctl": 250, "add_key": 248, "request_key": 249,
    "move_pages": 279, "migrate_pages": 256,
}
#: Refused with ENOSYS, so that libc falls back to a call the filter can judge:
#: clone3's flags are behind a pointer (glibc then uses clone for a thread).
NOT_THERE = {"clone3": 435}
NR_OPEN, NR_OPENAT, NR_CLONE = 2, 257, 56
#: O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND (asm-generic/fcntl.h)
WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000
CLONE_THREAD = 0x00010000


def _ins(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program(deny_errno: int = errno.EPERM) -> bytes:
    """The filter, as ``struct sock_filter[]`` bytes."""
    deny = SECCOMP_RET_ERRNO | deny_errno
    out = [
        _ins(_LD_W_ABS, 0, 0, _ARCH),
        _ins(_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _ins(_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),    # an x32/i386 syscall: no way around
        _ins(_LD_W_ABS, 0, 0, _NR),
    ]
    numbers = sorted(set(DENIED.values()))
    # Layout after the four header instructions:
    #   [denied JEQs ...]
    #   open:   JEQ NR_OPEN   -> load arg1, JSET WRITE -> deny
    #   openat: JEQ NR_OPENAT -> load arg2, JSET WRITE -> deny
    #   clone:  JEQ NR_CLONE  -> load arg0, JSET THREAD -> allow, else deny
    #   ALLOW
    #   DENY
    # (kind, k, jf): jumps to ALLOW/DENY are resolved once the layout is known.
    body: list[tuple[str | int, int, int]] = [("jeq_deny", nr, 0) for nr in numbers]
    body += [("jeq_enosys", nr, 0) for nr in sorted(NOT_THERE.values())]
    body += [
        (_JEQ_K, NR_OPEN, 2), (_LD_W_ABS, _arg_lo(1), 0), ("jset_deny_else_allow", WRITE_FLAGS, 0),
        (_JEQ_K, NR_OPENAT, 2), (_LD_W_ABS, _arg_lo(2), 0), ("jset_deny_else_allow", WRITE_FLAGS, 0),
        (_JEQ_K, NR_CLONE, 2), (_LD_W_ABS, _arg_lo(0), 0), ("jset_allow_else_deny", CLONE_THREAD, 0),
    ]
    allow_at, deny_at, enosys_at = len(body), len(body) + 1, len(body) + 2
    for pos, (kind, k, jf) in enumerate(body):
        to_allow, to_deny = allow_at - pos - 1, deny_at - pos - 1
        if kind == "jeq_deny":
            out.append(_ins(_JEQ_K, to_deny, 0, k))
        elif kind == "jeq_enosys":
            out.append(_ins(_JEQ_K, enosys_at - pos - 1, 0, k))
        elif kind == "jset_deny_else_allow":
            out.append(_ins(_JSET_K, to_deny, to_allow, k))
        elif kind == "jset_allow_else_deny":
            out.append(_ins(_JSET_K, to_allow, to_deny, k))
        else:
            assert isinstance(kind, int)
            out.append(_ins(kind, 0, jf, k))
    out.append(_ins(_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    out.append(_ins(_RET_K, 0, 0, deny))
    out.append(_ins(_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS))
    return b"".join(out)


def install() -> str | None:
    """Set no_new_privs and install the filter on this process (and its future
    threads).  Returns None when installed, else why not (the caller says so)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return f"no_new_privs: {os.strerror(ctypes.get_errno())}"
    if os.uname().machine != "x86_64":
        return f"no seccomp filter for {os.uname().machine} (x86_64 only)"
    code = program()
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        return f"seccomp: {os.strerror(ctypes.get_errno())}"
    return None
