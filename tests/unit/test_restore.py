"""The restorer (oomkit.daemon.restore) on fake files in a temp dir: what the
daemon changes is written to the state file and told to the watchdog before
the change, and put back by the watchdog when the daemon dies, by the next
start or ``oomkit restore`` when both die (issue 10, items 3, 7 and 9)."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from oomkit.cli import main
from oomkit.daemon import restore as R
from oomkit.daemon.restore import Restorer, read_state, restore_from_state
from oomkit.daemon.watchdog import write_back
from oomkit.errors import ConfigError

SRC = str(Path(R.__file__).resolve().parents[2])


def until(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def files(tmp_path: Path, n: int = 3, text: str = "1") -> list[str]:
    """Stand-ins for memory.oom_control files, each already changed to ``text``."""
    d = tmp_path / "cg"
    d.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        f = d / f"f{i}"
        f.write_text(text)
        out.append(str(f))
    return out


def fake_proc(tmp_path: Path, pid: int, starttime: int, adj: str = "500") -> str:
    d = tmp_path / "proc" / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{pid} (a (b) c) S 1 " + " ".join(["0"] * 17) + f" {starttime} 0 0\n")
    (d / "oom_score_adj").write_text(adj)
    return str(d / "oom_score_adj")


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


@pytest.fixture
def restorers():
    made: list[Restorer] = []
    yield made
    for r in made:
        r.close()


def started(restorers, state, timeout=1.0, **kw) -> Restorer:
    r = Restorer(state, timeout, **kw)
    r.start()
    restorers.append(r)
    return r


def test_hold_is_on_disk_before_it_returns_and_private(restorers, state, tmp_path):
    r = started(restorers, state, watchdog=False)
    a, b, c = files(tmp_path)
    r.hold(a, "0")
    r.hold(b, "0")
    r.hold(a, "1")          # held again: the first restore text is the original
    entries, _, bad = read_state(state)
    assert [(e.path, e.restore) for e in entries] == [(a, "0"), (b, "0")] and bad == 0
    r.drop(b)
    assert [e.path for e in read_state(state)[0]] == [a]
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "state").st_mode) == 0o600


def test_close_restores_leftovers_and_removes_the_state(restorers, state, tmp_path):
    r = started(restorers, state, watchdog=False)
    a, b, _ = files(tmp_path)
    r.hold(a, "0")
    r.close()
    assert Path(a).read_text() == "0" and Path(b).read_text() == "1"
    assert not (state / "state").exists()
    started(restorers, state, watchdog=False)        # the lock is free again


def test_a_second_daemon_on_the_state_dir_is_refused_with_the_pid(restorers, state):
    started(restorers, state, watchdog=False)
    with pytest.raises(ConfigError, match=f"another oomkit \\(pid {os.getpid()}\\) is running"):
        Restorer(state, 1.0, watchdog=False).start()
    with pytest.raises(ConfigError, match="another oomkit"):
        restore_from_state(state)       # `oomkit restore` would disarm a live daemon


def test_a_state_dir_others_can_write_is_refused(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(ConfigError, match="writable by no one else"):
        Restorer(d, 1.0, watchdog=False).start()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a directory"):
        restore_from_state(link)


DIES = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {src!r})
    from oomkit.daemon.restore import Restorer
    r = Restorer({state!r}, {timeout!r}, watchdog={watchdog!r})
    r.start()
    for path in {paths!r}:
        r.hold(path, "0")
        open(path, "w").write("1")
    if {pid!r}:
        r.hold({proc!r}, "0", pid={pid!r}, starttime={start!r})
    print(r.watchdog_pid, flush=True)
    if {stop_watchdog!r}:
        os.kill(r.watchdog_pid, signal.SIGSTOP)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def run_and_die(state, paths, *, watchdog=False, stop_watchdog=False, timeout=30.0,
                pid=None, proc=None, start=None) -> int | None:
    """A daemon that holds ``paths``, changes them, and is SIGKILLed (its watchdog
    stopped first, if asked: both dead for the settings' sake)."""
    code = DIES.format(src=SRC, state=str(state), timeout=timeout, watchdog=watchdog, paths=paths,
                       pid=pid, proc=proc, start=start, stop_watchdog=stop_watchdog)
    # stderr to a file: a stopped watchdog keeps it open, a pipe would never see EOF
    with open(Path(state).parent / "daemon.err", "w+") as err:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, text=True)
        out = p.stdout.readline().strip()
        assert p.wait(60) == -signal.SIGKILL, Path(err.name).read_text()
    return int(out) if out and out != "None" else None


def test_the_next_start_restores_what_a_killed_daemon_left(restorers, state, tmp_path, caplog):
    paths = files(tmp_path, text="0")
    run_and_die(state, paths)
    assert [Path(p).read_text() for p in paths] == ["1", "1", "1"]     # the bug: left disarmed
    with caplog.at_level(logging.WARNING, logger="oomkit"):
        started(restorers, state, watchdog=False)
    assert [Path(p).read_text() for p in paths] == ["0", "0", "0"]
    lines = [r.getMessage() for r in caplog.records if "left by a previous run" in r.getMessage()]
    assert len(lines) == 3 and all(": restored: " in line and line.endswith("(back to 0)") for line in lines), lines
    assert read_state(state)[0] == []


def test_oomkit_restore_puts_back_only_what_was_ours(state, tmp_path):
    paths = files(tmp_path, text="0")
    ours = fake_proc(tmp_path, 111, starttime=777, adj="-1000")
    reused = fake_proc(tmp_path, 222, starttime=999, adj="300")
    code_paths = paths[:2]
    run_and_die(state, code_paths, pid=111, proc=ours, start=777)
    # a second entry for a pid that is now another process: appended as the daemon would
    with open(state / "state", "a") as f:
        f.write(f'["hold", "{reused}", "0", 222, 555]\n["drop", "{paths[2]}"]\nnot json\n')
    Path(paths[2]).write_text("1")    # not ours (dropped): must stay
    result = CliRunner().invoke(main, ["restore", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert [Path(p).read_text() for p in paths] == ["0", "0", "1"]
    assert Path(ours).read_text() == "0"
    assert Path(reused).read_text() == "300"
    assert "pid 222 is another process now" in result.output
    assert "1 lines of" in result.output        # "not json"
    assert CliRunner().invoke(main, ["restore", "--state-dir", str(state)]).output == ""


def test_the_watchdog_restores_when_the_daemon_dies(state, tmp_path):
    paths = files(tmp_path, text="0")
    dog = run_and_die(state, paths, watchdog=True)
    assert dog is not None
    assert until(lambda: [Path(p).read_text() for p in paths] == ["0", "0", "0"], 10)
    # Both it and the state file hold them; restoring twice is harmless.
    assert sum(line.startswith("restored: ") for line in restore_from_state(state)) == 3


def test_a_start_after_both_died_kills_a_stopped_watchdog_first(restorers, state, tmp_path):
    paths = files(tmp_path, text="0")
    dog = run_and_die(state, paths, watchdog=True, stop_watchdog=True)
    try:
        assert [Path(p).read_text() for p in paths] == ["1", "1", "1"]
        lines = restore_from_state(state)
        assert f"killed the previous watchdog, pid {dog}" in lines
        assert [Path(p).read_text() for p in paths] == ["0", "0", "0"]
        assert until(lambda: not os.path.exists(f"/proc/{dog}"), 5)
    finally:
        try:
            os.kill(dog, signal.SIGKILL)   # ours (started by our child), if the test failed early
        except ProcessLookupError:
            pass


def holding(restorers, state, tmp_path, now):
    """A started restorer on the clock ``now[0]``, holding three files it changed to "1"."""
    paths = files(tmp_path, text="0")
    r = started(restorers, state, timeout=0.5, clock=lambda: now[0])
    for p in paths:
        r.hold(p, "0")
        Path(p).write_text("1")
    return r, paths


def test_a_stopped_watchdog_is_replaced_and_told_everything(restorers, state, tmp_path, caplog):
    now = [0.0]
    r, paths = holding(restorers, state, tmp_path, now)
    old = r.watchdog_pid
    os.kill(old, signal.SIGSTOP)
    with caplog.at_level(logging.ERROR, logger="oomkit"):
        for _ in range(20):
            now[0] += 0.1
            r.heartbeat()
    assert r.watchdog_pid != old
    assert any("has not answered" in rec.getMessage() for rec in caplog.records)
    assert not os.path.exists(f"/proc/{old}")       # killed and reaped
    assert read_state(state)[1][0] == r.watchdog_pid
    # The new one holds everything: closing its pipe (as our death would) restores them.
    r._link.proc.stdin.close()
    assert until(lambda: [Path(p).read_text() for p in paths] == ["0", "0", "0"], 10)


def test_a_watchdog_that_handed_back_after_our_silence_is_replaced_and_rearmed(restorers, state, tmp_path):
    paths = files(tmp_path, text="0")
    r = started(restorers, state, timeout=0.3)
    rearmed = []
    r.on_handback.append(lambda: rearmed.append(True))
    for p in paths:
        r.hold(p, "0")
        Path(p).write_text("1")
    old = r.watchdog_pid
    assert until(lambda: [Path(p).read_text() for p in paths] == ["0", "0", "0"], 10)  # silent: it acted
    assert until(lambda: (r.heartbeat(), r.watchdog_pid != old)[1], 5)
    assert rearmed == [True]


def test_a_healthy_watchdog_is_kept(restorers, state):
    r = started(restorers, state, timeout=1.0)
    pid = r.watchdog_pid
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:
        r.heartbeat()
        time.sleep(0.02)
    assert r.watchdog_pid == pid


def test_non_utf8_paths_round_trip(restorers, state, tmp_path):
    d = tmp_path / "cg"
    d.mkdir()
    name = os.fsdecode(b"job-\xff\xfe")
    f = d / name
    f.write_text("1")
    r = started(restorers, state, watchdog=False)
    r.hold(str(f), "0")
    assert read_state(state)[0][0].path == str(f)
    r.close()
    assert f.read_text() == "0"


def test_write_back_says_gone_for_a_removed_file(tmp_path):
    assert write_back(str(tmp_path / "nope"), "0") == "gone"
    assert write_back(str(tmp_path / "proc" / "9" / "oom_score_adj"), "0", 9, 1) == "gone"


def test_the_journal_is_compacted(restorers, state, tmp_path):
    r = started(restorers, state, watchdog=False)
    (a,) = files(tmp_path, 1)
    for _ in range(400):
        r.hold(a, "0")
        r.drop(a)
    assert len((state / "state").read_text().splitlines()) < 300
    assert read_state(state)[0] == []


def test_a_new_watchdog_too_slow_to_take_our_settings_is_replaced_not_fatal(
        restorers, state, tmp_path, caplog, monkeypatch):
    """On a machine loaded enough that a new watchdog does not read its pipe within
    the timeout, the replacement used to raise KernelError and end the daemon.
    Now it is logged and replaced at the next heartbeat, and the one that took
    everything restores everything."""
    now = [0.0]
    r, paths = holding(restorers, state, tmp_path, now)
    old = r.watchdog_pid
    real_send, refused = R._Watchdog.send, []

    def slow_send(self, line):         # the first new watchdog takes nothing
        if self.pid != old and not refused or refused == [self.pid]:
            refused[:] = [self.pid]
            return False
        return real_send(self, line)

    monkeypatch.setattr(R._Watchdog, "send", slow_send)
    os.kill(old, signal.SIGSTOP)
    with caplog.at_level(logging.ERROR, logger="oomkit"):
        for _ in range(20):             # no exception: the daemon goes on
            now[0] += 0.1
            r.heartbeat()
    assert refused and r.watchdog_pid not in (old, refused[0])
    assert any("did not take" in rec.getMessage() for rec in caplog.records)
    r._link.proc.stdin.close()
    assert until(lambda: [Path(p).read_text() for p in paths] == ["0", "0", "0"], 10)
