"""Issue 10 item 11: bad input to the CLI gets one line ``oomkit: ...`` and
exit status 2: never a traceback, never a hang.  Every number has bounds,
and the message states them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_cli import GOOD, edit

from oomkit.cli import main

DAEMON = '[daemon]\ncgroup = "v1"\n\n[[attach]]\ncgroup = "/batch"\npolicy = "largest-task"\n'


def run(tmp_path, text: str, *args: str, files: dict[str, str] | None = None, name: str = "s.toml"):
    for fname, body in (files or {}).items():
        (tmp_path / fname).write_text(body)
    path = tmp_path / name
    path.write_text(text)
    return CliRunner().invoke(main, [*args, str(path)])


def one_line(result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oomkit: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


DIGITS_400 = "9" * 400

SCENARIO_CASES = [
    ("size-400-digits-text", edit('rss = "60M"', f'rss = "{DIGITS_400}"'),
     ["task[0].rss", "out of range", "0B to 1048576T"]),
    ("size-400-digits-int", edit('rss = "60M"', f"rss = {DIGITS_400}"), ["task[0].rss", "out of range"]),
    ("size-5000-digits-int", edit('rss = "60M"', f"rss = {'9' * 5000}"), ["too long"]),
    ("size-above-1EiB", edit('memory = "1G"', 'memory = "1048577T"'), ["machine.memory", "0B to 1048576T"]),
    ("size-inf", edit('limit = "100M"', "limit = inf"), ["cgroup[0].limit"]),
    ("size-nan", edit('alloc = "20M"', "alloc = nan"), ["event[0].alloc"]),
    ("nested-2000", GOOD + "deep = " + "[" * 2000 + "]" * 2000 + "\n", ["nested too deeply"]),
    ("nested-params", edit("params = {}", "params = { x = " + "[" * 2000 + "]" * 2000 + " }"),
     ["nested too deeply"]),
    ("event-at-inf", edit("at = 1.0", "at = inf"), ["event[0].at", "finite"]),
    ("event-at-nan", edit("at = 1.0", "at = nan"), ["event[0].at", "finite"]),
    ("event-at-huge", edit("at = 1.0", "at = 1e300"), ["event[0].at", "0s to 31536000s"]),
    ("event-at-negative", edit("at = 1.0", "at = -1.0"), ["event[0].at", "negative"]),
    ("deadline-inf", GOOD + "[engine]\nhandler_deadline = inf\n", ["engine.handler_deadline", "finite"]),
    ("deadline-nan", GOOD + "[engine]\nhandler_deadline = nan\n", ["engine.handler_deadline", "finite"]),
    ("deadline-3600s", GOOD + '[engine]\nhandler_deadline = "3600s"\n',
     ["engine.handler_deadline", "1ms to 60s"]),
    ("deadline-0", GOOD + "[engine]\nhandler_deadline = 0\n", ["engine.handler_deadline", "1ms to 60s"]),
    ("backoff-wait-1h", GOOD + '[engine]\nbackoff_wait = "1h"\n', ["engine.backoff_wait"]),
    ("backoff-wait-60s", GOOD + '[engine]\nbackoff_wait = "60s"\n', ["engine.backoff_wait", "0s to 10s"]),
    ("backoff-budget-huge", GOOD + "[engine]\nbackoff_budget = 100000000\n", ["engine.backoff_budget", "0 to 1000"]),
    ("handler-budget-0", GOOD + "[engine]\nhandler_budget = 0\n", ["engine.handler_budget", "1 to 1000000000"]),
    ("exit-delay-huge", edit('memory = "1G"', 'memory = "1G"\nexit_delay = 1e300'),
     ["machine.exit_delay", "0s to 3600s"]),
    ("task-exit-delay-huge", edit('rss = "60M"', 'rss = "60M"\nexit_delay = "99999m"'),
     ["task[0].exit_delay", "0s to 3600s"]),
    ("uid-huge", edit('rss = "60M"', f'rss = "60M"\nuid = {DIGITS_400}'), ["task[0].uid", "out of range"]),
    ("policy-not-py", edit('policy = "largest-task"', 'policy = "./pol.txt:P"'), ["not a .py file"]),
    ("policy-sys-exit-0", edit('policy = "largest-task"', 'policy = "pol.py:P"'), ["SystemExit"]),
    ("cgroup-nul", edit('path = "/batch"', 'path = "/ba\\u0000tch"'), ["cgroup[0].path"]),
]
FILES = {"pol.txt": "x = 1\n", "pol.py": "import sys\nsys.exit(0)\n"}


@pytest.mark.parametrize("command", ["check", "simulate"])
@pytest.mark.parametrize("case,text,words", SCENARIO_CASES, ids=[c[0] for c in SCENARIO_CASES])
def test_bad_scenario_values_get_one_line_with_the_bounds(tmp_path, command, case, text, words):
    one_line(run(tmp_path, text, command, files=FILES), "s.toml", *words)


DAEMON_CASES = [
    ("watchdog-0", "watchdog_timeout = 0", ["daemon.watchdog_timeout", "200ms to 300s"]),
    ("watchdog-1ms", "watchdog_timeout = 0.001", ["daemon.watchdog_timeout", "200ms to 300s"]),
    ("watchdog-inf", "watchdog_timeout = inf", ["daemon.watchdog_timeout", "finite"]),
    ("deadline-3600s", 'handler_deadline = "3600s"', ["daemon.handler_deadline", "1ms to 60s"]),
    ("deadline-nan", "handler_deadline = nan", ["daemon.handler_deadline", "finite"]),
    ("proc-cache-huge", f"proc_cache = {DIGITS_400}", ["daemon.proc_cache", "out of range"]),
    ("headroom-400-digits", f'headroom = "{DIGITS_400}M"', ["daemon.headroom", "out of range"]),
    ("psi-400-digits", f'pressure = "some {DIGITS_400}ms 1s"', ["daemon.pressure"]),
    ("event-log-nul", 'event_log = "/tmp/a\\u0000b"', ["daemon.event_log", "NUL"]),
]


@pytest.mark.parametrize("case,line,words", DAEMON_CASES, ids=[c[0] for c in DAEMON_CASES])
def test_bad_daemon_values_get_one_line_with_the_bounds(tmp_path, case, line, words):
    text = DAEMON.replace('cgroup = "v1"', f'cgroup = "v1"\n{line}')
    one_line(run(tmp_path, text, "check", name="oomkit.toml"), "oomkit.toml", *words)


@pytest.mark.parametrize("value", ['"10ms"', '"60s"', "0.5"])
def test_handler_deadlines_within_the_bounds_are_accepted(tmp_path, value):
    result = run(tmp_path, GOOD + f"[engine]\nhandler_deadline = {value}\n", "check")
    assert result.exit_code == 0, result.output


def test_a_size_keeps_every_byte(tmp_path):
    from oomkit.units import parse_size

    assert parse_size("9007199254740993") == 9007199254740993      # not rounded through a float
    assert parse_size("1.5G") == 3 << 29


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "oomkit.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("command", ["check", "simulate"])
def test_a_fifo_is_refused_at_once(tmp_path, command):
    fifo = tmp_path / "s.toml"
    os.mkfifo(fifo)
    done = _cli(command, str(fifo))              # no writer: reading it would block for ever
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "not a regular file (a FIFO)" in done.stderr


def test_dev_zero_is_refused_not_read():
    done = _cli("check", "/dev/zero", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "not a regular file (a character device)" in done.stderr


def test_a_huge_file_is_refused_after_reading_at_most_the_cap(tmp_path):
    big = tmp_path / "s.toml"
    with big.open("wb") as f:
        f.truncate(1 << 30)                     # sparse: 1 GiB of NULs
    result = CliRunner().invoke(main, ["check", str(big)])
    one_line(result, "larger than 4 MiB")


def test_a_policy_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pol.py")
    text = edit('policy = "largest-task"', 'policy = "pol.py:P"')
    (tmp_path / "s.toml").write_text(text)
    done = _cli("check", str(tmp_path / "s.toml"))
    assert done.returncode == 2 and "not a regular file" in done.stderr, done.stderr


PRINTING = '''
from oomkit import OOMPolicy, Verdict
print("policy module imported")

class P(OOMPolicy):
    def __init__(self):
        print("policy built")

    def handle_out_of_memory(self, oc, k):
        print("handler ran")
        return Verdict.PASS
'''


def test_a_printing_policy_does_not_corrupt_simulate_json(tmp_path):
    text = edit('policy = "largest-task"', 'policy = "pol.py:P"')
    result = run(tmp_path, text, "simulate", "--json", files={"pol.py": PRINTING})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)               # stdout is exactly one JSON document
    assert data["ooms"][0]["resolved_by"] == "kernel"
    assert "handler ran" in result.stderr and "policy module imported" in result.stderr


def test_a_printing_policy_still_prints_in_the_readable_report(tmp_path):
    text = edit('policy = "largest-task"', 'policy = "pol.py:P"')
    result = run(tmp_path, text, "simulate", files={"pol.py": PRINTING})
    assert result.exit_code == 0, result.output
    assert "handler ran" in result.stdout


def test_attach_params_with_a_5000_digit_number_are_one_line(tmp_path):
    # tomllib raises a bare ValueError for an integer past int_max_str_digits.
    log = tmp_path / "events.jsonl"
    log.write_text("")
    result = CliRunner().invoke(main, ["replay", str(log), "--attach", "/=largest-task{x=" + "9" * 5000 + "}"])
    one_line(result, "not a TOML inline table")
