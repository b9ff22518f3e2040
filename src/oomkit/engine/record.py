"""The record of one OOM: what each handler said and did, and how it ended.

Its ``to_dict()`` is the JSON shape of ``oomkit simulate --json`` and of the
live daemon's event log, so a recorded OOM reads the same wherever it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

@dataclass
class ActionRecord:
    action: str            # kill_task, kill_cgroup, raise_limit
    target: str
    reason: str
    result: int            # bytes released for this OOM, or a negative errno
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "target": self.target, "reason": self.reason,
                "result": self.result, "error": self.error}


@dataclass
class HandlerRecord:
    cgroup: str
    policy: str
    verdict: str = "PASS"          # the verdict that counted
    claimed: str | None = None     # what the handler returned, when it did not count
    freed: int = 0
    error: str | None = None
    actions: list[ActionRecord] = field(default_factory=list)
    ms: float | None = None        # wall time, live only (a simulation stays byte-identical)

    def to_dict(self) -> dict[str, Any]:
        out = {"cgroup": self.cgroup, "policy": self.policy, "verdict": self.verdict,
               "freed": self.freed, "error": self.error,
               "actions": [a.to_dict() for a in self.actions]}
        if self.claimed is not None:
            out["claimed"] = self.claimed
        if self.ms is not None:
            out["ms"] = round(self.ms, 3)
        return out


@dataclass
class OOMRecord:
    t: float
    level: str
    memcg: str
    trigger: str | None
    requested: int | None = None
    nodes: tuple[int, ...] = ()
    handlers: list[HandlerRecord] = field(default_factory=list)
    resolved_by: str = "unresolved"   # policy, backoff, kernel or unresolved
    killed: list[dict[str, Any]] = field(default_factory=list)
    limits: list[dict[str, Any]] = field(default_factory=list)
    ejected: list[str] = field(default_factory=list)
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # live: detected_at, latency_ms, snapshot
    contexts: list[Any] = field(default_factory=list, repr=False, compare=False)  # each handler's oc

    @property
    def memory_freed(self) -> int:
        return sum(h.freed for h in self.handlers)

    def to_dict(self) -> dict[str, Any]:
        out = {"t": round(self.t, 6), "level": self.level, "memcg": self.memcg,
               "trigger": self.trigger, "requested": self.requested,
               "handlers": [h.to_dict() for h in self.handlers],
               "resolved_by": self.resolved_by, "killed": self.killed, "limits": self.limits}
        if self.level == "numa":
            out["nodes"] = list(self.nodes)
        if self.ejected:
            out["ejected"] = self.ejected
        if self.note:
            out["note"] = self.note
        out.update(self.extra)
        return out
