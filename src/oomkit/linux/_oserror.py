"""The one place where ``OSError`` becomes an :mod:`oomkit.errors` exception."""

from __future__ import annotations

import contextlib
import errno as E
from collections.abc import Iterator

from oomkit.errors import KernelError, NotPermitted, TaskGone

# ENOENT means "gone" for a cgroup file or /proc/PID; ENODEV is what kernfs
# returns for a file whose cgroup was removed while we held it open
# (fs/kernfs/file.c: kernfs_get_active fails -> -ENODEV); ESRCH is what /proc
# and the pidfd calls return for an exited task.
_GONE = {E.ENOENT, E.ENODEV, E.ESRCH}
_DENIED = {E.EPERM, E.EACCES}


def translate(exc: OSError, path: str | None, gone: type[KernelError] = KernelError,
              what: str = "") -> KernelError:
    """The oomkit exception for ``exc``; ``gone`` is the class for ENOENT/ENODEV/ESRCH."""
    code = exc.errno
    where = path or (exc.filename and str(exc.filename)) or ""
    text = f"{what or 'kernel call'} failed: {exc.strerror or exc}" + (f" ({where})" if where else "")
    if code == E.ESRCH:
        cls: type[KernelError] = TaskGone
    elif code in _GONE and gone is not KernelError:
        cls = gone
    elif code in _DENIED:
        cls = NotPermitted
        text += " (oomkit needs root for this)"
    else:
        cls = KernelError
    return cls(text, errno=code, path=where or None)


@contextlib.contextmanager
def os_errors(path: str | None = None, gone: type[KernelError] = KernelError,
              what: str = "") -> Iterator[None]:
    """Run the body; re-raise any OSError as the matching KernelError subclass."""
    try:
        yield
    except OSError as exc:
        raise translate(exc, path, gone, what) from exc
