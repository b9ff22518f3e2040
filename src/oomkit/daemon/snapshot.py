"""A snapshot of an OOM's context, taken before any handler acts, written in
the event log so the OOM can be replayed offline against another policy
(``oomkit replay``)."""

from __future__ import annotations

from typing import Any

from oomkit.backends.base import OOMEvent
from oomkit.context import CgroupInfo, TaskInfo


def snapshot(backend, oom: OOMEvent) -> dict[str, Any]:
    """The OOMing memcg's subtree: its cgroups and tasks.  For a global OOM only
    the cgroups, since reading every task on the machine would delay relief."""
    scope = oom.memcg
    cgroups = backend.cgroups(oom, scope)
    out: dict[str, Any] = {"scope": scope, "totalpages": backend.totalpages(oom),
                           "cgroups": {p: cgroup_dict(cgroups[p]) for p in cgroups}}
    if oom.level == "memcg":
        out["tasks"] = [task_dict(t) for t in backend.tasks(oom, scope)]
    return out


def cgroup_dict(c: CgroupInfo) -> dict[str, Any]:
    return {"usage": c.usage, "limit": c.limit, "swap": c.swap, "oom_group": c.oom_group,
            "children": list(c.children), "pids": list(c.pids), "events": dict(c.events)}


def task_dict(t: TaskInfo) -> dict[str, Any]:
    return {"pid": t.pid, "name": t.name, "cmdline": list(t.cmdline), "cgroup": t.cgroup,
            "rss": t.rss, "swap": t.swap, "pgtables": t.pgtables, "oom_score_adj": t.oom_score_adj,
            "uid": t.uid, "start_time": t.start_time, "exiting": t.exiting,
            "nodes": list(t.nodes) if t.nodes is not None else None}
