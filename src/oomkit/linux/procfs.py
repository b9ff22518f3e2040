"""/proc under a root, read lazily: each method reads one file when called.

Errors under /proc/PID (ENOENT, ESRCH) mean the task exited: :class:`TaskGone`.
"""

from __future__ import annotations

import os
from pathlib import Path

from oomkit.errors import KernelError, TaskGone
from oomkit.linux import parse
from oomkit.linux._oserror import os_errors, translate


class ProcFS:
    """The proc filesystem mounted at ``root`` (a temp dir in tests)."""

    def __init__(self, root: str | os.PathLike = "/proc"):
        self.root = Path(root)
        self._root = str(self.root)
        self._btime: int | None = None

    def __repr__(self) -> str:
        return f"ProcFS({str(self.root)!r})"

    def _read_pid(self, pid: int, name: str) -> str:
        # Plain os.open/os.read on a string path: a text file object and a Path
        # cost more than the read itself, four times per task during an OOM.
        path = f"{self._root}/{int(pid)}/{name}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, 8192)
                if len(data) == 8192:
                    chunks = [data]
                    while chunks[-1]:
                        chunks.append(os.read(fd, 65536))
                    data = b"".join(chunks)
            finally:
                os.close(fd)
        except OSError as exc:
            raise translate(exc, path, TaskGone, "read") from exc
        return data.decode("utf-8", "surrogateescape")

    def _read(self, *parts: str) -> str:
        path = self.root.joinpath(*parts)
        with os_errors(str(path), KernelError, "read"):
            return path.read_text()

    # --- processes ---------------------------------------------------------

    def pids(self) -> list[int]:
        """Every thread-group id (the numeric entries of /proc), sorted."""
        with os_errors(str(self.root), KernelError, "list"):
            names = os.listdir(self.root)
        return sorted(int(n) for n in names if n.isdigit())

    def status(self, pid: int) -> dict:
        """/proc/PID/status: see :func:`parse.proc_status`."""
        return parse.proc_status(self._read_pid(pid, "status"))

    def stat(self, pid: int) -> dict:
        """/proc/PID/stat: pid, comm, state, ppid, starttime (ticks)."""
        return parse.proc_stat(self._read_pid(pid, "stat"))

    def cmdline(self, pid: int) -> list[str]:
        """argv; [] for kernel threads and zombies (their cmdline is empty)."""
        raw = self._read_pid(pid, "cmdline")
        # argv ends in NUL; a process that rewrote its argv may drop it
        return raw.removesuffix("\0").split("\0") if raw else []

    def oom_score_adj(self, pid: int) -> int:
        return parse.int_value(self._read_pid(pid, "oom_score_adj"))

    def set_oom_score_adj(self, pid: int, value: int) -> None:
        """Write /proc/PID/oom_score_adj (-1000..1000; lowering it needs CAP_SYS_RESOURCE)."""
        path = self.root / str(int(pid)) / "oom_score_adj"
        with os_errors(str(path), TaskGone, "write"):
            path.write_text(f"{int(value)}\n")

    def oom_score(self, pid: int) -> int:
        """The kernel's own badness, 0..2000 (fs/proc/base.c proc_oom_score)."""
        return parse.int_value(self._read_pid(pid, "oom_score"))

    def cgroup(self, pid: int, version: str) -> str | None:
        """The task's memory cgroup path ("v1": the memory line, "v2": the 0:: line)."""
        text = self._read_pid(pid, "cgroup")
        return parse.proc_cgroup(text, "memory" if version == "v1" else None)

    # --- time --------------------------------------------------------------

    @staticmethod
    def clock_ticks() -> int:
        """USER_HZ, the unit of /proc/PID/stat times (proc(5)); 100 nearly everywhere."""
        return os.sysconf("SC_CLK_TCK")

    def boot_time(self) -> int:
        """Boot time in seconds since the epoch (``btime`` of /proc/stat), read once."""
        if self._btime is None:
            self._btime = parse.proc_stat_btime(self._read("stat"))
        return self._btime

    def start_time(self, pid: int) -> float:
        """When the process started, in seconds since the epoch (resolution 1/USER_HZ)."""
        return self.boot_time() + self.stat(pid)["starttime"] / self.clock_ticks()

    # --- system-wide -------------------------------------------------------

    def meminfo(self) -> dict[str, int]:
        """/proc/meminfo in bytes (MemAvailable, SwapFree, ...)."""
        return parse.meminfo(self._read("meminfo"))

    def pressure(self, resource: str = "memory") -> dict:
        """/proc/pressure/<resource> (needs CONFIG_PSI, Linux 4.20+)."""
        return parse.psi(self._read("pressure", resource))
