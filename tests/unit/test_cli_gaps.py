"""Issue 13's CLI gaps: a policy file on the command line is the shell's, not the
scenario's; ``oomkit policies`` shows each built-in's params and defaults; a
policy's raise_limit has a line of its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from oomkit.cli import from_shell, main
from oomkit.context import Level
from oomkit.daemon.eventlog import raise_lines
from oomkit.schema import ActionRecord, HandlerRecord, LimitChange, OOMRecord

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_a_relative_policy_file_on_the_command_line_is_the_shells(tmp_path, monkeypatch):
    scenarios, shell = tmp_path / "scenarios", tmp_path / "shell"
    scenarios.mkdir()
    shell.mkdir()
    shutil.copy(EXAMPLES / "db-beside-leak.toml", scenarios / "s.toml")
    shutil.copy(EXAMPLES / "policies" / "fair_share.py", shell / "p.py")
    monkeypatch.chdir(shell)
    r = CliRunner().invoke(main, ["simulate", str(scenarios / "s.toml"), "--in-process", "--json",
                                  "--attach", "/=./p.py:UserFairShare"])
    # Before, ./p.py was looked for beside the scenario: "no such file", exit 2.
    assert r.exit_code == 0, r.output
    [oom] = json.loads(r.stdout)["ooms"]
    assert oom["handlers"][0]["cgroup"] == "/" and oom["handlers"][0]["policy"] == "user-fair-share"
    # Only a file is made absolute: names, modules and absolute paths stay as written.
    assert from_shell("largest-task") == "largest-task" and from_shell("pkg.mod:Cls") == "pkg.mod:Cls"
    assert from_shell("/x/p.py:C") == "/x/p.py:C" and from_shell("sub/p.py:C") == f"{shell}/sub/p.py:C"


def test_policies_shows_params_and_defaults():
    r = CliRunner().invoke(main, ["policies"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("raise-limit "))
    assert lines[at + 1].strip() == 'params: step = "64M", ceiling = unset'
    assert any(line.strip() == "params: prefer = [], avoid = [], omit = []" for line in lines)
    assert any('then = "prefer-avoid", then_params = unset, margin = "4M"' in line for line in lines)


def test_a_raised_limit_is_one_line():
    r = OOMRecord.new(1.0, Level.MEMCG, "/apps/web")
    h = HandlerRecord.new("/apps/web", "raise-limit")
    h.actions = [ActionRecord(action="raise_limit", target="/apps/web -> 2.5G", reason="buy time", result=512,
                              error=None),
                 ActionRecord(action="raise_limit", target="/apps -> 9G", reason="", result=-1, error="EPERM")]
    r.handlers, r.limits = [h], [LimitChange(cgroup="/apps/web", old=2 << 30, new=5 << 29)]
    assert raise_lines(r) == ["oomkit: raised the limit of /apps/web from 2G to 2.5G, by raise-limit at "
                              "/apps/web: buy time"]
    assert raise_lines(r, dry_run=True)[0].startswith("oomkit: would raise the limit of /apps/web")
