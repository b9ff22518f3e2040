"""A sandbox of real v1 memcgs for live tests, and small memory hogs to put in them.

Safety rules kept here so every live test gets them for free:
- every cgroup is created under one fresh parent, ``/oomkit-test-<random>``,
  whose own limit (``PARENT_CAP``) bounds everything inside it, so no hog can
  cause a global OOM;
- only processes started here are killed, by pidfd, never by name
  (:class:`helpers.procs.Proc`);
- :meth:`Sandbox.cleanup` kills our hogs, hands any paused OOM back to the
  kernel and removes the cgroups deepest first, also after a failed test;
- hogs die with the test process (PR_SET_PDEATHSIG) and on stdin EOF.
"""

from __future__ import annotations

import errno
import secrets
import time

from oomkit.errors import CgroupGone, KernelError
from oomkit.linux.cgroupfs import CgroupFS, detect
from oomkit.linux.procfs import ProcFS

from .procs import HOG, Proc, hog_argv

MiB = 1 << 20
PARENT_CAP = 256 * MiB


def cleaned_up(box):
    """A fixture body: yield ``box`` (a v1 Sandbox or a v2 Box), then remove its
    cgroups, also after a failed test, and fail if any is left."""
    try:
        yield box
    finally:
        left = box.cleanup()
        assert not left, f"could not remove test cgroups: {left}"


def v1_memory_mount() -> str | None:
    """The v1 memory controller's mount, or None."""
    try:
        version, mount = detect("v1")
    except KernelError:
        return None
    return str(mount) if version == "v1" else None


class Hog(Proc):
    """One hog process we started (see :data:`helpers.procs.HOG`); killed only through its pidfd."""

    def __init__(self, mib: int, script: str = HOG):
        super().__init__(hog_argv(mib, script=script))
        self.mib = mib
        self.starttime = ProcFS().stat(self.pid)["starttime"]


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
        return rmdir_patiently(self.fs, cg, timeout)


def rmdir_patiently(fs: CgroupFS, cg: str, timeout: float = 10.0) -> bool:
    """Remove ``cg``; True once it is gone.  rmdir says EBUSY until exited tasks
    have left the css (they do so at the end of do_exit), so retry for a while."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fs.rmdir(cg)
            return True
        except CgroupGone:
            return True
        except KernelError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
