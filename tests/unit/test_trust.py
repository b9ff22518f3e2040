"""Issue 10 item 13: as root, oomkit refuses a config or policy file that
someone other than root could change (the file, or a directory above it:
owned by another uid, writable by a group other than root's, or by every
user), as sudo's sudo_secure_file() and systemd do.  Not root: no refusal."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from oomkit.cli import main

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root (these run as root in CI)")

POLICY = textwrap.dedent("""
    from oomkit import OOMPolicy, Verdict

    class P(OOMPolicy):
        def handle_out_of_memory(self, oc, k):
            return Verdict.PASS
""")
SCENARIO = textwrap.dedent("""
    [machine]
    memory = "1G"

    [[task]]
    name = "a"
    rss = "10M"

    [[attach]]
    cgroup = "/"
    policy = "{policy}"
""")


def st(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def test_insecure_reasons_like_sudo():
    from oomkit.config.files import insecure

    assert insecure(st(stat.S_IFREG | 0o644), "/f") is None
    assert insecure(st(stat.S_IFREG | 0o644, uid=1000), "/f") == "/f is owned by uid 1000"
    assert insecure(st(stat.S_IFREG | 0o646), "/f") == "/f is writable by every user (mode 0646)"
    assert insecure(st(stat.S_IFREG | 0o664, gid=100), "/f") == "/f is writable by group 100 (mode 0664)"
    assert insecure(st(stat.S_IFREG | 0o664, gid=0), "/f") is None          # root's own group
    assert insecure(st(stat.S_IFDIR | 0o1777), "/tmp") is None              # sticky: entries keep owners
    assert insecure(st(stat.S_IFDIR | 0o777), "/d") == "/d is writable by every user (mode 0777)"
    assert insecure(st(stat.S_IFLNK | 0o777), "/l") is None                 # a link's mode means nothing
    assert insecure(st(stat.S_IFLNK | 0o777, uid=1000), "/l") == "/l is owned by uid 1000"


def setup(tmp_path: Path) -> Path:
    (tmp_path / "pol.py").write_text(POLICY)
    (tmp_path / "s.toml").write_text(SCENARIO.format(policy="pol.py:P"))
    return tmp_path / "s.toml"


def refused(command: str, scenario: Path, *words: str) -> None:
    result = CliRunner().invoke(main, [command, str(scenario)])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "refusing to trust this" in line, line
    for word in words:
        assert word in line, line


@as_root
@pytest.mark.parametrize("command", ["check", "simulate"])
def test_a_world_writable_policy_file_is_refused(tmp_path, command):
    scenario = setup(tmp_path)
    os.chmod(tmp_path / "pol.py", 0o666)
    refused(command, scenario, "policy file", "pol.py is writable by every user (mode 0666)")


@as_root
def test_a_policy_file_owned_by_another_user_is_refused(tmp_path):
    scenario = setup(tmp_path)
    os.chown(tmp_path / "pol.py", NOBODY, NOBODY)
    refused("check", scenario, f"pol.py is owned by uid {NOBODY}")


@as_root
def test_a_policy_in_a_group_writable_directory_is_refused(tmp_path):
    sub = tmp_path / "policies"
    sub.mkdir()
    (sub / "pol.py").write_text(POLICY)
    (tmp_path / "s.toml").write_text(SCENARIO.format(policy="policies/pol.py:P"))
    os.chown(sub, 0, 100)
    os.chmod(sub, 0o775)
    refused("check", tmp_path / "s.toml", "policies is writable by group 100")


@as_root
def test_a_directory_higher_up_owned_by_another_user_is_refused(tmp_path):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    scenario = setup(deep)
    os.chown(tmp_path / "a", NOBODY, 0)
    refused("check", scenario, f"/a is owned by uid {NOBODY}")


@as_root
def test_a_config_writable_by_others_is_refused(tmp_path):
    (tmp_path / "oomkit.toml").write_text('[daemon]\ncgroup = "v1"\n')
    os.chmod(tmp_path / "oomkit.toml", 0o602)
    refused("check", tmp_path / "oomkit.toml", "this config", "oomkit.toml is writable by every user")


@as_root
def test_a_symlink_owned_by_another_user_is_refused(tmp_path):
    scenario = setup(tmp_path)
    link = tmp_path / "link.toml"
    link.symlink_to(scenario)
    os.lchown(link, NOBODY, NOBODY)
    refused("check", link, f"link.toml is owned by uid {NOBODY}")


@as_root
def test_a_symlink_into_an_unsafe_directory_is_refused(tmp_path):
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    scenario = setup(unsafe)
    os.chmod(unsafe, 0o777)
    safe = tmp_path / "safe"
    safe.mkdir()
    (safe / "s.toml").symlink_to(scenario)
    refused("check", safe / "s.toml", "unsafe is writable by every user")


@as_root
def test_root_files_in_a_sticky_world_writable_directory_are_accepted(tmp_path):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    scenario = setup(sticky)
    result = CliRunner().invoke(main, ["check", str(scenario)])
    assert result.exit_code == 0, result.output


@as_root
def test_a_safe_layout_is_accepted(tmp_path):
    result = CliRunner().invoke(main, ["check", str(setup(tmp_path))])
    assert result.exit_code == 0, result.output


@as_root
def test_not_root_a_developers_own_files_are_used(tmp_path):
    # A developer (uid 65534 here: this process drops its effective uid) runs
    # simulate on files they own, in a directory they own: nothing is refused.
    # As root, the same files are.  A first run as root does every late import
    # (the Python tree is not readable by uid 65534 here).
    assert CliRunner().invoke(main, ["simulate", str(setup(tmp_path))]).exit_code == 0
    top = Path(tempfile.mkdtemp(prefix="oomkit-trust-"))
    try:
        os.chmod(top, 0o755)
        scenario = setup(top)
        for p in (top, top / "pol.py", scenario):
            os.chown(p, NOBODY, NOBODY)
        os.seteuid(NOBODY)
        try:
            result = CliRunner().invoke(main, ["simulate", str(scenario)])
        finally:
            os.seteuid(0)
        assert result.exit_code == 0, result.output
        refused("simulate", scenario, f"is owned by uid {NOBODY}")
    finally:
        shutil.rmtree(top)
