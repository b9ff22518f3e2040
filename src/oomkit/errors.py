"""The exceptions oomkit raises, one tree, all under :class:`OOMKitError`.

    OOMKitError
    ├── ConfigError          bad scenario or config file: one line that says where and how to fix
    ├── PolicyLoadError      a policy name, module, file or class that cannot be loaded
    ├── AttachError          a second policy on one cgroup (EEXIST), or a cgroup that does not exist
    ├── ContextReadOnly      a policy tried to change the OOM context (also an AttributeError)
    ├── InternalError        a bug of oomkit's own kept escaping the daemon's loop: it stops
    └── KernelError          an OS error met while reading or writing cgroupfs or /proc
        ├── CgroupGone       the cgroup was removed under us (ENOENT/ENODEV on a cgroup file)
        ├── TaskGone         the task exited under us (ESRCH, or ENOENT under /proc/PID)
        └── NotPermitted     EPERM/EACCES: oomkit runs without the rights it needs

OS errors are translated into these at one boundary, :mod:`oomkit.linux`,
so nothing above it catches ``OSError``.
"""

from __future__ import annotations


class OOMKitError(Exception):
    """Base of every error oomkit raises on purpose."""


class ConfigError(OOMKitError):
    """A scenario or config file is wrong. ``str(e)`` is the one line for the user."""

    def __init__(self, message: str, *, file: str | None = None, where: str | None = None,
                 hint: str | None = None):
        self.file, self.where, self.hint = file, where, hint
        parts = [p for p in (file, where) if p]
        text = (": ".join(parts) + ": " if parts else "") + message
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class PolicyLoadError(ConfigError):
    """A policy reference that does not resolve to an :class:`oomkit.OOMPolicy`."""


class AttachError(ConfigError):
    """An attachment that the kernel design forbids (two policies on one cgroup)."""


class ContextReadOnly(OOMKitError, AttributeError):
    """A policy tried to set an attribute of the OOM context or of anything in it."""


class InternalError(OOMKitError):
    """The daemon's loop met bugs of oomkit's own faster than restarting its live
    stack could contain them (``oomkit.daemon.main.Daemon._contain``)."""


class KernelError(OOMKitError):
    """An OS error at the kernel boundary; ``errno`` and ``path`` say which."""

    def __init__(self, message: str, *, errno: int | None = None, path: str | None = None):
        self.errno, self.path = errno, path
        super().__init__(message)


class CgroupGone(KernelError):
    """The cgroup was removed while we were looking at it."""


class TaskGone(KernelError):
    """The task exited while we were looking at it."""


class NotPermitted(KernelError):
    """The kernel refused: oomkit lacks the privilege it needs (run as root)."""
