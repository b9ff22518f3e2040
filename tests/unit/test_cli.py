"""Section 6 (and the CLI of section 4): `oomkit check` and `oomkit simulate`.
Every bad input gives exactly one line on stderr naming the file and the key
or line, a non-zero exit, and never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from oomkit.cli import main

GOOD = textwrap.dedent("""
    [machine]
    memory = "1G"

    [[cgroup]]
    path = "/batch"
    limit = "100M"

    [[task]]
    name = "db"
    cgroup = "/batch"
    rss = "60M"
    oom_score_adj = 0

    [[task]]
    name = "job"
    cgroup = "/batch"
    rss = "30M"

    [[task]]
    name = "web"
    rss = "10M"

    [[attach]]
    cgroup = "/batch"
    policy = "largest-task"
    params = {}

    [[event]]
    at = 1.0
    task = "job"
    alloc = "20M"
""")


def edit(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


# (id, scenario text, extra files, text the message must name besides the file)
BAD = [
    ("unknown-top-key", GOOD + '\nfrobnicate = 1\n', {}, "frobnicate"),
    ("unknown-machine-key", edit('memory = "1G"', 'memory = "1G"\nmemroy = "2G"'), {}, "memroy"),
    ("unknown-task-key", edit('rss = "60M"', 'rss = "60M"\ncolour = "red"'), {}, "task[0]"),
    ("size-12Q", edit('limit = "100M"', 'limit = "12Q"'), {}, "cgroup[0].limit"),
    ("size-minus-1G", edit('rss = "60M"', 'rss = "-1G"'), {}, "task[0].rss"),
    ("machine-size-12Q", edit('memory = "1G"', 'memory = "12Q"'), {}, "machine.memory"),
    ("event-size-minus-1G", edit('alloc = "20M"', 'alloc = "-1G"'), {}, "event[0].alloc"),
    ("parent-missing", edit('path = "/batch"', 'path = "/batch/deep"'), {}, "cgroup[0].path"),
    ("two-attachments", GOOD + '\n[[attach]]\ncgroup = "/batch"\npolicy = "newest-task"\n', {},
     "attach[1].cgroup"),
    ("unknown-policy", edit('policy = "largest-task"', 'policy = "no-such-policy"'), {},
     "attach[0].policy"),
    ("policy-file-syntax-error", edit('policy = "largest-task"', 'policy = "pol.py:P"'),
     {"pol.py": "from oomkit import OOMPolicy\nclass P(OOMPolicy)\n    pass\n"}, "line 2"),
    ("policy-file-raises", edit('policy = "largest-task"', 'policy = "pol.py:P"'),
     {"pol.py": "import oomkit\n\nraise RuntimeError('nope')\n"}, "line 3"),
    ("policy-file-missing-import", edit('policy = "largest-task"', 'policy = "pol.py:P"'),
     {"pol.py": "import no_such_module_for_oomkit\n"}, "attach[0].policy"),
    ("unknown-param", edit("params = {}", "params = { bogus = 1 }"), {}, "bogus"),
    ("not-toml", "[machine\nmemory = 1", {}, "line 1"),
]


@pytest.fixture
def runner():
    return CliRunner()


def one_line_error(result, file_name: str, names: str) -> str:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    err = result.stderr
    assert "Traceback" not in err and "Traceback" not in result.stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert file_name in lines[0], lines[0]
    assert names in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["check", "simulate"])
@pytest.mark.parametrize("case,text,files,names", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gives_one_line_naming_file_and_key(runner, tmp_path, command, case, text, files,
                                                      names):
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    result = runner.invoke(main, [command, str(path)])
    line = one_line_error(result, "scenario.toml", names)
    assert line.startswith("oomkit: ")


@pytest.mark.parametrize("command", ["check", "simulate"])
def test_missing_file_is_one_line(runner, tmp_path, command):
    result = runner.invoke(main, [command, str(tmp_path / "nope.toml")])
    one_line_error(result, "nope.toml", "no such file")


def test_check_accepts_a_good_scenario_and_runs_nothing(runner, tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    result = runner.invoke(main, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout and "1 attachments" in result.stdout
    assert result.stderr == ""


def test_simulate_json_has_the_documented_shape(runner, tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    result = runner.invoke(main, ["simulate", "--json", str(path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    oom = data["ooms"][0]
    assert (oom["t"], oom["level"], oom["memcg"], oom["trigger"]) == (1.0, "memcg", "/batch", "job")
    assert oom["handlers"][0] == {**oom["handlers"][0], "cgroup": "/batch", "policy": "largest-task",
                                  "verdict": "HANDLED", "freed": 60 << 20, "error": None}
    assert oom["resolved_by"] == "policy"
    assert oom["killed"] == [{"name": "db", "pid": 100, "cgroup": "/batch", "by": "policy:/batch"}]
    assert oom["limits"] == []
    assert data["survivors"] == ["job", "web"] and data["killed"] == ["db"]
    assert data["final"]["/batch"] == {"usage": 50 << 20, "limit": 100 << 20}


def test_simulate_attach_overrides_the_scenarios_policy(runner, tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    result = runner.invoke(main, ["simulate", "--json", "--attach", "/batch=newest-task", str(path)])
    assert result.exit_code == 0, result.output
    oom = json.loads(result.stdout)["ooms"][0]
    assert oom["handlers"][0]["policy"] == "newest-task"
    assert [k["name"] for k in oom["killed"]] == ["job"]      # newest (highest pid), not largest


def test_simulate_readable_report(runner, tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    result = runner.invoke(main, ["simulate", str(path)])
    assert result.exit_code == 0, result.output
    assert "OOM #1" in result.stdout and "largest-task" in result.stdout and "db" in result.stdout


@pytest.mark.parametrize("value,names", [
    ("batch=largest-task", "--attach"),
    ("/batch=no-such-policy", "--attach /batch=no-such-policy"),
    ("/nope=largest-task", "--attach /nope"),
])
def test_simulate_bad_attach_option_is_one_line(runner, tmp_path, value, names):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    result = runner.invoke(main, ["simulate", "--attach", value, str(path)])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0] and "Traceback" not in result.stderr


def test_a_real_process_prints_no_traceback(tmp_path):
    (tmp_path / "pol.py").write_text("raise ImportError('broken on purpose')\n")
    path = tmp_path / "scenario.toml"
    path.write_text(edit('policy = "largest-task"', 'policy = "pol.py:P"'))
    for command in ("check", "simulate"):
        proc = subprocess.run([sys.executable, "-m", "oomkit.cli", command, str(path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "scenario.toml" in lines[0] and "attach[0].policy" in lines[0]
        assert "broken on purpose" in lines[0]
