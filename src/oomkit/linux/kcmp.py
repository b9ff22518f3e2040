"""Which processes share an address space: kcmp(2) with ``KCMP_VM``.

The kernel's OOM killer kills every process that shares the victim's mm
(``__oom_kill_process()`` in mm/oom_kill.c: ``clone(CLONE_VM)`` without
``CLONE_THREAD``, a ``vfork()`` child), because the mm is freed only when its
last user exits.  Nothing in ``/proc`` names an mm; ``kcmp(pid1, pid2,
KCMP_VM, 0, 0)`` (Linux 3.5+, ``CONFIG_KCMP``; root, or ptrace access to
both) compares two processes' mms: 0 when equal, else 1 or 2 by an order
that is the same for every call (kernel/kcmp.c ``kcmp_ptr()``: pointers
obfuscated by a boot-time key, but ordered).  That order lets the dying be
sorted once and every other process be found by bisection: ``O((d + n) log
d)`` calls for ``d`` dying processes among ``n``, not ``d * n``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Iterable

log = logging.getLogger("oomkit")

KCMP_VM = 1
# kcmp predates the unified syscall table: its number differs per architecture.
_NR_KCMP = {"x86_64": 312, "i386": 349, "i686": 349, "aarch64": 272, "riscv64": 272,
            "loongarch64": 272, "armv7l": 378, "armv6l": 378, "ppc64le": 354, "ppc64": 354,
            "s390x": 343}.get(os.uname().machine)

_libc = None
_unavailable: str | None = None if _NR_KCMP is not None else f"kcmp: unknown syscall number on {os.uname().machine}"


class _Gone(Exception):
    """One of the two processes exited (it shares nothing any more), or we may
    not look at it (``EPERM``: ptrace access denied, e.g. another container's
    init): it is not a sharer we can find."""


def _kcmp_vm(pid1: int, pid2: int) -> int:
    """0: same mm; 1: pid1's sorts first; 2: pid2's. _Gone if either exited;
    OSError for anything else."""
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
    # Plain ints (ctypes passes them as C ints, widened to a register; kcmp ignores
    # idx1/idx2 for KCMP_VM): one call per task of an OOM, ~1.4 us instead of ~2.3
    # with a ctypes object built per argument.
    res = _libc.syscall(_NR_KCMP, pid1, pid2, KCMP_VM, 0, 0)
    if res >= 0:
        return res
    import ctypes
    err = ctypes.get_errno()
    if err in (errno.ESRCH, errno.EPERM, errno.EACCES):
        raise _Gone()
    raise OSError(err, os.strerror(err))


def available() -> str | None:
    """None if kcmp works here, else why not (said once in the log)."""
    return _unavailable


def _disable(exc: OSError) -> None:
    global _unavailable
    _unavailable = f"kcmp(KCMP_VM) failed: {exc.strerror}: processes sharing a victim's mm are not looked for"
    log.warning("oomkit: %s", _unavailable)


def sharers(dying: Iterable[int], others: Iterable[int]) -> set[int]:
    """The pids of ``others`` that share an mm with one of ``dying``.

    A process that exits meanwhile is left out (and so is a dying one that
    did: its mm is on its way), and so is one kcmp may not look at
    (``EPERM``).  Where kcmp is missing (``ENOSYS``, no ``CONFIG_KCMP``), the
    answer is empty and the log says so once: the kill then is the victim's
    alone.
    """
    if _unavailable is not None:
        return set()
    try:
        return _sharers(list(dict.fromkeys(dying)), list(others))
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EINVAL):
            _disable(exc)
            return set()
        raise


def _sharers(dying: list[int], others: list[int]) -> set[int]:
    alive = []
    for pid in dying:      # drop the ones gone already (a compare with them raises _Gone)
        try:
            _kcmp_vm(pid, pid)
            alive.append(pid)
        except _Gone:
            log.debug("oomkit: kcmp: pid %d exited (its mm is going) or is not ours to look at", pid)
    if not alive:
        return set()

    def order(a: int, b: int) -> int:
        r = _kcmp_vm(a, b)
        return 0 if r == 0 else (-1 if r == 1 else 1)

    if len(alive) > 1:
        try:
            alive.sort(key=functools.cmp_to_key(order))
        except _Gone:       # one of them exited meanwhile: again, without it
            return _sharers(alive, others)
    found = set()
    for pid in others:
        lo, hi = 0, len(alive)
        try:
            while lo < hi:
                mid = (lo + hi) // 2
                r = _kcmp_vm(pid, alive[mid])
                if r == 0:
                    found.add(pid)
                    break
                if r == 1:          # pid's mm sorts before alive[mid]'s
                    hi = mid
                else:
                    lo = mid + 1
        except _Gone:
            log.debug("oomkit: kcmp: pid %d or a dying one exited meanwhile, or is not ours", pid)
    return found
