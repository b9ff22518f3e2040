"""Root-only tests of ``oomkit run`` on a real cgroup v2 hierarchy.

These machines bind the memory controller to cgroup v1, so the tests run in
the throw-away VM (``../shared/vm/README.md``)::

    ../shared/vm/run-in-vm.sh -w "$PWD" -- python3 -m pytest tests/kernel_v2 -q

Everywhere else (the host included) they skip with the reason.  Each test
gets a fresh ``/oomkit-test-<random>`` cgroup capped at 256 MiB (``box``),
removed afterwards also on failure, and hogs of tens of MiB inside it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oomkit.errors import CgroupGone, KernelError
from oomkit.linux.cgroupfs import CgroupFS, detect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers

from helpers.daemon import read_event_log  # noqa: E402
from helpers.memcg import cleaned_up  # noqa: E402
from helpers.procs import Proc, hog_argv, wait_for_line  # noqa: E402

MiB = 1 << 20
CAP = 256 * MiB


def v2_mount() -> str | None:
    try:
        version, mount = detect("v2")
    except KernelError:
        return None
    return str(mount) if version == "v2" else None


class Box:
    """A fresh ``/oomkit-test-<random>`` cgroup with the memory controller on
    for its children and a hard cap, and the processes we put in it."""

    def __init__(self, mount: str):
        self.fs = CgroupFS(mount, "v2")
        self.root = f"/oomkit-test-{secrets.token_hex(4)}"
        self.procs: list[Proc] = []
        if "memory" not in self.fs.read("/", "cgroup.subtree_control").split():
            self.fs.write("/", "cgroup.subtree_control", "+memory")
        self.fs.mkdir(self.root)
        self.fs.write(self.root, "memory.max", str(CAP))
        self.fs.write(self.root, "cgroup.subtree_control", "+memory")

    def cg(self, rel: str, limit: int | None = None, oom_group: bool = False,
           subtree: bool = False) -> str:
        path = self.root + "/" + rel.strip("/")
        self.fs.mkdir(path)
        if limit is not None:
            self.fs.write(path, "memory.max", str(limit))
        if oom_group:
            self.fs.write(path, "memory.oom.group", "1")
        if subtree:
            self.fs.write(path, "cgroup.subtree_control", "+memory")
        return path

    def _mine(self, cg: str) -> None:
        if not cg.startswith(self.root + "/"):
            raise ValueError(f"{cg} is not inside this box ({self.root})")

    def hog(self, cg: str, mib: int, step: int = 1, delay: float = 0.0) -> Proc:
        """Start a hog, move it into ``cg`` and let it allocate."""
        self._mine(cg)
        hog = Proc(hog_argv(mib, step=step, delay=delay, flags=("-S",)))
        self.procs.append(hog)
        if not hog.wait_line("ready", 60):
            raise RuntimeError("hog did not start")
        self.fs.write(cg, "cgroup.procs", str(hog.pid))
        hog.go()
        return hog

    def sleeper(self, cg: str) -> Proc:
        self._mine(cg)
        p = Proc(["sleep", "1000"], stdout=subprocess.DEVNULL)
        self.procs.append(p)
        self.fs.write(cg, "cgroup.procs", str(p.pid))
        return p

    def events(self, cg: str, local: bool = False) -> dict[str, int]:
        return self.fs.events(cg, local=local)

    def cleanup(self) -> list[str]:
        for p in self.procs:
            p.reap()
        try:  # anything else left in our subtree (only ours: it is our cgroup)
            self.fs.write(self.root, "cgroup.kill", "1")
        except KernelError:
            pass
        left = []
        for cg in sorted(self.fs.walk(self.root), key=lambda p: -p.count("/")):
            for _ in range(200):
                try:
                    self.fs.rmdir(cg)
                    break
                except CgroupGone:
                    break
                except KernelError:
                    time.sleep(0.05)
            else:
                left.append(cg)
        return left


class Daemon:
    """``oomkit run --config FILE -v`` as a subprocess, its stderr in a file."""

    def __init__(self, tmp_path: Path, config: str):
        self.config = tmp_path / "oomkit.toml"
        self.config.write_text(config)
        self.log_path = tmp_path / "daemon.log"
        self.events_path = tmp_path / "events.jsonl"
        self._log = open(self.log_path, "wb")
        code = "import sys; sys.argv[0] = 'oomkit'; from oomkit.cli import main; main()"
        self.popen = subprocess.Popen([sys.executable, "-c", code, "run", "--config",
                                       str(self.config), "-v"],
                                      stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_running(self, timeout: float = 90) -> None:
        if wait_for_line(lambda: self.log.splitlines(), "oomkit: running on cgroup v2", timeout,
                         done=lambda: self.popen.poll() is not None, step=0.1) is None:
            if self.popen.poll() is not None:
                raise AssertionError(f"the daemon exited {self.popen.returncode}:\n{self.log}")
            raise AssertionError(f"the daemon did not start in {timeout}s:\n{self.log}")

    def records(self) -> list[dict]:
        return read_event_log(self.events_path)

    def stop(self, timeout: float = 60) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            rc = self.popen.wait()
        self._log.close()
        return rc


@pytest.fixture(scope="session")
def v2() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates cgroups and kills processes")
    mount = v2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy with the memory controller (run these in the VM: "
                    "../shared/vm/run-in-vm.sh -w \"$PWD\" -- python3 -m pytest tests/kernel_v2)")
    return mount


@pytest.fixture
def box(v2):
    yield from cleaned_up(Box(v2))


@pytest.fixture
def daemon(tmp_path):
    started: list[Daemon] = []

    def start(box: Box, policy: str, *, at: str | None = None, params: str = "{}",
              extra: str = "") -> Daemon:
        """The daemon with only the hierarchy, the event log and the attachment set
        (every other key at its shipped default), as a new user would."""
        config = f"""
[daemon]
cgroup = "v2"
event_log = "{tmp_path / 'events.jsonl'}"
state_dir = "{tmp_path / 'state'}"
handler_deadline = "1s"       # Python in the VM is 10-25x slower
watchdog_timeout = "3s"
{extra}

[[attach]]
cgroup = "{at or box.root}"
policy = "{policy}"
params = {params}
"""
        d = Daemon(tmp_path, config)
        started.append(d)
        d.wait_running()
        return d

    yield start
    for d in started:
        if d.popen.poll() is None:
            d.stop()
