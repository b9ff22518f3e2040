"""The scenario file of ``oomkit simulate``: a machine, a cgroup tree, tasks,
attachments and a timeline of events (see the README for every key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from oomkit.config.common import (
    BACKOFF_BUDGET,
    BACKOFF_WAIT,
    BACKOFF_WINDOW,
    EVENT_AT,
    EXIT_DELAY,
    HANDLER_BUDGET,
    HANDLER_DEADLINE,
    UID,
    Duration,
    Size,
    convert,
    duration_at,
    int_at,
    read_toml,
    size_at,
)
from oomkit.context import parent_of
from oomkit.engine.chain import EngineSettings
from oomkit.errors import ConfigError

FIRST_PID = 100


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class MachineSpec(_Strict):
    memory: Size
    swap: Size = 0
    numa_nodes: int = 1
    exit_delay: Duration = 0


class CgroupSpec(_Strict):
    path: str
    limit: Size | None = None
    oom_group: bool = False
    file: Size = 0              # page cache it holds at the start (reclaimable)


class TaskSpec(_Strict):
    name: str
    cgroup: str = "/"
    rss: Size = 0
    swap: Size = 0
    pgtables: Size = 0
    oom_score_adj: int = 0
    uid: int = 0
    cmdline: list[str] | None = None
    nodes: list[int] | None = None
    exit_delay: Duration | None = None
    mm: str | None = None       # shares this earlier task's address space (CLONE_VM, vfork)
    file: Size = 0              # page cache it read in, charged to its cgroup (outlives it)


class AttachSpec(_Strict):
    cgroup: str
    policy: str
    params: dict[str, Any] = {}
    ceiling: Size | None = None


class PressureSpec(_Strict):
    cgroup: str
    some: str | float | int | None = None     # "40%" (or 40): share of time some task stalled
    full: str | float | int | None = None     # share of time every non-idle task stalled


class EventSpec(_Strict):
    at: float | int
    task: str | None = None
    alloc: Size | None = None
    free: Size | None = None
    exit: bool = False
    spawn: TaskSpec | None = None
    read: Size | None = None    # the task reads a file: page cache charged to its cgroup
    pressure: PressureSpec | None = None   # memory pressure (PSI) of a cgroup from now on


class EngineSpec(_Strict):
    handler_deadline: Duration = "50ms"
    handler_budget: int | None = None
    backoff_budget: int = 3
    backoff_window: Duration = "10s"
    backoff_wait: Duration = "500ms"
    declare_budget: int = 3
    declare_window: Duration = "30s"


class ScenarioSpec(_Strict):
    machine: MachineSpec
    description: str = ""
    engine: EngineSpec = msgspec.field(default_factory=EngineSpec)
    cgroup: list[CgroupSpec] = []
    task: list[TaskSpec] = []
    attach: list[AttachSpec] = []
    event: list[EventSpec] = []


# -- the resolved, typed scenario -------------------------------------------------

@dataclass(frozen=True)
class Cgroup:
    path: str
    limit: int | None
    oom_group: bool
    file: int = 0


@dataclass(frozen=True)
class Task:
    name: str
    cgroup: str
    rss: int
    swap: int = 0
    pgtables: int = 0
    oom_score_adj: int = 0
    uid: int = 0
    cmdline: tuple[str, ...] = ()
    nodes: tuple[int, ...] | None = None
    exit_delay: float | None = None
    mm: str | None = None
    file: int = 0


@dataclass(frozen=True)
class Attach:
    cgroup: str
    policy: str
    params: dict[str, Any]
    ceiling: int | None = None


@dataclass(frozen=True)
class Pressure:
    """A cgroup's scripted memory pressure, as fractions of wall time (0 to 1)."""

    cgroup: str
    some: float
    full: float


@dataclass(frozen=True)
class Event:
    at: float
    task: str | None
    kind: str                          # alloc, free, exit, spawn, read, pressure
    amount: int = 0
    spawn: Task | None = None
    pressure: Pressure | None = None


@dataclass(frozen=True)
class Scenario:
    file: str
    base_dir: Path
    memory: int
    swap: int
    numa_nodes: int
    exit_delay: float
    settings: EngineSettings
    cgroups: list[Cgroup] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    attach: list[Attach] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    description: str = ""


def load_scenario(path: str | Path) -> Scenario:
    """Read, validate and resolve a scenario; ConfigError on anything wrong."""
    return resolve(read_toml(path), str(path), Path(path).resolve().parent)


def resolve(data: dict[str, Any], file: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    spec = convert(data, ScenarioSpec, file)
    return _Resolver(spec, file).scenario(base_dir or Path.cwd())


class _Resolver:
    def __init__(self, spec: ScenarioSpec, file: str):
        self.spec, self.file = spec, file

    def error(self, where: str, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(message, file=self.file, where=where, hint=hint)

    def scenario(self, base_dir: Path) -> Scenario:
        m = self.spec.machine
        memory = size_at(m.memory, "machine.memory", self.file)
        if memory <= 0:
            raise self.error("machine.memory", "must be more than 0")
        if m.numa_nodes < 1 or m.numa_nodes > 64:
            raise self.error("machine.numa_nodes", f"{m.numa_nodes} is out of range", "1 to 64")
        cgroups = self.cgroups()
        paths = {"/"} | {c.path for c in cgroups}
        tasks = [self.task(t, f"task[{i}]", paths, m.numa_nodes) for i, t in enumerate(self.spec.task)]
        self.unique_names(tasks)
        self.shared_mms(tasks)
        return Scenario(
            file=self.file, base_dir=base_dir, memory=memory,
            swap=size_at(m.swap, "machine.swap", self.file), numa_nodes=m.numa_nodes,
            exit_delay=duration_at(m.exit_delay, "machine.exit_delay", self.file, EXIT_DELAY),
            settings=self.settings(), cgroups=cgroups, tasks=tasks,
            attach=self.attachments(paths), events=self.events(tasks, paths, m.numa_nodes),
            description=self.spec.description)

    def settings(self) -> EngineSettings:
        e, f = self.spec.engine, self.file
        int_at(e.backoff_budget, "engine.backoff_budget", f, *BACKOFF_BUDGET)
        if e.handler_budget is not None:
            int_at(e.handler_budget, "engine.handler_budget", f, *HANDLER_BUDGET, " lines")
        return EngineSettings(
            handler_deadline=duration_at(e.handler_deadline, "engine.handler_deadline", f, HANDLER_DEADLINE),
            handler_budget=e.handler_budget, backoff_budget=e.backoff_budget,
            backoff_window=duration_at(e.backoff_window, "engine.backoff_window", f, BACKOFF_WINDOW),
            backoff_wait=duration_at(e.backoff_wait, "engine.backoff_wait", f, BACKOFF_WAIT),
            deadline_clock="cpu",   # a policy worker's CPU time: a loaded machine fails no policy
            declare_budget=int_at(e.declare_budget, "engine.declare_budget", f, *BACKOFF_BUDGET),
            declare_window=duration_at(e.declare_window, "engine.declare_window", f, BACKOFF_WINDOW))

    def cgroups(self) -> list[Cgroup]:
        out, seen = [], {"/"}
        for i, c in enumerate(self.spec.cgroup):
            where = f"cgroup[{i}].path"
            path = check_path(c.path, where, self.file)
            if path == "/":
                raise self.error(where, "the root cgroup is always there", "declare only cgroups below /")
            if path in seen:
                raise self.error(where, f"{path} is declared twice")
            if parent_of(path) not in seen:
                raise self.error(where, f"the parent of {path}, {parent_of(path)}, is not declared",
                                 "declare parents first")
            seen.add(path)
            limit = size_at(c.limit, f"cgroup[{i}].limit", self.file, allow_none=True)
            out.append(Cgroup(path, limit, c.oom_group, size_at(c.file, f"cgroup[{i}].file", self.file)))
        return out

    def task(self, t: TaskSpec, where: str, paths: set[str], numa_nodes: int) -> Task:
        if not t.name:
            raise self.error(f"{where}.name", "must not be empty")
        if t.cgroup not in paths:
            raise self.error(f"{where}.cgroup", f"no cgroup {t.cgroup!r} is declared",
                             "add it as a [[cgroup]] first")
        if not -1000 <= t.oom_score_adj <= 1000:
            raise self.error(f"{where}.oom_score_adj", f"{t.oom_score_adj} is out of range", "-1000 to 1000")
        if t.nodes is not None:
            bad: list[int | str] = [n for n in t.nodes if not 0 <= n < numa_nodes] or (
                [] if t.nodes else ["none"])
            if bad:
                raise self.error(f"{where}.nodes", f"no NUMA node {bad[0]}",
                                 f"nodes are 0 to {numa_nodes - 1}")
        f = self.file
        int_at(t.uid, f"{where}.uid", f, *UID)
        return Task(t.name, t.cgroup, size_at(t.rss, f"{where}.rss", f),
                    size_at(t.swap, f"{where}.swap", f), size_at(t.pgtables, f"{where}.pgtables", f),
                    t.oom_score_adj, t.uid, tuple(t.cmdline or ()),
                    tuple(sorted(set(t.nodes))) if t.nodes is not None else None,
                    duration_at(t.exit_delay, f"{where}.exit_delay", f, EXIT_DELAY), t.mm,
                    size_at(t.file, f"{where}.file", f))

    def shared_mms(self, tasks: list[Task]) -> None:
        """``mm`` names an earlier [[task]]; the sharer's memory is that task's."""
        earlier: set[str] = set()
        for i, t in enumerate(tasks):
            if t.mm is not None:
                if t.mm not in earlier:
                    raise self.error(f"task[{i}].mm", f"no earlier task named {t.mm!r}",
                                     "name a [[task]] declared before this one")
                if t.rss or t.swap or t.pgtables:
                    raise self.error(f"task[{i}].rss", "a task sharing an mm has no memory of its own",
                                     f"its memory is {t.mm}'s: leave rss, swap and pgtables out")
            earlier.add(t.name)

    def unique_names(self, tasks: list[Task]) -> None:
        seen = set()
        for i, t in enumerate(tasks):
            if t.name in seen:
                raise self.error(f"task[{i}].name", f"{t.name!r} is used twice", "task names are unique")
            seen.add(t.name)

    def attachments(self, paths: set[str]) -> list[Attach]:
        out, seen = [], set()
        for i, a in enumerate(self.spec.attach):
            where = f"attach[{i}]"
            if a.cgroup not in paths:
                raise self.error(f"{where}.cgroup", f"no cgroup {a.cgroup!r} is declared")
            if a.cgroup in seen:
                raise self.error(f"{where}.cgroup", f"{a.cgroup} already has a policy attached",
                                 "one policy per cgroup (EEXIST); chain policies on parent cgroups")
            seen.add(a.cgroup)
            ceiling = size_at(a.ceiling, f"{where}.ceiling", self.file, allow_none=True)
            out.append(Attach(a.cgroup, a.policy, dict(a.params), ceiling))
        return out

    def events(self, tasks: list[Task], paths: set[str], numa_nodes: int) -> list[Event]:
        names = {t.name for t in tasks}
        out = []
        for i, e in enumerate(self.spec.event):
            where = f"event[{i}]"
            at = duration_at(e.at, f"{where}.at", self.file, EVENT_AT)
            kinds = [k for k in ("alloc", "free", "spawn", "read", "pressure") if getattr(e, k) is not None]
            kinds += ["exit"] if e.exit else []
            if len(kinds) != 1:
                raise self.error(where, "needs exactly one of alloc, free, exit, spawn, read, pressure "
                                        f"(has {len(kinds)})")
            kind = kinds[0]
            if kind == "pressure":
                if e.task is not None:
                    raise self.error(f"{where}.task", "a pressure event names a cgroup, not a task",
                                     "leave task out")
                out.append(Event(at, None, "pressure", pressure=self.pressure(e.pressure, where, paths)))
                continue
            if kind == "spawn" and e.spawn is not None:
                task = self.task(e.spawn, f"{where}.spawn", paths, numa_nodes)
                if task.mm is not None:
                    raise self.error(f"{where}.spawn.mm", "only a [[task]] may share an mm",
                                     "declare the sharer as a [[task]]")
                if task.name in names:
                    raise self.error(f"{where}.spawn.name", f"{task.name!r} is used twice",
                                     "task names are unique")
                names.add(task.name)
                out.append(Event(at, task.name, "spawn", task.rss, task))
                continue
            if e.task not in names:
                raise self.error(f"{where}.task", f"no task named {e.task!r}",
                                 "name a [[task]] or a task spawned by an earlier event")
            amount = size_at(getattr(e, kind), f"{where}.{kind}", self.file) if kind != "exit" else 0
            out.append(Event(at, e.task, kind, amount))
        return out


    def pressure(self, p: PressureSpec | None, where: str, paths: set[str]) -> Pressure:
        assert p is not None            # the caller picked this kind because it is set
        where += ".pressure"
        if p.cgroup not in paths:
            raise self.error(f"{where}.cgroup", f"no cgroup {p.cgroup!r} is declared",
                             "add it as a [[cgroup]] first")
        if p.some is None and p.full is None:
            raise self.error(where, "needs some, full or both", 'e.g. { cgroup = "/batch", full = "10%" }')
        full = 0.0 if p.full is None else percent_at(p.full, f"{where}.full", self.file)
        # Time every task stalled is time some task stalled: some is at least full.
        some = full if p.some is None else percent_at(p.some, f"{where}.some", self.file)
        if full > some:
            raise self.error(f"{where}.full", f"full ({full:.0%}) is more than some ({some:.0%})",
                             "full stall time is part of some stall time (psi.rst)")
        return Pressure(p.cgroup, some, full)


def percent_at(value: str | float | int, where: str, file: str) -> float:
    """``"40%"``, ``"12.5%"`` or a number, 0 to 100: a fraction 0 to 1."""
    text = value.strip().removesuffix("%") if isinstance(value, str) else value
    try:
        number = float(text)
    except (TypeError, ValueError, OverflowError):
        number = float("nan")
    if not 0.0 <= number <= 100.0:          # NaN is refused here too
        raise ConfigError(f"{value!r} is not a percentage", file=file, where=where,
                          hint='0 to 100, like "40%"')
    return number / 100.0


def check_path(path: str, where: str, file: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "//" in path or "\0" in path \
            or (path != "/" and path.endswith("/")) or any(p in (".", "..") for p in path.split("/")):
        raise ConfigError(f"{path!r} is not a cgroup path", file=file, where=where,
                          hint='write an absolute path like "/batch/job1"')
    return path
