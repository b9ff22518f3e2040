"""One policy attached to one cgroup, with its own backoff budget and
failure count (what ``bpf_oom_ops`` keeps per attachment)."""

from __future__ import annotations

from dataclasses import dataclass, field

from oomkit.engine.backoff import BackoffBudget
from oomkit.policy import OOMPolicy, policy_label


@dataclass
class Attachment:
    cgroup: str
    policy: OOMPolicy
    ceiling: int | None = None           # raise_limit never goes above this
    backoff: BackoffBudget = field(default_factory=BackoffBudget)
    failures: int = 0

    @property
    def label(self) -> str:
        return policy_label(self.policy)
