"""``simulate --plot`` and ``replay --plot``: the timeline's data from literals, and
the PNG / SVG drawn from a scenario and an event log (matplotlib: the plot extra)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from oomkit import plot
from oomkit.cli import main
from oomkit.context import Level
from oomkit.schema import HandlerRecord, Killed, LimitChange, OOMRecord, ResolvedBy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def record(memcg="/a", killed=(), by="policy:/a", resolved=ResolvedBy.POLICY, limits=()) -> OOMRecord:
    r = OOMRecord.new(2.0, Level.MEMCG, memcg)
    r.handlers = [HandlerRecord.new("/a", "largest-task")]
    r.killed = [Killed(name=n, pid=10 + i, cgroup=memcg, by=by) for i, n in enumerate(killed)]
    r.limits = list(limits)
    r.resolved_by = resolved
    return r


def test_who_decided_each_oom():
    m = plot.mark_of(record(killed=["hog"]), 2.0)
    assert (m.decided, m.label, m.victims) == ("policy", "largest-task@/a", (("hog", "/a"),))
    m = plot.mark_of(record(killed=["x"], by="kernel", resolved=ResolvedBy.KERNEL), 2.0)
    assert (m.decided, m.label) == ("kernel", "kernel")
    r = record(limits=[LimitChange(cgroup="/a", old=100, new=200)])
    r.handlers[0].freed = 100
    m = plot.mark_of(r, 2.0)
    assert (m.label, m.victims, m.raised) == ("largest-task@/a", (), (("/a", 200),))
    assert plot.mark_of(record(resolved=ResolvedBy.BACKOFF), 1.0).label == "backoff"


def test_samples_keep_only_changes_and_panels_put_the_ooms_first():
    tl = plot.Timeline("t", "s")
    tl.sample(0.0, [("/", 10, 100), ("/a", 5, None), ("/b", 1, 50)])
    tl.sample(1.0, [("/", 10, 100), ("/a", 6, None), ("/b", 1, 50)])
    assert tl.series["/"].usage == [(0.0, 10)] and tl.series["/a"].usage == [(0.0, 5), (1.0, 6)]
    assert tl.series["/b"].limit == [(0.0, 50)]
    tl.series.update({f"/z{i}": plot.Series(usage=[(0.0, 1)], limit=[(0.0, None)]) for i in range(10)})
    tl.marks = [plot.mark_of(record("/z9", killed=["k"]), 1.0)]
    shown = tl.panels()
    assert len(shown) == plot.MAX_PANELS and "/z9" in shown and {"/", "/b"} <= set(shown)


def test_a_plot_file_must_be_png_or_svg(tmp_path):
    r = CliRunner().invoke(main, ["simulate", str(EXAMPLES / "db-beside-leak.toml"), "--plot",
                                  str(tmp_path / "x.jpg")])
    assert r.exit_code == 2 and r.stderr == f"oomkit: --plot {tmp_path / 'x.jpg'}: write a .png or .svg file\n"
    assert r.stdout == "" and list(tmp_path.iterdir()) == []


pytest.importorskip("matplotlib", reason="the plot extra is not installed")


@pytest.mark.parametrize("ext", ["png", "svg"])
def test_simulate_draws_usage_limits_ooms_and_victims(tmp_path, ext):
    out = tmp_path / f"db.{ext}"
    r = CliRunner().invoke(main, ["simulate", str(EXAMPLES / "db-beside-leak.toml"), "--plot", str(out)])
    assert r.exit_code == 0, r.output
    assert "etl-leak" in r.stdout        # the report is still printed
    data = out.read_bytes()
    if ext == "png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    else:
        import xml.etree.ElementTree as ET

        ET.fromstring(data)     # well-formed
        text = data.decode()
        # matplotlib writes text as glyph paths with the string in a comment
        for words in ("/batch", "/db", "prefer-avoid@/", "killed etl-leak", "OOM resolved by policy", "limit"):
            assert words in text, words


def test_replay_draws_the_log_and_the_replayed_decision(tmp_path):
    from test_replay import GOOD, write_log

    later = json.loads(json.dumps(GOOD))
    later["detected_at"], GOOD_ = "2025-01-01T00:01:00Z", dict(GOOD, detected_at="2025-01-01T00:00:00Z")
    log = write_log(tmp_path, GOOD_, later)
    out = tmp_path / "replay.svg"
    r = CliRunner().invoke(main, ["replay", log, "--index", "0", "--attach", "/a=kernel-default",
                                  "--plot", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    for words in ("largest-task@/a", "replay: kernel", "killed hog", "replayed decision",
                  "seconds since the log", "/a"):
        assert words in text, words
    records = __import__("oomkit.replay", fromlist=["log_records"]).log_records(log)
    tl = plot.from_log(records, 0, records[0], "t")
    assert [m.t for m in tl.marks] == [0.0, 0.0, 60.0] and [m.replayed for m in tl.marks] == [False, True, False]
    assert tl.only == ["/a"]
