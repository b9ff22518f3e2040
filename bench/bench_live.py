#!/usr/bin/env python3
"""Benchmarks of oomkit on this machine's real cgroup v1 memcgs (root needed).

Not a test: it measures and reports, and asserts nothing about time.

  latency   reaction latency: oomkit (largest-task) against the kernel's OOM
            killer, alternating trials with the same 64 MiB hog in a 32 MiB
            memcg, with 1, 100 and 1,000 managed memcgs and 5,000 sleepers
  idle      the daemon's RSS and CPU over 60 s with 1,000 managed memcgs
  scaling   context build + decision for one memcg OOM in a subtree of 100,
            1,000 and 10,000 real tasks (kernel-default, largest-task, dry
            run), and the simulator at the same sizes; plot in scaling.png
  storm     100 memcgs hitting their limits within one second
  all       every one of them, in that order

Usage:  sudo python bench/bench_live.py latency|idle|scaling|storm|all [--quick]
Each writes its table into bench/RESULTS.md (its own section, replaced).

Safety (the rules of tests/helpers/memcg.py): every cgroup is made under one
fresh ``/oomkit-bench-<random>`` parent with a hard cap, and removed at the
end, also on failure, SIGINT, SIGTERM or SIGHUP; the daemon manages only
cgroups below it; every hog runs in a limited memcg of ours; only processes
we started are killed, by pidfd.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import resource
import secrets
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from oomkit.backends.base import OOMEvent
from oomkit.backends.cgroup_v1 import CgroupV1Backend
from oomkit.engine.chain import Engine, EngineSettings
from oomkit.errors import KernelError, TaskGone
from oomkit.linux import notify
from oomkit.linux import pidfd as _pidfd
from oomkit.linux.cgroupfs import CgroupFS, detect
from oomkit.linux.procfs import ProcFS
from oomkit.policies import make_policy

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
PLOT = HERE / "scaling.png"
MiB = 1 << 20
PARENT_CAP = 3 << 30          # everything of ours, sleepers' kernel memory included
HZ = os.sysconf("SC_CLK_TCK")

sys.path.insert(0, str(HERE))
import bench_sim  # noqa: E402  (the simulator's decision benchmark, reused)

# The hog, the pidfd-owned process and the waiting helpers are the live tests'
# own (tests/helpers): one copy, with their safety rules.
sys.path.insert(0, str(HERE.parent / "tests"))
from helpers.daemon import read_event_log, wait_event_log  # noqa: E402
from helpers.memcg import rmdir_patiently  # noqa: E402
from helpers.procs import Proc, children_of, end_by_pidfd, hog_argv, signal_pidfd, wait_for_line  # noqa: E402

# -- the processes we start ----------------------------------------------------------

# The sleeper factory: a static C process that, on "C <cgroup.procs>", moves
# itself into that cgroup, and on "F <n>" forks n children there that pause()
# forever (a few pages each) and die with it (PR_SET_PDEATHSIG).
SLEEPER_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
int main(void) {
    char line[4096];
    pid_t me = getpid();
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (line[0] == 'C') {
            int fd = open(line + 2, O_WRONLY);
            int ok = fd >= 0 && write(fd, "0\n", 2) == 2;
            if (fd >= 0) close(fd);
            printf(ok ? "ok\n" : "err\n");
        } else if (line[0] == 'F') {
            long n = atol(line + 2), made = 0;
            for (long i = 0; i < n; i++) {
                pid_t p = fork();
                if (p == 0) {
                    prctl(PR_SET_PDEATHSIG, SIGKILL);
                    if (getppid() != me) _exit(0);
                    close(0); close(1); close(2);
                    for (;;) pause();
                }
                if (p > 0) made++;
            }
            printf("%ld\n", made);
        }
    }
    return 0;
}
"""


def pctl(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); with n = 30, p99 is the maximum."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summary(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": statistics.median(xs), "p99": pctl(xs, 0.99),
            "min": min(xs), "max": max(xs)}


def fmt(s: dict, key: str = "median") -> str:
    return f"{s[key]:.2f}" if s.get("n") else "-"


class Bench:
    """Our own ``/oomkit-bench-<random>`` parent, everything in it, and its cleanup."""

    def __init__(self):
        version, mount = detect("v1")
        self.fs = CgroupFS(mount, version)
        self.root = f"/oomkit-bench-{secrets.token_hex(4)}"
        self.tmp = Path(tempfile.mkdtemp(prefix="oomkit-bench-"))
        self.hogs: list[Proc] = []
        self.daemons: list[DaemonProc] = []
        self.forkers: list[Forker] = []
        self.fs.mkdir(self.root)
        self.fs.set_limit(self.root, PARENT_CAP)
        self.clock_fd = os.memfd_create("oomkit-bench-clock", 0)
        os.write(self.clock_fd, b"\0" * 4096)        # charged here, not in a hog's memcg
        self.clock = mmap.mmap(self.clock_fd, 4096)
        self._sleeper_bin: str | None = None

    def path(self, rel: str) -> str:
        return self.root + "/" + rel.strip("/") if rel.strip("/") else self.root

    def mk(self, rel: str, limit: int | None = None) -> str:
        path = self.path(rel)
        self.fs.mkdir(path)
        if limit is not None:
            self.fs.set_limit(path, limit)
        return path

    def mine(self, path: str) -> None:
        if not (path == self.root or path.startswith(self.root + "/")):
            raise ValueError(f"{path} is not ours ({self.root})")

    def hog(self, cg: str, mib: int, slot: int = 0, start: bool = True) -> Proc:
        self.mine(cg)
        hog = Proc(hog_argv(mib, step=1, clock=(self.clock_fd, slot)), pass_fds=(self.clock_fd,))
        self.hogs.append(hog)
        if not start:
            return hog
        if not hog.wait_line("ready", 30):
            raise RuntimeError("hog did not start")
        self.fs.attach(cg, hog.pid)
        return hog

    def stall_ns(self, slot: int = 0) -> int:
        return struct.unpack_from("q", self.clock, slot * 8)[0]

    def sleeper_bin(self) -> str:
        if self._sleeper_bin is None:
            src, out = self.tmp / "sleeper.c", self.tmp / "oomkit-sleeper"
            src.write_text(SLEEPER_C)
            for static in (["-static"], []):
                if subprocess.run(["gcc", "-O2", *static, "-o", str(out), str(src)],
                                  capture_output=True).returncode == 0:
                    break
            else:
                raise RuntimeError("cannot build the sleeper (gcc)")
            self._sleeper_bin = str(out)
        return self._sleeper_bin

    def sleepers(self, groups: list[str], per_group: int) -> Forker:
        """``per_group`` sleeping tasks in each of ``groups`` (ours)."""
        f = Forker(self)
        self.forkers.append(f)
        for cg in groups:
            f.fill(cg, per_group)
        f.park()
        return f

    def tree(self) -> list[str]:
        return list(self.fs.walk(self.root)) if self.fs.exists(self.root) else []

    def cleanup(self) -> list[str]:
        for d in self.daemons:
            d.stop()
        tree = self.tree()
        for cg in tree:               # a paused OOM would keep a killed task from exiting
            try:
                self.fs.set_oom_kill_disable(cg, False)
            except KernelError:
                pass
        for h in self.hogs:
            h.reap()
        for f in self.forkers:
            f.close()
        for _ in range(3):            # anything left in our cgroups is ours: kill it by pidfd
            left = 0
            for cg in tree:
                try:
                    pids = self.fs.procs(cg)
                except KernelError:
                    continue
                for pid in pids:
                    left += 1
                    try:
                        fd = _pidfd.open_pidfd(pid)
                    except TaskGone:
                        continue
                    signal_pidfd(fd, signal.SIGKILL)
                    os.close(fd)
            if not left:
                break
            time.sleep(0.5)
        stuck = [cg for cg in reversed(tree) if not self._rmdir(cg)]
        self.clock.close()
        os.close(self.clock_fd)
        if not os.environ.get("OOMKIT_BENCH_KEEP"):
            shutil.rmtree(self.tmp, ignore_errors=True)
        return stuck

    def cleanup_or_warn(self) -> None:
        stuck = self.cleanup()
        if stuck:
            print(f"WARNING: could not remove {stuck}", file=sys.stderr)

    def _rmdir(self, cg: str, timeout: float = 20.0) -> bool:
        return rmdir_patiently(self.fs, cg, timeout)


class Forker:
    def __init__(self, bench: Bench):
        self.bench = bench
        self.popen = subprocess.Popen([bench.sleeper_bin()], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pidfd = _pidfd.open_pidfd(self.popen.pid)
        self.count = 0

    def _ask(self, line: str) -> str:
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()
        return self.popen.stdout.readline().strip()

    def fill(self, cg: str, n: int) -> None:
        self.bench.mine(cg)
        if self._ask("C " + str(self.bench.fs.path(cg, "cgroup.procs"))) != "ok":
            raise RuntimeError(f"forker could not enter {cg}")
        made = int(self._ask(f"F {n}"))
        self.count += made
        if made != n:
            raise RuntimeError(f"forked {made} of {n} sleepers")

    def park(self) -> None:
        """The forker itself leaves the measured cgroups, for one of its own."""
        parking = self.bench.path("forkers")
        if not self.bench.fs.exists(parking):
            self.bench.mk("forkers")
        self._ask("C " + str(self.bench.fs.path(parking, "cgroup.procs")))

    def close(self) -> None:
        if self.pidfd < 0:
            return
        try:
            self.popen.stdin.close()          # EOF: it exits, its children die (PDEATHSIG)
        except OSError:
            pass
        end_by_pidfd(self.pidfd, 5, sig=None)
        os.close(self.pidfd)
        self.pidfd = -1
        self.popen.wait(timeout=5)


RUNNER: str | None = None       # --runner


class DaemonProc:
    """One ``oomkit run`` we started; stopped by pidfd (SIGTERM, then SIGKILL)."""

    def __init__(self, bench: Bench, attach: list[tuple[str, str]], name: str = "oomkit",
                 env: dict[str, str] | None = None, **opts):
        for cg, _policy in attach:
            bench.mine(cg.rstrip("*").rstrip("/"))
        self.bench = bench
        self.config = bench.tmp / f"{name}.toml"
        self.event_log = bench.tmp / f"{name}-events.jsonl"
        self.stderr_path = bench.tmp / f"{name}.stderr"
        lines = ["[daemon]", 'cgroup = "v1"', f"event_log = {json.dumps(str(self.event_log))}"]
        # Its own lock and runtime state (the default, /run/oomkit, is one per machine:
        # another bench's or test's daemon would hold it).
        opts.setdefault("state_dir", str(bench.tmp / f"{name}-state"))
        if RUNNER is not None:      # --runner: where the policies run (the daemon's default: worker)
            opts.setdefault("policy_runner", RUNNER)
        lines += [f"{k} = {json.dumps(v)}" for k, v in opts.items()]
        for cg, policy in attach:
            lines += ["", "[[attach]]", f"cgroup = {json.dumps(cg)}", f"policy = {json.dumps(policy)}"]
        self.config.write_text("\n".join(lines) + "\n")
        self.popen: subprocess.Popen | None = None
        self.pidfd = -1
        self.watchdog_pid: int | None = None
        self.startup_s = 0.0
        self.env = {**os.environ, **(env or {})}
        bench.daemons.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def start(self, timeout: float = 300.0) -> DaemonProc:
        t0 = time.monotonic()
        self._err = open(self.stderr_path, "w")    # noqa: SIM115 (open while the daemon runs; closed in stop)
        self.popen = subprocess.Popen([sys.executable, "-m", "oomkit.cli", "run", "--config", str(self.config)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=self._err, cwd=self.bench.tmp, env=self.env)
        self.pidfd = _pidfd.open_pidfd(self.popen.pid)
        if wait_for_line(lambda: self.stderr().splitlines(), "oomkit: running", timeout - (time.monotonic() - t0),
                         done=lambda: self.popen.poll() is not None, step=0.02) is None:
            raise RuntimeError("the daemon did not start:\n" + self.stderr())
        self.startup_s = time.monotonic() - t0
        kids = children_of(self.popen.pid)
        self.watchdog_pid = kids[0] if kids else None
        return self

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text()
        except FileNotFoundError:
            return ""

    def events(self) -> list[dict]:
        return read_event_log(self.event_log)

    def wait_events(self, n: int, timeout: float) -> list[dict]:
        return wait_event_log(self.event_log, n, timeout, step=0.005)

    def stop(self) -> None:
        if self.pidfd < 0:
            return
        end_by_pidfd(self.pidfd, 30)
        os.close(self.pidfd)
        self.pidfd = -1
        self.popen.wait(timeout=5)
        self._err.close()
        if self.watchdog_pid:         # it ends on the daemon's EOF; make sure, by pidfd
            try:
                fd = _pidfd.open_pidfd(self.watchdog_pid)
            except TaskGone:
                return
            end_by_pidfd(fd, 3, sig=None)
            os.close(fd)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])      # utime, stime (fields 14, 15)


def vm(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "VmLck"):
                out[key] = int(value.split()[0]) * 1024
    return out


def free_mib() -> dict[str, int]:
    info = ProcFS().meminfo()
    return {"used": (info["MemTotal"] - info["MemAvailable"]) // MiB, "available": info["MemAvailable"] // MiB}


def header() -> dict:
    info = bench_sim.machine_info()
    info["load"] = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return info


def machine_line(info: dict, end_load: str | None = None) -> str:
    load = f"load average {info['load']} at the start" + (f", {end_load} at the end" if end_load else "")
    return (f"Machine: nproc {info['nproc']}, {info['cpu']}, kernel {info['kernel']}, Python "
            f"{info['python']}; {info['date']}; {load}.")


def head(title: str, info: dict) -> list[str]:
    """A section's title and its machine line (the load now, at its end)."""
    end_load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return [title, "", machine_line(info, end_load), ""]


def write_section(name: str, text: str) -> None:
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    content = RESULTS.read_text() if RESULTS.exists() else (
        "# oomkit on real cgroup v1 memcgs: benchmark results\n\n"
        "Written by `bench/bench_live.py` (each section by its own subcommand; see\n"
        "bench/README.md). The peers' comparison is in RESULTS-peers.md.\n\n")
    order = ["latency", "executor", "idle", "scaling", "runners", "roundtrip", "storm", "storm-notes"]
    if begin in content and end in content:
        a, b = content.index(begin), content.index(end) + len(end) + 1
        content = content[:a] + block + content[b:]
    else:
        # keep the sections in their order
        later = [content.index(f"<!-- {n}: begin -->") for n in order[order.index(name) + 1:]
                 if f"<!-- {n}: begin -->" in content]
        if later:
            a = min(later)
            content = content[:a] + block + "\n" + content[a:]
        else:
            content = content.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(content)


# -- 1. latency ----------------------------------------------------------------------------

def spin_until_relief(bench: Bench, usage_fd: int, threshold: int, hog: Proc, timeout: float = 5.0):
    """Spin on memory.usage_in_bytes (and the hog's pidfd) until both say it is over."""
    t_unc = t_exit = None
    deadline = time.monotonic_ns() + int(timeout * 1e9)
    p = select.poll()
    p.register(hog.pidfd, select.POLLIN)
    while t_unc is None or t_exit is None:
        now = time.monotonic_ns()
        if t_unc is None and int(os.pread(usage_fd, 64, 0)) <= threshold:
            t_unc = now
        if t_exit is None and p.poll(0):
            t_exit = now
        if now > deadline:
            break
        os.sched_yield()
    return t_unc, t_exit


def one_trial(bench: Bench, cg: str, efd: notify.OOMEventFD, usage_fd: int, limit: int, hog_mib: int) -> dict:
    hog = bench.hog(cg, hog_mib)
    time.sleep(0.03)
    efd.read()                        # drain
    bench.clock[0:8] = b"\0" * 8
    hog.go()
    t_go = time.monotonic_ns()
    p = select.poll()
    p.register(efd.fileno(), select.POLLIN)
    fired = bool(p.poll(10_000))
    t_notify = time.monotonic_ns()
    t_unc, t_exit = spin_until_relief(bench, usage_fd, limit // 4, hog)
    stall = bench.stall_ns()
    out = {"fired": fired, "pid": hog.pid,
           "notify_unc": (t_unc - t_notify) / 1e6 if fired and t_unc else None,
           "stall_unc": (t_unc - stall) / 1e6 if stall and t_unc else None,
           "notify_exit": (t_exit - t_notify) / 1e6 if fired and t_exit else None,
           "go_unc": (t_unc - t_go) / 1e6 if t_unc else None}
    hog.reap()
    bench.hogs.remove(hog)
    return out


def bench_latency(args) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    n = args.trials
    info = header()
    bench = Bench()
    rows, notes = [], []
    try:
        groups = [bench.mk(f"sleep/g{i:02d}") for i in range(50)] if bench.mk("sleep") else []
        t0 = time.monotonic()
        forker = bench.sleepers(groups, args.sleepers // 50)
        notes.append(f"{forker.count} sleepers forked in {time.monotonic() - t0:.1f} s")
        limit = 32 * MiB
        kern = bench.mk("kern", limit)
        for size in sizes:
            bench.mk(f"m{size}")
            for i in range(size):
                bench.mk(f"m{size}/c{i:04d}", limit)
        kern_efd = notify.register_oom_eventfd(bench.fs, kern)
        kern_usage = bench.fs.open(kern, "memory.usage_in_bytes")
        for size, how in [(s, h) for h in args.attach.split(",") for s in sizes]:
            top = bench.path(f"m{size}")
            target = f"{top}/c0000"
            spec = [(top, "largest-task")] if how == "parent" else [(top + "/*", "largest-task")]
            d = DaemonProc(bench, spec, name=f"latency-{how}-{size}").start()
            notes.append(f"{how}, {size} memcgs: the daemon took {size + (how == 'parent')} memcgs "
                         f"in {d.startup_s:.1f} s")
            efd = notify.register_oom_eventfd(bench.fs, target)
            usage = bench.fs.open(target, "memory.usage_in_bytes")
            res = {"oomkit": [], "kernel": []}
            daemon_ms, bad = [], []
            for i in range(n):
                order = ("oomkit", "kernel") if i % 2 == 0 else ("kernel", "oomkit")
                for who in order:
                    if who == "oomkit":
                        before = len(d.events())
                        r = one_trial(bench, target, efd, usage, limit, 64)
                        ev = d.wait_events(before + 1, 5)
                        if len(ev) != before + 1:
                            bad.append(f"trial {i}: {len(ev) - before} records")
                        else:
                            e = ev[-1]
                            daemon_ms.append(e["latency_ms"])
                            if e["resolved_by"] != "policy" or [k["pid"] for k in e["killed"]] != [r["pid"]]:
                                bad.append(f"trial {i}: {e['resolved_by']} {e['killed']}")
                    else:
                        kills = bench.fs.oom_control(kern)["oom_kill"]
                        r = one_trial(bench, kern, kern_efd, kern_usage, limit, 64)
                        if bench.fs.oom_control(kern)["oom_kill"] != kills + 1:
                            bad.append(f"kernel trial {i}: oom_kill did not move by one")
                    res[who].append(r)
            d.stop()
            os.close(usage)
            efd.close()
            for who in ("kernel", "oomkit"):
                rs = res[who]
                rows.append({"memcgs": size, "attach": how, "who": who, "n": len(rs),
                             "fired": sum(r["fired"] for r in rs),
                             "notify_unc": summary([r["notify_unc"] for r in rs if r["notify_unc"] is not None]),
                             "stall_unc": summary([r["stall_unc"] for r in rs if r["stall_unc"] is not None]),
                             "notify_exit": summary([r["notify_exit"] for r in rs if r["notify_exit"] is not None]),
                             "daemon": summary(daemon_ms) if who == "oomkit" else {"n": 0}})
            if bad:
                notes.append(f"{how}, {size} memcgs: problems: " + "; ".join(bad[:5]))
            print(f"latency: {how}, {size} memcgs done", file=sys.stderr)
        os.close(kern_usage)
        kern_efd.close()
    finally:
        bench.cleanup_or_warn()
    end_load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    lines = ["## 1. Reaction latency: oomkit (largest-task) vs the kernel's OOM killer", "",
             machine_line(info, end_load), "",
             f"`python bench/bench_live.py latency` (n = {n} trials each, alternating; "
             f"{args.sleepers} sleeping tasks in 50 cgroups of the bench's own, not managed). "
             "Hog: a Python process touching 64 MiB in 1 MiB chunks in a 32 MiB memcg "
             "(moved in before it allocates). oomkit, OOM in one of N memcgs of 32 MiB, the daemon "
             "managing them all (`oom_kill_disable 1` and an eventfd each), `largest-task` attached "
             "either to *each* memcg (a glob, `m/*`: the policy's context is the OOMing memcg) or "
             "once to their *parent* (N + 1 managed; the context is the parent's whole subtree, so "
             "its N `cgroup.procs` are read on every OOM). Kernel: a sibling memcg with the same limit, "
             "`oom_kill_disable 0`, not managed. Times in ms, measured by the bench's own "
             "eventfd on the memcg's `memory.oom_control` (registered beside the daemon's); "
             "*uncharged* = `memory.usage_in_bytes` <= 8 MiB, spun on after the wake-up; "
             "*stall* = the start of the hog's last 1 MiB chunk (the allocation that hit the "
             "limit; up to one chunk early); *exit* = the hog's pidfd readable; *daemon* = the "
             "daemon's own `latency_ms` in its event log.", "",
             "| memcgs | attached to | who | n | eventfd fired | notify→uncharged median | p99 | "
             "stall→uncharged median | p99 | notify→exit median | daemon latency_ms median |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['memcgs']:,} | {r['attach']} | {r['who']} | {r['n']} | {r['fired']}/{r['n']} | "
                     f"{fmt(r['notify_unc'])} | {fmt(r['notify_unc'], 'p99')} | {fmt(r['stall_unc'])} | "
                     f"{fmt(r['stall_unc'], 'p99')} | {fmt(r['notify_exit'])} | {fmt(r['daemon'])} |")
    lines.append("")
    for size, how in [(s, h) for h in args.attach.split(",") for s in sizes]:
        k = next(r for r in rows if r["memcgs"] == size and r["attach"] == how and r["who"] == "kernel")
        o = next(r for r in rows if r["memcgs"] == size and r["attach"] == how and r["who"] == "oomkit")
        if k["notify_unc"].get("n") and o["notify_unc"].get("n"):
            met = o["notify_unc"]["median"] <= k["notify_unc"]["median"]
            line = (f"- {how}, {size:,} memcgs: oomkit median {o['notify_unc']['median']:.2f} ms vs kernel "
                    f"{k['notify_unc']['median']:.2f} ms: target (no higher) **{'met' if met else 'missed'}**")
            if size == max(sizes):
                p99 = o["notify_unc"]["p99"]
                line += f"; oomkit p99 {p99:.2f} ms, target <= 20 ms **{'met' if p99 <= 20 else 'missed'}**"
            lines.append(line)
    lines += [f"- {note}" for note in notes]
    text = "\n".join(lines)
    print(text)
    write_section("latency", text)


# -- 1b. who executes the kill on v1: the daemon or the kernel ---------------------------------

EXECUTORS = ("daemon", "kernel")


def executor_trial(bench: Bench, d: DaemonProc, cg: str, efd: notify.OOMEventFD, usage: int,
                   limit: int, executor: str, bad: list[str], i: int) -> tuple[dict, float | None]:
    """One OOM in ``cg``, managed by ``d``: its timings, and the daemon's own latency_ms."""
    before = len(d.events())
    r = one_trial(bench, cg, efd, usage, limit, 64)
    ev = d.wait_events(before + 1, 5)
    if len(ev) != before + 1:
        bad.append(f"{executor} trial {i}: {len(ev) - before} records")
        return r, None
    e = ev[-1]
    if e["resolved_by"] != "policy" or [k["pid"] for k in e["killed"]] != [r["pid"]]:
        bad.append(f"{executor} trial {i}: {e['resolved_by']} {e['killed']}")
    if (e.get("executed_by") == "kernel") != (executor == "kernel"):
        bad.append(f"{executor} trial {i}: executed by {e.get('executed_by')}")
    return r, e.get("latency_ms")


def bench_executor(args) -> None:
    """issue 9 on v1: ``executor = "kernel"`` (the paused OOM handed back with the
    chain's victim marked, the kernel kills it) against the daemon's own kill
    (pidfd) and the kernel alone, one memcg each, trials interleaved."""
    n = args.trials
    info = header()
    bench = Bench()
    limit = 32 * MiB
    res: dict[str, list[dict]] = {w: [] for w in (*EXECUTORS, "alone")}
    daemon_ms: dict[str, list[float]] = {w: [] for w in EXECUTORS}
    bad: list[str] = []
    try:
        groups = [bench.mk(f"sleep/g{i:02d}") for i in range(50)] if bench.mk("sleep") else []
        bench.sleepers(groups, args.sleepers // 50)
        sides = {}
        for w in EXECUTORS:
            cg = bench.mk(f"x-{w}", limit)
            d = DaemonProc(bench, [(cg, "largest-task")], name=f"executor-{w}", executor=w).start()
            sides[w] = (cg, d, notify.register_oom_eventfd(bench.fs, cg), bench.fs.open(cg, "memory.usage_in_bytes"))
        alone = bench.mk("x-alone", limit)
        alone_efd = notify.register_oom_eventfd(bench.fs, alone)
        alone_usage = bench.fs.open(alone, "memory.usage_in_bytes")
        order = [*EXECUTORS, "alone"]
        for i in range(n):
            for who in order[i % 3:] + order[:i % 3]:
                if who == "alone":
                    kills = bench.fs.oom_control(alone)["oom_kill"]
                    res[who].append(one_trial(bench, alone, alone_efd, alone_usage, limit, 64))
                    if bench.fs.oom_control(alone)["oom_kill"] != kills + 1:
                        bad.append(f"kernel-alone trial {i}: oom_kill did not move by one")
                    continue
                cg, d, efd, usage = sides[who]
                r, ms = executor_trial(bench, d, cg, efd, usage, limit, who, bad, i)
                res[who].append(r)
                if ms is not None:
                    daemon_ms[who].append(ms)
        for _cg, d, efd, usage in sides.values():
            d.stop()
            efd.close()
            os.close(usage)
        alone_efd.close()
        os.close(alone_usage)
    finally:
        bench.cleanup_or_warn()
    label = {"daemon": "oomkit, `executor = \"daemon\"` (default): the daemon kills by pidfd",
             "kernel": "oomkit, `executor = \"kernel\"`: handed back, the kernel kills the marked task",
             "alone": "the kernel alone (not managed)"}
    lines = head("## 1b. Who executes the kill on v1: the daemon or the kernel (issue 9)", info) + [
        f"`python bench/bench_live.py executor` (n = {n} trials each, the three sides in turn, "
        f"{args.sleepers} sleeping tasks elsewhere). As section 1 (a Python hog touching 64 MiB "
        "in a 32 MiB memcg, `largest-task` attached to it, the policy in its worker), with two "
        "daemons side by side, one per executor, each managing its own memcg, and a third "
        "memcg left to the kernel. With `executor = \"kernel\"` the chain's victim is marked "
        "(`oom_score_adj` 1000) and the paused OOM handed back (`oom_kill_disable 0`): the "
        "kernel's own killer kills it (its report, its `oom_kill` count, the OOM reaper), and "
        "the OOM is taken back. Times in ms, as section 1.", "",
        "| who | n | notify→uncharged median | p99 | stall→uncharged median | p99 | "
        "notify→exit median | daemon latency_ms median |",
        "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for who in (*EXECUTORS, "alone"):
        rs = res[who]
        nu = summary([r["notify_unc"] for r in rs if r["notify_unc"] is not None])
        su = summary([r["stall_unc"] for r in rs if r["stall_unc"] is not None])
        ne = summary([r["notify_exit"] for r in rs if r["notify_exit"] is not None])
        dm = summary(daemon_ms[who]) if who in daemon_ms else {"n": 0}
        lines.append(f"| {label[who]} | {len(rs)} | {fmt(nu)} | {fmt(nu, 'p99')} | {fmt(su)} | "
                     f"{fmt(su, 'p99')} | {fmt(ne)} | {fmt(dm)} |")
    lines.append("")
    if bad:
        lines.append("- problems: " + "; ".join(bad[:8]))
    text = "\n".join(lines)
    print(text)
    write_section("executor", text)


# -- 2. idle cost ----------------------------------------------------------------------------

def bench_idle(args) -> None:
    info = header()
    bench = Bench()
    try:
        size = args.memcgs
        top = bench.mk("m")
        for i in range(size):
            bench.mk(f"m/c{i:04d}", 32 * MiB)
        d = DaemonProc(bench, [(top, "largest-task")], name="idle").start()
        time.sleep(args.settle)
        pids = [d.pid] + ([d.watchdog_pid] if d.watchdog_pid else [])
        c0, t0 = [cpu_ticks(p) for p in pids], time.monotonic()
        time.sleep(args.duration)
        c1, t1 = [cpu_ticks(p) for p in pids], time.monotonic()
        mem = [vm(p) for p in pids]
        wall = t1 - t0
        cpu = [(b - a) / HZ for a, b in zip(c0, c1, strict=False)]
        d.stop()
        startup = d.startup_s
    finally:
        bench.cleanup_or_warn()
    end_load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    total_pct = sum(cpu) / wall * 100
    rss = mem[0]["VmRSS"] / MiB
    names = ["daemon", "watchdog"]
    lines = ["## 2. Idle cost", "", machine_line(info, end_load), "",
             f"`python bench/bench_live.py idle`: the daemon managing {size + 1} memcgs "
             f"(`largest-task` on the parent of {size:,} memcgs of 32 MiB), nothing happening; "
             f"CPU = utime + stime from `/proc/PID/stat` (USER_HZ {HZ}) over {wall:.1f} s, "
             f"after {args.settle:g} s to settle; memory from `/proc/PID/status` at the end. "
             f"Start-up (taking the {size + 1} memcgs, until \"running\"): {startup:.1f} s.", "",
             "| process | VmRSS MiB | VmHWM MiB | RssAnon MiB | RssFile MiB | CPU s | CPU % of one core |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m, c in zip(names, mem, cpu, strict=False):
        lines.append(f"| {name} | {m['VmRSS'] / MiB:.1f} | {m['VmHWM'] / MiB:.1f} | {m['RssAnon'] / MiB:.1f} | "
                     f"{m['RssFile'] / MiB:.1f} | {c:.2f} | {c / wall * 100:.3f} |")
    lines += ["", f"- RSS {rss:.1f} MiB (daemon), target <= 30 MiB: **{'met' if rss <= 30 else 'missed'}**",
              f"- CPU {total_pct:.3f} % (daemon + watchdog), target <= 0.1 %: "
              f"**{'met' if total_pct <= 0.1 else 'missed'}** (resolution: {1 / HZ / wall * 100:.3f} % "
              "per tick)"]
    text = "\n".join(lines)
    print(text)
    write_section("idle", text)


# -- 3. scaling ------------------------------------------------------------------------------

def bench_scaling(args) -> None:
    from oomkit.daemon.main import raise_nofile
    raise_nofile()                  # as the daemon does: the /proc cache's fds
    sizes = [int(s) for s in args.sizes.split(",")]
    info = header()
    before_free = free_mib()
    bench = Bench()
    from oomkit.linux.bpftasks import BpfTasks
    live = {reader: {"read": [], **{name: [] for name in POLICIES}} for reader in ("bpf", "bpf-task", "proc")}
    cold: list[dict] = []
    notes = []
    try:
        tops = {}
        for n in sizes:
            top = bench.mk(f"s{n}")
            leaves = [bench.mk(f"s{n}/c{j:04d}") for j in range(max(1, n // 10))]
            t0 = time.monotonic()
            bench.sleepers(leaves, n // len(leaves))
            notes.append(f"{n:,} sleepers in {len(leaves):,} cgroups forked in {time.monotonic() - t0:.1f} s")
            tops[n] = top
        during_free = free_mib()
        for n in sizes:
            top, oom = tops[n], OOMEvent("memcg", tops[n])
            repeat = args.repeat if n < 10_000 else max(5, args.repeat // 5)
            cold.append(scaling_cold(bench, top, oom, max(3, repeat // 5)))
            for reader in live:
                # Warm: the daemon reads a subtree's tasks when it takes the cgroup
                # (Daemon._warm), so an OOM re-reads only what changed.  One backend
                # per size and reader: each /proc cache has every fd it can get.
                bpf = (BpfTasks.open(mode="css") if reader == "bpf" else
                       BpfTasks.open(mode="task") if reader == "bpf-task" else None)
                backend = CgroupV1Backend(bench.fs, ProcFS(), dry_run=True, bpf=bpf)
                try:
                    backend.warm(top)
                    t = []
                    for _ in range(repeat):
                        s = time.perf_counter()
                        got = backend._read_tasks(top)
                        t.append((time.perf_counter() - s) * 1000)
                    live[reader]["read"].append({"tasks": n, **summary(t), "seen": len(got),
                                                 "cached": len(backend.task_cache)})
                    for name in POLICIES:
                        live[reader][name].append(scaling_warm(backend, top, oom, name, repeat))
                finally:
                    backend.close()
            print(f"scaling: {n} live done", file=sys.stderr)
    finally:
        bench.cleanup_or_warn()
    after_free = free_mib()
    sim = []
    for n in sizes:
        sim.append(bench_sim.bench_decision(n, args.repeat if n < 10_000 else max(10, args.repeat // 4)))
    events = bench_sim.bench_events(args.events, 3) if args.events else None
    end_load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    plot(sizes, live, sim, cold)
    lines = ["## 3. Scaling: context build + decision for one memcg OOM", "",
             machine_line(info, end_load), "",
             "`python bench/bench_live.py scaling`. Live: a subtree of N real tasks (sleepers "
             "forked by a static C process: a few pages each) in N/10 cgroups, all our own; "
             "`CgroupV1Backend` on the real cgroupfs and /proc, `Engine.handle()` of a memcg "
             "OOM at the subtree's top with the policy attached there, dry run (the decision "
             "is made and recorded, nothing is killed): the whole of what the daemon does "
             "between the wake-up and the kill, context reads included. The task readers "
             "the daemon's `task_reader` chooses between: **bpf** (`linux/bpftasks.py`, "
             "Linux 6.7+, the daemon's default where it loads: a cgroup iterator over the "
             "subtree and the css task iterator in each cgroup, no /proc, no `cgroup.procs`), "
             "**bpf-task** (its fallback on older kernels: a task iterator over every task of "
             "the machine, keeping the subtree's; the bench's 11,100 sleepers are all on the "
             "machine at once), and **proc**, /proc "
             "through fds kept between OOMs (`linux/taskcache.py`: `statm` and "
             "`oom_score_adj` per task, `cgroup.procs` per cgroup; `status`/`stat` only for a "
             "task whose `statm` changed). Both warm, as in the daemon, which reads a "
             "subtree's tasks when it takes the cgroup. **Cold**: /proc for tasks never seen "
             "(a fresh backend, kernel-default: `status`, `stat`, `oom_score_adj` opened per "
             "task). Simulator: `bench_sim.bench_decision()` (context + `kernel-default` for "
             "a global OOM over N tasks in N/10 cgroups; warm = its cached task snapshots, "
             "cold = every one rebuilt). Times in ms, median (p99).", "",
             "| tasks | bpf: kernel-default | bpf: largest-task | bpf: reading the tasks | "
             "bpf-task: kernel-default | bpf-task: reading the tasks | "
             "proc: kernel-default | proc: largest-task | proc: reading the tasks | tasks in the "
             "proc cache | cold /proc: kernel-default | sim cold | sim warm | runs |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(row: dict) -> str:
        return f"{row['median']:.2f} ({row['p99']:.2f})"

    for i, n in enumerate(sizes):
        b, bt, p, sm, cd = live["bpf"], live["bpf-task"], live["proc"], sim[i], cold[i]
        lines.append(f"| {n:,} | {cell(b['kernel-default'][i])} | {cell(b['largest-task'][i])} | "
                     f"{cell(b['read'][i])} | {cell(bt['kernel-default'][i])} | {cell(bt['read'][i])} | "
                     f"{cell(p['kernel-default'][i])} | "
                     f"{cell(p['largest-task'][i])} | {cell(p['read'][i])} | "
                     f"{p['read'][i]['cached']:,} | {cell(cd)} | {sm['cold']['median_ms']:.2f} | "
                     f"{sm['warm']['median_ms']:.2f} | {b['kernel-default'][i]['runs']} / {cd['n']} |")
    lines.append("")
    by = {n: i for i, n in enumerate(sizes)}
    for reader in live:
        for name in POLICIES:
            rows = live[reader][name]
            parts = []
            for n, target in ((1000, 5), (10000, 50)):
                if n in by:
                    v = rows[by[n]]["median"]
                    parts.append(f"{v:.2f} ms at {n:,} (target <= {target}: "
                                 f"**{'met' if v <= target else 'missed'}**)")
            if 100 in by and 10000 in by:
                parts.append(f"x{rows[by[10000]]['median'] / rows[by[100]]['median']:.0f} "
                             "from 100 to 10,000 tasks (linear: x100)")
            lines.append(f"- {reader}, {name}: " + "; ".join(parts) +
                         f"; decided: {rows[0]['resolved_by']}, {rows[0]['killed']} (dry-run) kill each")
    lines.append("- bpf-task is what the daemon reads with on kernels 5.8-6.6 (no css task "
                 "iterator kfuncs); measured here by forcing it")
    fd_soft, fd_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lines.append(f"- open files limit (RLIMIT_NOFILE) {fd_soft:,} soft / {fd_hard:,} hard: the /proc "
                 "cache holds two fds per task and leaves the rest a reserve of max(1,024, 1/8 of the "
                 "limit), so where 'tasks in the proc cache' is short of the subtree the rest are read "
                 "cold at every OOM; the BPF reader needs no fd per task")
    if events:
        ok = events["events_per_s_median"] >= 200_000
        lines.append(f"- simulator events/s ({events['cgroups']:,} cgroups, {events['tasks']:,} tasks, "
                     f"{events['events']:,} events, {events['ooms']} OOMs): "
                     f"{events['events_per_s_median']:,.0f} median of 3, target >= 200,000: "
                     f"**{'met' if ok else 'missed'}** (bench_sim.py)")
    lines += [f"- {note}" for note in notes]
    lines.append(f"- memory used (MemTotal - MemAvailable): {before_free['used']:,} MiB before, "
                 f"{during_free['used']:,} MiB with every sleeper, {after_free['used']:,} MiB after")
    lines += ["", "![scaling](scaling.png)"]
    text = "\n".join(lines)
    print(text)
    write_section("scaling", text)


POLICIES = ("kernel-default", "largest-task")


def scaling_warm(backend, top: str, oom: OOMEvent, name: str, repeat: int) -> dict:
    engine = Engine(backend, EngineSettings(handler_deadline=60.0))
    engine.attach(top, make_policy(name, {}, HERE))
    rec = engine.handle(oom)         # warm-up, and check it decides
    t = []
    for _ in range(repeat):
        s = time.perf_counter()
        engine.handle(oom)
        t.append((time.perf_counter() - s) * 1000)
    return {"runs": repeat, **summary(t), "resolved_by": rec.resolved_by, "killed": len(rec.killed)}


def scaling_cold(bench: Bench, top: str, oom: OOMEvent, runs: int) -> dict:
    """kernel-default on a backend that has never seen these tasks: the first OOM."""
    t = []
    for _ in range(runs):
        backend = CgroupV1Backend(bench.fs, ProcFS(), dry_run=True)
        try:
            engine = Engine(backend, EngineSettings(handler_deadline=60.0))
            engine.attach(top, make_policy("kernel-default", {}, HERE))
            s = time.perf_counter()
            engine.handle(oom)
            t.append((time.perf_counter() - s) * 1000)
        finally:
            backend.close()
    return summary(t)


# -- 3b. scaling through the policy worker (issue 11) ------------------------------------------

RUNNERS = ("inprocess", "worker")


def bench_runners(args) -> None:
    """Context + decision with the BPF reader, the policy in process and in its
    sandboxed worker, the runs of both interleaved (the same load)."""
    from oomkit.daemon.main import raise_nofile
    from oomkit.linux.bpftasks import BpfTasks
    raise_nofile()
    sizes = [int(s) for s in args.sizes.split(",")]
    info = header()
    bench = Bench()
    rows: dict[tuple[int, str, str], dict] = {}
    notes = []
    try:
        for n in sizes:
            top = bench.mk(f"r{n}")
            leaves = [bench.mk(f"r{n}/c{j:04d}") for j in range(max(1, n // 10))]
            bench.sleepers(leaves, n // len(leaves))
            oom = OOMEvent("memcg", top)
            backend = CgroupV1Backend(bench.fs, ProcFS(), dry_run=True, bpf=BpfTasks.open(mode="css"))
            try:
                backend.warm(top)
                for name in POLICIES:
                    got = runners_interleaved(backend, top, oom, name, args.repeat)
                    for runner, row in got.items():
                        rows[(n, name, runner)] = row
            finally:
                backend.close()
            print(f"runners: {n} done", file=sys.stderr)
    finally:
        bench.cleanup_or_warn()
    lines = head("## 3b. Scaling through the policy worker: worker vs in-process (issue 11)", info) + [
             f"`python bench/bench_live.py runners --repeat {args.repeat}`. As section 3's live rows "
             "(N sleeping tasks in N/10 cgroups of our own, `CgroupV1Backend` warm, the **bpf** "
             "reader, `Engine.handle()` of a memcg OOM at the subtree's top, dry run), the policy "
             "built from the same recipe either **in process** or in its **worker** (the daemon's "
             "default: `oomkit.sandbox`, forked by the zygote, unprivileged, seccomp-filtered, "
             "the context crossing the socket). The two engines share one backend and their "
             "runs alternate (in turn first), so both see the same load. Times in ms, wall, per "
             "OOM: *handle* is `Engine.handle()` whole (context, decision, the dry-run kill); "
             "*mm-sharer search* is the part of it the kill spends looking for processes that "
             "share the victim's mm (`LiveBackend.mm_sharers`: kcmp(2) asked only about the tasks "
             "whose mm key of the BPF read is the victim's or unknown, the same in both runners); "
             "*every task* is that search as it was before the keys, kcmp asked about every task "
             "of the OOMing memcg (`linux/kcmp.py` on the same victim and tasks, timed right after "
             "each handle, outside it); *without it* is handle minus the search, per run; "
             "*CPU* is the CPU time the OOM cost, this process's (all its threads) plus the "
             "worker's (its schedstat), median: what the handle would take on an idle machine, "
             "give or take the wake-ups.", "",
             "| tasks | policy | runner | runs | handle median | p95 | max | mm-sharer search median "
             "| every task: median | without it: median | p95 | CPU median | target | |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    targets = {1000: 5.0, 10000: 50.0}
    for (n, name, runner), r in rows.items():
        target = targets.get(n)
        verdict = "" if target is None else ("**met**" if r["median"] <= target else "**missed**" + (
            " (met without the mm-sharer search)" if r["rest"] <= target else ""))
        lines.append(f"| {n:,} | {name} | {runner} | {r['n']} | {r['median']:.2f} | {r['p95']:.2f} | "
                     f"{r['max']:.2f} | {r['kcmp']:.2f} | {r['every']:.2f} | {r['rest']:.2f} | "
                     f"{r['rest_p95']:.2f} | {r['cpu']:.2f} | "
                     f"{'' if target is None else f'<= {target:g}'} | {verdict} |")
    lines.append("")
    for n in sizes:
        for name in POLICIES:
            w, i = rows[(n, name, "worker")], rows[(n, name, "inprocess")]
            lines.append(f"- {n:,} tasks, {name}: the worker costs {w['median'] - i['median']:+.2f} ms "
                         f"(median of handle; {w['rest'] - i['rest']:+.2f} ms without the mm-sharer "
                         f"search) over in process; decided: {w['resolved_by']}, {w['killed']} "
                         "(dry-run) kill each")
    lines += [f"- {note}" for note in notes]
    text = "\n".join(lines)
    print(text)
    write_section("runners", text)


def worker_cpu(worker) -> float:
    """A policy worker's CPU time so far (schedstat's sum_exec_runtime), 0 in process."""
    if worker is None:
        return 0.0
    try:
        with open(f"/proc/{worker.pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except OSError:
        return 0.0


def runners_interleaved(backend, top: str, oom: OOMEvent, name: str, repeat: int) -> dict[str, dict]:
    from oomkit.engine.attachment import Recipe
    from oomkit.linux import kcmp as _kcmp
    spent = [0.0]
    sharers = backend.mm_sharers
    searched: list[tuple] = []      # this handle's (dying, pool) searches

    def timed_sharers(*a):
        s = time.perf_counter()
        try:
            found = sharers(*a)
        finally:
            spent[0] += time.perf_counter() - s
        searched.append((*a, {t.pid for t in found}))
        return found

    def every_task() -> float:
        """ms: the searches of the last handle again, kcmp asked about every task (as before the keys)."""
        s = time.perf_counter()
        for dying, pool, found in searched:
            if _kcmp.sharers((t.pid for t in dying), (t.pid for t in pool)) != found:
                raise AssertionError("the mm-key search and kcmp on every task found different sharers")
        searched.clear()
        return (time.perf_counter() - s) * 1000

    backend.mm_sharers = timed_sharers      # the kill's mm-sharer search (kcmp), timed apart
    engines = {}
    for runner in RUNNERS:
        engine = Engine(backend, EngineSettings(handler_deadline=60.0, runner=runner))
        engine.attach(top, Recipe(name, {}, str(HERE)))
        engines[runner] = (engine, engine.handle(oom))      # warm-up, and check it decides
    searched.clear()
    times: dict[str, list[float]] = {r: [] for r in RUNNERS}
    kcmp: dict[str, list[float]] = {r: [] for r in RUNNERS}
    every: dict[str, list[float]] = {r: [] for r in RUNNERS}
    cpu: dict[str, list[float]] = {r: [] for r in RUNNERS}
    try:
        for i in range(repeat):
            for runner in (RUNNERS if i % 2 == 0 else RUNNERS[::-1]):
                engine = engines[runner][0]
                worker = engine.attachments[top].worker
                spent[0] = 0.0
                w0, c0 = worker_cpu(worker), time.process_time()
                s = time.perf_counter()
                engine.handle(oom)
                times[runner].append((time.perf_counter() - s) * 1000)
                cpu[runner].append((time.process_time() - c0 + worker_cpu(worker) - w0) * 1000)
                kcmp[runner].append(spent[0] * 1000)
                every[runner].append(every_task())
    finally:
        for engine, _rec in engines.values():
            engine.close()
        del backend.mm_sharers
    out = {}
    for runner in RUNNERS:
        rec = engines[runner][1]
        t, k = times[runner], kcmp[runner]
        rest = [a - b for a, b in zip(t, k, strict=True)]
        out[runner] = {**summary(t), "p95": pctl(t, 0.95), "kcmp": statistics.median(k),
                       "every": statistics.median(every[runner]),
                       "cpu": statistics.median(cpu[runner]),
                       "rest": statistics.median(rest), "rest_p95": pctl(rest, 0.95),
                       "resolved_by": rec.resolved_by, "killed": len(rec.killed)}
    return out


# -- 3c. round trips to a policy worker on this (loaded) machine -------------------------------

NOOP_POLICY = ("from oomkit import OOMPolicy, Verdict\n"
               "class Noop(OOMPolicy):\n"
               "    def handle_out_of_memory(self, oc, k):\n"
               "        return Verdict.PASS\n"
               "    def handle_cgroup_online(self, path):\n"
               "        return None\n")


def bench_roundtrip(args) -> None:
    """Where a late answer from a worker comes from: N round trips each to a real
    policy worker (``handle_cgroup_online``, nothing to do) and to a forked echo
    child (no oomkit, no Python on its path: recv, send), alternating, with the
    state of the one awaited (``/proc/PID/stat``) sampled every 5 ms of waiting
    and its schedstat before and after."""
    from oomkit.engine.attachment import Recipe
    from oomkit.sandbox.runner import Confinement, Worker, _recv
    info = header()
    tmp = Path(tempfile.mkdtemp(prefix="oomkit-bench-"))
    (tmp / "noop.py").write_text(NOOP_POLICY)
    worker = Worker(Recipe("noop.py:Noop", {}, str(tmp)), Confinement())
    worker.wait_ready(time.monotonic() + 30)
    ours, theirs = socket.socketpair()
    echo = os.fork()
    if echo == 0:                       # the echo child: dies with its pipe
        ours.close()
        while True:
            data = theirs.recv(64)
            if not data:
                os._exit(0)
            theirs.sendall(data)
    theirs.close()
    echo_fd = _pidfd.open_pidfd(echo)
    rows: list[dict] = []
    try:
        for _ in range(args.trials):
            for kind, pid in (("worker", worker.pid), ("echo", echo)):
                rows.append(one_roundtrip(kind, pid, worker, ours, _recv))
            time.sleep(0.01)
    finally:
        worker.kill()
        ours.close()
        end_by_pidfd(echo_fd, 5)
        os.close(echo_fd)
        shutil.rmtree(tmp, ignore_errors=True)
    lines = head("## 3c. Round trips to a policy worker (issue 11: late answers under load)", info) + [
             f"`python bench/bench_live.py roundtrip --trials {args.trials}`: round trips, alternating, "
             "to a policy worker (`handle_cgroup_online` of a policy that does nothing: the call, "
             "the answer) and to a forked echo child (no oomkit on its path: `recv`, `send`). "
             "*Runnable* = the awaited process was seen in state R (running or on a run queue) while "
             "this one waited; *ran* = its CPU time in the round trip; *run-queue wait* = the "
             "schedstat counter's growth, which the kernel adds only when the task next runs "
             "(`sched_info_arrive()`, kernel/sched/stats.h). Times in ms.", "",
             "| to | n | median | p95 | p99 | max | over 20 ms | of those, seen runnable | "
             "the slowest: ran / run-queue wait |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for kind in ("worker", "echo"):
        r = [x for x in rows if x["kind"] == kind]
        ms = [x["ms"] for x in r]
        late = [x for x in r if x["ms"] > 20]
        worst = max(r, key=lambda x: x["ms"])
        lines.append(f"| {kind} | {len(ms)} | {statistics.median(ms):.2f} | {pctl(ms, 0.95):.2f} | "
                     f"{pctl(ms, 0.99):.2f} | {max(ms):.2f} | {len(late)} | "
                     f"{sum(1 for x in late if 'R' in x['states'])} | "
                     f"{worst['ran']:.2f} / {worst['rq']:.1f} |")
    text = "\n".join(lines)
    print(text)
    write_section("roundtrip", text)


def one_roundtrip(kind: str, pid: int, worker, sock, recv) -> dict:
    def stat_state() -> str:
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
            return text[text.rindex(")") + 2]
        except OSError:
            return "?"

    def sched() -> tuple[int, int]:
        with open(f"/proc/{pid}/schedstat") as f:
            a = f.read().split()
        return int(a[0]), int(a[1])

    s0 = sched()
    t0 = time.perf_counter()
    if kind == "worker":
        worker.chan.send(["online", "/x"])
        fd = worker.chan.fileno()
    else:
        sock.sendall(b"x")
        fd = sock.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    states = set()
    while not poller.poll(5):
        states.add(stat_state())
    if kind == "worker":
        recv(worker.chan, time.monotonic() + 60)
    else:
        sock.recv(64)
    ms = (time.perf_counter() - t0) * 1000
    s1 = sched()
    return {"kind": kind, "ms": ms, "ran": (s1[0] - s0[0]) / 1e6, "rq": (s1[1] - s0[1]) / 1e6,
            "states": "".join(sorted(states))}


def plot(sizes, readers, sim, cold) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    style = {("bpf", "kernel-default"): ("tab:blue", "o", "-"), ("bpf", "largest-task"): ("tab:orange", "s", "-"),
             ("proc", "kernel-default"): ("tab:blue", "o", ":"), ("proc", "largest-task"): ("tab:orange", "s", ":")}
    for (reader, name), (c, m, ls) in style.items():
        rows = readers[reader][name]
        ax.plot(sizes, [r["median"] for r in rows], marker=m, color=c, linestyle=ls,
                label=f"live, {name}, {reader} reader (warm)")
        ax.fill_between(sizes, [r["median"] for r in rows], [r["p99"] for r in rows], color=c, alpha=0.08)
    ax.plot(sizes, [c["median"] for c in cold], marker="D", color="tab:red", linestyle="--",
            label="live, kernel-default, cold /proc (first sight of every task)")
    ax.plot(sizes, [s["cold"]["median_ms"] for s in sim], marker="^", color="tab:green", linestyle="--",
            label="simulator, kernel-default, cold")
    ax.plot(sizes, [s["warm"]["median_ms"] for s in sim], marker="v", color="tab:olive", linestyle=":",
            label="simulator, kernel-default, warm")
    base = readers["bpf"]["kernel-default"][0]["median"]
    ax.plot(sizes, [base * n / sizes[0] for n in sizes], color="grey", linewidth=0.8,
            label="linear from the first bpf point")
    ax.scatter([1000, 10000], [5, 50], marker="*", s=160, color="red", zorder=5, label="targets (5 ms, 50 ms)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tasks in the OOMing memcg's subtree")
    ax.set_ylabel("context build + decision, ms (median; band to p99)")
    ax.set_title("oomkit: one memcg OOM, by the number of tasks")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(PLOT)
    print(f"plot: {PLOT}", file=sys.stderr)


# -- 4. OOM storm ----------------------------------------------------------------------------

def one_storm(bench: Bench, cgs: list[str], limit: int, hog_mib: int, args):
    """One storm: a hog per memcg, all told to go at once; the bench's own eventfds
    time each OOM from its notification to the memcg's usage back down."""
    n = len(cgs)
    efds = [notify.register_oom_eventfd(bench.fs, cg) for cg in cgs]
    usage = [bench.fs.open(cg, "memory.usage_in_bytes") for cg in cgs]
    hogs = [bench.hog(cg, hog_mib, slot=i, start=False) for i, cg in enumerate(cgs)]
    for hog, cg in zip(hogs, cgs, strict=False):
        if not hog.wait_line("ready", 60):
            raise RuntimeError("hog did not start")
        bench.fs.attach(cg, hog.pid)
    time.sleep(0.5)
    for e in efds:
        e.read()
    ep = select.epoll()
    index = {e.fileno(): i for i, e in enumerate(efds)}
    for e in efds:
        ep.register(e.fileno(), select.EPOLLIN)
    t_go = time.monotonic_ns()
    for hog in hogs:
        hog.go()
    t_go_end = time.monotonic_ns()
    notified: dict[int, int] = {}
    relieved: dict[int, int] = {}
    deadline = time.monotonic() + args.timeout
    while len(relieved) < n and time.monotonic() < deadline:
        for fd, _mask in ep.poll(0 if len(notified) > len(relieved) else 0.05):
            i = index[fd]
            efds[i].read()
            notified.setdefault(i, time.monotonic_ns())
        now = time.monotonic_ns()
        for i in notified:
            if i not in relieved and int(os.pread(usage[i], 64, 0)) <= limit // 4:
                relieved[i] = now
        os.sched_yield()
    stalls = [bench.stall_ns(i) for i in range(n)]
    ep.close()
    for e in efds:
        e.close()
    for fd in usage:
        os.close(fd)
    return notified, relieved, hogs, stalls, t_go, t_go_end


class HeapProbe:
    """The daemon's own account of its memory after each storm (daemon/memdebug.py,
    asked for by $OOMKIT_TRACEMALLOC, one dump per SIGUSR2): OOMs recorded, VmRSS,
    the Python heap tracemalloc traces (``--heap trace`` only), pymalloc's and
    glibc's heaps, gc's objects by type."""

    def __init__(self, bench: Bench, mode: str):
        self.dir = bench.tmp / "heap"
        self.mode = mode
        self.docs: list[dict] = []
        self.snapshots: list[Path] = []

    def env(self) -> dict[str, str]:
        return {"OOMKIT_TRACEMALLOC": str(self.dir),
                "OOMKIT_TRACEMALLOC_FRAMES": "16" if self.mode == "trace" else "0"}

    def take(self, d: DaemonProc, timeout: float = 120.0) -> dict:
        path = self.dir / f"heap-{d.pid}-{len(self.docs)}.json"
        signal_pidfd(d.pidfd, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline or d.popen.poll() is not None:
                raise RuntimeError(f"the daemon wrote no {path.name}:\n" + d.stderr()[-2000:])
            time.sleep(0.05)
        doc = json.loads(path.read_text())
        self.docs.append(doc)
        self.snapshots.append(path.with_suffix(".pickle"))
        return doc

    def report(self, base: int) -> list[str]:
        """The lines of the section: a row per storm (some of them), the growth from
        storm ``base`` on, and with tracemalloc what grew, by line and by type."""
        docs, last = self.docs, len(self.docs) - 1
        show = sorted({0, 1, base, last} | {round(i * last / 10) for i in range(11)})
        cols = ("OOMs recorded", "VmRSS", "RssAnon", "traced heap", "pymalloc in use", "pymalloc arenas",
                "glibc in use", "glibc free", "gc objects")
        lines = ["| after storm | " + " | ".join(cols) + " |", "|---:|" + "---:|" * len(cols)]
        for i in show:
            x = docs[i]
            lines.append(f"| {i + 1} | " + " | ".join(heap_cells(x)) + " |")
        lines.append("")
        if last > base:
            d0, d1 = docs[base], docs[last]
            ooms = d1["ooms"] - d0["ooms"]
            mid = base + (last - base) // 2
            lines.append(f"Growth per OOM from storm {base + 1} to storm {last + 1} ({ooms:,} OOMs), "
                         f"and in its second half (storms {mid + 1} to {last + 1}):")
            for name, key in (("VmRSS", ("rss",)), ("RssAnon", ("rss_anon",)), ("traced heap", ("traced",)),
                              ("pymalloc in use", ("pymalloc", "bytes_in_allocated_blocks")),
                              ("pymalloc arenas", ("pymalloc", "arena_bytes")),
                              ("glibc in use", ("glibc", "uordblks")), ("gc objects", ("gc_objects",))):
                if self.mode != "trace" and key == ("traced",):
                    continue
                lines.append(f"- {name}: {slope(docs[base:], key):+.0f} "
                             f"/ {slope(docs[mid:], key):+.0f} {'objects' if key == ('gc_objects',) else 'bytes'}"
                             " per OOM (least squares)")
            grew = [(t, d1["types"].get(t, 0) - d0["types"].get(t, 0)) for t in set(d0["types"]) | set(d1["types"])]
            grew = sorted([g for g in grew if g[1]], key=lambda g: -abs(g[1]))[:8]
            lines.append("- gc objects by type, storm " f"{base + 1} to {last + 1}: "
                         + (", ".join(f"{t} {n:+d}" for t, n in grew) or "no change"))
            if self.mode == "trace":
                lines += self.traced_diff(0, base) + self.traced_diff(base, last)
        return lines

    def traced_diff(self, a: int, b: int, top: int = 6) -> list[str]:
        import tracemalloc

        old, new = (tracemalloc.Snapshot.load(str(self.snapshots[i])) for i in (a, b))
        ours = [tracemalloc.Filter(False, tracemalloc.__file__)]
        stats = new.filter_traces(ours).compare_to(old.filter_traces(ours), "traceback")
        stats = [s for s in stats if s.size_diff][:top]
        out = [f"- tracemalloc, storm {a + 1} to {b + 1}: the allocations that changed most (size diff, "
               "blocks diff, size now; where, and oomkit's innermost frame above it):"]
        for s in stats:
            frames = list(reversed(s.traceback))      # innermost first (tracemalloc: oldest first)
            mine = next((f for f in frames if "/oomkit/" in f.filename), None)
            where = " from ".join(f"{short(f.filename)}:{f.lineno}"
                                  for f in dict.fromkeys((frames[0], mine or frames[0])))
            out.append(f"  - {s.size_diff:+,} B, {s.count_diff:+,} blocks, {s.size:,} B: {where}")
        return out


def short(filename: str) -> str:
    return filename.split("/src/", 1)[-1].split("/lib/python", 1)[-1].lstrip("/")


def heap_cells(x: dict) -> list[str]:
    m = lambda v: f"{v / MiB:.2f}"      # noqa: E731
    return [f"{x['ooms']:,}", m(x["rss"]), m(x["rss_anon"]), m(x["traced"]) if x["traced"] else "-",
            *((m(x["pymalloc"]["bytes_in_allocated_blocks"]), m(x["pymalloc"]["arena_bytes"]))
              if x["pymalloc"] else ("-", "-")),       # none under tracemalloc (its hooks replace pymalloc's)
            m(x["glibc"].get("uordblks", 0)), m(x["glibc"].get("fordblks", 0)), f"{x['gc_objects']:,}"]


def slope(docs: list[dict], key: tuple[str, ...]) -> float:
    """Least-squares growth of ``key`` per OOM recorded over ``docs``."""
    xs = [d["ooms"] for d in docs]
    ys = []
    for d in docs:
        v = d
        for k in key:
            v = v.get(k, 0) if isinstance(v, dict) else 0
        ys.append(v)
    if len(xs) < 2 or max(xs) == min(xs):
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def bench_storm(args) -> None:
    info = header()
    bench = Bench()
    n, limit, hog_mib = args.memcgs, 8 * MiB, 16
    notes = []
    heap = HeapProbe(bench, args.heap) if args.heap != "none" else None
    opts = {"task_reader": args.task_reader} if args.task_reader else {}
    try:
        top = bench.mk("storm")
        cgs = [bench.mk(f"storm/c{i:03d}", limit) for i in range(n)]
        d = DaemonProc(bench, [(top, "largest-task")], name="storm", env=heap.env() if heap else None,
                       **opts).start()
        time.sleep(1.0)
        rss = [vm(d.pid)["VmRSS"]]          # before the first storm, then after each
        events = []
        for r in range(args.rounds):
            before = len(events)
            notified, relieved, hogs, stalls, t_go, t_go_end = one_storm(bench, cgs, limit, hog_mib, args)
            events = d.wait_events(before + len(relieved), 30)
            if r == 0:
                first_round_n = len(events)
            time.sleep(0.5)
            rss.append(vm(d.pid)["VmRSS"])
            alive = sum(h.alive() for h in hogs)
            if r < args.rounds - 1:
                for h in hogs:
                    h.reap()
            if heap is not None:
                heap.take(d)
                if args.rounds > 12:
                    print(f"storm {r + 1}/{args.rounds}: {heap_cells(heap.docs[-1])}", file=sys.stderr)
        all_events, events = events, events[before:]          # the table: the last storm's
        d.stop()
        heap_lines = []
        if heap is not None and heap.docs:      # before the cleanup: the dumps are in bench.tmp
            base = min(len(heap.docs) - 1, max(1, args.heap_base - 1))
            heap_lines = heap.report(base)
    finally:
        bench.cleanup_or_warn()
    end_load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    per = [(relieved[i] - notified[i]) / 1e6 for i in relieved]
    by_memcg: dict[str, list[dict]] = {}
    for e in events:
        by_memcg.setdefault(e["memcg"], []).append(e)
    pids = {cg: h.pid for cg, h in zip(cgs, hogs, strict=False)}
    one = sum(1 for cg in cgs if len(by_memcg.get(cg, [])) == 1)
    twice = sum(1 for cg in cgs if len(by_memcg.get(cg, [])) > 1)
    missing = sum(1 for cg in cgs if cg not in by_memcg)
    by_policy = sum(1 for cg in cgs for e in by_memcg.get(cg, []) if e["resolved_by"] == "policy")
    right = sum(1 for cg in cgs for e in by_memcg.get(cg, []) if [k["pid"] for k in e["killed"]] == [pids[cg]])
    strangers = [e["memcg"] for e in events if e["memcg"] not in pids]
    first_n, last_n = min(notified.values()), max(notified.values())
    total = (max(relieved.values()) - first_n) / 1e6 if relieved else float("nan")
    # not in a kernel kill taken back
    daemon_ms = summary([e["latency_ms"] for e in events if e.get("latency_ms") is not None])
    stall_unc = summary([(relieved[i] - stalls[i]) / 1e6 for i in relieved if stalls[i]])
    s = summary(per)
    lines = ["## 4. OOM storm", "", machine_line(info, end_load), "",
             f"`python bench/bench_live.py storm`: {n} memcgs of {limit // MiB} MiB under one parent "
             f"with `largest-task` attached (the daemon manages {n + 1}); in each a Python hog that "
             f"touches {hog_mib} MiB; all started, moved in, then told to go at once (the \"go\" "
             f"lines took {(t_go_end - t_go) / 1e6:.1f} ms to send). Per OOM: from the bench's own "
             "eventfd on that memcg to its usage <= 2 MiB.", "",
             "| | value |", "|---|---:|",
             f"| OOMs notified (bench's eventfds) | {len(notified)} of {n} |",
             f"| spread of the notifications (first to last) | {(last_n - first_n) / 1e6:.1f} ms |",
             f"| relieved (usage back down) | {len(relieved)} of {n} |",
             f"| total time, first notification to last relief | {total:.1f} ms |",
             f"| per-OOM notify→uncharged median / p99 / max | {fmt(s)} / {fmt(s, 'p99')} / {fmt(s, 'max')} ms |",
             f"| per-OOM stall→uncharged median / p99 | {fmt(stall_unc)} / {fmt(stall_unc, 'p99')} ms |",
             f"| daemon latency_ms (its log) median / p99 | {fmt(daemon_ms)} / {fmt(daemon_ms, 'p99')} ms |",
             f"| event-log records | {len(events)} |",
             f"| memcgs with exactly one record / more than one / none | {one} / {twice} / {missing} |",
             f"| records resolved_by policy | {by_policy} |",
             f"| records that killed exactly that memcg's hog | {right} |",
             f"| records for memcgs not in the storm | {len(strangers)} |",
             f"| hogs still alive at the end | {alive} |", ""]
    later = len(all_events) - first_round_n
    series = ", ".join(f"{x / MiB:.1f}" for x in rss[1:])
    if len(rss) > 13:
        series = ", ".join(f"{x / MiB:.1f}" for x in rss[1:6]) + ", ..., " + \
            ", ".join(f"{x / MiB:.1f}" for x in rss[-5:])
    lines += [f"Daemon RSS (VmRSS): {rss[0] / MiB:.1f} MiB before the first storm, {series} MiB after "
              f"each of {args.rounds} storm(s) ({len(all_events)} OOMs in all; the table is the last storm's)"
              + (f"; task reader {args.task_reader}" if args.task_reader else "") + ".", ""]
    if args.rounds > 1 and later > 0:
        lines += [f"- RSS growth after the first storm (warm-up: caches and the handler thread): "
                  f"{(rss[-1] - rss[1]) / later:.0f} bytes per OOM over {later} OOMs", ""]
    if heap_lines:
        lines += [f"The daemon's memory after each storm (`--heap {args.heap}`: its own dump on SIGUSR2, "
                  "daemon/memdebug.py, $OOMKIT_TRACEMALLOC" + (", tracemalloc 16 frames deep (its own "
                  f"bookkeeping, {heap.docs[-1]['tracemalloc_self'] / MiB:.1f} MiB at the end, is in VmRSS)"
                  if args.heap == "trace" else ", without tracemalloc") + "; MiB):", "",
                  *heap_lines, ""]
    ok = one == n and not twice and not missing and not alive
    lines.append(f"- every OOM resolved and recorded exactly once, none lost: **{'yes' if ok else 'NO'}**; "
                 f"by the policy: {by_policy} of {n}" + ("" if by_policy == n else
                 " (the others: the handler passed its 50 ms deadline, the kernel killed, recorded as such)"))
    lines += [f"- {x}" for x in notes]
    text = "\n".join(lines)
    print(text)
    write_section("storm", text)


# -- main ------------------------------------------------------------------------------------

def _on_signal(signum, frame):
    raise SystemExit(128 + signum)      # unwinds through every finally: cleanup runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["latency", "executor", "idle", "scaling", "runners", "roundtrip",
                                     "storm", "all"])
    ap.add_argument("--trials", type=int, default=30, help="latency: trials per side and size (30)")
    ap.add_argument("--sizes", default=None, help="latency: managed memcgs (1,100,1000); scaling: tasks")
    ap.add_argument("--attach", default="each,parent", help="latency: each, parent or both (each,parent)")
    ap.add_argument("--sleepers", type=int, default=5000, help="latency: sleeping tasks (5000)")
    ap.add_argument("--memcgs", type=int, default=None, help="idle: 1000; storm: 100")
    ap.add_argument("--duration", type=float, default=60.0, help="idle: seconds measured (60)")
    ap.add_argument("--settle", type=float, default=5.0, help="idle: seconds before measuring (5)")
    ap.add_argument("--repeat", type=int, default=50, help="scaling: runs per size (50; /5 at 10,000)")
    ap.add_argument("--events", type=int, default=200_000, help="scaling: simulator events (0: skip)")
    ap.add_argument("--timeout", type=float, default=60.0, help="storm: give up after (60 s)")
    ap.add_argument("--rounds", type=int, default=1, help="storm: storms in a row on one daemon, "
                    "its RSS read after each (1; 10 for 1,000 OOMs)")
    ap.add_argument("--heap", choices=["none", "stats", "trace"], default="none",
                    help="storm: the daemon's memory after each storm from its own dumps ($OOMKIT_TRACEMALLOC): "
                    "stats (gc, pymalloc, glibc) or trace (and tracemalloc: slower handlers)")
    ap.add_argument("--heap-base", type=int, default=5, help="storm --heap: growth measured from this "
                    "storm on (5: the caches warm)")
    ap.add_argument("--task-reader", choices=["auto", "bpf", "proc"], default=None,
                    help="storm: [daemon] task_reader of the daemon (default: the daemon's, auto)")
    ap.add_argument("--quick", action="store_true", help="small runs, for a smoke test")
    ap.add_argument("--runner", choices=["worker", "inprocess"], default=None,
                    help="[daemon] policy_runner of the daemons started (default: the daemon's, worker)")
    args = ap.parse_args(argv)
    global RUNNER
    RUNNER = args.runner
    if os.geteuid() != 0:
        print("bench_live: needs root (real cgroup v1 memcgs)", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    todo = ["latency", "idle", "scaling", "runners", "storm"] if args.what == "all" else [args.what]
    for what in todo:
        a = argparse.Namespace(**vars(args))
        if what == "latency":
            a.sizes = args.sizes or "1,100,1000"
            if args.quick:
                a.trials, a.sleepers = min(args.trials, 5), min(args.sleepers, 500)
            bench_latency(a)
        elif what == "executor":
            if args.quick:
                a.trials, a.sleepers = min(args.trials, 5), min(args.sleepers, 500)
            bench_executor(a)
        elif what == "idle":
            a.memcgs = args.memcgs or 1000
            if args.quick:
                a.duration, a.settle = 5.0, 1.0
            bench_idle(a)
        elif what == "scaling":
            a.sizes = args.sizes or "100,1000,10000"
            if args.quick:
                a.repeat, a.events = 5, 0
            bench_scaling(a)
        elif what == "runners":
            a.sizes = args.sizes or "1000,10000"
            if args.quick:
                a.repeat = 5
            bench_runners(a)
        elif what == "roundtrip":
            a.trials = 1000 if args.trials == 30 else args.trials
            if args.quick:
                a.trials = 50
            bench_roundtrip(a)
        elif what == "storm":
            a.memcgs = args.memcgs or 100
            bench_storm(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
