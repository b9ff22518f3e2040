"""A fake cgroup2 tree and /proc in a directory, for the benchmarks that build
the v2 daemon on a host without a cgroup v2 memory controller
(profile_take.py, bench_v2_scale.py): real file names and formats, from
tests/fixtures/linux as tests/unit uses them, and a restorer that only
remembers.  Use pids above any pid_max (4194304), so no write can reach a
real task."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "linux"
MiB = 1 << 20
EVENTS = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"
PRESSURE = ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


class Holder:
    """The restorer, remembering only (nothing real is marked: fake pids)."""

    watchdog_pid = None

    def __init__(self) -> None:
        self.held: dict[str, str] = {}

    def start(self) -> None:
        pass

    def hold(self, path, restore, *, pid=None, starttime=None) -> None:
        self.held[path] = restore

    def drop(self, path) -> None:
        self.held.pop(path, None)

    def heartbeat(self) -> None:
        pass

    def close(self) -> None:
        pass


def root(mount: Path, proc: Path, usage: int = 200 * MiB) -> None:
    """The mount's root memcg and /proc's machine-wide files (meminfo, mounts)."""
    cgroup(mount, "/", usage, None)
    (mount / "cgroup.controllers").write_text("cpu io memory pids\n")
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "meminfo").write_text((FIX / "meminfo.txt").read_text())
    (proc / "self").mkdir(exist_ok=True)
    (proc / "self" / "mounts").write_text(f"cgroup2 {mount} cgroup2 rw,nosuid 0 0\n")


def cgroup(mount: Path, rel: str, current: int, limit: int | None, procs=()) -> None:
    """A memcg at ``rel`` with ``current`` bytes charged, ``limit`` (None: max), ``procs``."""
    d = mount / rel.strip("/") if rel != "/" else mount
    d.mkdir(parents=True, exist_ok=True)
    files = {"memory.current": f"{current}\n", "memory.max": f"{limit or 'max'}\n",
             "memory.high": "max\n", "memory.swap.current": "0\n",
             "cgroup.procs": "".join(f"{p}\n" for p in procs), "cgroup.kill": "",
             "memory.oom.group": "0\n", "memory.events": EVENTS, "memory.events.local": EVENTS,
             "memory.pressure": PRESSURE}
    for name, text in files.items():
        (d / name).write_text(text)


_STATUS = (FIX / "proc_status.txt").read_text()
_STAT = (FIX / "proc_stat.txt").read_text()


def task(proc: Path, pid: int, name: str, rss_kb: int, start: int) -> None:
    """/proc/``pid`` for a task ``name`` holding ``rss_kb``, started at ``start``
    (clock ticks: newest-task's order)."""
    d = proc / str(pid)
    d.mkdir(parents=True)
    status = _STATUS.replace("python3", name)
    (d / "status").write_text(status.replace("VmRSS:\t   13508 kB", f"VmRSS:\t{rss_kb:8d} kB"))
    fields = _STAT.replace("4587 (python3)", f"{pid} ({name})", 1).split(" ")
    fields[21] = str(start)
    (d / "stat").write_text(" ".join(fields))
    (d / "cmdline").write_bytes(name.encode() + b"\0")
    (d / "oom_score_adj").write_text("0\n")
    (d / "statm").write_text(f"4141 {rss_kb // 4} 1146 1 0 1013 0\n")
