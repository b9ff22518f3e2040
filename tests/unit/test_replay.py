"""``oomkit replay`` reads the event log through the record schema: a good
record replays; a malformed one (issue 10 s.11: wrong types, missing fields,
a relative ``memcg`` that used to hang it) is one line naming the file and
line, exit 2, never a traceback or a hang."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oomkit.cli import main
from oomkit.engine.chain import Engine, EngineSettings
from oomkit.errors import ConfigError
from oomkit.policies import make_policy
from oomkit.replay import replay_record
from oomkit.schema import OOMRecord
from oomtest_helpers import M, make_sim


def recorded() -> dict:
    """A daemon-like record: /a OOMs, largest-task kills hog; with its snapshot."""
    sim = make_sim(cgroups=[{"path": "/a", "limit": "100M"}, {"path": "/a/b"}],
                   tasks=[{"name": "hog", "cgroup": "/a", "rss": "60M"},
                          {"name": "small", "cgroup": "/a/b", "rss": "30M"}])
    engine = Engine(sim.backend, EngineSettings(snapshot=True))
    engine.attach("/a", make_policy("largest-task"))
    record = engine.handle(sim.machine.check(sim._by_name["hog"], 20 * M))
    return record.to_dict()


GOOD = recorded()


def write_log(tmp_path, *records) -> str:
    path = tmp_path / "events.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def one_line_error(result, where: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"oomkit: {where}"), result.stderr
    return lines[0]


def test_a_recorded_oom_replays_against_another_policy(tmp_path):
    log = write_log(tmp_path, GOOD)
    result = CliRunner().invoke(main, ["replay", "--json", "--attach", "/a=newest-task", log])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["handlers"][0]["policy"] == "newest-task" and out["resolved_by"] == "policy"
    assert [k["name"] for k in out["killed"]] == ["small"]        # newest, not largest
    readable = CliRunner().invoke(main, ["replay", log])
    assert readable.exit_code == 0 and "resolved by kernel" in readable.stdout


def test_records_without_a_snapshot_are_skipped_and_index_counts_the_others(tmp_path):
    kernel_kill = {k: v for k, v in GOOD.items() if k != "snapshot"}
    log = write_log(tmp_path, GOOD, kernel_kill, "", GOOD)
    assert replay_record(log, 1, {}).memcg == "/a"
    with pytest.raises(ConfigError, match="has 2 OOM records; --index 2 is out of range"):
        replay_record(log, 2, {})
    with pytest.raises(ConfigError, match="out of range"):
        replay_record(log, -3, {})


def mutated(path: str, value) -> dict:
    """GOOD with the value at the dotted ``path`` replaced (``None``: removed)."""
    record = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = record
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _REMOVE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return record


_REMOVE = object()

MALFORMED = [
    ("memcg-relative", "memcg", "a", "memcg"),                      # used to hang replay
    ("memcg-missing", "memcg", _REMOVE, "memcg"),
    ("level-unknown", "level", "cosmic", "level"),
    ("t-string", "t", "yesterday", "t"),
    ("requested-negative", "requested", -5, "requested"),
    ("nodes-not-list", "nodes", 3, "nodes"),
    ("handlers-dict", "handlers", {}, "handlers"),
    ("verdict-unknown", "handlers.0.verdict", "MAYBE", "verdict"),
    ("killed-pid-string", "killed.0.pid", "100", "pid"),
    ("snapshot-list", "snapshot", [], "snapshot"),
    ("scope-relative", "snapshot.scope", "a", "scope"),
    ("totalpages-missing", "snapshot.totalpages", _REMOVE, "totalpages"),
    ("totalpages-float", "snapshot.totalpages", 1.5, "totalpages"),
    ("cgroups-list", "snapshot.cgroups", [], "cgroups"),
    ("cgroup-key-relative", "snapshot.cgroups", {"a": {"usage": 1, "limit": None}}, "cgroups"),
    ("usage-string", "snapshot.cgroups./a.usage", "big", "usage"),
    ("usage-negative", "snapshot.cgroups./a.usage", -1, "usage"),
    ("usage-huge", "snapshot.cgroups./a.usage", 10 ** 30, "usage"),
    ("limit-missing", "snapshot.cgroups./a.limit", _REMOVE, "limit"),
    ("children-relative", "snapshot.cgroups./a.children", ["b"], "children"),
    ("events-string-count", "snapshot.cgroups./a.events", {"oom": "1"}, "events"),
    ("task-pid-missing", "snapshot.tasks.0.pid", _REMOVE, "pid"),
    ("task-cgroup-relative", "snapshot.tasks.0.cgroup", "a/b", "cgroup"),
    ("task-adj-too-low", "snapshot.tasks.0.oom_score_adj", -1001, "oom_score_adj"),
    ("task-nodes-negative", "snapshot.tasks.0.nodes", [-1], "nodes"),
    ("task-cmdline-string", "snapshot.tasks.0.cmdline", "ls -l", "cmdline"),
    ("tasks-null-entry", "snapshot.tasks.0", None, "tasks"),
    ("read-unknown", "snapshot.read", "during", "read"),
]


@pytest.mark.parametrize("case,path,value,names", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_record_is_one_line_naming_file_line_and_field(tmp_path, case, path, value,
                                                                   names):
    log = write_log(tmp_path, GOOD, mutated(path, value))
    with alarm(30):
        result = CliRunner().invoke(main, ["replay", "--index", "0", log])
    line = one_line_error(result, f"{log}:2: ")
    assert names in line


def test_not_json_and_not_an_object_are_one_line(tmp_path):
    for text in ("{not json", "[1, 2]", "42", "[" * 100_000):
        log = write_log(tmp_path, text)
        result = CliRunner().invoke(main, ["replay", log])
        one_line_error(result, f"{log}:1: ")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    with alarm(30):
        result = CliRunner().invoke(main, ["replay", str(fifo)])
    assert "not a regular file" in one_line_error(result, str(fifo))


def test_the_relative_memcg_of_issue_10_does_not_hang_a_real_process(tmp_path):
    log = write_log(tmp_path, mutated("memcg", "a"))
    proc = subprocess.run([sys.executable, "-m", "oomkit.cli", "replay", log],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"oomkit: {log}:1: ") and len(proc.stderr.splitlines()) == 1


# -- arbitrary input: never a traceback, never a hang ---------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.sampled_from(["/", "/a", "/a/b", "a", "memcg", "numa", "HANDLED"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12)


def paths_of(node, prefix=()):
    """Every (path) into a JSON document: dict keys and list indices."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield from paths_of(value, (*prefix, key))


ALL_PATHS = list(paths_of(GOOD))[1:]


def replace_at(doc, path, value):
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@contextmanager
def alarm(seconds: float):
    """Turn a hang into a failure of the test instead of a stuck suite."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def replay_never_tracebacks(tmp_path, text: str, attach: dict[str, str]) -> None:
    log = tmp_path / "fuzz.jsonl"
    log.write_text(text)
    with alarm(10):
        try:
            assert isinstance(replay_record(log, -1, attach), OOMRecord)
        except ConfigError:
            pass                                    # the one-line error the CLI prints


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ALL_PATHS), value=json_values,
       attach=st.sampled_from([{}, {"/a": "largest-task"}, {"/": "kernel-default"},
                               {"/a/b": "largest-cgroup"}]))
def test_a_record_with_any_value_anywhere_replays_or_is_refused(tmp_path, path, value, attach):
    replay_never_tracebacks(tmp_path, msgspec.json.encode(replace_at(GOOD, path, value)).decode() + "\n",
                            attach)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=json_values)
def test_any_json_line_replays_or_is_refused(tmp_path, doc):
    replay_never_tracebacks(tmp_path, json.dumps(doc) + "\n", {})


def test_a_valid_record_with_surprising_values_replays(tmp_path):
    # Valid by the schema, odd by the engine: a task in a cgroup the snapshot
    # lacks, a numa OOM with no tasks, a global OOM that names a memcg.
    odd = [mutated("snapshot.tasks.0.cgroup", "/elsewhere"),
           {**mutated("level", "numa"), "nodes": [3]},
           {**mutated("level", "global"), "memcg": "/a"},
           mutated("snapshot.totalpages", 0)]
    for record in odd:
        replay_never_tracebacks(tmp_path, json.dumps(record) + "\n", {"/a": "kernel-default"})
