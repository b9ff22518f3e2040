"""The daemon's heap dumps ($OOMKIT_TRACEMALLOC, daemon/memdebug.py): off unless
asked, and when asked, what they say is the process's own memory."""

from __future__ import annotations

import json
import os
import signal
import tracemalloc

import pytest
from test_live_v2_fake import make_daemon, tree  # noqa: F401  (fixtures)

from oomkit.daemon import memdebug
from oomkit.daemon.main import open_heap_dumps


class Held:
    pass


@pytest.fixture
def no_tracing():
    assert not tracemalloc.is_tracing()
    yield
    tracemalloc.stop()


def test_without_the_variable_nothing_is_traced_or_dumped(monkeypatch):
    monkeypatch.delenv(memdebug.ENV, raising=False)
    assert open_heap_dumps() is None
    assert not tracemalloc.is_tracing()


def test_frames_0_dumps_the_counts_without_tracemalloc(tmp_path, no_tracing):
    heap = memdebug.HeapDumps.from_env({memdebug.ENV: str(tmp_path / "heap"), memdebug.ENV_FRAMES: "0"})
    assert heap is not None and not tracemalloc.is_tracing()
    keep = [Held() for _ in range(5000)]     # noqa: F841  (alive at the dump)
    path = heap.dump(ooms=7)
    assert path is not None
    doc = json.loads(path.read_text())
    assert doc["ooms"] == 7 and doc["traced"] == 0 and doc["rss"] > 0
    assert doc["types"]["Held"] == 5000      # gc's objects: containers, by type
    assert doc["pymalloc"]["arena_bytes"] >= doc["pymalloc"]["bytes_in_allocated_blocks"] > 0
    assert doc["glibc"]["uordblks"] > 0
    assert [p.name for p in (tmp_path / "heap").iterdir()] == [path.name]     # no snapshot
    assert (tmp_path / "heap").stat().st_mode & 0o777 == 0o700


def test_with_tracemalloc_two_dumps_show_the_line_that_grew(tmp_path, no_tracing):
    heap = memdebug.HeapDumps(str(tmp_path), frames=4)
    first = heap.dump(ooms=0)
    grown = [bytes(1000) + bytes([i % 256]) for i in range(2000)]      # this line grows
    second = heap.dump(ooms=1)
    assert first is not None and second is not None
    old, new = (tracemalloc.Snapshot.load(str(p.with_suffix(".pickle"))) for p in (first, second))
    top = new.compare_to(old, "lineno")[0]
    assert top.traceback[0].filename == __file__ and top.size_diff > 2000 * 1000
    assert json.loads(second.read_text())["traced"] > json.loads(first.read_text())["traced"]
    del grown


def test_the_daemon_dumps_on_sigusr2_from_its_loop_and_at_exit(tree, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv(memdebug.ENV, str(tmp_path / "heap"))
    monkeypatch.setenv(memdebug.ENV_FRAMES, "0")
    d = make_daemon(tree, tmp_path, [{"cgroup": "/box", "policy": "largest-task"}])
    try:
        assert d.heap is not None
        d._on_signal(signal.SIGUSR2, None)          # the handler only asks
        assert not (tmp_path / "heap").exists()
        one_turn(d, monkeypatch)                    # the loop writes it
        assert [p.name for p in (tmp_path / "heap").iterdir()] == [f"heap-{os.getpid()}-0.json"]
    finally:
        d.stop()
    assert len(list((tmp_path / "heap").iterdir())) == 2


def test_without_the_variable_sigusr2_says_dumps_are_off_and_the_daemon_goes_on(tree, tmp_path, monkeypatch,  # noqa: F811
                                                                                 caplog):
    monkeypatch.delenv(memdebug.ENV, raising=False)
    d = make_daemon(tree, tmp_path, [{"cgroup": "/box", "policy": "largest-task"}])
    try:
        assert d.heap is None
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                                        signal.SIGUSR2)}
        try:
            d._signals()
            os.kill(os.getpid(), signal.SIGUSR2)    # a real one: handled, not its default (death)
            assert d._dump_asked
        finally:
            signal.set_wakeup_fd(-1)
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        with caplog.at_level("WARNING", logger="oomkit"):
            one_turn(d, monkeypatch)
        assert "SIGUSR2: heap dumps are off" in caplog.text
        assert not tracemalloc.is_tracing()
    finally:
        d.stop()


def one_turn(d, monkeypatch) -> None:
    """One turn of the daemon's loop."""
    d.running = True
    monkeypatch.setattr(d.stack, "on_timer", lambda: setattr(d, "running", False))
    d.loop()
