#!/usr/bin/env python3
"""Who decided at a cgroup v2 OOM: oomkit's policy or the kernel (issue 9), in the VM.

    python bench/bench_v2.py -n 5                       # oomkit + kernel, both kernels
    python bench/bench_v2.py -n 1 --kernels 6.1 --workloads fast   # one trial: how long?
    python bench/bench_v2.py -n 10 --rows oomkit --append   # add 10 rounds to the row's trials
    python bench/bench_v2.py --report-only              # rewrite RESULTS-v2.md from the JSON

A benchmark, not a test: it measures and prints, asserts nothing.  For each
kernel and each row it boots the VM once (``../shared/vm/run-in-vm.sh -K K``,
always under ``flock /tmp/oomkit-vm.lock``: other agents share the VM and the
two cores) and runs this file inside as ``--guest ROW``, which runs ``-n``
trials of every workload, each in a fresh ``/oomkit-test-<random>`` cgroup
(cap 256M) with a child ``w`` limited by ``memory.max``; the host side then
writes ``bench/RESULTS-v2.md``.  Each row's trials are kept, gzip'd, in
``bench/v2-data/`` (committed), so that ``--append`` (another boot's trials added
to the row's, each boot's date, commit and n listed) and ``--report-only`` go on
from them on a new machine: a VM round of the six workloads takes 2-4 min (6.1)
and 6-8 min (6.12) of this 2-core host, so n = 20 per cell is built over boots.

Rows:
* ``oomkit``: ``oomkit run`` freshly started for each trial with the shipped
  defaults: the config names only the hierarchy, the event log, a state_dir in
  a temp dir and one attachment at the box, ``newest-task`` (whose choice
  differs from the kernel's: every workload has an older, larger task);
* ``kernel``: memory.max alone, no daemon;
* the peers, each run as bench_peers.py runs it (configs in bench/peers/), freshly
  started for each trial: ``earlyoom`` and ``nohang`` watch MemAvailable, not
  cgroups, so w gets no memory.max and the machine is shrunk (hugepages) until
  the workload's limit is what remains above the tool's threshold; ``oomd`` and
  ``systemd-oomd`` act on pressure, so w gets memory.high = the limit under
  memory.max = the limit + 32M (without the throttle the kernel kills first, in
  milliseconds); systemd-oomd needs a ``-s`` boot (systemd as PID 1): the box is
  a slice with ManagedOOMMemoryPressure=kill and w a transient scope in it.

Workloads (the hogs are bench_peers.py's small C program: touch INIT MiB, then
STEP MiB every DELAY ms up to TARGET, then hold):
"""

from __future__ import annotations

import argparse
import datetime
import errno
import gzip
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import bench_peers  # noqa: E402  (the hog's C source)
from bench_peers import cg_write, now, remove_cgroup  # noqa: E402  (one copy of each)

VM = Path(os.environ.get("OOMKIT_VM", "/work/shared/vm")) / "run-in-vm.sh"
LOCK = os.environ.get("OOMKIT_VM_LOCK", "/tmp/oomkit-vm.lock")
# Read by the guest through the VM's read-only 9p root (cache=loose): the thrash
# file's pages are then ordinary, reclaimable page cache charged to the reader.
CACHE = Path(os.environ.get("OOMKIT_BENCH_V2_CACHE", "/var/tmp/oomkit-bench-v2"))
BIN = CACHE / "bin"
OUT = CACHE / "out"          # shared read-write with the guest (-w)
RESULTS = HERE / "RESULTS-v2.md"
# Each row's trials, committed (gzip'd JSON): --append and --report-only on a new
# machine, where OUT starts empty, go on from them.
DATA = HERE / "v2-data"
THRASH_FILE = CACHE / "thrash.bin"
THRASH_MIB = 96
CGROOT = Path("/sys/fs/cgroup")
MiB = 1 << 20
TCG_SCALE = 20               # the emulated CPU's slowdown the daemon's time limits are scaled by
CAP = 256 * MiB

# A file-backed working set: map FILE, read one byte of every page, over and over,
# for SECONDS; the passes done go to /dev/shm/thrash.PID.
THRASH_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (argc < 3) return 2;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) return 3;
    struct stat st; fstat(fd, &st);
    volatile unsigned char *p = mmap(0, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return 4;
    char path[64]; snprintf(path, sizeof path, "/dev/shm/thrash.%d", (int)getpid());
    int out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    struct timespec t0, t; clock_gettime(CLOCK_MONOTONIC, &t0);
    long passes = 0; unsigned sum = 0;
    for (;;) {
        for (off_t o = 0; o < st.st_size; o += 4096) sum += p[o];
        passes++;
        char b[32]; int n = snprintf(b, sizeof b, "%ld\n", passes); pwrite(out, b, n, 0);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec >= atol(argv[2])) break;
    }
    for (;;) pause();
    return (int)(sum & 1);
}
"""

# Workloads.  limit: memory.max of w.  pre: (role, args) started and grown before
# t=0 (a "sleep" role is the bystander).  events: (t, role, args, count, gap_s).
# hold: s to watch after every process settled (the holding-still case).  bound: the
# trial's end in s of emulated time.
WORKLOADS: dict[str, dict] = {
    "fast": {
        "what": "96M; a bystander sleeps, an old task holds 56M; a new task grows 1M per step "
                "with no delay towards 200M",
        "limit": 96, "pre": [("sleep", ()), ("oldjob", (56, 0, 0, 56))],
        "events": [(0.0, "newjob", (1, 1, 0, 200), 1, 0.0)], "hold": 3.0, "bound": 60.0,
    },
    "slow": {
        "what": "96M; a bystander, an old task of 56M; a new task grows 1M every 50 ms towards 200M",
        "limit": 96, "pre": [("sleep", ()), ("oldjob", (56, 0, 0, 56))],
        "events": [(0.0, "leaker", (1, 1, 50, 200), 1, 0.0)], "hold": 3.0, "bound": 90.0,
    },
    "fork-burst": {
        "what": "96M; a bystander, an old task of 48M; 16 workers of 4M started back to back",
        "limit": 96, "pre": [("sleep", ()), ("oldjob", (48, 0, 0, 48))],
        "events": [(0.0, "worker", (4, 0, 0, 4), 16, 0.0)], "hold": 3.0, "bound": 60.0,
    },
    "many-small": {
        "what": "96M; a bystander, an old task of 48M; 30 tasks of 2M, one every 150 ms",
        "limit": 96, "pre": [("sleep", ()), ("oldjob", (48, 0, 0, 48))],
        "events": [(0.0, "spike", (2, 0, 0, 2), 30, 0.15)], "hold": 3.0, "bound": 90.0,
    },
    "hold": {
        "what": "128M (auto zone: the top 16M); a bystander, an old task of 64M; a task climbs "
                "1M every 10 ms to 53M (usage ~10M under memory.max) and holds still 15 s",
        "limit": 128, "pre": [("sleep", ()), ("oldjob", (64, 0, 0, 64))],
        "events": [(0.0, "steady", (1, 1, 10, 53), 1, 0.0)], "hold": 15.0, "bound": 90.0,
    },
    "thrash": {
        "what": f"48M; a bystander, an old task of 16M; a task maps a {THRASH_MIB}M file and reads "
                "every page over and over for 12 s (reclaimable page cache: the kernel stalls "
                "rather than OOMs); passes done = progress",
        "limit": 48, "pre": [("sleep", ()), ("oldjob", (16, 0, 0, 16))],
        "events": [(0.0, "thrash", (str(THRASH_FILE), 12), 1, 0.0)], "hold": 0.0, "bound": 16.0,
    },
}
ROWS = {
    "oomkit": "oomkit run, shipped defaults (handler_deadline and watchdog_timeout x20 for the "
              "emulated CPU), newest-task attached at the box",
    "oomkit-depth4": "as oomkit, with `depth = 4` (the default before 2026-12-07: a standing "
                     "decision 4 deep instead of 8)",
    "kernel": "memory.max alone, no daemon",
    "earlyoom": "earlyoom 1.7, bench/peers/earlyoom.args; no memory.max, the machine shrunk "
                "so that the limit remains above its 10 % threshold",
    "nohang": "nohang 0.2.0, bench/peers/nohang.conf; no memory.max, the machine shrunk so "
              "that the limit remains above its 5 % threshold",
    "oomd": "oomd 0.5.0, bench/peers/oomd.json pointed at the box (kills among its child "
            "cgroups: w); memory.high = the limit, memory.max = the limit + 32M",
    "systemd-oomd": "systemd-oomd 252 (systemd as PID 1), bench/peers/systemd-oomd.conf; the "
                    "box a slice with ManagedOOMMemoryPressure=kill, w a scope in it with "
                    "MemoryHigh = the limit, MemoryMax = the limit + 32M",
}
# How each peer is run (bench_peers.py's "system mode" and memory.high + 32M "cgroup mode").
PEERS = HERE / "peers"
PEER_MODE = {"earlyoom": ("system", 0.10), "nohang": ("system", 0.05),
             "oomd": ("high", 0.0), "systemd-oomd": ("high", 0.0)}
HIGH_EXTRA = 32 * MiB
__doc__ += "\n".join(f"* ``{k}``: {v['what']}" for k, v in WORKLOADS.items()) + """

Measured per trial (the guest started every process and waits for it, so exit
statuses are exact; kills are also read from /dev/kmsg):
* the policy's choice: newest-task's, i.e. the newest of the workload's tasks
  alive at each kernel kill (spawn order; a task counts once it was started
  before the kill's kmsg time); for the kernel row the same task, so the column
  says how often the kernel happened to pick it;
* OOMs: the kernel's ``oom-kill:`` reports for the box; victims: processes of
  the trial that died by a signal (any killer);
* needless: victims in the holding-still workload (the kernel never OOMs there);
* time to relief: from the first sample with w's memory.current within 2 MiB
  of memory.max to the first victim seen (emulated time, never compare it with
  hardware figures).
"""


def build() -> None:
    BIN.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, src in (("hog", bench_peers.HOG_C), ("thrash", THRASH_C)):
        c, exe = BIN / f"{name}.c", BIN / name
        if not exe.exists() or not c.exists() or c.read_text() != src:
            c.write_text(src)
            subprocess.run(["cc", "-O2", "-o", str(exe), str(c)], check=True)
    for role in ("oldjob", "newjob", "leaker", "worker", "spike", "steady"):
        link = BIN / role
        if link.exists() and link.samefile(BIN / "hog"):
            continue            # a concurrent run's guest may be starting it right now
        link.unlink(missing_ok=True)
        os.link(BIN / "hog", link)
    if not THRASH_FILE.exists() or THRASH_FILE.stat().st_size != THRASH_MIB * MiB:
        with open(THRASH_FILE, "wb") as f:
            for _ in range(THRASH_MIB):
                f.write(os.urandom(MiB))


# ======================================================================================
# Guest side

class Kmsg:
    """/dev/kmsg from now on, with its clock mapped to time.monotonic()."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDWR | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.token = f"oomkit-bench-v2 mark {secrets.token_hex(4)}"
        t0 = now()
        os.write(self.fd, self.token.encode())
        self.t_mark = (t0 + now()) / 2
        self.offset: float | None = None

    def read(self) -> list[tuple[float, str]]:
        out = []
        while True:
            try:
                rec = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:     # overwritten records: go on
                    continue
                raise
            head, _, msg = rec.partition(";")
            ts = int(head.split(",")[2]) / 1e6
            msg = msg.split("\n", 1)[0]
            if self.token in msg:
                self.offset = self.t_mark - ts
                continue
            out.append((ts, msg))
        os.close(self.fd)
        return [(ts + (self.offset or 0.0), m) for ts, m in out]


class Proc:
    def __init__(self, seq: int, role: str, args: tuple, cgroup: Path):
        self.seq, self.role = seq, role
        procs_file = str(cgroup / "cgroup.procs")

        def place() -> None:          # in the child, before exec: charged to w, adj 0
            fd = os.open(procs_file, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)

        argv = ["sleep", "100000"] if role == "sleep" else [str(BIN / role), *map(str, args)]
        self.target = args[3] * MiB if role not in ("sleep", "thrash") else 0
        self.t_before = now()
        self.popen = subprocess.Popen(argv, preexec_fn=place, stdin=subprocess.DEVNULL,
                                      close_fds=True)
        self.t_after = now()
        self.pid = self.popen.pid
        self.rss = 0
        self.rc: int | None = None
        self.died_at: float | None = None
        self.alive_abs = self.t_after     # now() of the last sample that saw it alive
        self.died_abs: float | None = None
        self.ours = False

    def poll(self, t: float) -> bool:
        if self.rc is not None:
            return False
        rc = self.popen.poll()
        if rc is None:
            self.alive_abs = now()
            try:
                self.rss = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * 4096
            except (OSError, IndexError, ValueError):
                pass
            return False
        self.rc, self.died_at, self.died_abs = rc, t, now()
        return True

    @property
    def killed(self) -> bool:
        return self.rc is not None and self.rc < 0 and not self.ours

    @property
    def settled(self) -> bool:
        if self.rc is not None or self.role == "sleep":
            return True
        if self.role == "thrash":
            return False            # runs until the trial's bound
        return self.rss >= self.target - 2 * MiB


def memory_events(path: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (ln.split() for ln in (path / "memory.events").read_text().splitlines())}
    except OSError:
        return {}


def shrink(limit: int, reserve: float) -> dict:
    """Leave the limit (plus 8M of slack) above the tool's threshold: hugepages take the rest."""
    mi = bench_peers.meminfo()
    want = limit + reserve * mi["MemTotal"] + 8 * MiB
    pages = max(0, int((mi["MemAvailable"] - want) // (2 * MiB)))
    Path("/proc/sys/vm/nr_hugepages").write_text(str(pages))
    time.sleep(0.5)
    return {"hugepages": int(Path("/proc/sys/vm/nr_hugepages").read_text()),
            "mem_available_mib": bench_peers.meminfo()["MemAvailable"] // MiB}


def systemd_tree(limit: int) -> tuple[Path, Path, subprocess.Popen]:
    """systemd-oomd's layout: the box a slice (no '-' in its name: a '-' nests slices),
    w a transient scope held by a sleep; both made by systemd, as a user's would be."""
    name = f"oomkitbench{secrets.token_hex(4)}"
    unit = (PEERS / "systemd-oomd-bench.slice").read_text()
    unit = "\n".join(ln for ln in unit.splitlines() if not ln.startswith(("MemoryMax", "MemoryHigh")))
    Path(f"/run/systemd/system/{name}.slice").write_text(unit + f"\nMemoryMax={CAP}\n")
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    subprocess.run(["systemctl", "start", f"{name}.slice"], check=True)
    holder = subprocess.Popen(["systemd-run", "--scope", "--quiet", f"--unit={name}w",
                               f"--slice={name}.slice", "-p", f"MemoryHigh={limit}",
                               "-p", f"MemoryMax={limit + HIGH_EXTRA}", "sleep", "100000"],
                              stdin=subprocess.DEVNULL)
    box = CGROOT / f"{name}.slice"
    w = box / f"{name}w.scope"
    deadline = now() + 30
    while not (w.exists() and (w / "cgroup.procs").read_text().strip()):
        if now() > deadline:
            raise RuntimeError(f"scope {name}w did not appear")
        time.sleep(0.05)
    return box, w, holder


def systemd_teardown(box: Path, holder: subprocess.Popen) -> None:
    holder.kill()
    holder.wait()
    subprocess.run(["systemctl", "stop", box.name], capture_output=True)
    Path(f"/run/systemd/system/{box.name}").unlink(missing_ok=True)
    subprocess.run(["systemctl", "daemon-reload"], capture_output=True)


def peer_start(row: str, box: str, tmp: Path) -> tuple[subprocess.Popen | None, Path]:
    """Start a peer as bench_peers.py does; wait for its own 'ready' line."""
    log_path = tmp / "daemon.log"
    if row == "systemd-oomd":
        Path("/etc/systemd").mkdir(exist_ok=True)
        shutil.copy(PEERS / "systemd-oomd.conf", "/etc/systemd/oomd.conf")
        subprocess.run(["systemctl", "restart", "systemd-oomd"], check=True)
        log_path.write_text("")
        time.sleep(1.0)
        return None, log_path
    if row == "earlyoom":
        args = [ln for ln in (PEERS / "earlyoom.args").read_text().splitlines()
                if ln and not ln.startswith("#")]
        argv, ready = ["earlyoom", *args], "sending SIGTERM when"
    elif row == "nohang":
        argv, ready = (["nohang", "--monitor", "--config", str(PEERS / "nohang.conf")],
                       "Monitoring has started")
    else:       # oomd: the shipped ruleset, pointed at the box and its children
        conf = (PEERS / "oomd.json").read_text().replace('"bench/lim/*"', f'"{box}/*"')
        conf = conf.replace('"bench/lim"', f'"{box}"')
        (tmp / "oomd.json").write_text(conf)
        argv, ready = ["oomd", "--interval", "1", "--config", str(tmp / "oomd.json")], "Running oomd"
    with open(log_path, "wb") as log:
        d = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = now() + 120
    while ready not in log_path.read_text(errors="replace"):
        if d.poll() is not None or now() > deadline:
            raise RuntimeError(f"{row} not running (rc {d.poll()}): "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    time.sleep(1.0)     # let the first poll / the PSI triggers settle (as bench_peers)
    return d, log_path


def daemon_start(box: str, tmp: Path, extra: str = "") -> tuple[subprocess.Popen, Path]:
    config = tmp / "oomkit.toml"
    # The shipped defaults, but for the two limits that say how long is too long:
    # a TCG guest runs Python 10-25x slower, so a 50 ms handler deadline and a 1 s
    # watchdog fire on healthy work there (rehearsals failed, the watchdog put every
    # mark back); both are scaled by TCG_SCALE, as tests/kernel_v2 does.
    config.write_text(f"""[daemon]
cgroup = "v2"
event_log = "{tmp / 'events.jsonl'}"
state_dir = "{tmp / 'state'}"
handler_deadline = "{50 * TCG_SCALE}ms"
watchdog_timeout = "{TCG_SCALE}s"
{extra}
[[attach]]
cgroup = "{box}"
policy = "newest-task"
""")
    log_path = tmp / "daemon.log"
    code = "import sys; sys.argv[0] = 'oomkit'; from oomkit.cli import main; main()"
    with open(log_path, "wb") as log:
        d = subprocess.Popen([sys.executable, "-c", code, "run", "--config", str(config), "-v"],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = now() + 120
    while "oomkit: running on cgroup v2" not in log_path.read_text(errors="replace"):
        if d.poll() is not None or now() > deadline:
            raise RuntimeError(f"daemon not running (rc {d.poll()}): "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return d, log_path


def daemon_stop(d: subprocess.Popen) -> int:
    if d.poll() is None:
        d.send_signal(signal.SIGTERM)
    try:
        return d.wait(60)
    except subprocess.TimeoutExpired:
        d.kill()
        return d.wait()


def records(path: Path) -> list[dict]:
    try:
        return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, ValueError):
        return []


def run_trial(row: str, wl: str) -> dict:
    spec = WORKLOADS[wl]
    if "memory" not in (CGROOT / "cgroup.subtree_control").read_text().split():
        cg_write(CGROOT, "cgroup.subtree_control", "+memory")
    mode = PEER_MODE.get(row, ("cgroup", 0.0))[0]
    limit = spec["limit"] * MiB
    holder = None
    if row == "systemd-oomd":
        box, w, holder = systemd_tree(limit)
    else:
        box = CGROOT / f"oomkit-test-{secrets.token_hex(4)}"
        box.mkdir()
        w = box / "w"
    tmp = Path(tempfile.mkdtemp(prefix="bench-v2-"))
    procs: list[Proc] = []
    daemon = None
    log_path = None
    res: dict = {"row": row, "workload": wl}
    try:
        if holder is None:
            cg_write(box, "memory.max", str(CAP))
            cg_write(box, "cgroup.subtree_control", "+memory")
            w.mkdir()
            if mode == "cgroup":
                cg_write(w, "memory.max", str(limit))
            elif mode == "high":
                cg_write(w, "memory.max", str(limit + HIGH_EXTRA))
                cg_write(w, "memory.high", str(limit))
        if mode == "system":
            res["system"] = shrink(limit, PEER_MODE[row][1])
        t = now()
        if row in ("oomkit", "oomkit-depth4"):
            daemon, log_path = daemon_start("/" + box.name, tmp,
                                            "depth = 4\n" if row == "oomkit-depth4" else "")
        elif row in PEER_MODE:
            daemon, log_path = peer_start(row, box.name, tmp)
        res["daemon_start_s"] = round(now() - t, 1)
        if mode == "high":
            # oomd's shipped rule (memory_reclaim) and systemd-oomd (it skips a
            # cgroup whose pgscan did not move) act only while the cgroup reclaims.
            # Without swap only its page cache can be: the hogs' own pages, charged
            # to the cgroup that first reads them, i.e. the first trial's alone.
            # A cold cache gives every trial what a newly started service has.
            Path("/proc/sys/vm/drop_caches").write_text("3")
            res["caches_dropped"] = True
        kmsg = Kmsg()
        for role, args in spec["pre"]:
            procs.append(Proc(len(procs), role, args, w))
        deadline = now() + 60
        while not all(p.settled for p in procs):
            for p in procs:
                p.poll(now())
            if now() > deadline:
                raise RuntimeError("the pre-workload tasks did not reach their size")
            time.sleep(0.05)
        res.update(monitor(spec, procs, w, limit))
        ev_kmsg = kmsg.read()
        res["memory_events"] = memory_events(w)
        res["kmsg_offset"] = kmsg.offset
        res.update(judge(procs, ev_kmsg, box.name, res))
    finally:
        for p in procs:
            if p.rc is None:
                p.ours = True
                p.popen.kill()
                p.popen.wait()
            Path(f"/dev/shm/hog.{p.pid}").unlink(missing_ok=True)
            Path(f"/dev/shm/thrash.{p.pid}").unlink(missing_ok=True)
        if row in PEER_MODE:
            res["daemon_rc"] = daemon_stop(daemon) if daemon is not None else None
            if row == "systemd-oomd":
                subprocess.run(["systemctl", "stop", "systemd-oomd"])
                j = subprocess.run(["journalctl", "-u", "systemd-oomd", "-o", "cat", "--no-pager"],
                                   capture_output=True, text=True)
                res["daemon_log_tail"] = j.stdout[-3000:]
            elif log_path is not None:
                res["daemon_log_tail"] = log_path.read_text(errors="replace")[-3000:]
            if mode == "system":
                Path("/proc/sys/vm/nr_hugepages").write_text("0")
        elif daemon is not None:
            res["daemon_rc"] = daemon_stop(daemon)
            log = log_path.read_text(errors="replace")
            recs = records(tmp / "events.jsonl")
            res["records"] = [{k: r.get(k) for k in ("resolved_by", "executed_by", "memcg")}
                              | {"killed": [(k.get("pid"), k.get("by")) for k in r.get("killed", [])]}
                              for r in recs]
            res["daemon_log_tail"] = log[-3000:]
            res["daemon_warnings"] = [ln for ln in log.splitlines()
                                      if "WARNING" in ln or "ERROR" in ln or "Traceback" in ln][:20]
            # the daemon's decisions in full (the tail above is mostly usage lines)
            res["daemon_decisions"] = [ln for ln in log.splitlines() if any(
                w in ln for w in ("armed", "killed", "decision", "zone", "acting", "disarm",
                                  "restored", "watchdog"))][:80]
        if holder is not None:
            systemd_teardown(box, holder)
        for path in (w, box) if holder is None else ():
            remove_cgroup(path, tries=200)
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def monitor(spec: dict, procs: list[Proc], w: Path, limit: int) -> dict:
    pending = sorted(((t + i * gap, role, args) for t, role, args, count, gap in spec["events"]
                      for i in range(count)), key=lambda e: e[0])
    t0 = now()
    onset = relief = settled_at = None
    peak = 0
    thrash_pass = None
    while True:
        t = now() - t0
        while pending and pending[0][0] <= t:
            _t, role, args = pending.pop(0)
            procs.append(Proc(len(procs), role, args, w))
            t = now() - t0
        try:
            usage = int((w / "memory.current").read_text())
        except OSError:
            usage = 0
        peak = max(peak, usage)
        died = [p for p in procs if p.poll(t) and p.killed]
        if onset is None and usage >= limit - 2 * MiB:
            onset = t
        if died and relief is None:
            relief = t
            if onset is None:
                onset = t
        done = not pending and all(p.settled for p in procs)
        if done and settled_at is None:
            settled_at = t
        elif not done:
            settled_at = None
        if settled_at is not None and t - settled_at >= spec["hold"]:
            break
        if t >= spec["bound"]:
            break
        time.sleep(0.02)
    for p in procs:
        if p.role == "thrash":
            try:
                thrash_pass = int(Path(f"/dev/shm/thrash.{p.pid}").read_text())
            except (OSError, ValueError):
                pass
    return {
        "onset_s": None if onset is None else round(onset, 2),
        "to_relief_s": None if onset is None or relief is None else round(relief - onset, 2),
        "peak_mib": round(peak / MiB, 1), "limit_mib": limit // MiB,
        "final_usage_mib": round(usage / MiB, 1),
        "elapsed_s": round(now() - t0, 1), "timed_out": settled_at is None,
        "thrash_passes": thrash_pass, "t0": t0,
    }


def kill_events(procs: list[Proc], kernel_kills: list[tuple[float, int]]) -> list[dict]:
    """One event per kernel kill (kmsg time); the other victims (a peer's signals, or
    oomkit killing itself) grouped into one event per action: deaths first seen
    within 0.3 s of each other.  Such an event happened between the victims' last
    sample alive (lo) and the sample that saw them dead (hi)."""
    by_pid = {p.pid: p for p in procs}
    evs = [{"lo": ts, "hi": ts, "pids": [pid], "by": "kernel"} for ts, pid in kernel_kills]
    kernel_pids = {pid for _ts, pid in kernel_kills}
    others = sorted((p for p in procs if p.killed and p.pid not in kernel_pids),
                    key=lambda p: p.died_abs or 0.0)
    for p in others:
        last = evs[-1] if evs and evs[-1]["by"] == "other" else None
        if last is not None and (p.died_abs or 0.0) - last["hi"] <= 0.3:
            last["pids"].append(p.pid)
            last["lo"] = min(last["lo"], p.alive_abs)
            last["hi"] = max(last["hi"], p.died_abs or 0.0)
        else:
            evs.append({"lo": p.alive_abs, "hi": p.died_abs or 0.0, "pids": [p.pid], "by": "other"})
    evs.sort(key=lambda e: e["hi"])
    for e in evs:
        e["roles"] = [by_pid[pid].role for pid in e["pids"]]
    return evs


def judge(procs: list[Proc], kmsg: list[tuple[float, str]], box: str, res: dict) -> dict:
    """Who died, and was each kill (each OOM or each peer's action) the policy's
    choice (newest-task's)?  For a group kill (oomd, systemd-oomd) a hit is the
    choice among the dead; victims per OOM says how many went with it."""
    by_pid = {p.pid: p for p in procs}
    ooms = [(ts, m) for ts, m in kmsg if m.startswith("oom-kill:") and f"/{box}" in m]
    kernel_kills = []
    for ts, m in kmsg:
        if "Killed process" in m:
            pid = int(m.split("Killed process", 1)[1].split()[0])
            if pid in by_pid:
                kernel_kills.append((ts, pid))
    events = kill_events(procs, kernel_kills)
    dead: set[int] = set()
    verdicts = []
    for e in events:
        alive = [p for p in procs if p.pid not in dead and p.t_after < e["hi"]]
        # a task being spawned (Popen under way) at some instant the kill may have had
        ambiguous = any(p.t_before < e["hi"] and p.t_after >= e["lo"] for p in procs)
        choice = max(alive, key=lambda p: p.seq) if alive else None
        verdicts.append({"pid": e["pids"][0], "pids": e["pids"], "role": e["roles"][0],
                         "roles": e["roles"], "by": e["by"],
                         "choice_pid": choice and choice.pid, "choice_role": choice and choice.role,
                         "hit": choice is not None and choice.pid in e["pids"],
                         "ambiguous": ambiguous})
        dead.update(e["pids"])
    victims = [p for p in procs if p.killed]
    t0 = res.pop("t0")
    return {
        "ooms": len(ooms) + sum(1 for e in events if e["by"] == "other"),
        "kernel_ooms": len(ooms),
        "kernel_kills": len(kernel_kills),
        "verdicts": verdicts,
        "victims": [f"{p.role}({p.pid}, {p.rss / MiB:.0f}M, sig {-p.rc}, t={p.died_at:.2f})"
                    for p in victims],
        "n_victims": len(victims),
        "not_by_kernel": [p.pid for p in victims if p.pid not in {k for _t, k in kernel_kills}],
        "kmsg_lines": [m for _ts, m in kmsg if "oom" in m.lower() or "Killed" in m][:12],
        "spawned": [(p.seq, p.role, p.pid, round(p.t_after - t0, 2)) for p in procs],
    }


def guest(row: str, workloads: list[str], n: int, out: Path) -> None:
    Path("/proc/self/oom_score_adj").write_text("-1000")     # the driver is no candidate
    data = {"row": row, "kernel": platform.release(), "nproc": os.cpu_count(), "n": n,
            "trials": []}
    for i in range(n):
        for wl in workloads:        # interleaved: a slow patch of the VM hits every workload
            t = now()
            try:
                r = run_trial(row, wl)
            except Exception as exc:
                r = {"row": row, "workload": wl, "error": f"{type(exc).__name__}: {exc}"}
            r["trial"], r["wall_s"] = i, round(now() - t, 1)
            data["trials"].append(r)
            print(f"[{row} {platform.release()}] {wl} #{i}: " + json.dumps(
                {k: r.get(k) for k in ("ooms", "n_victims", "to_relief_s", "wall_s", "error")}
                | {"hits": [v["hit"] for v in r.get("verdicts", [])]}), flush=True)
            out.write_text(json.dumps(data, indent=1))
    out.write_text(json.dumps(data, indent=1))


# ======================================================================================
# Host side

def host_load(stop: threading.Event, samples: list[float], every: float = 10.0) -> None:
    """The host's 1-minute load average until ``stop``: the guest's CPU is emulated
    on the host's cores, so a loaded host slows it and every timing in its trials
    (a boot with a high load is worth reading with that in mind)."""
    while True:
        samples.append(os.getloadavg()[0])
        if stop.wait(every):
            return


def run_row(kernel: str, row: str, workloads: list[str], n: int, append: bool = False) -> dict:
    """One VM boot for ``row`` on ``kernel``, n rounds of ``workloads``.  With
    ``append`` the trials are added to those of the row's earlier boots (same
    workloads; each boot's date, main commit, n and wall time kept in ``boots``),
    so that n can be built up over several boots or sessions."""
    earlier = load_row(kernel, row) if append else None
    out = OUT / f"v2-{kernel}-{row}.part.json"
    out.unlink(missing_ok=True)
    # the VM's overall bound: a round of the six workloads takes 2-4 min (6.1), 6-8 (6.12)
    bound = max(3000, 480 * n * len(workloads) // 6 + 600)
    argv = ["flock", LOCK, str(VM), "-K", kernel, "-t", str(bound), "-w", str(REPO), "-w", str(OUT)]
    if row == "systemd-oomd":
        argv.append("-s")       # systemd as PID 1
    argv += ["--", "env", f"PYTHONPATH={REPO / 'src'}", sys.executable, str(Path(__file__).resolve()),
            "--guest", row, "--out", str(out), "--workloads", ",".join(workloads), "-n", str(n)]
    t = time.monotonic()
    stop, loads = threading.Event(), list[float]()
    watch = threading.Thread(target=host_load, args=(stop, loads), daemon=True)
    watch.start()
    proc = subprocess.run(argv, cwd=REPO, text=True, capture_output=True)
    stop.set()
    watch.join()
    sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-3000:])
    data = json.loads(out.read_text()) if out.exists() else {"row": row, "trials": []}
    if proc.returncode != 0:
        data["error"] = f"VM rc {proc.returncode}"
    data["host_wall_s"] = round(time.monotonic() - t, 1)
    data["kernel_arg"] = kernel
    data["date"] = utc_now()
    data["commit"] = git_head()
    boot = {k: data.get(k) for k in ("date", "commit", "n", "host_wall_s", "error")}
    boot["trials"] = len(data["trials"])
    boot["host_load"] = {"max": round(max(loads), 2), "mean": round(statistics.fmean(loads), 2)}
    if earlier is not None:
        offset = 1 + max((t.get("trial", 0) for t in earlier["trials"]), default=-1)
        for tr in data["trials"]:
            tr["trial"] = tr.get("trial", 0) + offset
        data["trials"] = earlier["trials"] + data["trials"]
        data["boots"] = earlier.get("boots", [{k: earlier.get(k) for k in boot}]) + [boot]
        data["n"] = sum(b.get("n") or 0 for b in data["boots"])
        data["host_wall_s"] = sum(b.get("host_wall_s") or 0 for b in data["boots"])
    else:
        data["boots"] = [boot]
    DATA.mkdir(exist_ok=True)
    with gzip.open(DATA / f"v2-{kernel}-{row}.json.gz", "wt") as f:
        f.write(json.dumps(data, separators=(",", ":")))
    out.unlink(missing_ok=True)
    return data


def load_row(kernel: str, row: str) -> dict | None:
    """A row's trials so far (bench/v2-data, the one copy), or None."""
    path = DATA / f"v2-{kernel}-{row}.json.gz"
    if not path.exists():
        return None
    with gzip.open(path, "rt") as f:
        return json.loads(f.read())


def boot_load(boot: dict) -> str:
    """``, host load max M (mean m)`` for a boot that sampled it (boots started
    at 17:03 UTC on 2026-12-07 and later)."""
    load = boot.get("host_load")
    return f", host load max {load['max']:.1f} (mean {load['mean']:.1f})" if load else ""


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def git_head() -> str | None:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "src"]).returncode
    return (proc.stdout.strip() + ("+dirty" if dirty else "")) if proc.returncode == 0 else None


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f} % ({a}/{b})" if b else "no OOM"


def cell(trials: list[dict], wl: str) -> dict:
    ts = [t for t in trials if t.get("workload") == wl and "error" not in t]
    errors = sum(1 for t in trials if t.get("workload") == wl and "error" in t)
    verdicts = [v for t in ts for v in t.get("verdicts", [])]
    ooms = sum(t.get("ooms", 0) for t in ts)
    victims = sum(t.get("n_victims", 0) for t in ts)
    relief = [t["to_relief_s"] for t in ts if t.get("to_relief_s") is not None]
    firsts = [t["verdicts"][0] for t in ts if t.get("verdicts")]
    return {"n": len(ts), "errors": errors, "hits": sum(v["hit"] for v in verdicts),
            "first_hits": sum(v["hit"] for v in firsts), "firsts": len(firsts),
            "kills": len(verdicts), "ambiguous": sum(v["ambiguous"] for v in verdicts),
            # the old task: the kernel's own pick while anything newer lives
            "old": sum("oldjob" in v.get("roles", [v["role"]]) for v in verdicts),
            "ooms": ooms, "victims": victims, "relief": relief,
            "not_by_kernel": sum(len(t.get("not_by_kernel", [])) for t in ts),
            "trials_with_victims": sum(1 for t in ts if t.get("n_victims")),
            "passes": [t["thrash_passes"] for t in ts if t.get("thrash_passes") is not None],
            # oomkit's own account: victims its records say the policy had armed
            "armed": sum(1 for t in ts for r in t.get("records") or [] for _pid, by in r["killed"]
                         if str(by).startswith("policy")),
            "recorded": sum(len(r["killed"]) for t in ts for r in t.get("records") or [])}


def totals(cells: dict[str, dict], oom_wls: list[str]) -> tuple[int, int, list[float]]:
    """OOMs, victims and relief times over the OOM workloads of one row."""
    return (sum(cells[w]["ooms"] for w in oom_wls), sum(cells[w]["victims"] for w in oom_wls),
            [r for w in oom_wls for r in cells[w]["relief"]])


def table(all_data: list[dict], workloads: list[str]) -> str:
    oom_wls = [w for w in workloads if w not in ("hold", "thrash")]
    lines = ["| kernel | row | policy's choice died (fast / slow / fork burst / many small) | "
             "needless kills, holding still | victims per OOM | time to relief, median (emulated) "
             "| first OOM of each trial: policy's choice died | the old task died (kills) "
             "| thrash: OOMs / victims |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in all_data:
        trials = d.get("trials", [])
        # a workload this row did not run is "not run", not "no OOM"
        cells = {w: c for w in workloads if (c := cell(trials, w))["n"]}
        oom_wls = [w for w in workloads if w not in ("hold", "thrash") and w in cells]
        share = " / ".join(pct(cells[w]["hits"], cells[w]["kills"]) if w in cells else "not run"
                           for w in workloads if w not in ("hold", "thrash"))
        tot_h = sum(cells[w]["hits"] for w in oom_wls)
        tot_k = sum(cells[w]["kills"] for w in oom_wls)
        hold = cells.get("hold")
        needless = f"{hold['victims']} in {hold['n']} trials" if hold else "not run"
        ooms, vic, relief = totals(cells, oom_wls)
        vpo = f"{vic / ooms:.2f} ({vic}/{ooms})" if ooms else f"- ({vic} victims, no OOM)"
        rel = f"{statistics.median(relief):.2f} s" if relief else "-"
        th = cells.get("thrash")
        thr = f"{th['ooms']} / {th['victims']} in {th['n']}" if th else "not run"
        lines.append(f"| {d.get('kernel', d.get('kernel_arg'))} | {d['row']} | {share}; all: "
                     f"**{pct(tot_h, tot_k)}** | {needless} | {vpo} | {rel} | "
                     f"{pct(sum(cells[w]['first_hits'] for w in oom_wls), sum(cells[w]['firsts'] for w in oom_wls))} "
                     f"| {' / '.join(str(cells[w]['old']) for w in oom_wls)} of "
                     f"{' / '.join(str(cells[w]['kills']) for w in oom_wls)} | {thr} |")
    return "\n".join(lines)


def died(c: dict) -> str:
    """One workload's "policy's choice died" cell of the README table."""
    return f"{c['hits']}/{c['kills']}" if c["kills"] else ("no kill" if c["n"] else "not run")


def readme(all_data: list[dict]) -> str:
    """The README's compact table: one line per row and kernel, n per cell."""
    burst = ("fork-burst", "many-small")
    lines = ["| row, kernel | n | policy's choice died: fast / slow / fork burst / many small "
             "| kills of the decision's marked task (fork burst / many small) | the old task "
             "died (kills): fast / slow / fork burst / many small | needless kills, holding "
             "still 15 s | thrash: trials with a kill | victims per OOM | time to relief, "
             "median (emulated) |", "|---|---|---|---|---|---|---|---|---|"]
    for d in all_data:
        cells = {w: cell(d.get("trials", []), w) for w in WORKLOADS}
        oom_wls = [w for w in WORKLOADS if w not in ("hold", "thrash")]

        marked = (" / ".join(f"{cells[w]['armed']}/{cells[w]['recorded']}" for w in burst)
                  if d["row"].startswith("oomkit") else "-")
        old = " / ".join(str(cells[w]["old"]) if cells[w]["n"] else "-" for w in oom_wls)
        hold, th = cells["hold"], cells["thrash"]
        ooms, vic, relief = totals(cells, oom_wls)
        ns = sorted({c["n"] for c in cells.values() if c["n"]})
        lines.append(
            f"| {d['row']}, {d.get('kernel_arg', d.get('kernel'))} "
            f"| {'-'.join(map(str, ns)) or '-'} | {' / '.join(died(cells[w]) for w in oom_wls)} | {marked} "
            f"| {old} | {hold['victims']} in {hold['n']} | {th['trials_with_victims']} of {th['n']} "
            f"| {f'{vic / ooms:.2f}' if ooms else '-'} "
            f"| {f'{statistics.median(relief):.2f} s' if relief else '-'} |")
    return "\n".join(lines)


def detail(all_data: list[dict], workloads: list[str]) -> str:
    lines = ["| kernel | row | workload | trials (errors) | kernel kills | policy's choice died "
             "| oomkit's records: victims armed by the policy | OOMs | victims | victims not killed by "
             "the kernel | relief median / max | thrash passes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in all_data:
        for w in workloads:
            c = cell(d.get("trials", []), w)
            if not c["n"]:
                continue        # not run in this row
            rel = (f"{statistics.median(c['relief']):.2f} / {max(c['relief']):.2f} s"
                   if c["relief"] else "-")
            amb = f" ({c['ambiguous']} ambiguous)" if c["ambiguous"] else ""
            lines.append(f"| {d.get('kernel', d.get('kernel_arg'))} | {d['row']} | {w} | {c['n']} "
                         f"({c['errors']}) | {c['kills']} | {pct(c['hits'], c['kills'])}{amb} | "
                         f"{pct(c['armed'], c['recorded']) if d['row'].startswith('oomkit') else '-'} | "
                         f"{c['ooms']} | {c['victims']} | {c['not_by_kernel']} | {rel} | "
                         f"{' '.join(map(str, c['passes'])) or '-'} |")
    return "\n".join(lines)


def host(args) -> None:
    kernels = args.kernels.split(",")
    rows = args.rows.split(",")
    workloads = args.workloads.split(",") if args.workloads else list(WORKLOADS)
    for name in rows:
        if name not in ROWS:
            sys.exit(f"oomkit: unknown row {name}; one of {', '.join(ROWS)}")
    for name in workloads:
        if name not in WORKLOADS:
            sys.exit(f"oomkit: unknown workload {name}; one of {', '.join(WORKLOADS)}")
    if args.report_only:
        # every (kernel, row) run so far; rows run at different times keep their own date and n
        all_data = [d for r in rows for k in kernels if (d := load_row(k, r)) is not None]
        run = {"date": utc_now(),
               "host": f"{os.cpu_count()} CPUs, host kernel {platform.release()}"}
    else:
        build()
        started = time.monotonic()
        all_data = []
        for k in kernels:
            for r in rows:
                print(f"== {k} {r}", file=sys.stderr, flush=True)
                all_data.append(run_row(k, r, workloads, args.n, args.append))
        run = {"wall_s": round(time.monotonic() - started),
               "date": utc_now(),
               "host": f"{os.cpu_count()} CPUs, host kernel {platform.release()}", "n": args.n}
        (OUT / "v2-run.json").write_text(json.dumps(run))
    if args.readme:
        print(readme(all_data))
        return
    text = "\n".join([
        "# cgroup v2: who decided at the OOM (in the VM)", "",
        "Written by `python bench/bench_v2.py` (issue 9). A benchmark, not a test.", "",
        f"* written: {run['date']}; host: {run['host']}; per row below, the minutes of wall "
        "time of its VM boot (waits on the shared VM lock included)",
        f"* guest: QEMU TCG (emulated CPU), 2 vCPUs, 1G RAM, no swap; Debian kernels "
        f"{', '.join(sorted({str(d.get('kernel')) for d in all_data}))}",
        "* n trials per cell (workload x row x kernel), the workloads interleaved; each row "
        "in its own VM boot: " + "; ".join(
            f"{d.get('kernel', d.get('kernel_arg'))} {d['row']}: n = {d.get('n', '?')}, "
            + (", ".join(f"{b.get('date')} on {b.get('commit') or '?'} (n = {b.get('n')}, "
                         f"{(b.get('host_wall_s') or 0) / 60:.1f} min{boot_load(b)})" for b in d["boots"])
               if d.get("boots") else
               f"{d.get('date', run['date'])}, {d.get('host_wall_s', 0) / 60:.1f} min")
            for d in all_data),
        "* rows: " + "; ".join(f"`{r}`: {ROWS[r]}" for r in dict.fromkeys(d["row"] for d in all_data)),
        "* times are emulated time (Python runs 10-25x slower than on hardware)", "",
        "## Workloads", "",
        *[f"* `{w}`: {WORKLOADS[w]['what']}" for w in workloads], "",
        "## Who decided", "", table(all_data, workloads), "",
        "## Per workload", "", detail(all_data, workloads), "",
    ])
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else ""
        if "\n## Notes" in old:
            text = text.rstrip() + "\n\n" + old[old.index("\n## Notes") + 1:]
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}", file=sys.stderr)
    print(table(all_data, workloads))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=5, help="trials per cell (default 5)")
    ap.add_argument("--kernels", default="6.1,6.12", help="comma-separated: 6.1, 6.12")
    ap.add_argument("--rows", default="oomkit,kernel", help=f"comma-separated, of: {', '.join(ROWS)}")
    ap.add_argument("--workloads", help=f"comma-separated, of: {', '.join(WORKLOADS)}")
    ap.add_argument("--append", action="store_true",
                    help="add this boot's trials to the row's earlier ones (build n up over boots)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS-v2.md")
    ap.add_argument("--report-only", action="store_true",
                    help="no VM: rewrite RESULTS-v2.md from bench/v2-data")
    ap.add_argument("--readme", action="store_true",
                    help="with --report-only: print the README's compact table, write nothing")
    ap.add_argument("--guest", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.n < 1:
        sys.exit("oomkit: -n must be at least 1")
    if args.readme and not args.report_only:
        sys.exit("oomkit: --readme goes with --report-only (it prints the table of bench/v2-data)")
    if args.guest:
        workloads = args.workloads.split(",") if args.workloads else list(WORKLOADS)
        guest(args.guest, workloads, args.n, Path(args.out))
    else:
        host(args)


if __name__ == "__main__":
    main()
