"""The daemon's config file: `oomkit check` on good and bad files (issue 3 s.2)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from oomkit.cli import main
from oomkit.config.daemon import resolve
from oomkit.errors import ConfigError

GOOD = """
[daemon]
cgroup = "v1"
handler_deadline = "50ms"
backoff_budget = 3
backoff_window = "10s"
backoff_wait = "500ms"
event_log = "-"
dry_run = false

[[attach]]
cgroup = "/batch.slice/*"
policy = "largest-task"
params = {}
"""


def check(tmp_path, text):
    path = tmp_path / "oomkit.toml"
    path.write_text(text)
    return CliRunner().invoke(main, ["check", str(path)])


def test_the_issue_example_checks(tmp_path):
    result = check(tmp_path, GOOD)
    assert result.exit_code == 0 and "daemon config: 1 attachments" in result.output


def test_defaults_and_units():
    config = resolve({"attach": [{"cgroup": "/", "policy": "kernel-default"}]})
    assert config.hierarchy == "auto" and config.settings.handler_deadline == 0.05
    assert config.settings.backoff_wait == 0.5 and config.watchdog_timeout == 1.0
    # cgroup v2: a standing decision 1/8 of memory.max from it (auto), taken again every
    # 500 ms; acting early on pressure is an opt-in, off by default (issue 9).
    assert config.pressure is None and config.headroom is None and config.rearm == 0.5
    assert str(resolve({"daemon": {"pressure": "some 150ms 2s"}}).pressure) == "some 150000 2000000"
    assert config.proc_cache == 10_000 and config.task_reader == "auto"


@pytest.mark.parametrize("old,new,words", [
    ('cgroup = "v1"', 'cgroup = "v3"', ["daemon.cgroup", "v3"]),
    ('dry_run = false', 'dry_run = false\ncolour = 1', ["unknown key 'colour'"]),
    ('handler_deadline = "50ms"', 'handler_deadline = "fast"', ["daemon.handler_deadline", "duration"]),
    ('cgroup = "/batch.slice/*"', 'cgroup = "batch.slice"', ["attach[0].cgroup", "not a cgroup path"]),
    ('policy = "largest-task"', 'policy = "nope"', ["attach[0].policy", "unknown policy"]),
    ('event_log = "-"', 'event_log = "-"\npressure = "some 10ms 99s"', ["daemon.pressure"]),
    ('dry_run = false', 'dry_run = false\nproc_cache = -1', ["daemon.proc_cache", "0 to 1000000"]),
    ('dry_run = false', 'dry_run = false\ntask_reader = "ebpf"', ["daemon.task_reader", '"bpf"']),
])
def test_bad_configs_get_one_clear_line(tmp_path, old, new, words):
    result = check(tmp_path, GOOD.replace(old, new, 1))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "oomkit.toml" in lines[0] and "Traceback" not in result.output
    for word in words:
        assert word in lines[0]


def test_two_attachments_on_one_cgroup_is_an_error():
    with pytest.raises(ConfigError, match="already has a policy"):
        resolve({"attach": [{"cgroup": "/a", "policy": "largest-task"},
                            {"cgroup": "/a", "policy": "newest-task"}]})


def test_task_reader_bpf_needs_the_running_kernels_proc():
    from oomkit.daemon.main import open_task_reader

    assert open_task_reader("auto", "/tmp/fake-proc") is None     # a test's fake tree: /proc reads
    assert open_task_reader("proc", "/proc") is None
    with pytest.raises(ConfigError, match="reads the running kernel"):
        open_task_reader("bpf", "/tmp/fake-proc")


def test_the_shipped_example_and_every_layer_have_the_same_defaults():
    """contrib/oomkit.toml's [daemon] keys, an empty [daemon] and LiveSettings()
    agree: the shipped defaults are one set, whichever way they reach the live stack."""
    import dataclasses
    import tomllib
    from pathlib import Path

    from oomkit.backends.live import LiveSettings
    from oomkit.daemon.main import live_settings

    shipped = tomllib.loads((Path(__file__).parents[2] / "contrib" / "oomkit.toml").read_text())
    example = resolve({"daemon": shipped["daemon"]})
    builtin = resolve({"daemon": {}})
    assert live_settings(example) == live_settings(builtin) == LiveSettings()
    for f in dataclasses.fields(builtin):
        if f.name not in ("attach", "file", "base_dir"):
            assert getattr(example, f.name) == getattr(builtin, f.name), f.name
