"""Fleet evaluation throughput (issue 14): records replayed per second by
``oomkit evaluate`` against two candidates (and the kernel alone, always a
column), on one process, on every core (ProcessPoolExecutor), and on a Dask
LocalCluster of 2 workers; 10^4, 10^5 and 10^6 records of the synthetic
fleet; the peak memory (RSS) of each worker (and of the main process, which
plans the units and merges their summaries).

    python bench/bench_fleet.py                      # 10^4 and 10^5
    nice -n 10 python bench/bench_fleet.py 1000000 --modes cores,dask

Each measurement runs in a fresh process (so its peak RSS is its own); the
synthetic logs are made once per size and kept in --data (default
/tmp/oomkit-fleet-bench).  Asserts nothing; prints a Markdown table with the
machine and date (and appends it to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from oomkit.fleet.evaluate import Attachment, Candidate, kernel_alone  # noqa: E402

PROTECT = ["^postgres", "^kafka"]
CANDIDATES = [kernel_alone(PROTECT),
              Candidate.of("/=prefer-avoid", [Attachment("/", "prefer-avoid",
                                                         {"prefer": ["/batch.slice/*"], "avoid": PROTECT})]),
              Candidate.of("/=newest-task", [Attachment("/", "newest-task")], PROTECT)]


def data_for(records: int, base: Path) -> tuple[Path, float]:
    """The synthetic fleet of ``records`` records (made once); seconds it took, 0 if kept."""
    out = base / f"{records}-seed0"
    done = out / ".complete"
    if done.exists():
        return out, 0.0
    from oomkit.fleet.generate import generate

    start = time.perf_counter()
    n = sum(k for _, k in generate(out, records, seed=0))
    assert n == records, n
    done.write_text(str(n))
    return out, time.perf_counter() - start


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def copies_of(records: int, copies: int, base: Path) -> tuple[Path, float]:
    """``records`` as ``copies`` hard-linked copies of a fleet of ``records // copies``
    (each copy's files under their own directory: other sources, the same work per record)."""
    src, made = data_for(records // copies, base)
    out = base / f"{records}-as-{copies}x{records // copies}"
    if not (out / ".complete").exists():
        for i in range(copies):
            (out / f"copy-{i}").mkdir(parents=True, exist_ok=True)
            for f in src.glob("*.jsonl*"):
                target = out / f"copy-{i}" / f.name
                if not target.exists():
                    os.link(f, target)
        (out / ".complete").write_text(str(records))
    return out, made


def one(mode: str, data: str) -> dict:
    """One measurement, in this (fresh) process.  The wall time counts planning
    and the run, not a Dask cluster's start (reported apart)."""
    from oomkit.fleet import run, sources

    start = time.perf_counter()
    units = sources.plan(sources.expand([data]))
    setup = 0.0
    if mode == "serial":
        summary = run.run_serial(units, CANDIDATES)
        peaks = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]
        cpu = _cpu(resource.RUSAGE_SELF)
        workers = 1
    elif mode == "cores":
        workers = os.cpu_count() or 1
        summary = run.run_local(units, CANDIDATES, workers=workers)
        # the largest child's peak (getrusage: ru_maxrss of the children is their maximum)
        peaks = [resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]
        cpu = _cpu(resource.RUSAGE_CHILDREN)
    else:
        from distributed import Client, LocalCluster, as_completed

        workers = 2
        t = time.perf_counter()
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            setup = time.perf_counter() - t
            before = client.run(lambda: _cpu(resource.RUSAGE_SELF))
            summary = run.gather(client, as_completed, units, CANDIDATES, None, None)
            peaks = list(client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values())
            after = client.run(lambda: _cpu(resource.RUSAGE_SELF))
            cpu = sum(after.values()) - sum(before.values())
    wall = time.perf_counter() - start - setup
    return {"mode": mode, "workers": workers, "records": summary.records, "replayed": summary.replayed,
            "wall": wall, "setup": setup, "rate": summary.records / wall, "cpu": cpu, "peak_kib": peaks,
            "main_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "columns": {k: v.processes_killed for k, v in summary.columns.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000])
    p.add_argument("--modes", default="serial,cores,dask")
    p.add_argument("--copies", type=int, default=1,
                   help="make each size from this many copies of a fleet of size/copies (generating 10^6 "
                        "distinct records takes ~13 CPU-minutes)")
    p.add_argument("--data", type=Path, default=Path("/tmp/oomkit-fleet-bench"))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS-fleet.md")
    p.add_argument("--_one", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._one:
        print(json.dumps(one(*args._one)))
        return
    rows = []
    for size in args.sizes:
        data, made = data_for(size, args.data) if args.copies == 1 else copies_of(size, args.copies, args.data)
        if made:
            print(f"made {size:,} records in {made:.0f} s ({size / made:,.0f} records/s)", file=sys.stderr)
        results = {}
        for mode in args.modes.split(","):
            load0 = os.getloadavg()[0]
            out = subprocess.run([sys.executable, __file__, "--_one", mode, str(data)], check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            r["load"] = (load0, os.getloadavg()[0])
            results[mode] = r
            print(f"{size:>9,} {mode:7} {r['wall']:8.1f} s {r['rate']:9,.0f} records/s "
                  f"{r['records'] / r['cpu']:7,.0f} per CPU-s "
                  f"peak {max(r['peak_kib']) / 1024:.0f} MiB (main {r['main_kib'] / 1024:.0f}) "
                  f"load {r['load'][0]:.1f} → {r['load'][1]:.1f}", file=sys.stderr, flush=True)
        same = len({json.dumps(r["columns"], sort_keys=True) for r in results.values()}) == 1
        for mode, r in results.items():
            what = f"{size:,}" + (f" ({args.copies} copies of {size // args.copies:,})" if args.copies > 1 else "")
            rows.append(f"| {what} | {mode} ({r['workers']}) | {r['wall']:.1f} s"
                        + (f" (+{r['setup']:.1f} s start)" if r["setup"] else "")
                        + f" | {r['rate']:,.0f} | {r['records'] / r['cpu']:,.0f} | "
                        f"{r['replayed'] * len(CANDIDATES):,} | "
                        f"{', '.join(f'{k / 1024:.0f}' for k in r['peak_kib'])} | {r['main_kib'] / 1024:.0f} | "
                        f"{'yes' if same else 'NO'} | "
                        f"{r['load'][0]:.1f} → {r['load'][1]:.1f} |")
    load = os.getloadavg()
    head = (f"\n## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}, load average "
            f"{load[0]:.1f} at the end (a machine shared with other agents)\n\n"
            "Against two candidates (prefer-avoid, newest-task) and the kernel alone: 3 replays per record.\n\n"
            "| records | run (workers) | wall | records/s | records per CPU-second | replays | "
            "peak RSS per worker, MiB | main process, MiB | same result | load average (1 min), start → end |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    table = head + "\n".join(rows) + "\n"
    print(table)
    with open(args.out, "a") as f:
        f.write(table)


if __name__ == "__main__":
    main()
