#!/usr/bin/env python3
"""What one cgroup v2 *take* costs (a standing decision: the victim's rehearsal
and its successors', their grading and marks; ``V2Stack._decide``), and where
its time goes.

    python bench/profile_take.py                         # fake tree (any host): worker + in process
    python bench/profile_take.py --real                  # a real cgroup v2 memcg (the VM, as root)
    python bench/profile_take.py --profile --runner inprocess   # cProfile of the takes, top 30

A benchmark, not a test: it measures and prints.  The daemon is built as
``oomkit run`` builds it (``Daemon``, ``newest-task`` attached at the box,
``depth`` 8, the default), with a restorer that only remembers (nothing outlives the run
but the marks on its own tasks, which it kills).

* ``--fake`` (default): a fake cgroup2 tree and /proc in a temp dir, real file
  names and formats (as tests/unit), ``--tasks`` small tasks in ``/box/w``;
  pids above any pid_max, so no write can reach a real task.
* ``--real``: a fresh ``/oomkit-test-<random>/w`` memcg (cap 256M) on the cgroup
  v2 mount, ``--tasks`` ``sleep`` processes started here, one by one (so
  newest-task's order is theirs), w's ``memory.max`` 1 MiB over what they hold;
  everything removed afterwards.  In the VM:

      flock /tmp/oomkit-vm.lock /work/shared/vm/run-in-vm.sh -w "$PWD" -- \\
          env PYTHONPATH=$PWD/src python3 bench/profile_take.py --real
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import platform
import pstats
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import fake_v2  # bench/: the fake tree, shared with bench_v2_scale.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

MiB = 1 << 20


@contextlib.contextmanager
def fake_tree(n: int) -> Iterator[tuple[dict, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="oomkit-take-"))
    try:
        mount, proc = tmp / "cg", tmp / "proc"
        pids = [5_000_001 + i for i in range(n)]
        fake_v2.root(mount, proc)
        fake_v2.cgroup(mount, "/box", 60 * MiB, 256 * MiB)
        fake_v2.cgroup(mount, "/box/w", 60 * MiB, 64 * MiB, pids)
        fake_v2.task(proc, pids[0], "old", 40 * 1024, 1000)          # older and larger
        for i, pid in enumerate(pids[1:]):
            fake_v2.task(proc, pid, f"small{i}", 1024, 2000 + i)
        yield {"mount": str(mount), "proc": str(proc), "event_log": str(tmp / "ev.jsonl")}, "/box/w"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def real_tree(n: int) -> Iterator[tuple[dict, str]]:
    from oomkit.linux.cgroupfs import CgroupFS, detect

    version, mount = detect("v2")
    if version != "v2":
        sys.exit("oomkit: --real needs a cgroup v2 hierarchy (run it in the VM)")
    fs = CgroupFS(mount, "v2")
    root = f"/oomkit-test-{secrets.token_hex(4)}"
    w = root + "/w"
    if "memory" not in fs.read("/", "cgroup.subtree_control").split():
        fs.write("/", "cgroup.subtree_control", "+memory")
    fs.mkdir(root)
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="oomkit-take-"))
    try:
        fs.write(root, "memory.max", str(256 * MiB))
        fs.write(root, "cgroup.subtree_control", "+memory")
        fs.mkdir(w)
        for _ in range(n):
            p = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)
            procs.append(p)
            fs.write(w, "cgroup.procs", str(p.pid))
            time.sleep(0.02)            # distinct start times: newest-task's order
        # A limit just over what the tasks hold (rss counts shared pages in each:
        # more than memory.current), as in the bench's workloads: the successors
        # have little room to grow, so grade() places all depth-1 of them.
        rss = sum(int(Path(f"/proc/{p.pid}/statm").read_text().split()[1]) * 4096 for p in procs)
        current = int(fs.read(w, "memory.current"))
        fs.write(w, "memory.max", str(max(rss, current) + MiB))
        yield {"event_log": str(tmp / "ev.jsonl")}, w
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGKILL)
            p.wait()
        for path in (w, root):
            for _ in range(100):
                try:
                    fs.rmdir(path)
                    break
                except Exception:  # noqa: BLE001 - busy while the killed tasks go
                    time.sleep(0.05)
        shutil.rmtree(tmp, ignore_errors=True)


# -- the measure ------------------------------------------------------------------------


def measure(daemon_keys: dict, box: str, runner: str, depth: int, repeat: int,
            profile: bool, top: int) -> dict:
    from oomkit.backends.cgroup_v2 import zone
    from oomkit.config.daemon import resolve
    from oomkit.daemon.main import Daemon

    config = resolve({"daemon": {"cgroup": "v2", "handler_deadline": "10s", "policy_runner": runner,
                                 "depth": depth, **daemon_keys},
                      "attach": [{"cgroup": box, "policy": "newest-task"}]})
    d = Daemon(config, restorer=fake_v2.Holder())
    try:
        d.reconcile()
        stack = d.stack
        ep = stack.episodes[box]
        ep.in_zone = True
        size = zone(d.fs.limit(box) or 64 * MiB, None)
        for _ in range(3):                  # warm: the worker's imports, the task cache
            stack._decide(ep, size)
        armed = sorted((stack.armed[p].value, p) for p in ep.armed)
        times = []
        prof = cProfile.Profile() if profile else None
        for _ in range(repeat):
            t0 = time.perf_counter()
            if prof is not None:
                prof.enable()
            stack._decide(ep, size)
            if prof is not None:
                prof.disable()
            times.append(time.perf_counter() - t0)
        if prof is not None:
            pstats.Stats(prof).sort_stats("cumulative").print_stats(top)
        return {"runner": runner, "armed": armed, "ranks": len(ep.ranks),
                "median_ms": statistics.median(times) * 1000,
                "p90_ms": sorted(times)[int(len(times) * 0.9)] * 1000,
                "min_ms": min(times) * 1000}
    finally:
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--real", action="store_true", help="a real cgroup v2 memcg (root, the VM)")
    ap.add_argument("--tasks", type=int, default=24)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--runner", choices=["worker", "inprocess", "both"], default="both")
    ap.add_argument("--profile", action="store_true", help="cProfile the takes (cumulative)")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    runners = ["worker", "inprocess"] if args.runner == "both" else [args.runner]
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.node()}, kernel {platform.release()}, "
          f"Python {platform.python_version()}, nproc {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    print(f"# {'real v2 memcg' if args.real else 'fake tree'}, {args.tasks} tasks, "
          f"newest-task, depth {args.depth}, {args.repeat} takes")
    tree = real_tree if args.real else fake_tree
    for runner in runners:
        with tree(args.tasks) as (keys, box):
            r = measure(keys, box, runner, args.depth, args.repeat, args.profile, args.top)
        print(f"{r['runner']:>9}: take median {r['median_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, "
              f"min {r['min_ms']:.2f} ms; {r['ranks']} ranks, marks {r['armed']}")


if __name__ == "__main__":
    main()
