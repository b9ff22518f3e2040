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

from helpers.memcg import Sandbox, v1_memory_mount  # noqa: E402


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
    box = Sandbox(v1_mount)
    try:
        yield box
    finally:
        left = box.cleanup()
        assert not left, f"could not remove test cgroups: {left}"
