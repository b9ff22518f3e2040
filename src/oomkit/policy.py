"""The policy contract: the small, stable API that code outside oomkit uses.

A policy gets a read-only OOM context ``oc`` and the release actions ``k``
and answers with a :class:`Verdict`, as ``bpf_oom_ops.handle_out_of_memory``
does in the upstream kernel proposal (see ``upstream-design.md``)::

    from oomkit import OOMPolicy, Verdict

    class MyPolicy(OOMPolicy):
        name = "my-policy"
        def handle_out_of_memory(self, oc, k) -> Verdict: ...
        def handle_cgroup_offline(self, cgroup: str) -> None: ...   # optional

A policy may also act on memory pressure (upstream's ``bpf_psi_ops``): it
names PSI triggers in :meth:`OOMPolicy.psi_triggers`, gets each firing in
:meth:`OOMPolicy.handle_psi_event` with :class:`PressureActions`, and may
declare an OOM there (``k.declare_oom``, upstream's ``bpf_out_of_memory()``).
"""

from __future__ import annotations

import enum
import errno as _errno
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

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

    def declare_oom(self, cgroup: str, reason: str = "") -> int:
        """Always refused here (``-EBUSY``): an OOM handler is already in a chain;
        see :class:`PressureActions`."""


#: The kernel's bounds on a PSI trigger's window (kernel/sched/psi.c,
#: WINDOW_MIN_US and WINDOW_MAX_US).
PSI_WINDOW_MIN, PSI_WINDOW_MAX = 0.5, 10.0


@dataclass(frozen=True)
class PressureTrigger:
    """One PSI trigger a policy asks for: wake it when tasks of ``cgroup``
    stalled on memory for ``threshold`` seconds or more within any ``window``
    (``some``: at least one task stalled; ``full``: every non-idle task),
    as a ``"<some|full> <stall us> <window us>"`` line written to
    ``memory.pressure`` (Documentation/accounting/psi.rst).  The kernel
    signals a trigger at most once per window."""

    cgroup: str
    kind: Literal["some", "full"] = "full"
    threshold: float = 1.0          # seconds stalled within the window
    window: float = 10.0            # seconds, 0.5 to 10

    @classmethod
    def percent(cls, cgroup: str, kind: Literal["some", "full"], percent: float,
                window: float = 10.0) -> PressureTrigger:
        """``percent`` of the window stalled (``full 10%`` over 10 s is 1 s)."""
        return cls(cgroup, kind, window * percent / 100.0, window)

    def problem(self) -> str | None:
        """Why the kernel would refuse this trigger (EINVAL), or None."""
        if self.kind not in ("some", "full"):
            return f"kind {self.kind!r} is not some or full"
        if not isinstance(self.cgroup, str) or not self.cgroup.startswith("/"):
            return f"cgroup {self.cgroup!r} is not an absolute cgroup path"
        if not PSI_WINDOW_MIN <= self.window <= PSI_WINDOW_MAX:
            return f"window {self.window:g}s is outside {PSI_WINDOW_MIN:g}s..{PSI_WINDOW_MAX:g}s"
        if not 0 < self.threshold <= self.window:
            return f"threshold {self.threshold:g}s is not within the window ({self.window:g}s)"
        return None

    def spec(self) -> str:
        """The line written to a pressure file."""
        return f"{self.kind} {round(self.threshold * 1e6)} {round(self.window * 1e6)}"

    def __str__(self) -> str:
        return f"{self.cgroup} {self.kind} {self.threshold:g}s/{self.window:g}s"


@dataclass(frozen=True)
class PressureEvent:
    """A trigger fired: ``trigger`` is the one the policy asked for; ``at`` the
    backend's clock; ``some``/``full`` the cgroup's pressure then, in percent
    (live: ``avg10`` of its ``memory.pressure``; simulated: the mean over the
    last 10 s), None where unknown."""

    trigger: PressureTrigger
    at: float
    some: float | None = None
    full: float | None = None

    @property
    def cgroup(self) -> str:
        return self.trigger.cgroup


class PressureActions(Protocol):
    """``k`` of :meth:`OOMPolicy.handle_psi_event`."""

    def declare_oom(self, cgroup: str, reason: str = "") -> int:
        """Declare an OOM in ``cgroup`` (upstream's ``bpf_out_of_memory()``):
        the chain runs for that memcg (the root: a global OOM) as soon as this
        callback returns, as for an OOM the kernel raised, then the kernel's
        killer if no handler releases memory; the record says who declared it
        and why.  Returns 0 (accepted) or a negative :class:`Refused`: outside
        the policy's scope or no such cgroup (EPERM, ESRCH), the attachment's
        declaration budget spent (EAGAIN), or a chain already running (EBUSY)."""

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

    def psi_triggers(self) -> Sequence[PressureTrigger]:
        """The PSI triggers this policy wants, on cgroups within the one it is
        attached to; asked again after each :meth:`handle_cgroup_online`.
        None by default (upstream: ``bpf_psi_ops.init`` creating triggers)."""
        return ()

    def handle_psi_event(self, event: PressureEvent, k: PressureActions) -> None:
        """One of :meth:`psi_triggers` fired (upstream's ``handle_psi_event``)."""

    def handle_cgroup_online(self, cgroup: str) -> None:
        """A cgroup appeared within the one this policy is attached to
        (upstream's ``bpf_psi_ops.handle_cgroup_online``): a policy may add
        triggers for it, which :meth:`psi_triggers` then returns."""


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

    @classmethod
    def ebusy(cls, reason: str) -> Refused:
        return cls(-_errno.EBUSY, reason)

    @classmethod
    def eagain(cls, reason: str) -> Refused:
        return cls(-_errno.EAGAIN, reason)


def policy_label(policy: Any) -> str:
    """The name a policy is reported by: its ``name``, else its class name."""
    return getattr(policy, "name", "") or type(policy).__name__
