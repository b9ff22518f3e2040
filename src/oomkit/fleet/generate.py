"""Synthetic fleet logs: the daemon's event logs of many hosts, made by the
simulator over randomized scenarios (no real fleet data is at hand).

Each host is one scenario drawn from a seed: a machine, systemd-like services
(``/system.slice/<name>.service``) with memory limits, some workers of which
leak, bursts of short-lived processes, batch jobs in ``/batch.slice`` that
grow, and the policy the host ran (the kernel alone on some hosts, a
built-in at ``/`` on others).  The simulator runs it through the real engine
with snapshots on, exactly as the daemon records an OOM, and every record is
written as the daemon writes it: one JSON line, with ``host``, the daemon's
timestamps and the snapshot ``oomkit replay`` needs.

The same seed gives byte-identical logs, whatever the number of processes
used to make them.  ``python -m oomkit.fleet.generate DIR --records N``
(or ``oomkit-fleet-gen``) writes one file per host, ``DIR/<host>.jsonl.gz``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import itertools
import os
import random
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from oomkit.backends.sim.simulator import Simulator
from oomkit.config.scenario import Event, Scenario, Task, resolve

M = 1024 * 1024
G = 1024 * M
DAY = 86400.0
#: the day the synthetic fleet's logs start (records' ``detected_at``)
EPOCH = datetime(2026, 10, 1, tzinfo=UTC)

# name, workers (min, max), rss per worker (MiB, min max), a candidate for protection
_SERVICES = [
    ("postgres", (1, 1), (1500, 4000), True),
    ("redis", (1, 1), (300, 1200), True),
    ("nginx", (2, 6), (40, 120), False),
    ("api", (2, 8), (150, 450), False),
    ("worker", (2, 6), (200, 600), False),
    ("kafka", (1, 1), (800, 2000), True),
    ("log-shipper", (1, 2), (60, 200), False),
    ("ml-serving", (1, 3), (900, 2500), False),
]

# The policy each host ran (what happened): (weight, attachments).
_PROFILES: list[tuple[int, list[dict[str, Any]]]] = [
    (40, [{"cgroup": "/", "policy": "kernel-default"}]),     # the kernel's choice, recorded
    (25, [{"cgroup": "/", "policy": "prefer-avoid",
           "params": {"prefer": ["/batch.slice/*"], "avoid": ["^postgres", "^kafka"]}}]),
    (20, [{"cgroup": "/", "policy": "largest-task"}]),
    (15, [{"cgroup": "/batch.slice", "policy": "newest-task"}]),
]


def host_name(index: int, seed: int) -> str:
    region = ("eu1", "eu2", "us1", "us2", "ap1")[(index + seed) % 5]
    return f"node-{region}-{index:05d}"


def host_scenario(index: int, seed: int, days: int = 30) -> dict[str, Any]:
    """Host ``index``'s scenario, as the TOML of ``oomkit simulate`` would hold it."""
    rng = random.Random(f"oomkit-fleet:{seed}:{index}")
    cgroups: list[dict[str, Any]] = [{"path": "/system.slice"}]
    tasks: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    end = days * DAY
    used = 0
    for name, (wmin, wmax), (rmin, rmax), _ in rng.sample(_SERVICES, rng.randint(2, 5)):
        path = f"/system.slice/{name}.service"
        workers = [(f"{name}-{w}", rng.randint(rmin, rmax) * M) for w in range(rng.randint(wmin, wmax))]
        total = sum(r for _, r in workers)
        limit = int(total * rng.uniform(1.15, 1.6)) // M * M
        cgroups.append({"path": path, "limit": limit})
        used += limit
        for n, rss in workers:
            tasks.append({"name": n, "cgroup": path, "rss": rss,
                          "oom_score_adj": -500 if name in ("postgres", "kafka") and rng.random() < 0.3 else 0})
        _leaks(rng, events, name, path, workers, end)
        _bursts(rng, events, name, path, limit - total, end)
    batch_limit = rng.choice((2, 4, 8)) * G
    cgroups.append({"path": "/batch.slice", "limit": batch_limit})
    _batch_jobs(rng, cgroups, events, batch_limit, end)
    # Overcommitted, as fleets are: the limits add up to more than the machine
    # (global OOMs), but what runs at the start fits.
    start = sum(t["rss"] for t in tasks)
    memory = max(int(start * 1.25) + G, int((used + batch_limit) * rng.uniform(0.6, 1.0)))
    memory = -(-memory // (256 * M)) * 256 * M
    events.sort(key=lambda e: e["at"])
    profile = rng.choices([p for _, p in _PROFILES], [w for w, _ in _PROFILES])[0]
    return {"description": f"synthetic fleet host {index} (seed {seed})",
            "machine": {"memory": memory, "exit_delay": "200ms"},
            "cgroup": cgroups, "task": tasks, "attach": profile, "event": events}


def _leaks(rng: random.Random, events: list, name: str, path: str, workers: list, end: float) -> None:
    """Some services leak: a worker grows until its limit is hit, and is
    restarted (a new instance) some minutes after each kill."""
    if rng.random() > 0.5:
        return
    step = rng.randint(8, 64) * M
    every = rng.uniform(5, 120)
    for gen in range(rng.randint(5, 40)):
        start = rng.uniform(0, end - 3600)
        task = f"{name}-leak-{gen}"
        events.append({"at": round(start, 3), "spawn": {"name": task, "cgroup": path,
                                                        "rss": rng.randint(50, 200) * M}})
        t = start
        for _ in range(rng.randint(10, 80)):
            t += every * rng.uniform(0.5, 1.5)
            events.append({"at": round(t, 3), "task": task, "alloc": step})
        events.append({"at": round(t + 1, 3), "task": task, "exit": True})


def _bursts(rng: random.Random, events: list, name: str, path: str, room: int, end: float) -> None:
    """Bursts of short-lived processes (a fork storm, a cron fan-out)."""
    for b in range(rng.randint(0, 12)):
        at = rng.uniform(0, end - 600)
        each = rng.randint(20, 80) * M
        count = max(2, int(room * rng.uniform(0.7, 1.8) // each))
        for i in range(min(count, 40)):
            task = f"{name}-burst-{b}-{i}"
            t = at + i * rng.uniform(0.01, 0.3)
            events.append({"at": round(t, 3), "spawn": {"name": task, "cgroup": path, "rss": each}})
            events.append({"at": round(t + rng.uniform(5, 60), 3), "task": task, "exit": True})


def _batch_jobs(rng: random.Random, cgroups: list, events: list, limit: int, end: float) -> None:
    """Batch jobs, each in its own scope, growing in chunks while it runs."""
    for j in range(rng.randint(5, 60)):
        at = rng.uniform(0, end - 7200)
        path = f"/batch.slice/job-{j}.scope"
        cgroups.append({"path": path, "oom_group": rng.random() < 0.2})
        task = f"job-{j}"
        events.append({"at": round(at, 3), "spawn": {"name": task, "cgroup": path,
                                                     "rss": rng.randint(100, 500) * M}})
        t, chunk = at, int(limit * rng.uniform(0.05, 0.2))
        for _ in range(rng.randint(3, 15)):
            t += rng.uniform(10, 300)
            events.append({"at": round(t, 3), "task": task, "alloc": chunk})
        events.append({"at": round(t + rng.uniform(10, 600), 3), "task": task, "exit": True})


def host_records(index: int, seed: int, days: int = 30, runner: str = "inprocess") -> tuple[str, list[bytes]]:
    """Host ``index``'s event log: its name and one JSON line per OOM, as the daemon writes them."""
    host = host_name(index, seed)
    scenario = _resolved(host_scenario(index, seed, days), f"<{host}>")
    # Snapshots on, as the daemon; a wall deadline far off, so a loaded machine
    # makes the same logs (the simulator's default 50 ms would depend on it).
    # The built-in policies run in this process ("inprocess", as `simulate
    # --in-process`): the sandbox's "worker" gives the same records, but its
    # start and a socket round trip per OOM cost as much as the rest of the
    # host's simulation (tests/unit/test_fleet.py checks the records are the same).
    scenario = dataclasses.replace(scenario, settings=dataclasses.replace(
        scenario.settings, snapshot=True, handler_deadline=30.0, runner=runner))
    return host, _lines(Simulator(scenario).run().ooms, host, random.Random(f"latency:{seed}:{index}"))


def _resolved(data: dict[str, Any], file: str) -> Scenario:
    """``resolve(data)``, its thousands of events made directly: the generic
    path parses each "at" and size as a config file's text (a third of the
    host's time); the generator's events are three plain shapes of numbers.
    The result is equal to resolve()'s (tests/unit/test_fleet.py)."""
    scenario = resolve({**data, "event": []}, file)
    return dataclasses.replace(scenario, events=[_event(e) for e in data["event"]])


def _event(e: dict[str, Any]) -> Event:
    spawn = e.get("spawn")
    if spawn is not None:
        return Event(float(e["at"]), spawn["name"], "spawn", spawn["rss"],
                     Task(spawn["name"], spawn["cgroup"], spawn["rss"]))
    if "alloc" in e:
        return Event(float(e["at"]), e["task"], "alloc", e["alloc"])
    return Event(float(e["at"]), e["task"], "exit")


def _lines(ooms: list, host: str, rng: random.Random) -> list[bytes]:
    encoder = msgspec.json.Encoder()
    out = []
    for record in ooms:
        at = EPOCH + timedelta(seconds=record.t)
        latency = round(rng.lognormvariate(1.3, 0.5), 2)
        record.host = host
        record.detected_at = at.isoformat(timespec="milliseconds")
        record.resolved_at = (at + timedelta(milliseconds=latency)).isoformat(timespec="milliseconds")
        record.latency_ms, record.dry_run = latency, False
        # The daemon encodes record.to_dict(); the names here are ASCII, so the
        # struct itself encodes to the same bytes, three times faster.
        out.append(encoder.encode(record) + b"\n")
    return out


def _scenario_of(index: int, seed: int, days: int) -> Scenario:   # for tests and debugging
    return resolve(host_scenario(index, seed, days), f"<{host_name(index, seed)}>")


def generate(out: Path, records: int, seed: int = 0, *, days: int = 30, workers: int | None = None,
             compress: bool = True) -> Iterator[tuple[Path, int]]:
    """Write hosts' logs into ``out`` until ``records`` records are written (the
    last host's log cut there); yields each file and its number of records."""
    out.mkdir(parents=True, exist_ok=True)
    left = records
    workers = workers or os.cpu_count() or 1
    # A window of hosts in flight, taken in the hosts' order (so the output is
    # the same whatever finishes first), refilled as each is written: bounded
    # memory, and no core waits for the slowest host of a batch.
    window = 4 * workers if workers > 1 else 1
    with ProcessPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        hosts = itertools.count()
        pending: deque[Future[tuple[str, list[bytes], bytes]]] = deque()
        while left > 0:
            while len(pending) < window:
                pending.append(pool.submit(_host_file, next(hosts), seed, days, compress))
            host, lines, data = pending.popleft().result()
            if not lines:
                continue
            if len(lines) > left:        # the last host, cut
                lines = lines[:left]
                data = _file_bytes(lines, compress)
            left -= len(lines)
            path = out / f"{host}.jsonl{'.gz' if compress else ''}"
            path.write_bytes(data)
            yield path, len(lines)
        for f in pending:
            f.cancel()


def _host_file(index: int, seed: int, days: int, compress: bool) -> tuple[str, list[bytes], bytes]:
    """What a worker makes: the host's name, its lines, and its file's bytes
    (compressed here, on the worker's core, not in the process writing them)."""
    host, lines = host_records(index, seed, days)
    return host, lines, _file_bytes(lines, compress)


def _file_bytes(lines: list[bytes], compress: bool) -> bytes:
    data = b"".join(lines)
    # mtime 0: the same seed gives byte-identical files; level 6 (gzip's own
    # default): 9 costs twice the CPU for a file 10 % smaller.
    return gzip.compress(data, compresslevel=6, mtime=0) if compress else data


class _Serial:
    """The pool's submit, run here and now (one worker)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    @staticmethod
    def submit(fn: Callable[..., Any], *args: Any) -> Future:
        f: Future = Future()
        f.set_result(fn(*args))
        return f


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="oomkit-fleet-gen", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="directory to write the hosts' logs into")
    p.add_argument("--records", type=int, default=10_000, help="OOM records in all (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=int, default=30, help="days of logs per host (default 30)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--no-gzip", action="store_true", help="plain .jsonl files")
    args = p.parse_args(argv)
    if args.records < 1 or args.days < 1:
        p.error("--records and --days must be at least 1")
    files = total = 0
    for _, n in generate(args.out, args.records, args.seed, days=args.days, workers=args.workers,
                         compress=not args.no_gzip):
        files, total = files + 1, total + n
    print(f"oomkit-fleet-gen: {total} records from {files} hosts in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
