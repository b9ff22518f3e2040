"""A snapshot of an OOM's context, written in the event log so the OOM can be
replayed offline against another policy (``oomkit replay``).

It is taken *after* the chain, off the path from OOM to relief, from what the
handlers' contexts had already read before they acted (the cgroups and tasks
the policies looked at, as they were then).  What no policy read is read
afterwards, and the snapshot says so (``"read": "after"``): a victim is then
missing from it.
"""

from __future__ import annotations

from typing import Any

from oomkit.backends.base import OOMEvent
from oomkit.context import CgroupInfo, OOMContext, TaskInfo


def snapshot(backend, oom: OOMEvent, contexts: list[OOMContext]) -> dict[str, Any]:
    """The OOMing memcg's subtree: its cgroups and tasks.  For a global OOM only
    the cgroups, unless a policy read the tasks: reading every task on the
    machine for the log is not worth it."""
    scope = oom.memcg
    first = contexts[0] if contexts else None
    fresh = backend.cgroups(oom, scope)
    cgroups = {}
    for path in fresh:
        seen = first.cgroups.loaded(path) if first is not None else None
        cgroups[path] = cgroup_dict(seen if seen is not None else fresh[path])
    out: dict[str, Any] = {"scope": scope, "totalpages": first.totalpages if first else
                           backend.totalpages(oom), "cgroups": cgroups, "read": "before"}
    tasks = first.tasks.loaded(scope) if first is not None else None
    if tasks is None and oom.level == "memcg":
        tasks, out["read"] = backend.tasks(oom, scope), "after"
    if tasks is not None:
        out["tasks"] = [task_dict(t) for t in tasks]
    return out


def cgroup_dict(c: CgroupInfo) -> dict[str, Any]:
    return {"usage": c.usage, "limit": c.limit, "swap": c.swap, "oom_group": c.oom_group,
            "children": list(c.children), "pids": list(c.pids), "events": dict(c.events)}


def task_dict(t: TaskInfo) -> dict[str, Any]:
    return {"pid": t.pid, "name": t.name, "cmdline": list(t.cmdline), "cgroup": t.cgroup,
            "rss": t.rss, "swap": t.swap, "pgtables": t.pgtables, "oom_score_adj": t.oom_score_adj,
            "uid": t.uid, "start_time": t.start_time, "exiting": t.exiting,
            "nodes": list(t.nodes) if t.nodes is not None else None}
