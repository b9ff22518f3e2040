"""`oomkit simulate --no-attach` (the kernel alone) and the memory.events of the result."""

from __future__ import annotations

import json

from click.testing import CliRunner

from oomkit.cli import main

SCENARIO = """
[machine]
memory = "1G"

[[cgroup]]
path = "/a"
limit = "100M"

[[task]]
name = "big"
cgroup = "/a"
rss = "60M"
oom_score_adj = -500

[[task]]
name = "small"
cgroup = "/a"
rss = "30M"

[[attach]]
cgroup = "/a"
policy = "largest-task"

[[event]]
at = 1.0
task = "small"
alloc = "20M"
"""


def run(tmp_path, *args):
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO)
    result = CliRunner().invoke(main, ["simulate", str(path), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_no_attach_leaves_the_oom_to_the_kernel(tmp_path):
    with_policy = run(tmp_path)
    kernel_alone = run(tmp_path, "--no-attach")
    assert with_policy["killed"] == ["big"]                 # largest-task ignores the -500
    assert with_policy["ooms"][0]["resolved_by"] == "policy"
    assert kernel_alone["killed"] == ["small"]              # the kernel's badness honours it
    assert kernel_alone["ooms"][0]["handlers"] == []
    assert kernel_alone["ooms"][0]["resolved_by"] == "kernel"


def test_no_attach_then_attach_replays_against_one_policy(tmp_path):
    out = run(tmp_path, "--no-attach", "--attach", "/=newest-task")
    assert [h["cgroup"] for h in out["ooms"][0]["handlers"]] == ["/"]


def test_memory_events_count_the_oom_and_the_kill_hierarchically(tmp_path):
    events = run(tmp_path)["memory_events"]
    assert events["/a"] == {"max": 1, "oom": 1, "oom_kill": 1}
    assert events["/"] == {"max": 1, "oom": 1, "oom_kill": 1}
