#!/usr/bin/env python3
"""What a cgroup v2 take costs when many managed memcgs stand near their limits
at once, and a round of takes over all of them.

    python bench/bench_v2_scale.py                          # flat and nested, N = 10, 100, 1000
    python bench/bench_v2_scale.py --against main           # the same on main's src, alternating
    python bench/bench_v2_scale.py --sizes 1000 --profile   # cProfile of one round at each N

A benchmark, not a test: it measures and prints.  The daemon is built as
``oomkit run`` builds it (``Daemon``, the policy in its worker by default,
``newest-task``, ``depth`` 8), over a fake cgroup2 tree and /proc in a temp dir
(real file names and formats, as tests/unit and bench/profile_take.py; pids
above any pid_max, so no write can reach a real task), with a restorer that
only remembers.  Two shapes of N managed memcgs, each near its limit (60 of
64 MiB) with ``--tasks`` tasks (an older 40 MiB one, then 8 MiB ones):

* ``flat``: ``/batch/job-0`` .. ``job-{N-1}``, attached as ``/batch/*`` (a
  batch host with many containers): no two decisions nested.
* ``nested``: N leaves under ceil(N / ``--per-parent``) parents
  ``/batch/p-J/leaf-K``, the parents attached (``/batch/*``, their leaves
  managed with them), each parent 16 MiB over its leaves' usage: every leaf's
  decision is placed under its parent's (``place()``).

Timed (``time.perf_counter``): (a) one take of one memcg (a leaf in the
middle; for nested also a parent): ``V2Stack._look`` with its rearm due, as
the timer runs it (read its files, rehearse, arm, place and settle the nested
decisions); (b) a round: every memcg's rearm due, one ``on_timer()``: N
takes.  Each (shape, N, source tree) runs in a fresh process; with
``--against REV`` that revision's ``src`` (``git archive``) is measured in the
same run, alternating with this tree's, so both see the same load.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import gc
import hashlib
import io
import json
import math
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import fake_v2  # bench/: the fake tree, shared with profile_take.py

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
PID0 = 5_000_001                    # above any pid_max (4194304)


# -- the fake tree ------------------------------------------------------------------------


class Tree:
    def __init__(self, root: Path) -> None:
        self.mount, self.proc = root / "cg", root / "proc"
        self.next_pid, self.next_start = PID0, 1000

    def cgroup(self, rel: str, current: int, limit: int | None, procs=()) -> None:
        fake_v2.cgroup(self.mount, rel, current, limit, procs)

    def task(self, name: str, rss_kb: int) -> int:
        pid, start = self.next_pid, self.next_start
        self.next_pid, self.next_start = pid + 1, start + 1     # newest-task's order: creation
        fake_v2.task(self.proc, pid, name, rss_kb, start)
        return pid

    def job(self, rel: str, tasks: int) -> None:
        """A memcg at 60 of 64 MiB: an older 40 MiB task, then 8 MiB ones."""
        name = rel.rsplit("/", 1)[1]
        pids = [self.task(f"{name}-old", 40 * 1024)]
        pids += [self.task(f"{name}-{i}", 8 * 1024) for i in range(tasks - 1)]
        self.cgroup(rel, 60 * MiB, 64 * MiB, pids)


@contextlib.contextmanager
def fake_tree(shape: str, n: int, tasks: int, per_parent: int) -> Iterator[tuple[dict, list[str], list[str]]]:
    """The tree, and the leaves and parents (nested) it made."""
    tmp = Path(tempfile.mkdtemp(prefix="oomkit-scale-"))
    try:
        t = Tree(tmp)
        fake_v2.root(t.mount, t.proc)
        t.cgroup("/batch", 0, None)
        leaves: list[str] = []
        parents: list[str] = []
        if shape == "flat":
            for i in range(n):
                leaves.append(f"/batch/job-{i}")
                t.job(leaves[-1], tasks)
        else:
            for j in range(math.ceil(n / per_parent)):
                parent = f"/batch/p-{j}"
                kids = [f"{parent}/leaf-{k}" for k in range(min(per_parent, n - j * per_parent))]
                t.cgroup(parent, len(kids) * 60 * MiB, len(kids) * 60 * MiB + 16 * MiB)
                for kid in kids:
                    t.job(kid, tasks)
                parents.append(parent)
                leaves += kids
        yield ({"mount": str(t.mount), "proc": str(t.proc), "event_log": str(tmp / "ev.jsonl")},
               leaves, parents)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- one measurement (a child process) --------------------------------------------------


def stats(times: list[float]) -> dict:
    s = sorted(times)
    return {"n": len(s), "median_ms": statistics.median(s) * 1000,
            "p99_ms": s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)] * 1000, "min_ms": s[0] * 1000}


def measure(shape: str, n: int, args) -> dict:
    from oomkit.config.daemon import resolve
    from oomkit.daemon.main import Daemon

    with fake_tree(shape, n, args.tasks, args.per_parent) as (keys, leaves, parents):
        config = resolve({"daemon": {"cgroup": "v2", "handler_deadline": "10s",
                                     "policy_runner": args.runner, "depth": args.depth, **keys},
                          "attach": [{"cgroup": "/batch/*", "policy": "newest-task"}]})
        d = Daemon(config, restorer=fake_v2.Holder())
        try:
            t0 = time.perf_counter()
            d.reconcile()                   # takes every memcg: each is near its limit
            start = time.perf_counter() - t0
            stack = d.stack
            eps = stack.episodes
            assert len(eps) == n + len(parents), (len(eps), n, len(parents))
            armed = sum(1 for e in eps.values() if e.is_armed)
            held = sum(1 for e in eps.values() if e.held is not None)

            def take(path: str) -> float:
                eps[path].next_take = 0.0
                t = time.perf_counter()
                stack._look(path)
                return time.perf_counter() - t

            def one(path: str) -> dict:
                for _ in range(3):
                    take(path)              # warm
                return stats([take(path) for _ in range(args.takes)])

            out = {"shape": shape, "n": n, "parents": len(parents), "episodes": len(eps),
                   "armed": armed, "held": held, "start_s": start,
                   "take": one(leaves[len(leaves) // 2])}
            if parents:
                out["parent_take"] = one(parents[len(parents) // 2])

            gc_time = [0.0, 0.0]            # the cyclic collector's pauses: total, start of one

            def on_gc(phase: str, info: dict) -> None:
                now = time.perf_counter()
                if phase == "start":
                    gc_time[1] = now
                else:
                    gc_time[0] += now - gc_time[1]

            def round_() -> float:
                for e in eps.values():
                    e.next_take = 0.0
                t = time.perf_counter()
                stack.on_timer()
                return time.perf_counter() - t

            round_()                        # a warm-up
            gc.callbacks.append(on_gc)
            rounds = [round_() for _ in range(args.rounds)]
            gc.callbacks.remove(on_gc)
            out["gc_per_round_ms"] = gc_time[0] / args.rounds * 1000
            prof = None
            if args.profile:                # one more, profiled
                prof = cProfile.Profile()
                prof.runcall(round_)
            out["round"] = stats(rounds)
            out["per_take_in_round_ms"] = out["round"]["median_ms"] / len(eps)
            out["armed_after"] = sum(1 for e in eps.values() if e.is_armed)
            # Every task's oom_score_adj after the rounds: the same digest, the same decisions.
            proc = Path(keys["proc"])
            adjs = sorted((int(p.name), (p / "oom_score_adj").read_text().strip())
                          for p in proc.iterdir() if p.name.isdigit())
            out["marks"] = hashlib.sha1(repr(adjs).encode()).hexdigest()[:8]
            out["marked"] = sum(1 for _pid, adj in adjs if adj != "0")
            if prof is not None:
                buf = io.StringIO()
                st = pstats.Stats(prof, stream=buf)
                st.sort_stats("tottime").print_stats(args.top)
                st.sort_stats("cumulative").print_stats(args.top)
                out["profile"] = buf.getvalue()
            return out
        finally:
            d.stop()


# -- the parent: source trees, children, the table ---------------------------------------


def git(*argv: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *argv], check=True, capture_output=True,
                          text=True).stdout.strip()


def extract(rev: str, into: Path) -> Path:
    """``rev``'s src/ in ``into`` (git archive), for a child's PYTHONPATH."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def child(src: Path, shape: str, n: int, args) -> dict:
    argv = [sys.executable, __file__, "--_one", f"{shape}:{n}", "--tasks", str(args.tasks),
            "--per-parent", str(args.per_parent), "--depth", str(args.depth), "--runner", args.runner,
            "--takes", str(args.takes), "--rounds", str(args.rounds), "--top", str(args.top)]
    if args.profile:
        argv.append("--profile")
    env = {**os.environ, "PYTHONPATH": str(src)}
    res = subprocess.run(argv, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"oomkit: the measurement {shape}:{n} failed (rc {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{now}, {model}, nproc {os.cpu_count()}, kernel {platform.release()}, "
            f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}")


def table(results: list[dict]) -> str:
    rows = ["| tree | shape | N (episodes) | armed / held | one take, median (p99) | "
            "a parent's take, median (p99) | a round of N takes, median (p99) | per take in a round | "
            "gc in a round, mean | tasks marked (digest) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t, rd = r["take"], r["round"]
        pt = r.get("parent_take")
        parent = f"{pt['median_ms']:.1f} ms ({pt['p99_ms']:.1f})" if pt else "-"
        rows.append(f"| {r['tree']} | {r['shape']} | {r['n']} ({r['episodes']}) | {r['armed']} / {r['held']} "
                    f"| {t['median_ms']:.2f} ms ({t['p99_ms']:.2f}) "
                    f"| {parent} "
                    f"| {rd['median_ms'] / 1000:.3f} s ({rd['p99_ms'] / 1000:.3f}) "
                    f"| {r['per_take_in_round_ms']:.2f} ms | {r['gc_per_round_ms'] / 1000:.3f} s "
                    f"| {r['marked']} ({r['marks']}) |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,100,1000", help="N, comma-separated (default 10,100,1000)")
    ap.add_argument("--shapes", default="flat,nested", help="flat, nested or both (default)")
    ap.add_argument("--tasks", type=int, default=3, help="tasks per memcg (default 3)")
    ap.add_argument("--per-parent", type=int, default=100, help="nested: leaves per parent (default 100)")
    ap.add_argument("--depth", type=int, default=8, help="[daemon] depth (default 8, the default)")
    ap.add_argument("--runner", choices=["worker", "inprocess"], default="worker",
                    help="policy_runner (default worker, the daemon's default)")
    ap.add_argument("--takes", type=int, default=50, help="repeats of the one take (default 50)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds, after one warm-up (default 5)")
    ap.add_argument("--against", metavar="REV", help="also measure REV's src (git archive), alternating")
    ap.add_argument("--profile", action="store_true", help="cProfile one more round (tottime, cumulative)")
    ap.add_argument("--top", type=int, default=25, help="profile lines (default 25)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--_one", metavar="SHAPE:N", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        import logging
        logging.getLogger("oomkit").setLevel(logging.WARNING)
        shape, n = args._one.split(":")
        print(json.dumps(measure(shape, int(n), args)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    shapes = [s for s in args.shapes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="oomkit-scale-src-") as tmp:
        here = git("rev-parse", "--short", "HEAD") + ("+" if git("status", "--porcelain", "src") else "")
        trees = [(f"this tree ({here})", REPO / "src")]
        if args.against:
            rev = git("rev-parse", "--short", args.against)
            trees.insert(0, (f"{args.against} ({rev})", extract(rev, Path(tmp))))
        results = []
        for shape in shapes:
            for n in sizes:
                for label, src in trees:     # alternating: both trees see the same load
                    r = child(src, shape, n, args)
                    r["tree"] = label
                    results.append(r)
                    print(f"# {label}, {shape}, N = {n}: take {r['take']['median_ms']:.2f} ms, "
                          f"round {r['round']['median_ms'] / 1000:.3f} s", file=sys.stderr, flush=True)
                    if args.profile:
                        print(f"\n## profile: {label}, {shape}, N = {n}, one round\n{r.pop('profile')}")
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"# {machine()}")
    print(f"# fake cgroup2 tree, {args.tasks} tasks per memcg, newest-task, depth {args.depth}, "
          f"policy_runner {args.runner}; one take: {args.takes} repeats, a round: {args.rounds}")
    print(table(results))


if __name__ == "__main__":
    main()
