#!/usr/bin/env python3
"""What a managed memcg full of page cache costs the v2 daemon: wake-ups,
looks and takes per second, and the daemon's CPU, in the VM.

    python bench/bench_v2_cache.py                       # this checkout's src, 6.1 guest
    python bench/bench_v2_cache.py --against REV -K 6.12 # and REV's src, same boot

memory.current counts page cache, so a memcg whose workload reads more than its
limit sits at ``memory.max`` for good: it is in its zone (a standing decision is
kept and taken again every ``rearm``), and every charge that finds it full
reclaims and counts a ``max`` event in ``memory.events`` (mm/memcontrol.c
``try_charge_memcg()`` -> ``memcg_memory_event(MEMCG_MAX)``), whose inotify
notification the kernel sends at most every 10 ms (kernel/cgroup/cgroup.c
``cgroup_file_notify()``, ``CGROUP_FILE_NOTIFY_MIN_INTV``).

A benchmark, not a test: it measures and prints.  In the guest, for each src
and each workload, a fresh ``/oomkit-test-<random>/w`` (``memory.max`` 48M)
holds a sleeper and an old task of 16M, and:

* ``idle``: nothing else (usage far below the zone: the floor);
* ``read``: ``cat`` reads a 96M file over and over (``read()``: page cache
  charged to w, none of it in any task's rss);
* ``mmap``: bench_v2's thrash task maps the same file and reads every page
  (file pages in its rss, which move as the kernel reclaims them).

The daemon is built as ``oomkit run`` builds it (``newest-task`` attached at
the box, the shipped defaults but the TCG-scaled handler deadline and
watchdog), in this process, with counters around the v2 stack's inotify
handler, looks and takes; it runs ``--seconds`` (emulated time) per
workload.  CPU is the daemon's and its policy worker's (utime + stime): under
TCG every figure is many times a host's, so compare rows of one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import bench_v2  # noqa: E402  (the VM, the thrash task and file, the cgroup helpers)
from bench_v2 import CGROOT, TCG_SCALE, MiB, cg_write, remove_cgroup  # noqa: E402

WORKLOADS = ("idle", "read", "mmap")


# -- guest: one src, one workload -----------------------------------------------------


def _cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (/proc/PID/stat fields 14, 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(w: Path, argv: list[str]) -> subprocess.Popen:
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         start_new_session=True)
    cg_write(w, "cgroup.procs", str(p.pid))
    return p


def one(workload: str, seconds: float) -> dict:
    """In the guest, with this process's oomkit: the counts for ``workload``."""
    from oomkit.backends import cgroup_v2
    from oomkit.config.daemon import resolve
    from oomkit.daemon.main import Daemon

    if "memory" not in (CGROOT / "cgroup.subtree_control").read_text().split():
        cg_write(CGROOT, "cgroup.subtree_control", "+memory")
    box = CGROOT / f"oomkit-test-{secrets.token_hex(4)}"
    w = box / "w"
    tmp = Path(tempfile.mkdtemp(prefix="bench-v2-cache-"))
    procs: list[subprocess.Popen] = []
    counts = {"wakes": 0, "looks": 0, "takes": 0}
    d = None
    try:
        box.mkdir()
        cg_write(box, "memory.max", str(256 * MiB))
        cg_write(box, "cgroup.subtree_control", "+memory")
        w.mkdir()
        cg_write(w, "memory.max", str(48 * MiB))
        procs.append(_start(w, ["sleep", "3600"]))
        procs.append(_start(w, [str(bench_v2.BIN / "oldjob"), "16", "0", "0", "16"]))
        config = resolve({"daemon": {"cgroup": "v2", "event_log": str(tmp / "events.jsonl"),
                                     "state_dir": str(tmp / "state"),
                                     "handler_deadline": f"{50 * TCG_SCALE}ms",
                                     "watchdog_timeout": f"{TCG_SCALE}s"},
                          "attach": [{"cgroup": "/" + box.name, "policy": "newest-task"}]})
        d = Daemon(config)
        stack = d.stack
        for name, key in (("_on_inotify", "wakes"), ("_look", "looks"), ("_decide", "takes")):
            orig = getattr(stack, name)

            def counted(*args, _orig=orig, _key=key, **kwargs):
                counts[_key] += 1
                return _orig(*args, **kwargs)

            setattr(stack, name, counted)
        d.start()
        if workload == "read":
            procs.append(_start(w, ["sh", "-c", f"while :; do cat {bench_v2.THRASH_FILE}; done"]))
        elif workload == "mmap":
            procs.append(_start(w, [str(bench_v2.BIN / "thrash"), str(bench_v2.THRASH_FILE),
                                    str(int(seconds) + 60)]))
        time.sleep(5.0)         # the workload reaches its steady state (the page cache fills)
        for k in counts:
            counts[k] = 0
        # the daemon's own processes (the zygote, the policy workers): not the workload's
        ours = {p.pid for p in procs}
        workers = [p for p in _children(os.getpid(), skip=ours)]
        cpu0 = _cpu(os.getpid()) + sum(_cpu(p) for p in workers)
        t0 = time.monotonic()
        stop = threading.Timer(seconds, lambda: setattr(d, "running", False))
        stop.start()
        d.running = True
        d.loop()
        wall = time.monotonic() - t0
        cpu = _cpu(os.getpid()) + sum(_cpu(p) for p in workers) - cpu0
        ep = stack.episodes.get("/" + box.name + "/w") or next(iter(stack.episodes.values()), None)
        usage = int((w / "memory.current").read_text())
        return {"workload": workload, "wall": wall, "cpu": cpu, **counts,
                "in_zone": bool(ep and ep.in_zone), "usage_mib": usage / MiB,
                "workers": len(workers), "version": cgroup_v2.__file__}
    finally:
        if d is not None:
            d.stop()
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
        remove_cgroup(w)
        remove_cgroup(box)
        for p in procs:
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _children(pid: int, skip: set[int]) -> list[int]:
    """Every process below ``pid`` but ``skip`` and theirs (the zygote, the policy workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            if k in skip:
                continue
            out.append(k)
            todo.append(k)
    return out


def guest(srcs: list[str], workloads: list[str], seconds: float, out: Path) -> None:
    rows = []
    for src in srcs:
        for wl in workloads:
            # The file's pages outlive a row's memcg (reparented up to the root,
            # mm/memcontrol.c memcg_reparent_objcgs()) and a later reader finds
            # them cached, charged to no memcg of its own: drop them (the guest's).
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
            r = subprocess.run([sys.executable, __file__, "--one", wl, "--seconds", str(seconds)],
                               env=dict(os.environ, PYTHONPATH=src), capture_output=True, text=True)
            if r.returncode != 0:
                rows.append({"src": src, "workload": wl, "error": r.stderr[-1500:]})
            else:
                rows.append({"src": src, **json.loads(r.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), flush=True)
    out.write_text(json.dumps({"kernel": platform.release(), "rows": rows}))


# -- host ------------------------------------------------------------------------------


def worktree(rev: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="oomkit-cache-rev-", dir="/var/tmp"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), rev],
                   check=True)
    return path


def table(doc: dict, seconds: float) -> str:
    lines = [f"kernel {doc['kernel']}, {seconds:g} s (emulated) per row",
             "| src | workload | in zone | wake-ups/s | looks/s | takes/s | CPU % (daemon + worker) |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if "error" in r:
            lines.append(f"| {r['src']} | {r['workload']} | failed: {r['error'].splitlines()[-1:]} |||||")
            continue
        wall = r["wall"] or 1.0
        lines.append(f"| {r['src']} | {r['workload']} | {'yes' if r['in_zone'] else 'no'} | "
                     f"{r['wakes'] / wall:.1f} | {r['looks'] / wall:.1f} | {r['takes'] / wall:.1f} | "
                     f"{100 * r['cpu'] / wall:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-K", "--kernel", default="6.1")
    ap.add_argument("--against", metavar="REV", help="also measure REV's src, in the same boot")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--one", help=argparse.SUPPRESS)          # guest: one row, JSON out
    ap.add_argument("--guest", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    workloads = args.workloads.split(",")
    if args.one:
        print(json.dumps(one(args.one, args.seconds)))
        return
    if args.guest:
        guest(args.guest, workloads, args.seconds, Path(args.out))
        return
    bench_v2.build()
    srcs = [str(REPO / "src")]
    tree = worktree(args.against) if args.against else None
    if tree is not None:
        srcs.append(str(tree / "src"))
    out = bench_v2.OUT / f"cache-{secrets.token_hex(4)}.json"
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}, host {platform.node()}, "
          f"load {os.getloadavg()[0]:.2f}; srcs {srcs}")
    try:
        timeout = int(len(srcs) * len(workloads) * (args.seconds + 90) + 120)
        subprocess.run(["flock", bench_v2.LOCK, str(bench_v2.VM), "-K", args.kernel, "-m", "1G",
                        "-t", str(timeout), "-w", str(bench_v2.OUT), "--",
                        sys.executable, __file__, "--guest", *srcs, "--workloads", args.workloads,
                        "--seconds", str(args.seconds), "--out", str(out)], check=True)
        print(table(json.loads(out.read_text()), args.seconds))
    finally:
        if tree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                           check=False)


if __name__ == "__main__":
    main()
