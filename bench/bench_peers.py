#!/usr/bin/env python3
"""Decision quality against the peers, on cgroup v2, in the throw-away VM.

    python bench/bench_peers.py                 # every tool x every workload (~15-25 min)
    python bench/bench_peers.py --tools kernel,oomkit-prefer-avoid --workloads burst

A benchmark, not a test: it measures and prints, asserts nothing.  For each
tool it boots the VM once (``../shared/vm/run-in-vm.sh -m 512M``; ``-s`` for
systemd-oomd) and runs this same file inside as ``--guest TOOL``, which runs
every workload with the tool freshly started, and writes one JSON file; the
host side then writes ``bench/RESULTS-peers.md`` and prints the table.

Layout in the guest (plain boots)::

    /bench            no limit (oomkit's chained config attaches its second policy here)
    /bench/lim        the budget: memory.max 256M ("cgroup mode")
    /bench/lim/protected      the protected service: one 64 MiB process, oom_score_adj 0
    /bench/lim/work-<group>   the workload's processes

With systemd as PID 1 (systemd-oomd) ``/bench/lim`` is ``/bench.slice`` and
each group a transient scope in it (``bench/peers/systemd-oomd-*``).

How each tool was made comparable ("the same action point": every tool starts
acting when the workload's memory reaches 256 MiB; see RESULTS-peers.md):
* the kernel alone: memory.max 256M on the parent; no daemon, no memory.high.
* oomkit: memory.max 288M, headroom 32M, tripwire on: oomkit itself writes
  memory.high = 256M and acts from there.
* oomd, systemd-oomd: memory.max 288M and memory.high 256M (written by the
  bench, the same throttle as oomkit's tripwire): without swap, anonymous
  memory reaches memory.max, and the kernel's kill, in milliseconds, so a
  pressure-driven daemon needs the throttle to see pressure first.
* earlyoom, nohang ("system mode"): they watch MemAvailable, not cgroups.  No
  memory.max; the machine is shrunk with reserved hugepages so that 256 MiB of
  room (plus a few MiB of slack) remain above the tool's own threshold
  (earlyoom 10 %, nohang 5 % of MemTotal).

Measured, per tool and workload, by the guest driver (it started every process
and waits for it, so exit statuses are exact; it samples each process's RSS and
the parent's memory.current every ~50 ms of emulated time):
* survived: the protected service is alive at the end;
* killed: processes that died by a signal (SIGKILL, SIGTERM), the service included;
* killed MiB: their last sampled RSS; needed MiB: the workload's demand minus
  the 256 MiB budget (0 where waiting suffices); excess = killed - needed;
* time to relief: from the first sample with the parent at >= 216 MiB (the
  budget minus 40 MiB) to the first sample after it with a process killed or
  the parent back under 216 MiB.  Emulated time (TCG): never compare it with
  figures measured on hardware.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = HERE / "peers"
VM = Path(os.environ.get("OOMKIT_VM", REPO.parent / "shared" / "vm")) / "run-in-vm.sh"
CACHE = Path(os.environ.get("OOMKIT_BENCH_CACHE", "/var/tmp/oomkit-bench"))
BIN = CACHE / "bin"
OUT = CACHE / "out"
RESULTS = HERE / "RESULTS-peers.md"

MiB = 1 << 20
BUDGET = 256          # MiB: where every tool starts acting (see "the same action point")
HEADROOM = 32         # MiB: oomkit's headroom (contrib/oomkit.toml); memory.max = BUDGET + this
                      # for the tools that act on pressure before memory.max
ONSET = 216           # MiB: "pressure" starts here
SERVICE = 64          # MiB held by the protected service
TIMEOUT = 75.0        # s of emulated time per workload after it starts
LINGER = 4.0          # s to wait after the workload settled (a needless late kill shows)
GUEST_MEM = "512M"

# --------------------------------------------------------------------------------------
# The hog: one small C program, hard-linked under the name of its role (the task
# name the tools see: "service", "batchjob", ...).  argv: INIT STEP DELAY_MS TARGET
# [RELEASE_MS]: touch INIT MiB, then STEP MiB every DELAY_MS until TARGET, then hold.
# With RELEASE_MS, SIGTERM starts a graceful exit: 16 MiB freed after each RELEASE_MS,
# then exit 0.  It dies with its parent (PR_SET_PDEATHSIG).
HOG_C = r"""
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>
static volatile sig_atomic_t term;
static void on_term(int s) { (void)s; term = 1; }
static int progress = -1;    /* /dev/shm/hog.PID: the MiB held now, for the bench */
static void held(long n) {
    char b[32]; int len = snprintf(b, sizeof b, "%ld\n", n);
    if (progress >= 0) pwrite(progress, b, len, 0);
}
static void nap(long ms) { struct timespec t = {ms / 1000, (ms % 1000) * 1000000L}; nanosleep(&t, 0); }
int main(int argc, char **argv) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (argc < 5) return 2;
    long init = atol(argv[1]), step = atol(argv[2]), delay = atol(argv[3]), target = atol(argv[4]);
    long release = argc > 5 ? atol(argv[5]) : 0;
    if (release) signal(SIGTERM, on_term);
    static char *chunk[4096];
    long n = 0;
    char path[64];
    snprintf(path, sizeof path, "/dev/shm/hog.%d", (int)getpid());
    progress = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    while (n < target && n < 4096 && !term) {
        long want = n < init ? init : n + step;
        if (want > target) want = target;
        while (n < want) {
            char *p = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) { nap(10); continue; }
            memset(p, 1, 1 << 20);
            chunk[n++] = p;
            held(n);
        }
        if (n < target && delay) nap(delay);
    }
    while (!term) pause();
    while (n > 0) {               /* graceful exit: some cleanup work, then 16 MiB back */
        nap(release);
        for (int i = 0; i < 16 && n > 0; i++) munmap(chunk[--n], 1 << 20);
        held(n);
    }
    return 0;
}
"""
ROLES = ["service", "batchjob", "worker", "leaker", "steady", "spike", "oldjob", "newjob"]


def build_hog() -> None:
    BIN.mkdir(parents=True, exist_ok=True)
    src, exe = BIN / "hog.c", BIN / "hog"
    if not exe.exists() or not src.exists() or src.read_text() != HOG_C:
        src.write_text(HOG_C)
        subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    for role in ROLES:
        link = BIN / role
        if link.exists():
            link.unlink()
        os.link(exe, link)


# --------------------------------------------------------------------------------------
# Workloads.  "pre": processes started (and grown to their size) before t=0;
# "events": (t, action, ...) from t=0.  spawn: (t, "spawn", group, role, args, count).
# term: (t, "term", role).  needed: MiB that must be released (demand - budget).
WORKLOADS: dict[str, dict] = {
    "leak-beside-service": {
        "what": "the service (64M) beside a batch job leaking 4M every 50 ms towards 320M",
        "pre": [],
        "events": [(0.0, "spawn", "batch", "batchjob", (16, 4, 50, 320), 1)],
        "needed": SERVICE + 320 - BUDGET,
    },
    "burst": {
        "what": "36 small processes of 6M each started back to back in one job cgroup",
        "pre": [],
        "events": [(0.0, "spawn", "burst", "worker", (6, 0, 0, 6), 36)],
        "needed": SERVICE + 36 * 6 - BUDGET,
    },
    "slow-leak": {
        "what": "a job at 100M leaking 1M every 100 ms towards 240M",
        "pre": [],
        "events": [(0.0, "spawn", "leak", "leaker", (100, 1, 100, 240), 1)],
        "needed": SERVICE + 240 - BUDGET,
    },
    "spike": {
        "what": "a steady 48M job; 1 s later another touches 200M at once",
        "pre": [("steady", "steady", (48, 0, 0, 48))],
        "events": [(1.0, "spawn", "spike", "spike", (200, 0, 0, 200), 1)],
        "needed": SERVICE + 48 + 200 - BUDGET,
    },
    "exiting-job": {
        "what": "a 128M job told to stop (SIGTERM: it frees 16M after each 500 ms of cleanup, "
                "then exits 0) while a new job touches 112M at once",
        "pre": [("old", "oldjob", (128, 0, 0, 128, 500))],
        "events": [(0.0, "term", "oldjob"), (0.0, "spawn", "new", "newjob", (112, 0, 0, 112), 1)],
        "needed": 0,     # the exiting job gives back 48M within 1.5 s, all in 4 s: waiting suffices
    },
}

# --------------------------------------------------------------------------------------
# Tools.  mode: "cgroup" (memory.max 256M on the parent) or "system" (no limit; the
# machine shrunk).  high: memory.high 256M (memory.max 288M) written by the bench.  reserve: the tool's
# own threshold, as a fraction of MemTotal (system mode).
TOOLS: dict[str, dict] = {
    "kernel": {"mode": "cgroup", "high": False, "what": "memory.max 256M, no daemon"},
    "earlyoom": {"mode": "system", "reserve": 0.10, "what": "earlyoom 1.7, bench/peers/earlyoom.args"},
    "nohang": {"mode": "system", "reserve": 0.05, "what": "nohang 0.2.0, bench/peers/nohang.conf"},
    "oomd": {"mode": "cgroup", "high": True,
             "what": "oomd 0.5.0, bench/peers/oomd.json; memory.max 288M"},
    "systemd-oomd": {"mode": "cgroup", "high": True, "systemd": True,
                     "what": "systemd-oomd 252, bench/peers/systemd-oomd-*; memory.max 288M"},
    "oomkit-largest-task": {"mode": "cgroup", "high": False, "oomkit": "oomkit-largest-task.toml"},
    "oomkit-prefer-avoid": {"mode": "cgroup", "high": False, "oomkit": "oomkit-prefer-avoid.toml"},
    "oomkit-largest-cgroup": {"mode": "cgroup", "high": False, "oomkit": "oomkit-largest-cgroup.toml"},
    "oomkit-kernel-default": {"mode": "cgroup", "high": False, "oomkit": "oomkit-kernel-default.toml"},
    "oomkit-wait+prefer-avoid": {"mode": "cgroup", "high": False,
                                 "oomkit": "oomkit-wait-then-prefer-avoid.toml"},
    "oomkit-settle+prefer-avoid": {"mode": "cgroup", "high": False, "oomkit": "oomkit-settle.toml"},
    "oomkit-settle-late+prefer-avoid": {"mode": "cgroup", "high": False,
                                        "oomkit": "oomkit-settle-late.toml"},
}
for _name, _t in TOOLS.items():
    if "oomkit" in _t:
        _t["what"] = (f"oomkit run, bench/peers/{_t['oomkit']}; memory.max 288M, the tripwire "
                      "writes memory.high 256M")

# ======================================================================================
# Guest side
CGROOT = Path("/sys/fs/cgroup")


def now() -> float:
    return time.monotonic()


def cg_write(path: Path, name: str, text: str) -> None:
    (path / name).write_text(text)


def remove_cgroup(path: Path, tries: int = 100) -> None:
    """Kill what is left in ``path`` (ours) and remove it, waiting for the dying."""
    try:
        cg_write(path, "cgroup.kill", "1")
    except OSError:
        pass
    for _ in range(tries):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def cg_read(path: Path, name: str) -> str:
    return (path / name).read_text()


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0]) * 1024
    return out


def events(path: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (ln.split() for ln in cg_read(path, "memory.events").splitlines())}
    except OSError:
        return {}


def vmstat_oom_kill() -> int:
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def rss_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096
    except (OSError, IndexError, ValueError):
        return None


class Proc:
    def __init__(self, role: str, group: str, args: tuple, cgroup: Path):
        self.role, self.group, self.args = role, group, args
        self.target = args[3] * MiB
        procs_file = str(cgroup / "cgroup.procs")

        def place() -> None:            # in the child, before exec: charged to its cgroup,
            fd = os.open(procs_file, os.O_WRONLY)       # and oom_score_adj back to 0
            os.write(fd, b"0")
            os.close(fd)
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)

        self.popen = subprocess.Popen([str(BIN / role), *map(str, args)], preexec_fn=place,
                                      stdin=subprocess.DEVNULL, close_fds=True)
        self.pid = self.popen.pid
        self.rss = 0
        self.rc: int | None = None
        self.died_at: float | None = None
        self.ours = False       # killed by the bench at the end: not counted

    def poll(self, t: float) -> bool:
        """Update; True if it just exited."""
        if self.rc is not None:
            return False
        rc = self.popen.poll()
        if rc is None:
            r = rss_of(self.pid)
            if r is not None and r > 0:
                self.rss = r
            return False
        self.rc, self.died_at = rc, t
        shm = Path(f"/dev/shm/hog.{self.pid}")
        try:            # what it held when it died (written by the hog at every MiB)
            self.rss = int(shm.read_text()) * MiB
            shm.unlink()
        except (OSError, ValueError):
            pass
        return True

    @property
    def killed(self) -> bool:
        return self.rc is not None and self.rc < 0 and not self.ours

    @property
    def settled(self) -> bool:
        return self.rc is not None or self.rss >= self.target - 2 * MiB


class Guest:
    def __init__(self, tool: str, out: Path):
        self.name, self.tool, self.out = tool, TOOLS[tool], out
        self.systemd = bool(self.tool.get("systemd"))
        self.logdir = OUT / tool
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.daemon: subprocess.Popen | None = None
        self.placeholders: list[subprocess.Popen] = []
        self.n = 0

    # -- cgroups --------------------------------------------------------------------

    def setup_tree(self, wl: str) -> None:
        self.n += 1
        if "memory" not in cg_read(CGROOT, "cgroup.subtree_control").split():
            cg_write(CGROOT, "cgroup.subtree_control", "+memory")
        cgroup_mode = self.tool["mode"] == "cgroup"
        if self.systemd:
            self.lim = CGROOT / "bench.slice"
            unit = (PEERS / "systemd-oomd-bench.slice").read_text()
            Path("/run/systemd/system/bench.slice").write_text(unit)
            subprocess.run(["systemctl", "daemon-reload"], check=True)
            subprocess.run(["systemctl", "start", "bench.slice"], check=True)
            self.groups: dict[str, Path] = {}
            return
        bench = CGROOT / "bench"
        bench.mkdir(exist_ok=True)
        cg_write(bench, "cgroup.subtree_control", "+memory")
        self.lim = bench / "lim"
        self.lim.mkdir()
        if cgroup_mode:
            before = self.tool.get("high") or "oomkit" in self.tool   # acts before memory.max
            cg_write(self.lim, "memory.max", str((BUDGET + (HEADROOM if before else 0)) * MiB))
        if self.tool.get("high"):
            cg_write(self.lim, "memory.high", str(BUDGET * MiB))
        cg_write(self.lim, "cgroup.subtree_control", "+memory")
        self.groups = {}

    def group(self, name: str) -> Path:
        """The cgroup of one group of the workload, made on first use."""
        if name in self.groups:
            return self.groups[name]
        if self.systemd:
            unit = f"bench-{self.n}-{name}"
            argv = ["systemd-run", "--scope", "--quiet", f"--unit={unit}", "--slice=bench.slice"]
            if name == "protected":
                argv += ["-p", "ManagedOOMPreference=avoid"]
            p = subprocess.Popen(argv + ["sleep", "100000"], stdin=subprocess.DEVNULL)
            self.placeholders.append(p)
            path = self.lim / f"{unit}.scope"
            deadline = now() + 30
            while not (path.exists() and cg_read(path, "cgroup.procs").strip()):
                if now() > deadline:
                    raise RuntimeError(f"scope {unit} did not appear")
                time.sleep(0.05)
        else:
            path = self.lim / ("protected" if name == "protected" else f"work-{name}")
            path.mkdir()
            if name == "protected" and self.name == "oomd":
                os.setxattr(path, "trusted.oomd_avoid", b"1")
        self.groups[name] = path
        return path

    def teardown_tree(self) -> None:
        for p in self.placeholders:
            p.kill()
            p.wait()
        self.placeholders = []
        if self.systemd:
            for _ in range(100):
                if not [c for c in self.lim.iterdir() if c.is_dir()]:
                    break
                time.sleep(0.1)
            return
        for path in list(self.groups.values()) + [self.lim]:
            remove_cgroup(path)

    # -- system mode: leave BUDGET MiB above the tool's threshold -------------------------

    def shrink(self) -> dict:
        mi = meminfo()
        reserve = self.tool["reserve"] * mi["MemTotal"]
        want = BUDGET * MiB + reserve + 8 * MiB
        extra = mi["MemAvailable"] - want
        pages = max(0, int(extra // (2 * MiB)))
        Path("/proc/sys/vm/nr_hugepages").write_text(str(pages))
        time.sleep(0.5)
        mi2 = meminfo()
        return {"hugepages": int(Path("/proc/sys/vm/nr_hugepages").read_text()),
                "mem_total_mib": mi["MemTotal"] // MiB, "reserve_mib": round(reserve / MiB, 1),
                "mem_available_mib": mi2["MemAvailable"] // MiB}

    def unshrink(self) -> None:
        Path("/proc/sys/vm/nr_hugepages").write_text("0")

    # -- the tool ------------------------------------------------------------------------

    def start_tool(self, wl: str) -> None:
        log = open(self.logdir / f"{wl}.log", "wb")    # noqa: SIM115 (the tool's stderr while it runs)
        self.daemon_log = self.logdir / f"{wl}.log"
        name, env = self.name, dict(os.environ, PYTHONUNBUFFERED="1")
        if name == "kernel":
            log.close()
            return
        if name == "earlyoom":
            args = [ln for ln in (PEERS / "earlyoom.args").read_text().splitlines()
                    if ln and not ln.startswith("#")]
            argv, ready = ["earlyoom", *args], "sending SIGTERM when"
        elif name == "nohang":
            argv, ready = ["nohang", "--monitor", "--config", str(PEERS / "nohang.conf")], "Monitoring has started"
        elif name == "oomd":
            argv, ready = ["oomd", "--interval", "1", "--config", str(PEERS / "oomd.json")], "Running oomd"
        elif name == "systemd-oomd":
            Path("/etc/systemd").mkdir(exist_ok=True)
            shutil.copy(PEERS / "systemd-oomd.conf", "/etc/systemd/oomd.conf")
            subprocess.run(["systemctl", "start", "systemd-oomd"], check=True)
            log.close()
            self.daemon = None
            return
        else:
            (self.logdir / (wl + ".jsonl")).unlink(missing_ok=True)     # this run's records only
            cfg = (PEERS / self.tool["oomkit"]).read_text()
            cfg = cfg.replace("[daemon]", f'[daemon]\nevent_log = "{self.logdir / (wl + ".jsonl")}"', 1)
            path = Path("/tmp") / f"{name}.toml"
            path.write_text(cfg)
            code = "import sys; sys.argv[0] = 'oomkit'; from oomkit.cli import main; main()"
            argv, ready = [sys.executable, "-c", code, "run", "--config", str(path)], \
                "oomkit: running on cgroup v2"
        self.daemon = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = now() + 120
        while ready not in self.daemon_log.read_text(errors="replace"):
            if self.daemon.poll() is not None:
                raise RuntimeError(f"{name} exited {self.daemon.returncode}: "
                                   f"{self.daemon_log.read_text(errors='replace')[-2000:]}")
            if now() > deadline:
                raise RuntimeError(f"{name} not ready in 120 s: "
                                   f"{self.daemon_log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        time.sleep(1.0)     # let the first poll / the PSI triggers settle

    def stop_tool(self) -> str:
        if self.name == "systemd-oomd":
            subprocess.run(["systemctl", "stop", "systemd-oomd"])
            j = subprocess.run(["journalctl", "-u", "systemd-oomd", "-o", "cat", "--no-pager"],
                               capture_output=True, text=True)
            text = j.stdout
            (self.logdir / "journal.log").write_text(text)
            return text
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
            self.daemon = None
        try:
            return self.daemon_log.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    # -- one workload ----------------------------------------------------------------------

    def spawn(self, group: str, role: str, args: tuple) -> Proc:
        return Proc(role, group, args, self.group(group))

    def wait_settled(self, procs: list[Proc], timeout: float = 60) -> None:
        deadline = now() + timeout
        while not all(p.settled for p in procs):
            for p in procs:
                p.poll(now())
            if now() > deadline:
                raise RuntimeError("pre-workload processes did not reach their size")
            time.sleep(0.05)

    def run_workload(self, wl: str) -> dict:
        spec = WORKLOADS[wl]
        res: dict = {"workload": wl, "tool": self.name}
        self.setup_tree(wl)
        try:
            if self.tool["mode"] == "system":
                res["system"] = self.shrink()
            self.start_tool(wl)
            oom_before = vmstat_oom_kill()
            service = self.spawn("protected", "service", (SERVICE, 0, 0, SERVICE))
            procs = [service] + [self.spawn(g, r, a) for g, r, a in spec["pre"]]
            self.wait_settled(procs)
            res.update(self.monitor(spec, procs, service))
            res["oom_kill_vmstat"] = vmstat_oom_kill() - oom_before
            res["memory_events"] = events(self.lim)
        finally:
            for p in self.__dict__.pop("_procs", []):
                if p.rc is None:
                    p.ours = True
                    p.popen.kill()
                    p.popen.wait()
            log = self.stop_tool()
            res["tool_log_tail"] = log[-4000:]
            if self.tool["mode"] == "system":
                self.unshrink()
            self.teardown_tree()
        return res

    def monitor(self, spec: dict, procs: list[Proc], service: Proc) -> dict:
        self._procs = procs
        pending = sorted(spec["events"], key=lambda e: e[0])
        t0 = now()
        onset = relief = None
        peak = 0
        settled_at = None
        samples = 0
        while True:
            t = now() - t0
            while pending and pending[0][0] <= t:
                ev = pending.pop(0)
                if ev[1] == "spawn":
                    _t, _a, group, role, args, count = ev
                    for _ in range(count):
                        procs.append(self.spawn(group, role, args))
                elif ev[1] == "term":
                    for p in procs:
                        if p.role == ev[2] and p.rc is None:
                            p.popen.send_signal(signal.SIGTERM)
                t = now() - t0
            try:
                usage = int(cg_read(self.lim, "memory.current"))
            except OSError:
                usage = 0
            peak = max(peak, usage)
            killed_now = False
            for p in procs:
                if p.poll(t) and p.killed:
                    killed_now = True
            samples += 1
            if onset is None and usage >= ONSET * MiB:
                onset = t
            if onset is not None and relief is None and (killed_now or usage < ONSET * MiB):
                relief = t
            if onset is None and relief is None and killed_now:
                onset = relief = t      # a kill before the parent reached the onset level
            done = not pending and all(p.settled for p in procs[1:])
            if done and settled_at is None:
                settled_at = t
            elif not done:
                settled_at = None
            if settled_at is not None and t - settled_at >= LINGER:
                break
            if t >= TIMEOUT:
                break
            time.sleep(0.05)
        killed = [p for p in procs if p.killed]
        killed_mib = sum(p.rss for p in killed) / MiB
        return {
            "survived": service.rc is None,
            "killed": len(killed),
            "victims": [f"{p.role}({p.pid}, {p.rss / MiB:.0f}M, sig {-p.rc}, t={p.died_at:.2f})"
                        for p in killed],
            "killed_mib": round(killed_mib, 1),
            "needed_mib": spec["needed"],
            "excess_mib": round(killed_mib - spec["needed"], 1),
            "onset_s": None if onset is None else round(onset, 2),
            "relief_s": None if relief is None else round(relief, 2),
            "to_relief_s": None if onset is None or relief is None else round(relief - onset, 2),
            "peak_mib": round(peak / MiB, 1),
            "timed_out": settled_at is None,
            "elapsed_s": round(now() - t0, 1),
            "samples": samples,
            "survivors_unsettled": [f"{p.role}({p.rss / MiB:.0f}M)" for p in procs[1:]
                                    if p.rc is None and not p.settled],
        }

    def run(self, workloads: list[str]) -> None:
        # The bench's own driver is no part of the workload: oom_score_adj -1000 keeps it
        # out of every tool's choice (earlyoom and nohang would otherwise pick it, a
        # 16 MiB python3, over 6 MiB workers).  Its children go back to 0 (Proc.place).
        Path("/proc/self/oom_score_adj").write_text("-1000")
        results = {"tool": self.name, "kernel": platform.release(), "results": [],
                   "mem_total_mib": meminfo()["MemTotal"] // MiB, "nproc": os.cpu_count()}
        for wl in workloads:
            t = now()
            try:
                r = self.run_workload(wl)
            except Exception as exc:        # one broken run must not lose the others
                r = {"workload": wl, "tool": self.name, "error": f"{type(exc).__name__}: {exc}"}
            r["wall_s"] = round(now() - t, 1)
            results["results"].append(r)
            print(f"[{self.name}] {wl}: " + json.dumps({k: r.get(k) for k in (
                "survived", "killed", "killed_mib", "excess_mib", "to_relief_s", "error")}),
                flush=True)
            self.out.write_text(json.dumps(results, indent=1))
        self.out.write_text(json.dumps(results, indent=1))


# ======================================================================================
# Host side

def run_tool(tool: str, workloads: list[str]) -> dict:
    out = OUT / f"{tool}.json"
    if out.exists():
        out.unlink()
    argv = [str(VM), "-m", GUEST_MEM, "-t", "1200", "-w", str(REPO), "-w", str(CACHE)]
    if TOOLS[tool].get("systemd"):
        argv.append("-s")
    argv += ["--", sys.executable, str(Path(__file__).resolve()), "--guest", tool,
             "--out", str(out), "--workloads", ",".join(workloads)]
    t = time.monotonic()
    for attempt in (1, 2):
        proc = subprocess.run(argv, cwd=REPO, text=True, capture_output=True)
        sys.stderr.write(proc.stdout + proc.stderr[-3000:])
        if out.exists():
            data = json.loads(out.read_text())
            if len(data["results"]) == len(workloads):
                break
        print(f"[{tool}] VM run failed (rc {proc.returncode}), attempt {attempt}", file=sys.stderr)
    else:
        data = json.loads(out.read_text()) if out.exists() else {"tool": tool, "results": []}
        data["error"] = f"VM rc {proc.returncode}"
    data["host_wall_s"] = round(time.monotonic() - t, 1)
    return data


def relief_time(r: dict) -> float | None:
    """Pressure to relief; also a kill seen in the very sample where pressure began
    (the guest of the first run missed that case: its victims' death times tell)."""
    if r.get("to_relief_s") is not None or r.get("onset_s") is None:
        return r.get("to_relief_s")
    kills = [float(v.rsplit("t=", 1)[1].rstrip(")")) for v in r.get("victims", [])]
    kills = [k for k in kills if k >= r["onset_s"]]
    return round(min(kills) - r["onset_s"], 2) if kills else None


def fmt_time(r: dict) -> str:
    rt = relief_time(r)
    if rt is not None:
        s = f"{rt:.1f} s"
    elif r.get("onset_s") is None:
        s = "no pressure"
    else:
        s = "never"
    return s + (" (timed out)" if r.get("timed_out") else "")


def table(all_data: list[dict], workloads: list[str]) -> str:
    lines = []
    for wl in workloads:
        spec = WORKLOADS[wl]
        lines += [f"### {wl}", "", f"{spec['what']}; the service holds {SERVICE}M; needed: "
                  f"{spec['needed']} MiB.", "",
                  "| tool | protected survived | killed | killed MiB | excess MiB | pressure -> relief "
                  "(emulated) | kernel oom_kill | victims |",
                  "|---|---|---|---|---|---|---|---|"]
        for data in all_data:
            r = next((x for x in data.get("results", []) if x.get("workload") == wl), None)
            if r is None:
                lines.append(f"| {data['tool']} | not run | | | | | | {data.get('error', '')} |")
                continue
            if "error" in r:
                lines.append(f"| {data['tool']} | error | | | | | | {r['error'][:200]} |")
                continue
            ev = r.get("memory_events", {})
            kk = max(ev.get("oom_kill", 0), r.get("oom_kill_vmstat", 0))
            lines.append(f"| {data['tool']} | {'yes' if r['survived'] else '**NO**'} | {r['killed']} | "
                         f"{r['killed_mib']:.0f} | {r['excess_mib']:.0f} | {fmt_time(r)} | {kk} | "
                         f"{'; '.join(r['victims'])[:300]} |")
        lines.append("")
    return "\n".join(lines)


def configs_md(tools: list[str]) -> str:
    out = ["## How each tool was configured", ""]
    for tool in tools:
        t = TOOLS[tool]
        out.append(f"### {tool}")
        out.append("")
        out.append(f"{t['what']}; mode: {t['mode']}"
                   + ("; memory.high 256M written by the bench" if t.get("high") else ""))
        files = []
        if tool == "earlyoom":
            files = ["earlyoom.args"]
        elif tool == "nohang":
            files = []
            out += ["", "bench/peers/nohang.conf: Debian's /etc/nohang/nohang.conf with this added "
                    "(diff):", "", "```"]
            conf = (PEERS / "nohang.conf").read_text().splitlines()
            out += [ln for ln in conf if ln.startswith("## bench_peers") or "bench_peers.py" in ln
                    or ln.startswith("@BADNESS")]
            out.append("```")
        elif tool == "oomd":
            files = ["oomd.json"]
        elif tool == "systemd-oomd":
            files = ["systemd-oomd.conf", "systemd-oomd-bench.slice", "systemd-oomd-scopes.txt"]
        elif "oomkit" in t:
            files = [t["oomkit"]]
        for f in files:
            out += ["", f"bench/peers/{f}:", "", "```", (PEERS / f).read_text().rstrip(), "```"]
        out.append("")
    return "\n".join(out)


def host(args) -> None:
    tools = args.tools.split(",") if args.tools else list(TOOLS)
    workloads = args.workloads.split(",") if args.workloads else list(WORKLOADS)
    for name in tools:
        if name not in TOOLS:
            sys.exit(f"unknown tool {name}; one of {', '.join(TOOLS)}")
    for name in workloads:
        if name not in WORKLOADS:
            sys.exit(f"unknown workload {name}; one of {', '.join(WORKLOADS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    if args.report_only:        # rebuild the report from the last run's JSON (no VM)
        all_data = [json.loads((OUT / f"{t}.json").read_text()) for t in tools]
        run = json.loads((OUT / "run.json").read_text())
    else:
        build_hog()
        started = time.monotonic()
        all_data = []
        for tool in tools:
            print(f"== {tool}", file=sys.stderr, flush=True)
            all_data.append(run_tool(tool, workloads))
        run = {"wall_s": time.monotonic() - started,
               "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "host": f"{os.cpu_count()} CPUs, kernel {platform.release()}"}
        (OUT / "run.json").write_text(json.dumps(run))
    wall = run["wall_s"]
    kernel = next((d.get("kernel") for d in all_data if d.get("kernel")), "?")
    mem = next((d.get("mem_total_mib") for d in all_data if d.get("mem_total_mib")), "?")
    head = [
        "# oomkit against the peers: decision quality on cgroup v2 (in the VM)", "",
        "Written by `python bench/bench_peers.py` (issue 4, section 5). A benchmark, not a test.", "",
        f"* date: {run['date']}",
        f"* host: {run['host']}; the whole run took {wall / 60:.1f} min of wall time",
        f"* guest: QEMU TCG (emulated CPU), kernel {kernel}, {GUEST_MEM} RAM (MemTotal {mem} MiB), "
        "2 vCPUs, no swap, cgroup2 with every controller; one boot per tool, each workload "
        "with the tool freshly started and a fresh cgroup tree",
        "* times are emulated time (Python runs 10-25x slower than on hardware): read them "
        "against each other, never against host figures", "",
        "Budget: every tool starts acting when the workload holds 256 MiB: memory.max 256M "
        "for the kernel alone; memory.high 256M under memory.max 288M for oomkit (its "
        "tripwire, headroom 32M), oomd and systemd-oomd; 256 MiB of room above the "
        "threshold of earlyoom and nohang (no cgroup limit, the machine shrunk with "
        "hugepages). The protected service is one 64 MiB process, oom_score_adj 0, in "
        "its own cgroup. needed = demand - 256 MiB; excess = killed - needed (killed = the "
        "victims' last sampled RSS). Pressure starts when the parent's memory.current first "
        f"reaches {ONSET} MiB; relief is the first sample after it with a process killed or "
        f"the parent back under {ONSET} MiB. 'kernel oom_kill' is the kernel's own kills "
        "(memory.events or /proc/vmstat).", "",
    ]
    text = "\n".join(head) + "\n## Results\n\n" + table(all_data, workloads) + "\n" + configs_md(tools)
    if not args.no_write:
        # Hand-written notes ("## Notes" to the end) survive a re-run.
        old = RESULTS.read_text() if RESULTS.exists() else ""
        if "\n## Notes" in old:
            text = text.rstrip() + "\n\n" + old[old.index("\n## Notes") + 1:]
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}", file=sys.stderr)
    print(table(all_data, workloads))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tools", help=f"comma-separated, of: {', '.join(TOOLS)}")
    ap.add_argument("--workloads", help=f"comma-separated, of: {', '.join(WORKLOADS)}")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS-peers.md")
    ap.add_argument("--report-only", action="store_true",
                    help="no VM: rebuild RESULTS-peers.md from the last run's JSON")
    ap.add_argument("--guest", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.guest:
        workloads = args.workloads.split(",") if args.workloads else list(WORKLOADS)
        Guest(args.guest, Path(args.out)).run(workloads)
    else:
        host(args)


if __name__ == "__main__":
    main()
