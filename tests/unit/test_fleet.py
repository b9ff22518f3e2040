"""Fleet evaluation (issue 14): the synthetic fleet generator, ``oomkit
evaluate`` (one record's numbers, literal; the same result serially, on
every core, from Parquet and on a Dask LocalCluster), ``oomkit export``,
and the host every record names."""

from __future__ import annotations

import gzip
import json
import shlex

import msgspec
import pytest
from click.testing import CliRunner

from oomkit.cli import main
from oomkit.config.daemon import resolve as resolve_daemon
from oomkit.config.scenario import resolve as resolve_scenario
from oomkit.fleet import run, sources
from oomkit.fleet.evaluate import HAPPENED, KERNEL, Attachment, Candidate, Evaluator, kernel_alone
from oomkit.fleet.generate import _resolved, generate, host_records, host_scenario
from oomkit.schema import CgroupState, Killed, OOMRecord, ResolvedBy, Snapshot, TaskState

M = 1024 * 1024


# -- one record, by hand --------------------------------------------------------------

def literal_record() -> OOMRecord:
    """/svc (limit 1000M, full) OOMs on a 10M charge; the record says a policy
    killed "job" (300M).  The kernel would kill "db" (the largest), newest-task "job"."""
    kids = ["/svc/db", "/svc/job", "/svc/web"]
    cgroups = {"/svc": CgroupState(usage=1000 * M, limit=1000 * M, children=kids)}
    tasks = []
    for pid, (name, rss, start) in enumerate([("db", 600, 1.0), ("job", 300, 5.0), ("web", 100, 3.0)], 10):
        cgroups[f"/svc/{name}"] = CgroupState(usage=rss * M, limit=None, pids=[pid])
        tasks.append(TaskState(pid=pid, name=name, cgroup=f"/svc/{name}", rss=rss * M, start_time=start))
    snap = Snapshot(scope="/svc", totalpages=1000 * M // 4096, cgroups=cgroups, read="before", tasks=tasks)
    record = OOMRecord.new(7.0, "memcg", "/svc", trigger="web", requested=10 * M)   # type: ignore[arg-type]
    record.resolved_by = ResolvedBy.POLICY
    record.killed = [Killed(name="job", pid=11, cgroup="/svc/job", by="policy:/")]
    record.snapshot, record.host = snap, "h1"
    return record


def test_one_record_counted_for_what_happened_the_kernel_and_each_candidate():
    newest = Candidate.of("/=newest-task", [Attachment("/", "newest-task")], ["^db$"])
    largest = Candidate.of("/svc=largest-task", [Attachment("/svc", "largest-task")], ["^db$"])
    ev = Evaluator([kernel_alone(["^db$"]), newest, largest])
    ev.add(literal_record(), "log", 0)
    s = ev.done()
    cols = s.columns
    assert (s.records, s.replayed, s.hosts) == (1, 1, ["h1"])
    # What the record says: job killed, 300M, 290M more than the 10M the OOM needed.
    h = cols[HAPPENED]
    assert (h.processes_killed, h.memory_killed, h.memory_beyond_need, h.protected_killed, h.differs) == \
        (1, 300 * M, 290 * M, 0, 0)
    # The kernel alone kills db, the largest: protected, and not what happened.
    k = cols[KERNEL]
    assert (k.resolved, k.memory_killed, k.memory_beyond_need, k.protected_killed, k.differs) == \
        ({"kernel": 1}, 600 * M, 590 * M, 1, 1)
    assert (cols["/=newest-task"].differs, cols["/=newest-task"].resolved) == (0, {"policy": 1})
    assert (cols["/svc=largest-task"].protected_killed, cols["/svc=largest-task"].differs) == (1, 1)
    # Per service: the OOM in /svc, each column's victims in theirs.
    assert s.services["/svc"] == {"": [1, 0]}
    assert s.services["/svc/job"] == {HAPPENED: [1, 300 * M], "/=newest-task": [1, 300 * M]}
    assert s.services["/svc/db"] == {KERNEL: [1, 600 * M], "/svc=largest-task": [1, 600 * M]}
    # The differing records are sampled with their replay attachments.
    [sample] = s.samples["/svc=largest-task"]
    assert sample.attach == ["/svc=largest-task"] and "db (pid 10" in sample.candidate
    assert "/=newest-task" not in s.samples


def test_a_candidate_s_avoid_list_protects_in_every_column_and_globs_attach():
    c = Candidate.of("x", [Attachment("/sv*", "prefer-avoid", {"avoid": ["^db$"]})])
    assert c.protect == ("^db$",)
    ev = Evaluator([kernel_alone(), c])
    ev.add(literal_record(), "log", 0)
    cols = ev.done().columns
    # prefer-avoid at /svc (the glob matched it) kills the largest but db: job.
    assert (cols["x"].resolved, cols["x"].protected_killed, cols["x"].memory_killed) == \
        ({"policy": 1}, 0, 300 * M)
    # The kernel alone kills db: protected by x's list too, so the two columns compare.
    assert cols[KERNEL].protected_killed == 1


def test_a_record_whose_tasks_were_read_after_the_chain_is_not_replayed():
    r = literal_record()
    assert r.snapshot is not None
    r.snapshot.read = "after"
    ev = Evaluator([kernel_alone()])
    ev.add(r, "log", 0)
    s = ev.done()
    assert (s.records, s.replayed, s.not_replayable, s.columns) == (1, 0, 1, {})


# -- the generator ------------------------------------------------------------------

def test_the_generator_is_deterministic_whatever_the_workers(tmp_path):
    a = dict(generate(tmp_path / "a", 120, seed=3, workers=1))
    b = dict(generate(tmp_path / "b", 120, seed=3, workers=2))
    assert sum(a.values()) == sum(b.values()) == 120
    for path in a:
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()
    c = dict(generate(tmp_path / "c", 120, seed=4, workers=1))
    assert [p.read_bytes() for p in c] != [p.read_bytes() for p in a]    # another seed, another fleet


def test_the_generator_s_shortcuts_change_nothing():
    # Its events made directly are resolve()'s, and its policies run in process
    # give the records the sandbox's workers give.
    for index in (0, 5):
        data = host_scenario(index, 2, days=10)
        assert _resolved(data, "<h>") == resolve_scenario(data, "<h>")
        host, lines = host_records(index, 2, days=10)
        assert lines and (host, lines) == host_records(index, 2, days=10, runner="worker")


def test_generated_records_are_the_daemon_s_with_host_and_snapshot():
    host, lines = host_records(1, 0)
    assert lines
    levels = set()
    for line in lines:
        r = msgspec.json.decode(line, type=OOMRecord)
        assert r.host == host and r.snapshot is not None and r.detected_at and r.latency_ms
        assert r.to_dict() == json.loads(line)     # what the daemon's to_dict() writes
        levels.add(r.level)
    assert "memcg" in levels


# -- the whole job --------------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    out = tmp_path_factory.mktemp("fleet")
    list(generate(out, 400, seed=1, workers=1))
    return out


CANDIDATES = [kernel_alone(["^postgres"]),
              Candidate.of("/=newest-task", [Attachment("/", "newest-task")], ["^postgres"]),
              Candidate.of("/=largest-task", [Attachment("/", "largest-task")], ["^postgres"])]


def _plain(summary) -> dict:
    return msgspec.to_builtins(summary)


def test_serial_and_all_cores_give_the_same_result(fleet):
    units = sources.plan(sources.expand([str(fleet)]), unit_bytes=200_000)
    assert len(units) > 3
    one = run.run_serial(units, CANDIDATES)
    assert one.records == 400 and one.replayed > 300 and one.columns["/=newest-task"].differs > 0
    # All units in one, or many merged in whatever order they finish: the same.
    whole = run.run_serial(sources.plan(sources.expand([str(fleet)]), unit_bytes=10**9), CANDIDATES)
    assert _plain(whole) == _plain(one)
    assert _plain(run.run_local(units, CANDIDATES, workers=2)) == _plain(one)


def test_a_dask_local_cluster_gives_the_same_result(fleet):
    distributed = pytest.importorskip("distributed", reason="the fleet extra (dask.distributed) is not installed")
    units = sources.plan(sources.expand([str(fleet)]), unit_bytes=200_000)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        on_dask = run.run_dask(cluster.scheduler_address, units, CANDIDATES)
    assert _plain(on_dask) == _plain(run.run_serial(units, CANDIDATES))


def test_a_unit_is_evaluated_as_a_stream(tmp_path):
    # Five times the records, the same peak (give or take): a unit's records are
    # decoded, replayed and dropped one at a time, never held (~27 KB each).
    import tracemalloc

    _, lines = host_records(1, 0, days=10)
    peaks = []
    for copies in (2, 10):
        log = tmp_path / f"{copies}.jsonl.gz"
        log.write_bytes(gzip.compress(b"".join(lines * copies)))
        [unit] = sources.plan([str(log)])
        run.evaluate_unit(unit, [kernel_alone()])      # policies loaded, caches warm
        tracemalloc.start()
        try:
            assert run.evaluate_unit(unit, [kernel_alone()]).records == copies * len(lines)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert len(lines) >= 10 and peaks[1] - peaks[0] < 1_000_000, peaks


def test_export_to_parquet_and_evaluate_it(fleet, tmp_path):
    pytest.importorskip("pyarrow", reason="the fleet extra (pyarrow) is not installed")
    out = tmp_path / "pq"
    result = CliRunner().invoke(main, ["export", str(fleet), "--parquet", str(out)])
    assert result.exit_code == 0, result.output
    assert "400 records" in result.output
    days = {p.parent.name for p in out.rglob("*.parquet")}
    assert {p.parent.parent.name for p in out.rglob("*.parquet")} == \
        {f"host={p.name.split('.')[0]}" for p in fleet.iterdir()}
    assert len(days) > 1 and all(d.startswith("day=2026-") for d in days)
    logs = run.run_serial(sources.plan(sources.expand([str(fleet)])), CANDIDATES)
    pq = run.run_serial(sources.plan(sources.expand([str(out)])), CANDIDATES)
    a, b = _plain(logs), _plain(pq)
    assert a.pop("samples") and b.pop("samples")     # the same records, other files named
    assert a == b
    # A Parquet sample's replay command shows the same outcome.
    sample = pq.samples["/=newest-task"][0]
    shown = CliRunner().invoke(main, ["replay", sample.source, "--index", str(sample.index),
                                      *[x for a in sample.attach for x in ("--attach", a)], "--json"])
    assert shown.exit_code == 0, shown.output
    killed = [f"{k['name']} (pid {k['pid']}" for k in json.loads(shown.output)["killed"]]
    assert all(k in sample.candidate for k in killed) and killed


def test_the_cli_prints_the_table_json_and_the_replay_commands(fleet, tmp_path):
    args = ["evaluate", str(fleet), "--attach", "/=newest-task", "--protect", "^postgres", "--workers", "1"]
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0, text.output
    assert "400 OOM records" in text.output and "kernel alone" in text.output
    assert "differs" in text.output and "oomkit replay " in text.output
    out = CliRunner().invoke(main, [*args, "--json"])
    data = json.loads(out.output)
    assert data["records"] == 400 and [c["label"] for c in data["candidates"]] == [KERNEL, "/=newest-task"]
    sample = data["samples"]["/=newest-task"][0]
    cmd = shlex.split(sample["replay"])
    assert cmd[:2] == ["oomkit", "replay"] and "--attach" in cmd
    shown = CliRunner().invoke(main, [*cmd[1:], "--json"])
    assert shown.exit_code == 0
    assert all(f"(pid {k['pid']}" in sample["candidate"] for k in json.loads(shown.output)["killed"])


@pytest.mark.parametrize("args,words", [
    (["--attach", "batch=newest-task"], "--attach"),
    (["--attach", "/=no-such-policy"], "unknown policy"),
    (["--attach", "/=newest-task", "--attach", "/=newest-task"], "twice"),
    (["--protect", "(unclosed"], "regular expression"),
])
def test_bad_input_is_one_line_and_exit_2(fleet, args, words):
    result = CliRunner().invoke(main, ["evaluate", str(fleet), *args])
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output


def test_missing_logs_and_unreadable_lines(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "nope*.jsonl")])
    assert result.exit_code == 2 and "matches no file" in result.output
    log = tmp_path / "bad.jsonl.gz"
    with gzip.open(log, "wb") as f:
        f.write(b'{"t": "soon"}\n'
                + msgspec.json.encode(literal_record()) + b"\n")
    result = CliRunner().invoke(main, ["evaluate", str(log), "--json"])
    data = json.loads(result.output)
    assert (data["records"], data["unreadable"]) == (1, 1)
    assert data["unreadable_where"][0].startswith(f"{log}:1: not an OOM record")


# -- the host in every record ---------------------------------------------------------

def test_records_name_their_host():
    import socket

    assert resolve_daemon({}).host == socket.gethostname()
    assert resolve_daemon({"daemon": {"host": "db-7.eu"}}).host == "db-7.eu"
    old = {k: v for k, v in literal_record().to_dict().items() if k != "host"}
    assert msgspec.json.decode(json.dumps(old), type=OOMRecord).host is None   # old logs still read


def test_at_most_a_window_of_units_is_in_flight():
    from concurrent.futures import Future

    from oomkit.fleet.sources import Unit

    submitted, most = [0], [0]
    consumed = 0

    def submit(fn, unit, *args):
        f: Future = Future()
        f.set_result(unit.size)
        submitted[0] += 1
        most[0] = max(most[0], submitted[0] - consumed)
        return f

    units = [Unit((), i) for i in range(50)]
    seen = []
    for _unit, size in run._bounded(submit, units, 4):
        consumed += 1
        seen.append(size)
    assert most[0] == 4 and sorted(seen) == list(range(50))


def test_plot_writes_a_png(fleet, tmp_path):
    pytest.importorskip("matplotlib", reason="the fleet extra (matplotlib) is not installed")
    png = tmp_path / "fleet.png"
    result = CliRunner().invoke(main, ["evaluate", str(fleet), "--attach", "/=newest-task", "--workers", "1",
                                       "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- --attach with params ------------------------------------------------------------

def test_attach_params_are_a_toml_inline_table_and_print_back():
    from oomkit.config.attach_arg import AttachArg, parse, split
    from oomkit.errors import ConfigError

    a = parse('/=prefer-avoid{avoid = ["^postgres", "a;b"], prefer = ["/batch.slice/*"]}')
    assert a == AttachArg("/", "prefer-avoid", {"avoid": ["^postgres", "a;b"], "prefer": ["/batch.slice/*"]})
    assert parse(str(a)) == a and parse("/x=file.py:Cls") == AttachArg("/x", "file.py:Cls")
    assert split('/=settle{then_params = {avoid = ["x;y"]}}; /b=newest-task') == \
        ['/=settle{then_params = {avoid = ["x;y"]}}', "/b=newest-task"]
    for bad in ["batch=x", "/=", "/=p{avoid = [}", "/=p{avoid = 1"]:
        with pytest.raises(ConfigError, match="--attach"):
            parse(bad)


def test_a_candidate_with_params_and_its_replay_command(fleet):
    cand = '/=prefer-avoid{avoid = ["^postgres", "^kafka"], prefer = ["/batch.slice/*"]}; /batch.slice=newest-task'
    out = CliRunner().invoke(main, ["evaluate", str(fleet), "--attach", cand, "--workers", "1", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    [c] = [c for c in data["candidates"] if c["label"] == cand]
    assert c["protect"] == ["^postgres", "^kafka"]
    assert [a["policy"] for a in c["attach"]] == ["prefer-avoid", "newest-task"]
    sample = data["samples"][cand][0]
    cmd = shlex.split(sample["replay"])
    assert any("avoid = [" in x for x in cmd)
    shown = CliRunner().invoke(main, [*cmd[1:], "--json"])
    assert shown.exit_code == 0, shown.output
    killed = json.loads(shown.output)["killed"]
    assert all(f"(pid {k['pid']}" in sample["candidate"] for k in killed)
    bad = CliRunner().invoke(main, ["evaluate", str(fleet), "--attach", "/=newest-task; /=largest-task"])
    assert bad.exit_code == 2 and "one policy per cgroup" in bad.output


def test_hostile_hosts_stay_inside_the_export_directory_and_names_print_safely(tmp_path):
    from oomkit.fleet.export import partition_value

    assert partition_value("../../etc") == ".._.._etc" and partition_value("..") == "unknown"
    assert partition_value(None) == "unknown" and partition_value("db-7.eu") == "db-7.eu"
    r = literal_record()
    r.host = "../../x"
    r.killed[0].name = "job\udc80\x1b[31m"       # not UTF-8 (escaped when read), a terminal escape
    log = tmp_path / "h.jsonl"
    log.write_bytes(msgspec.json.encode(r.to_dict()) + b"\n")
    out = CliRunner().invoke(main, ["evaluate", str(log), "--attach", "/=largest-task", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["records"] == 1
    text = CliRunner().invoke(main, ["evaluate", str(log), "--attach", "/=largest-task"])
    assert text.exit_code == 0 and "\x1b" not in text.output
    if __import__("importlib").util.find_spec("pyarrow"):
        assert CliRunner().invoke(main, ["export", str(log), "--parquet", str(tmp_path / "pq")]).exit_code == 0
        [part] = list((tmp_path / "pq").rglob("*.parquet"))
        assert part.is_relative_to(tmp_path / "pq") and part.parent.parent.name == "host=.._.._x"


def test_an_unreachable_dask_scheduler_is_one_line(fleet):
    pytest.importorskip("distributed", reason="the fleet extra (dask.distributed) is not installed")
    result = CliRunner().invoke(main, ["evaluate", str(fleet), "--dask", "nonsense://x"])
    assert result.exit_code == 2 and "cannot reach the scheduler" in result.output


def test_the_daemon_never_imports_the_fleet_or_its_extra():
    import subprocess
    import sys

    code = ("import sys, oomkit.daemon.main, oomkit.cli; "
            "print([m for m in sys.modules if m.startswith(('oomkit.fleet', 'pyarrow', 'dask', 'distributed'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
