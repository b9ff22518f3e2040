"""contrib/oomkit.service for real, under systemd as PID 1 (in the VM with ``-s``)::

    flock /tmp/oomkit-vm.lock ../shared/vm/run-in-vm.sh -s -w "$PWD" -- \\
        env PYTHONPATH=$PWD/src python3 -m pytest tests/kernel_v2/test_systemd_unit.py -q

The shipped unit (and slice) with only the oomkit command and the config path
replaced: ``systemctl start`` returns after READY=1 with the memcg already
armed, a good reload is applied, a bad one is refused by ExecReload's check
and never signalled, ``systemctl kill -s KILL`` is followed by ExecStopPost's
restore and a restart, and ``systemctl stop`` leaves no task at
oom_score_adj 1000 and memory.high as it was.  Elsewhere it skips with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.procs import score_adj as adj
from helpers.procs import until

MiB = 1 << 20
TOP = Path(__file__).resolve().parents[2]
UNITS = Path("/run/systemd/system")


def systemd_is_pid1() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd" and UNITS.is_dir()
    except OSError:
        return False


@pytest.fixture
def systemd(v2):
    if not systemd_is_pid1():
        pytest.skip("needs systemd as PID 1 (run in the VM with run-in-vm.sh -s)")


def sh(*argv: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv}: exit {p.returncode}\n{p.stdout}\n{p.stderr}\n{journal()}")
    return p


def journal() -> str:
    return subprocess.run(["journalctl", "-u", "oomkit", "--no-pager", "-o", "cat"],
                          capture_output=True, text=True).stdout


def prop(name: str) -> str:
    return sh("systemctl", "show", "-p", name, "--value", "oomkit").stdout.strip()


def install(config: Path) -> None:
    """The shipped unit, run from this checkout: ``oomkit`` is this Python with
    PYTHONPATH=src, /etc/oomkit.toml is ``config``; every other line as shipped."""
    oomkit = f"{sys.executable} -m oomkit.cli"
    text = (TOP / "contrib/oomkit.service").read_text()
    text = text.replace("/usr/local/bin/oomkit", oomkit).replace("/etc/oomkit.toml", str(config))
    text = text.replace("[Service]\n", f"[Service]\nEnvironment=PYTHONPATH={TOP / 'src'}\n", 1)
    (UNITS / "oomkit.service").write_text(text)
    (UNITS / "oomkit.slice").write_text((TOP / "contrib/oomkit.slice").read_text())
    sh("systemctl", "daemon-reload")


def config_text(cg: str, policy: str) -> str:
    # Python in the VM is 10-25x slower: the deadlines of tests/kernel_v2.
    return (f'[daemon]\ncgroup = "v2"\nhandler_deadline = "1s"\nwatchdog_timeout = "3s"\n\n'
            f'[[attach]]\ncgroup = "{cg}"\npolicy = "{policy}"\n')


def test_unit_start_reload_kill_stop(systemd, box, tmp_path):
    cg = box.cg("a", limit=64 * MiB)
    config = Path("/run/oomkit-unit-test.toml")
    config.write_text(config_text(cg, "largest-task"))
    install(config)
    try:
        # Type=notify: start returns after READY=1, sent once the memcg is taken:
        # its wake-up point (memory.max - 1/8) is already written.
        sh("systemctl", "start", "oomkit")
        assert prop("ActiveState") == "active"
        assert box.fs.read(cg, "memory.high").strip() == str(56 * MiB)
        assert "1 attachments, 1 cgroups managed" in prop("StatusText")
        assert prop("Slice") == "oomkit.slice" and prop("WatchdogUSec") == "20s"
        assert Path(f"/proc/{prop('MainPID')}/oom_score_adj").read_text().strip() == "-1000"

        # In the zone: the policy's victim is armed for the kernel's OOM killer.
        hog = box.hog(cg, 60)
        assert until(lambda: adj(hog.pid) == 1000, 120, step=0.1), journal()

        pid = prop("MainPID")
        config.write_text(config_text(cg, "newest-task"))
        sh("systemctl", "reload", "oomkit")
        assert until(lambda: "reloaded" in journal(), 60, step=0.2), journal()
        assert prop("MainPID") == pid and prop("ActiveState") == "active"

        config.write_text("[daemon\n")
        bad = sh("systemctl", "reload", "oomkit", check=False)
        assert bad.returncode != 0                  # ExecReload's `oomkit check` refused it
        assert prop("MainPID") == pid and prop("ActiveState") == "active"
        assert "reload failed" not in journal()     # ... and the daemon was never signalled
        config.write_text(config_text(cg, "largest-task"))
        sh("systemctl", "reload", "oomkit")
        assert until(lambda: adj(hog.pid) == 1000, 120, step=0.1), journal()

        # SIGKILL to every process of the unit: ExecStopPost restores, then Restart=always.
        sh("systemctl", "kill", "-s", "KILL", "oomkit")
        assert until(lambda: prop("MainPID") not in ("0", pid) and prop("ActiveState") == "active",
                     120, step=0.2), journal()
        assert "restored from /run/oomkit" in journal()
        assert prop("NRestarts") == "1"
        assert until(lambda: adj(hog.pid) == 1000, 120, step=0.1), journal()

        sh("systemctl", "stop", "oomkit")
        assert prop("ActiveState") in ("inactive", "failed")
        assert adj(hog.pid) == 0, journal()
        assert box.fs.read(cg, "memory.high").strip() == "max"
        print(journal())
    finally:
        sh("systemctl", "stop", "oomkit", check=False)
        for name in ("oomkit.service", "oomkit.slice"):
            (UNITS / name).unlink(missing_ok=True)
        config.unlink(missing_ok=True)
        sh("systemctl", "daemon-reload", check=False)
        assert os.path.exists(box.fs.path(cg, "memory.high"))
