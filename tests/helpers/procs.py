"""The processes the live suites (kernel_v1, kernel_v2) and bench/bench_live.py
start, how they end, and how to wait on them.

Safety rules kept here, for every user:
- a :class:`Proc` is ended only through the pidfd opened right after its start,
  never by name or by a pid that could have been reused;
- the hog dies with whoever started it (PR_SET_PDEATHSIG) and on stdin EOF.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

from oomkit.errors import TaskGone
from oomkit.linux import pidfd as _pidfd

# The hog: dies with its parent, says "ready", waits for a line (so it can be
# moved into its memcg first: pages are charged to the memcg of the task that
# faults them in), then touches MIB MiB, STEP MiB at a time (default: all at
# once) with DELAY s after each step, says "allocated", and holds the memory
# until stdin closes.  With CLOCK_FD SLOT it writes CLOCK_MONOTONIC (ns) into
# slot SLOT of that shared page before each 1 MiB chunk: after an OOM the page
# holds the start of the allocation that stalled (bench_live).
#   argv: MIB [STEP DELAY [CLOCK_FD SLOT]]
HOG = r"""
import ctypes, sys, time
ctypes.CDLL(None).prctl(1, 9)          # PR_SET_PDEATHSIG, SIGKILL
mib = int(sys.argv[1])
step = int(sys.argv[2]) if len(sys.argv) > 2 else mib
delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
page = None
if len(sys.argv) > 5:
    import mmap, struct
    page, off = mmap.mmap(int(sys.argv[4]), 4096), int(sys.argv[5]) * 8
    put, now = struct.Struct("q").pack_into, time.monotonic_ns
print("ready", flush=True)
if not sys.stdin.readline():
    sys.exit(0)
chunks = []
while len(chunks) < mib:
    for _ in range(min(step, mib - len(chunks))):
        if page is not None:
            put(page, off, now())
        chunks.append(b"\x01" * (1 << 20))    # bytes * n writes every page
    if delay:
        time.sleep(delay)
print("allocated", flush=True)
sys.stdin.readline()
"""


# A hog that, once moved into its memcg, clone()s a process sharing its address
# space (CLONE_VM without CLONE_THREAD: another process, one mm) and prints
# "sharer PID" before it allocates.  The sharer runs libc's pause() on a stack
# of its own and never touches Python; it does not die with its parent
# (copy_process() clears pdeath_signal), so its killer is the test's cleanup or
# whoever kills the mm's users.   argv: MIB
SHARED_HOG = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, 9)                       # PR_SET_PDEATHSIG, SIGKILL
mib = int(sys.argv[1])
print("ready", flush=True)
if not sys.stdin.readline():
    sys.exit(0)
stack = mmap.mmap(-1, 1 << 16)
top = (ctypes.addressof(ctypes.c_char.from_buffer(stack)) + (1 << 16)) & ~15
libc.clone.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
pid = libc.clone(ctypes.cast(libc.pause, ctypes.c_void_p), top, 0x100 | 17, None)   # CLONE_VM|SIGCHLD
if pid <= 0:
    print("clone failed", ctypes.get_errno(), flush=True)
    sys.exit(1)
print("sharer", pid, flush=True)
chunks = [b"\x01" * (1 << 20) for _ in range(mib)]
print("allocated", flush=True)
sys.stdin.readline()
"""


def hog_argv(mib: int, step: int | None = None, delay: float = 0.0,
             clock: tuple[int, int] | None = None, flags: Iterable[str] = (),
             script: str = HOG) -> list[str]:
    """The command line of a hog (``script`` takes MIB only unless step, delay or clock is given)."""
    argv = [sys.executable, *flags, "-c", script, str(mib)]
    if step is not None or delay or clock is not None:
        argv += [str(step if step is not None else mib), str(delay)]
    if clock is not None:
        argv += [str(clock[0]), str(clock[1])]
    return argv


def signal_pidfd(pidfd: int, sig: int) -> bool:
    """Send ``sig`` through ``pidfd``; False if the process is already gone."""
    try:
        _pidfd.send_signal(pidfd, sig)
        return True
    except TaskGone:
        return False


def end_by_pidfd(pidfd: int, grace: float, sig: int | None = signal.SIGTERM,
                 kill_wait: float = 5.0) -> bool:
    """Send ``sig`` (None: it was already told to end, e.g. by EOF), wait up to
    ``grace`` s, then SIGKILL and wait up to ``kill_wait`` s; True if it exited."""
    if sig is not None:
        signal_pidfd(pidfd, sig)
    if _pidfd.wait_exit(pidfd, grace):
        return True
    signal_pidfd(pidfd, signal.SIGKILL)
    return _pidfd.wait_exit(pidfd, kill_wait)


class Proc:
    """A process we started (a hog, a sleeper, ...); killed only through its pidfd."""

    def __init__(self, argv: list[str], stdout=subprocess.PIPE, pass_fds: tuple[int, ...] = ()):
        self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=stdout, text=True,
                                      bufsize=1, pass_fds=pass_fds)
        self.pid = self.popen.pid
        self.pidfd = _pidfd.open_pidfd(self.pid)

    def wait_line(self, want: str, timeout: float) -> bool:
        """Read stdout until a line is ``want``; False on timeout or EOF."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self.popen.stdout], [], [], left)[0]:
                return False
            line = self.popen.stdout.readline()
            if not line:
                return False
            if line.strip() == want:
                return True
            if time.monotonic() >= deadline:
                return False

    def read_line(self, timeout: float) -> str | None:
        """The next line of stdout, stripped; None on timeout or EOF."""
        if not select.select([self.popen.stdout], [], [], timeout)[0]:
            return None
        return self.popen.stdout.readline().strip() or None

    def go(self) -> None:
        self.popen.stdin.write("go\n")
        self.popen.stdin.flush()

    def alive(self) -> bool:
        return not _pidfd.wait_exit(self.pidfd, 0)

    def wait_exit(self, timeout: float) -> bool:
        return _pidfd.wait_exit(self.pidfd, timeout)

    def kill(self) -> None:
        signal_pidfd(self.pidfd, signal.SIGKILL)

    def reap(self) -> None:
        """Kill (if needed), wait, and close every fd of ours."""
        if self.pidfd >= 0:
            self.kill()
            self.wait_exit(10)
            os.close(self.pidfd)
            self.pidfd = -1
        for stream in (self.popen.stdin, self.popen.stdout):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def score_adj(pid: int) -> int | None:
    """``pid``'s oom_score_adj, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/oom_score_adj") as f:
            return int(f.read())
    except OSError:
        return None


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc/*/stat)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def argv_of(pid: int) -> list[str]:
    """``pid``'s argv ([] once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def watchdogs_of(pid: int) -> list[int]:
    """The daemon ``pid``'s watchdog children, told from its other child (the policy
    sandbox's zygote, ``-m oomkit.sandbox.zygote``) by argv: the watchdog runs
    ``python -I -S .../oomkit/daemon/watchdog.py TIMEOUT --ack`` (daemon/restore.py)."""
    return [kid for kid in children_of(pid)
            if any(a.endswith(os.sep + "watchdog.py") for a in argv_of(kid)[1:4])]



# -- waiting --------------------------------------------------------------------------


def until(pred, timeout: float = 5.0, step: float = 0.005) -> bool:
    """Poll ``pred`` every ``step`` s until it is true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def vm_until(pred, timeout: float = 5.0) -> bool:
    """``until`` every 50 ms: Python in the cgroup v2 VM is 10-25x slower."""
    return until(pred, timeout, step=0.05)


def wait_for_line(lines: Callable[[], Iterable[str]], text: str, timeout: float,
                  done: Callable[[], bool], step: float = 0.01) -> str | None:
    """The first of ``lines()`` (a subprocess's output so far) containing ``text``.

    Polls every ``step`` s; gives up (None) after ``timeout`` s or once
    ``done()`` (the output is complete: the writer has exited), after one
    last look.
    """
    deadline = time.monotonic() + timeout
    while True:
        for line in lines():
            if text in line:
                return line
        if time.monotonic() > deadline or done():
            for line in lines():
                if text in line:
                    return line
            return None
        time.sleep(step)
