"""A sandbox of real v1 memcgs for live tests, and small memory hogs to put in them.

Safety rules kept here so every live test gets them for free:
- every cgroup is created under one fresh parent, ``/oomkit-test-<random>``,
  whose own limit (``PARENT_CAP``) bounds everything inside it, so no hog can
  cause a global OOM;
- only processes started here are killed, by pidfd, never by name;
- :meth:`Sandbox.cleanup` kills our hogs, hands any paused OOM back to the
  kernel and removes the cgroups deepest first, also after a failed test;
- hogs die with the test process (PR_SET_PDEATHSIG) and on stdin EOF.
"""

from __future__ import annotations

import errno
import os
import secrets
import select
import signal
import subprocess
import sys
import time

from oomkit.errors import CgroupGone, KernelError, TaskGone
from oomkit.linux import pidfd as _pidfd
from oomkit.linux.cgroupfs import CgroupFS, detect
from oomkit.linux.procfs import ProcFS

MiB = 1 << 20
PARENT_CAP = 256 * MiB

# The hog: dies with its parent, says "ready", waits for a line (so the test
# can move it into its memcg first: pages are charged to the memcg of the
# task that faults them in), touches MIB MiB, says "allocated", then holds
# the memory until stdin closes.
HOG = r"""
import ctypes, sys
ctypes.CDLL(None).prctl(1, 9)          # PR_SET_PDEATHSIG, SIGKILL
mib = int(sys.argv[1])
print("ready", flush=True)
if not sys.stdin.readline():
    sys.exit(0)
chunks = [b"\x01" * (1 << 20) for _ in range(mib)]   # bytes * n writes every page
print("allocated", flush=True)
sys.stdin.readline()
"""


def v1_memory_mount() -> str | None:
    """The v1 memory controller's mount, or None."""
    try:
        version, mount = detect("v1")
    except KernelError:
        return None
    return str(mount) if version == "v1" else None


class Hog:
    """One hog process we started; killed only through its pidfd."""

    def __init__(self, mib: int, script: str = HOG):
        self.mib = mib
        self.popen = subprocess.Popen([sys.executable, "-c", script, str(mib)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = self.popen.pid
        self.pidfd = _pidfd.open_pidfd(self.pid)
        self.starttime = ProcFS().stat(self.pid)["starttime"]

    def wait_line(self, want: str, timeout: float) -> bool:
        """Wait for the hog to print ``want``; False on timeout or exit."""
        if not select.select([self.popen.stdout], [], [], timeout)[0]:
            return False
        return self.popen.stdout.readline().strip() == want

    def go(self) -> None:
        self.popen.stdin.write("go\n")
        self.popen.stdin.flush()

    def alive(self) -> bool:
        return not _pidfd.wait_exit(self.pidfd, 0)

    def wait_exit(self, timeout: float) -> bool:
        return _pidfd.wait_exit(self.pidfd, timeout)

    def kill(self) -> None:
        try:
            _pidfd.send_signal(self.pidfd, signal.SIGKILL)
        except TaskGone:
            pass

    def reap(self) -> None:
        """Kill (if needed), wait, and close every fd of ours."""
        if self.pidfd >= 0:
            self.kill()
            self.wait_exit(10)
            os.close(self.pidfd)
            self.pidfd = -1
        for stream in (self.popen.stdin, self.popen.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class Sandbox:
    """A fresh ``/oomkit-test-<random>`` memcg with a hard cap, and what we put in it."""

    def __init__(self, mount: str, cap: int = PARENT_CAP):
        self.fs = CgroupFS(mount, "v1")
        self.root = f"/oomkit-test-{secrets.token_hex(4)}"
        self.hogs: list[Hog] = []
        self.fs.mkdir(self.root)
        try:
            self.fs.set_limit(self.root, cap)
        except KernelError:
            self.fs.rmdir(self.root)
            raise

    def cg(self, rel: str = "", limit: int | None = None) -> str:
        """Create ``<root>/<rel>`` (parents must exist) and set its limit; returns its path."""
        path = self.root + ("/" + rel.strip("/") if rel.strip("/") else "")
        if path != self.root:
            self.fs.mkdir(path)
        if limit is not None:
            self.fs.set_limit(path, limit)
        return path

    def hog(self, cg: str, mib: int, wait_allocated: float | None = None, script: str = HOG) -> Hog:
        """Start a hog, move it into ``cg`` (ours only), then let it allocate."""
        if not (cg == self.root or cg.startswith(self.root + "/")):
            raise ValueError(f"{cg} is not inside this sandbox ({self.root})")
        hog = Hog(mib, script)
        self.hogs.append(hog)
        if not hog.wait_line("ready", 30):
            raise RuntimeError("hog did not start")
        self.fs.attach(cg, hog.pid)
        hog.go()
        if wait_allocated is not None and not hog.wait_line("allocated", wait_allocated):
            raise RuntimeError(f"hog did not allocate {mib} MiB in {wait_allocated} s")
        return hog

    def cleanup(self) -> list[str]:
        """Kill our hogs, then remove our cgroups deepest first; returns what was left."""
        for cg in self._tree():
            try:  # a paused OOM would keep a killed task from exiting promptly
                self.fs.set_oom_kill_disable(cg, False)
            except KernelError:
                pass
        for hog in self.hogs:
            hog.reap()
        left = []
        for cg in reversed(self._tree()):
            if not self._rmdir(cg):
                left.append(cg)
        return left

    def _tree(self) -> list[str]:
        return list(self.fs.walk(self.root)) if self.fs.exists(self.root) else []

    def _rmdir(self, cg: str, timeout: float = 10.0) -> bool:
        # rmdir says EBUSY until exited tasks have left the css (they do so
        # at the end of do_exit), so retry for a while.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.fs.rmdir(cg)
                return True
            except CgroupGone:
                return True
            except KernelError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
