#!/usr/bin/env python3
"""Benchmark of the simulated kernel and the kernel OOM killer model.

Not a test: it measures and reports, and asserts nothing about time.

  (i)  simulated events per second: a generated scenario of 1,000 cgroups
       and 10,000 tasks with a long timeline of alloc/free events, some of
       which cause OOMs (memcg and global), run through the real engine
       (the kernel OOM killer as fallback, plus a few attached policies);
  (ii) the time to build the OOM context and decide one OOM with
       ``kernel-default`` at 100, 1,000 and 10,000 tasks (median and p99
       over repeated runs).

Usage:  python bench/bench_sim.py [--json] [--events N] [--repeat N] [--quick]
Targets (issue 2): >= 200,000 events/s; <= 10 ms per decision at 10,000 tasks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time

from oomkit import oom_kill
from oomkit.backends.base import OOMEvent
from oomkit.backends.sim import Machine, SimBackend, SimTask
from oomkit.backends.sim.simulator import Simulator
from oomkit.config.scenario import resolve
from oomkit.context import OOMContext

M = 1 << 20
G = 1 << 30
TARGET_EVENTS_PER_S = 200_000
TARGET_DECISION_MS = 10.0


# -- the machine this ran on -----------------------------------------------------------

def machine_info() -> dict:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


# -- (i) events per second ---------------------------------------------------------------

def big_scenario(n_events: int, seed: int = 1) -> dict:
    """1,000 cgroups (20 slices with limits, 49 jobs each), 10,000 tasks, and
    ``n_events`` alloc/free events; deterministic for a given seed."""
    rng = random.Random(seed)
    cgroups, leaves = [], []
    for s in range(20):
        slice_ = f"/slice{s}"
        cgroups.append({"path": slice_, "limit": str(700 * M)})
        for j in range(49):
            path = f"{slice_}/job{j}"
            # some jobs have their own limit: memcg OOMs low in the tree
            cg = {"path": path}
            if j % 7 == 0:
                cg["limit"] = str(24 * M)
            cgroups.append(cg)
            leaves.append(path)
    tasks = []
    for i in range(10_000):
        cg = leaves[i % len(leaves)]
        tasks.append({"name": f"t{i}", "cgroup": cg, "rss": str(rng.randrange(512, 2048) * 1024),
                      "oom_score_adj": rng.choice((0, 0, 0, 0, 100, -500, -1000))})
    # Most events are short-lived allocations: a task allocates, and frees
    # the same amount later (usage hovers near its start).  1 in 100 events
    # is a 1M leak by one of 20 leakers: 10 in jobs with a limit (memcg
    # OOMs), 10 in jobs without (they fill their slice or the machine).
    leakers = [s * 49 + j for s in range(0, 20, 2) for j in (0, 1)]   # job0 (limited), job1 (not)
    for i in leakers:
        tasks[i]["oom_score_adj"] = 0
    events, pending = [], []
    t = 0.0
    for _ in range(n_events):
        t += 0.001
        at = round(t, 3)
        if rng.random() < 0.01:
            i = rng.choice(leakers)
            events.append({"at": at, "task": f"t{i}", "alloc": str(1 << 20)})
        elif pending and rng.random() < 0.5:
            i, amount = pending.pop(rng.randrange(len(pending)))
            events.append({"at": at, "task": f"t{i}", "free": str(amount)})
        else:
            i = rng.randrange(10_000)
            amount = rng.randrange(64, 1024) * 1024
            pending.append((i, amount))
            events.append({"at": at, "task": f"t{i}", "alloc": str(amount)})
    attach = [{"cgroup": "/slice0", "policy": "largest-task"},
              {"cgroup": "/slice1", "policy": "kernel-default"},
              {"cgroup": "/slice2", "policy": "newest-task"}]
    # A generous wall-clock deadline: on a loaded machine the default 50 ms can
    # expire in a policy's handler, which would change the workload measured.
    return {"machine": {"memory": "12.5G"}, "engine": {"handler_deadline": "10s"},
            "cgroup": cgroups, "task": tasks, "attach": attach, "event": events}


def bench_events(n_events: int, repeat: int) -> dict:
    data = big_scenario(n_events)
    scenario = resolve(data, "<bench>")
    runs = []
    result = None
    for _ in range(repeat):
        sim = Simulator(scenario)
        start = time.perf_counter()
        result = sim.run()
        runs.append(time.perf_counter() - start)
    best, med = min(runs), statistics.median(runs)
    levels: dict[str, int] = {}
    for o in result.ooms:
        levels[o.level] = levels.get(o.level, 0) + 1
    return {"cgroups": len(scenario.cgroups) , "tasks": len(scenario.tasks),
            "events": sim.steps, "ooms": len(result.ooms), "oom_levels": levels,
            "killed": len(result.killed), "seconds_median": med, "seconds_best": best,
            "events_per_s_median": sim.steps / med, "events_per_s_best": sim.steps / best,
            "runs": repeat}


# -- (ii) one OOM decision -------------------------------------------------------------------

def decision_machine(n_tasks: int, seed: int = 2) -> tuple[SimBackend, OOMEvent]:
    """A machine of ``n_tasks`` tasks in n/10 cgroups (under 10 slices), full:
    the next allocation raises a global OOM."""
    rng = random.Random(seed)
    m = Machine(memory=64 * G)
    n_cg = max(1, n_tasks // 10)
    paths = []
    for s in range(10):
        m.add_cgroup(f"/s{s}", None, False)
    for c in range(n_cg):
        path = f"/s{c % 10}/c{c}"
        m.add_cgroup(path, None, c % 13 == 0)
        paths.append(path)
    for i in range(n_tasks):
        task = m.add_task(SimTask(pid=100 + i, name=f"t{i}", cgroup=paths[i % n_cg],
                                  oom_score_adj=rng.choice((0, 0, 0, 100, -300, -1000))))
        m.charge(task, rng.randrange(1, 4096) * 4096)
    return SimBackend(m), OOMEvent("global", "/", (), 1 * G, "t0")


def decide_once(backend: SimBackend, oom: OOMEvent):
    """What the engine does before a handler runs (build the context), then
    ``kernel-default``'s decision (``oom_kill.decide``)."""
    oc = OOMContext(level=oom.level, memcg=oom.memcg, attached_to="/", nodes=oom.nodes,
                    requested=oom.requested, cgroups=backend.cgroups(oom, "/"),
                    tasks=backend.tasks(oom, "/"), totalpages=backend.totalpages(oom),
                    freed=lambda: 0, in_flight=backend.in_flight)
    return oom_kill.decide(oc)


def bench_decision(n_tasks: int, repeat: int) -> dict:
    """Two cases: *warm*, the simulator's (TaskInfo snapshots are kept between
    OOMs and rebuilt only for tasks that changed; here: one task changed) and
    *cold* (every task's snapshot rebuilt, as a live backend reading /proc or
    a machine where everything moved)."""
    backend, oom = decision_machine(n_tasks)
    decision = decide_once(backend, oom)      # warm up (and check it decides)
    m = backend.machine
    some = next(iter(m.tasks.values()))
    out = {"tasks": n_tasks, "runs": repeat,
           "victim_pid": decision.victim.pid if decision.victim else None}
    for case in ("warm", "cold"):
        times = []
        for _ in range(repeat):
            if case == "cold":
                m.forget_snapshots()
            else:
                m.charge(some, 0)             # one task changed since the last OOM
            start = time.perf_counter()
            decide_once(backend, oom)
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        out[case] = {"median_ms": statistics.median(times),
                     "p99_ms": times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))],
                     "min_ms": times[0]}
    return out


# -- report -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--events", type=int, default=200_000, help="events in the timeline (default 200000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the event benchmark (default 3)")
    ap.add_argument("--decisions", type=int, default=200, help="runs per decision size (default 200)")
    ap.add_argument("--quick", action="store_true", help="20,000 events, 30 decisions: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.repeat, args.decisions = 20_000, 1, 30
    info = machine_info()
    events = bench_events(args.events, args.repeat)
    decisions = [bench_decision(n, args.decisions if n < 10_000 else max(10, args.decisions // 4))
                 for n in (100, 1_000, 10_000)]
    at_10k = decisions[-1]
    out = {"machine": info, "events": events, "decisions": decisions,
           "targets": {"events_per_s": TARGET_EVENTS_PER_S, "decision_ms_at_10000": TARGET_DECISION_MS,
                       "events_met": events["events_per_s_median"] >= TARGET_EVENTS_PER_S,
                       "decision_met": at_10k["warm"]["median_ms"] <= TARGET_DECISION_MS,
                       "decision_met_cold": at_10k["cold"]["median_ms"] <= TARGET_DECISION_MS}}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"oomkit bench_sim  {info['date']}")
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}, "
          f"Python {info['python']}")
    print()
    e = events
    print(f"(i) simulated events: {e['cgroups']} cgroups, {e['tasks']} tasks, {e['events']} events, "
          f"{e['ooms']} OOMs {e['oom_levels']}, {e['killed']} killed")
    print(f"    {e['events_per_s_median']:>12,.0f} events/s median of {e['runs']} "
          f"({e['seconds_median']:.3f} s a run; best {e['events_per_s_best']:,.0f}/s)   "
          f"target >= {TARGET_EVENTS_PER_S:,}: {'met' if out['targets']['events_met'] else 'MISSED'}")
    print()
    print("(ii) build the context + decide one global OOM with kernel-default (ms)")
    print(f"    {'tasks':>8} {'runs':>6} | {'warm median':>11} {'p99':>8} | {'cold median':>11} {'p99':>8}")
    for d in decisions:
        w, c = d["warm"], d["cold"]
        print(f"    {d['tasks']:>8} {d['runs']:>6} | {w['median_ms']:>11.3f} {w['p99_ms']:>8.3f} | "
              f"{c['median_ms']:>11.3f} {c['p99_ms']:>8.3f}")
    print(f"    target <= {TARGET_DECISION_MS:g} ms at 10,000 tasks: warm "
          f"{'met' if out['targets']['decision_met'] else 'MISSED'}, cold "
          f"{'met' if out['targets']['decision_met_cold'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
