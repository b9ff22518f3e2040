"""oomkit: decide what happens when Linux runs out of memory.

The public, stable API is what this module exports, and :mod:`oomkit.helpers`;
everything else is oomkit's own and may change.
"""

from oomkit.context import CgroupInfo, Level, OOMContext, TaskInfo
from oomkit.errors import (
    AttachError,
    CgroupGone,
    ConfigError,
    ContextReadOnly,
    KernelError,
    NotPermitted,
    OOMKitError,
    PolicyLoadError,
    TaskGone,
)
from oomkit.policy import (
    OOMPolicy,
    PressureActions,
    PressureEvent,
    PressureTrigger,
    Refused,
    ReleaseActions,
    Verdict,
)

__version__ = "0.1.0"

__all__ = [
    "AttachError", "CgroupGone", "CgroupInfo", "ConfigError", "ContextReadOnly", "KernelError",
    "Level", "NotPermitted", "OOMContext", "OOMKitError", "OOMPolicy", "PolicyLoadError",
    "PressureActions", "PressureEvent", "PressureTrigger", "Refused",
    "ReleaseActions", "TaskGone", "TaskInfo", "Verdict",
]
