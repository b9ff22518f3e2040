"""Root-only tests on real v1 memcgs under /sys/fs/cgroup/memory/oomkit-test-<random>.

The ``sandbox`` fixture makes a fresh parent for each test and always removes
it afterwards, also when the test fails (see tests/helpers/memcg.py for the
safety rules).  Skipped unless root with a v1 memory controller.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers

from helpers.daemon import DaemonProc  # noqa: E402
from helpers.memcg import Sandbox, cleaned_up, v1_memory_mount  # noqa: E402


@pytest.fixture(scope="session")
def v1_mount() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates memory cgroups and kills processes")
    mount = v1_memory_mount()
    if mount is None:
        pytest.skip("no cgroup v1 hierarchy with the memory controller is mounted")
    return mount


@pytest.fixture
def sandbox(v1_mount):
    yield from cleaned_up(Sandbox(v1_mount))


@pytest.fixture
def oomkit_daemon(sandbox, tmp_path):
    """Start ``oomkit run`` on this test's sandbox: ``oomkit_daemon(attach, **daemon_opts)``.

    Every daemon started here is stopped (SIGTERM, then SIGKILL) with its
    watchdog before the sandbox is removed, also when the test fails.
    """
    started: list[DaemonProc] = []

    def start(attach, name: str = "oomkit", run: bool = True, **opts) -> DaemonProc:
        d = DaemonProc(tmp_path, sandbox, attach, name=name, **opts)
        started.append(d)
        return d.start() if run else d

    try:
        yield start
    finally:
        for d in started:
            d.stop()
