"""``[daemon] metrics`` and ``metrics_textfile`` against a live daemon on real v1
memcgs: /metrics on a loopback port of the test's choosing and the node_exporter
textfile show the same counts as ``oomkit status``, before and after an OOM."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import urllib.request

import pytest

from helpers.daemon import killed_pids
from helpers.procs import until

prometheus_client = pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        assert r.status == 200
        return parse(r.read().decode())


def status(state_dir) -> dict:
    r = subprocess.run([sys.executable, "-m", "oomkit.cli", "status", "--state-dir", str(state_dir), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_metrics_of_a_live_daemon(sandbox, oomkit_daemon, tmp_path):
    a = sandbox.cg("a", limit=32 * MiB)
    port = free_port()
    textfile = tmp_path / "textfile" / "oomkit.prom"
    textfile.parent.mkdir()
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}], metrics=f"127.0.0.1:{port}",
                      metrics_textfile=str(textfile))
    assert d.wait_line(f"metrics on http://127.0.0.1:{port}/metrics", 5) is not None, d.stderr()
    m = scrape(port)
    key = (("cgroup", a), ("policy", "largest-task"))
    assert m[("oomkit_managed_cgroups", ())] == 1 and m[("oomkit_attachment", key)] == 1
    assert m[("oomkit_attachment_ooms_total", key)] == 0
    assert m[("oomkit_kills_total", (("decided_by", "policy"),))] == 0
    assert m[("oomkit_build_info", (("hierarchy", "v1"), ("task_reader", status(d.state_dir)["task_reader"]),
                                    ("version", status(d.state_dir)["version"])))] == 1
    assert m[("process_resident_memory_bytes", ())] > 0
    assert ("oomkit_handler_seconds_count", ()) in m and m[("oomkit_handler_seconds_count", ())] == 0
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644      # node_exporter is not root
    assert parse(textfile.read_text())[("oomkit_attachment_ooms_total", key)] == 0

    hog = sandbox.hog(a, 48)
    ev = d.wait_events(1)[0]
    assert killed_pids(ev) == {hog.pid}
    assert until(lambda: scrape(port)[("oomkit_attachment_ooms_total", key)] == 1, 10, step=0.1)
    m, st = scrape(port), status(d.state_dir)
    # One set of counts: what `oomkit status` says, /metrics says.
    assert st["ooms_by"] == {"memcg/policy": 1}
    assert m[("oomkit_ooms_total", (("level", "memcg"), ("resolution", "policy")))] == 1
    assert m[("oomkit_kills_total", (("decided_by", "policy"),))] == 1
    assert m[("oomkit_kills_total", (("decided_by", "kernel"),))] == 0
    assert m[("oomkit_attachment_kills_total", key)] == 1 and m[("oomkit_attachment_failures_total", key)] == 0
    assert m[("oomkit_handler_seconds_count", ())] == 1
    assert m[("oomkit_handler_seconds_sum", ())] == pytest.approx(ev["handlers"][0]["ms"] / 1000)
    assert m[("oomkit_oom_seconds_count", ())] == 1
    assert m[("oomkit_oom_seconds_sum", ())] == pytest.approx(ev["latency_ms"] / 1000)
    assert m[("oomkit_event_log_errors_total", ())] == st["event_log_errors"] == 0
    # The textfile was written after the record, with the same counts (no process_* there).
    t = parse(textfile.read_text())
    assert t[("oomkit_ooms_total", (("level", "memcg"), ("resolution", "policy")))] == 1
    assert t[("oomkit_attachment_kills_total", key)] == 1
    assert not any(name.startswith("process_") for name, _ in t)
    assert [p.name for p in textfile.parent.iterdir()] == ["oomkit.prom"]

    assert d.stop() == 0
    with pytest.raises(OSError):
        scrape(port)
    assert not textfile.exists()


def test_a_metrics_port_in_use_fails_the_start_in_one_line(sandbox, oomkit_daemon):
    a = sandbox.cg("a", limit=32 * MiB)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}], run=False, metrics=f"127.0.0.1:{port}")
        r = subprocess.run([sys.executable, "-m", "oomkit.cli", "run", "--config", str(d.config)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("oomkit: ") and "metrics" in line]
    assert errors == [f"oomkit: daemon.metrics: cannot serve metrics on 127.0.0.1:{port}: Address already in use"]
    assert "Traceback" not in r.stderr
    # Nothing was left taken: the memcg's OOM killer is on again.
    assert "oom_kill_disable 0" in sandbox.fs.read(a, "memory.oom_control")
