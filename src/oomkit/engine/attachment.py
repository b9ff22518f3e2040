"""One policy attached to one cgroup, with its own backoff budget and
failure count (what ``bpf_oom_ops`` keeps per attachment)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from oomkit.engine.backoff import BackoffBudget
from oomkit.policy import OOMPolicy, policy_label


@dataclass(frozen=True)
class Recipe:
    """How to build a policy (what ``make_policy`` takes): a worker process
    builds its own from this, so the daemon never runs the policy's code."""

    ref: str
    params: dict[str, Any] = field(default_factory=dict)
    base_dir: str | None = None


@dataclass
class Attachment:
    cgroup: str
    policy: OOMPolicy | None             # in process; None: it lives in ``worker``
    ceiling: int | None = None           # raise_limit never goes above this
    backoff: BackoffBudget = field(default_factory=BackoffBudget)
    failures: int = 0
    worker: Any = None                   # the policy's worker process (oomkit.sandbox.runner.Worker)
    # declare_oom's budget (a policy declaring OOMs in a loop falls to EAGAIN)
    declares: BackoffBudget = field(default_factory=lambda: BackoffBudget(3, 30.0))

    @property
    def label(self) -> str:
        if self.policy is None:
            return str(getattr(self.worker, "label", None) or "?")
        return policy_label(self.policy)
