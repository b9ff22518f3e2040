"""Shared helpers for the core tests (issue 2, sections 2-6).

Scenarios are built in code, so each test shows its own set-up:
``make_sim(...)`` resolves a scenario dict exactly as a TOML file would be
(``oomkit.config.scenario.resolve``) and returns a ready :class:`Simulator`;
policy *instances* defined in a test are attached with ``sim.engine.attach``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oomkit import OOMPolicy, Verdict
from oomkit.backends.sim import Simulator
from oomkit.config.scenario import resolve

K = 1 << 10
M = 1 << 20
G = 1 << 30
PAGE = 4096


def scenario_dict(memory: str = "1G", *, cgroups=(), tasks=(), attach=(), events=(),
                  engine: dict | None = None, **machine: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"machine": {"memory": memory, **machine},
                            "cgroup": list(cgroups), "task": list(tasks),
                            "attach": list(attach), "event": list(events)}
    if engine:
        data["engine"] = engine
    return data


def make_sim(memory: str = "1G", *, policies: dict[str, OOMPolicy] | None = None,
             **kw: Any) -> Simulator:
    """A Simulator for the scenario; ``policies`` maps cgroup -> policy instance.

    Unless a test sets its own, handlers get a 5 s deadline: these tests are
    about decisions, and a loaded machine (a thread's first start, a busy
    core) has missed the default 50 ms there.  The deadline tests set theirs."""
    kw["engine"] = {"handler_deadline": "5s", **(kw.get("engine") or {})}
    sim = Simulator(resolve(scenario_dict(memory, **kw)))
    for cgroup, policy in (policies or {}).items():
        sim.engine.attach(cgroup, policy)
    return sim


class FuncPolicy(OOMPolicy):
    """A policy whose handler is a function; every call's context is kept."""

    name = "func"

    def __init__(self, fn: Callable[[Any, Any], Any] | Verdict = Verdict.PASS, name: str = "func"):
        self.fn = fn if callable(fn) else (lambda oc, k, v=fn: v)
        self.name = name
        self.calls: list[dict[str, Any]] = []

    def handle_out_of_memory(self, oc, k):
        self.calls.append({"memcg": oc.memcg, "level": oc.level, "attached_to": oc.attached_to})
        return self.fn(oc, k)


def task_named(oc, name: str):
    return next(t for t in oc.tasks if t.name == name)


def kill_named(name: str, verdict: Verdict = Verdict.HANDLED):
    """A handler that kills the task called ``name`` and answers ``verdict``."""
    def fn(oc, k):
        k.kill_task(task_named(oc, name), "test")
        return verdict
    return fn
