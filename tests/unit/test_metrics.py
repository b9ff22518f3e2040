"""The metrics exporter's families from a status document (literals), the config
keys, the textfile's atomic write, and that the daemon imports prometheus_client
only when asked to."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from oomkit.config.daemon import resolve
from oomkit.context import Level
from oomkit.daemon.status import AttachmentStatus, DaemonStatus, StatusBook, Timings
from oomkit.errors import ConfigError
from oomkit.schema import HandlerRecord, Killed, OOMRecord, ResolvedBy

prometheus_client = pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from oomkit.daemon import metrics  # noqa: E402


def doc(**kw) -> DaemonStatus:
    base = dict(pid=1, version="0.1.0", started_at="t0", updated_at="t1", config="/etc/oomkit.toml",
                hierarchy="v1", mount="/sys/fs/cgroup/memory", task_reader="proc", dry_run=False,
                running="running", managed=["/a", "/b"], attachments=[])
    return DaemonStatus(**{**base, **kw})


def samples(st: DaemonStatus) -> dict[tuple[str, tuple], float]:
    reg = prometheus_client.CollectorRegistry()
    exporter = metrics.Exporter(None, None)
    exporter.latest = st
    reg.register(metrics._Collector(exporter))
    text = prometheus_client.generate_latest(reg).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_families_show_the_status_counts():
    t = Timings()
    for s in (0.0004, 0.003, 0.003, 20.0):
        t.observe(s)
    st = doc(ooms=3, ooms_by={"memcg/policy": 2, "global/kernel": 1},
             kills_by={"policy:/a": 2, "policy:/b": 1, "kernel": 4}, failures=5, ejections=1,
             event_log_errors=2, reload_failures=1, internal_errors=3, handler_seconds=t,
             attachments=[AttachmentStatus(cgroup="/a", pattern="/a", policy="largest-task", ooms=2,
                                           kills=2, failures=5, ejected=True)])
    m = samples(st)
    assert m[("oomkit_ooms_total", (("level", "memcg"), ("resolution", "policy")))] == 2
    assert m[("oomkit_ooms_total", (("level", "global"), ("resolution", "kernel")))] == 1
    assert m[("oomkit_kills_total", (("decided_by", "policy"),))] == 3
    assert m[("oomkit_kills_total", (("decided_by", "kernel"),))] == 4
    assert m[("oomkit_handler_failures_total", ())] == 5
    assert m[("oomkit_ejections_total", ())] == 1
    assert m[("oomkit_event_log_errors_total", ())] == 2
    assert m[("oomkit_reload_failures_total", ())] == 1
    assert m[("oomkit_internal_errors_total", ())] == 3
    assert m[("oomkit_managed_cgroups", ())] == 2 and m[("oomkit_dry_run", ())] == 0
    assert m[("oomkit_build_info", (("hierarchy", "v1"), ("task_reader", "proc"), ("version", "0.1.0")))] == 1
    # Cumulative buckets: 0.4 ms in the first, two 3 ms by 5 ms, 20 s only in +Inf.
    assert m[("oomkit_handler_seconds_bucket", (("le", "0.001"),))] == 1
    assert m[("oomkit_handler_seconds_bucket", (("le", "0.0025"),))] == 1
    assert m[("oomkit_handler_seconds_bucket", (("le", "0.005"),))] == 3
    assert m[("oomkit_handler_seconds_bucket", (("le", "10.0"),))] == 3
    assert m[("oomkit_handler_seconds_bucket", (("le", "+Inf"),))] == 4
    assert m[("oomkit_handler_seconds_count", ())] == 4
    assert m[("oomkit_handler_seconds_sum", ())] == pytest.approx(20.0064)
    key = (("cgroup", "/a"), ("policy", "largest-task"))
    assert m[("oomkit_attachment_ooms_total", key)] == 2 and m[("oomkit_attachment_kills_total", key)] == 2
    assert m[("oomkit_attachment_failures_total", key)] == 5 and m[("oomkit_attachment_ejected", key)] == 1


def test_hostile_cgroup_names_stay_inside_their_label():
    """A cgroup named with a quote, a newline and a byte that is not UTF-8 is one
    label value: no forged sample, the exposition still parses."""
    name = '/a"} oomkit_kills_total{decided_by="policy"} 999\nx\udcff'
    st = doc(attachments=[AttachmentStatus(cgroup=name, pattern=name, policy="p\n", ooms=1)])
    m = samples(st)
    assert m[("oomkit_kills_total", (("decided_by", "policy"),))] == 0
    [key] = [k for k in m if k[0] == "oomkit_attachment_ooms_total"]
    assert dict(key[1]) == {"cgroup": name.replace("\udcff", "\\xff"), "policy": "p\n"}


def test_book_times_handlers_and_ooms():
    book = StatusBook()
    r = OOMRecord.new(1.0, Level.MEMCG, "/a")
    h = HandlerRecord.new("/a", "largest-task")
    h.ms, h.error = 3.0, "timeout"
    r.handlers, r.ejected, r.latency_ms = [h, HandlerRecord.new("/", "settle")], ["/a"], 120.0
    r.killed = [Killed(name="x", pid=3, cgroup="/a", by="kernel")]
    r.resolved_by = ResolvedBy.KERNEL
    book.record(r)
    assert (book.failures, book.ejections) == (1, 1)
    assert sum(book.handler_seconds.counts) == 1 and book.handler_seconds.counts[2] == 1    # <= 5 ms
    assert book.oom_seconds.counts[7] == 1 and book.oom_seconds.sum == pytest.approx(0.12)   # <= 250 ms


@pytest.mark.parametrize("text, ok", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464)), ("localhost:1", ("localhost", 1)),
    ("127.0.0.1", None), (":9464", None), ("127.0.0.1:0", None), ("127.0.0.1:65536", None),
    ("127.0.0.1:+80", None), ("127.0.0.1:" + "9" * 5000, None), ("127.0.0.1:٩", None)])
def test_metrics_address(text, ok):
    if ok:
        assert resolve({"daemon": {"metrics": text}}).metrics == ok
    else:
        with pytest.raises(ConfigError, match="daemon.metrics: .* is not an address"):
            resolve({"daemon": {"metrics": text}})


def test_metrics_off_by_default_and_textfile_checked():
    config = resolve({})
    assert config.metrics is None and config.metrics_textfile is None
    assert resolve({"daemon": {"metrics_textfile": "/x/oomkit.prom"}}).metrics_textfile == "/x/oomkit.prom"
    for bad in ("oomkit.prom", "/x/oomkit.txt"):
        with pytest.raises(ConfigError, match="metrics_textfile: .* not an absolute path to a .prom file"):
            resolve({"daemon": {"metrics_textfile": bad}})


def test_textfile_is_written_whole_readable_and_never_through_a_symlink(tmp_path):
    path = tmp_path / "oomkit.prom"
    old = os.umask(0o077)
    try:
        metrics.write_textfile(path, b"a 1\n")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"a 1\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["oomkit.prom"]
    # A symlink planted at the temporary name is replaced, its target untouched.
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / f".oomkit.prom.{os.getpid()}.tmp").symlink_to(target)
    metrics.write_textfile(path, b"a 2\n")
    assert path.read_bytes() == b"a 2\n" and target.read_text() == "keep"
    # A directory that cannot be written: logged, not raised; the old file stays.
    metrics.write_textfile(tmp_path / "missing" / "oomkit.prom", b"a 3\n")
    assert path.read_bytes() == b"a 2\n"


def test_exporter_serves_the_latest_document_and_a_port_in_use_is_a_config_error():
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"daemon.metrics: cannot serve metrics on 127.0.0.1:{port}"):
            metrics.Exporter(("127.0.0.1", port), None).start()
    exporter = metrics.Exporter(("127.0.0.1", 0), None)
    exporter.start()
    try:
        port = exporter._server.server_port
        exporter.update(doc(ooms_by={"memcg/policy": 7}))
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        assert 'oomkit_ooms_total{level="memcg",resolution="policy"} 7.0' in body
        assert "process_resident_memory_bytes" in body
    finally:
        exporter.close()


def test_the_daemon_imports_prometheus_client_only_for_metrics():
    code = ("import sys, oomkit.daemon.main as m, oomkit.config.daemon as c\n"
            "assert 'prometheus_client' not in sys.modules\n"
            "assert m.open_exporter(c.resolve({})) is None and 'prometheus_client' not in sys.modules\n"
            "assert m.open_exporter(c.resolve({'daemon': {'metrics_textfile': '/x/o.prom'}})) is not None\n"
            "assert 'prometheus_client' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_metrics_without_the_extra_is_one_line_at_start(tmp_path):
    """prometheus_client missing: `oomkit run` says which extra, exit 2, no traceback."""
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "import oomkit.daemon.main as m, oomkit.config.daemon as c\n"
            "from oomkit.errors import ConfigError\n"
            "try:\n"
            "    m.open_exporter(c.resolve({'daemon': {'metrics': '127.0.0.1:9464'}}))\n"
            "except ConfigError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout == ("[daemon] metrics and metrics_textfile need the prometheus_client library "
                        "(pip install 'oomkit[metrics]')\n"), r.stderr


def test_the_daemon_path_never_imports_rich_matplotlib_or_the_fleet_libraries():
    """`oomkit run`'s imports (the CLI, the composition root, both stacks, the status
    and metrics modules) pull in none of the report's or the extras' libraries."""
    code = ("import sys, oomkit.cli, oomkit.daemon.main, oomkit.daemon.metrics, oomkit.daemon.status\n"
            "import oomkit.backends.cgroup_v1, oomkit.backends.cgroup_v2\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('rich', 'matplotlib', 'dask', 'distributed', 'pyarrow'))\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
