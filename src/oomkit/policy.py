"""The policy contract: the small, stable API that code outside oomkit uses.

A policy gets a read-only OOM context ``oc`` and the release actions ``k``
and answers with a :class:`Verdict`, as ``bpf_oom_ops.handle_out_of_memory``
does in the upstream kernel proposal (see ``upstream-design.md``)::

    from oomkit import OOMPolicy, Verdict

    class MyPolicy(OOMPolicy):
        name = "my-policy"
        def handle_out_of_memory(self, oc, k) -> Verdict: ...
        def handle_cgroup_offline(self, cgroup: str) -> None: ...   # optional
"""

from __future__ import annotations

import enum
import errno as _errno
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from oomkit.context import OOMContext, TaskInfo


class Verdict(enum.StrEnum):
    """What a handler says it did (a ``str``: its JSON is its name)."""

    #: Memory was released by a release action in this call.  Checked: with
    #: nothing released it counts as PASS and is recorded as a false claim.
    HANDLED = "HANDLED"
    #: Memory will be freed soon and nothing destructive was done (a victim
    #: is exiting).  Bounded by the attachment's backoff budget and wait.
    BACKOFF = "BACKOFF"
    #: This policy cannot help: the next one up the chain runs.
    PASS = "PASS"


class ReleaseActions(Protocol):
    """``k``: the release actions a handler gets, the only way it frees memory
    (the kernel's release kfuncs).  Each returns the bytes it freed for *this*
    OOM, 0, or a negative :class:`Refused` that says why; every call is recorded."""

    def kill_task(self, task: TaskInfo | int, reason: str = "") -> int:
        """SIGKILL one task (a ``TaskInfo`` or a pid)."""

    def kill_cgroup(self, path: str, reason: str = "") -> int:
        """SIGKILL every task of ``path``'s subtree but the ``oom_score_adj`` -1000 ones."""

    def raise_limit(self, path: str, new_limit: int, reason: str = "") -> int:
        """Raise ``path``'s limit to ``new_limit`` bytes, within the parent's headroom
        and the attachment's ceiling; counts only for the limit that was hit."""

    def headroom(self, path: str) -> int:
        """How far ``path``'s limit may be raised now."""

    def is_oom_victim(self, task: TaskInfo | int) -> bool:
        """Is this task already dying (``bpf_task_is_oom_victim()``)?"""

    def now(self) -> float:
        """The backend's clock in seconds (simulated time in the simulator)."""


class OOMPolicy:
    """Base class of every policy.  Instantiated as ``Policy(**params)``."""

    name: ClassVar[str] = ""

    def handle_out_of_memory(self, oc: OOMContext, k: ReleaseActions) -> Verdict:
        raise NotImplementedError

    def handle_cgroup_offline(self, cgroup: str) -> None:
        """The cgroup this policy is attached to (or one below it) went away.

        Upstream had it in v2 only (v3 removed it: the BPF link goes with the
        cgroup); oomkit keeps it so that a policy holding state per cgroup can
        drop it."""


class Refused(int):
    """What a refused release action returns: a negative errno, as a kfunc's.

    It is an ``int`` (so ``if k.kill_task(t) > 0`` reads naturally) that
    also says why: ``Refused(-errno.EPERM, "oom_score_adj is -1000")``.

    -1000 is ``-EPERM`` here, as for every task oomkit may never kill (init,
    itself): upstream v2's kill kfunc did not refuse -1000 at all, and the
    later development tree says ``-EINVAL``.
    """

    reason: str

    def __new__(cls, code: int, reason: str) -> Refused:
        self = super().__new__(cls, code)
        self.reason = reason
        return self

    @property
    def errno_name(self) -> str:
        return _errno.errorcode.get(-int(self), str(int(self)))

    def __repr__(self) -> str:
        return f"Refused(-{self.errno_name}: {self.reason})"

    __str__ = __repr__

    @classmethod
    def eperm(cls, reason: str) -> Refused:
        return cls(-_errno.EPERM, reason)

    @classmethod
    def esrch(cls, reason: str) -> Refused:
        return cls(-_errno.ESRCH, reason)

    @classmethod
    def einval(cls, reason: str) -> Refused:
        return cls(-_errno.EINVAL, reason)


def policy_label(policy: Any) -> str:
    """The name a policy is reported by: its ``name``, else its class name."""
    return getattr(policy, "name", "") or type(policy).__name__
