"""The event log never takes the daemon down (issue 10 item 4): write errors are
said once per episode, records wait in a bounded queue and are retried; the file
is created 0640 without following a symlink; SIGHUP reopens it (logrotate);
hostile names are escaped; ``oomkit check`` says when it cannot be created."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest
from click.testing import CliRunner

from oomkit.cli import main
from oomkit.daemon.eventlog import EventLog

REC = {"t": 1.0, "level": "memcg", "memcg": "/a", "resolved_by": "policy", "killed": []}


def lines(path) -> list[dict]:
    return [json.loads(x) for x in open(path).read().splitlines()]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("target", ["directory", "dev-full", "missing-parent-is-file"])
def test_a_log_that_cannot_be_written_never_raises_and_is_said_once(tmp_path, caplog, target):
    if target == "directory":
        path = tmp_path / "events.jsonl"
        path.mkdir()
    elif target == "dev-full":
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full")
        path = "/dev/full"
    else:
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "events.jsonl"
    log = EventLog(str(path), clock=Clock())
    with caplog.at_level(logging.ERROR, logger="oomkit"):
        for i in range(5):
            log.write({**REC, "t": i})
        log.close()
    said = [m for m in errors(caplog) if "cannot write the event log" in m]
    assert len(said) == 1, errors(caplog)
    assert log.pending == 5


def test_records_wait_and_are_written_when_the_log_is_back(tmp_path, caplog):
    d = tmp_path / "logs"
    d.mkdir()
    path = d / "events.jsonl"
    path.mkdir()                                   # in the way: the log fails
    clock = Clock()
    log = EventLog(str(path), clock=clock)
    log.write({**REC, "t": 0})
    log.write({**REC, "t": 1})
    os.rmdir(path)                                 # the operator fixes it
    log.retry()                                    # too soon: nothing yet
    assert log.pending == 2
    clock.t += EventLog.RETRY
    with caplog.at_level(logging.WARNING, logger="oomkit"):
        log.retry()
    assert [r["t"] for r in lines(path)] == [0, 1] and log.pending == 0
    assert any("written again" in r.getMessage() for r in caplog.records)
    log.close()


def test_the_queue_is_bounded_and_losses_are_counted(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(EventLog, "QUEUE", 3)
    path = tmp_path / "events.jsonl"
    path.mkdir()
    log = EventLog(str(path), clock=Clock())
    for i in range(5):
        log.write({**REC, "t": i})
    assert log.pending == 3
    os.rmdir(path)
    with caplog.at_level(logging.WARNING, logger="oomkit"):
        log.reopen()
    assert [r["t"] for r in lines(path)] == [2, 3, 4]
    assert any("2 records were lost" in r.getMessage() for r in caplog.records)


def test_created_0640_whatever_the_umask_and_never_through_a_symlink(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "new" / "events.jsonl"
        log = EventLog(str(path))
        log.write(REC)
        log.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    target = tmp_path / "target"
    target.write_text("")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    log = EventLog(str(link), clock=Clock())
    log.write(REC)
    assert target.read_text() == "" and log.pending == 1


def test_sighup_reopens_after_logrotate_moved_the_file(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path))
    log.write({**REC, "t": 0})
    os.rename(path, tmp_path / "events.jsonl.1")
    log.reopen()
    log.write({**REC, "t": 1})
    log.close()
    assert [r["t"] for r in lines(path)] == [1]
    assert [r["t"] for r in lines(tmp_path / "events.jsonl.1")] == [0]


def test_names_that_are_not_utf8_are_escaped_not_fatal(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path))
    name = os.fsdecode(b"evil-\xff\x1b[31m")
    log.write({**REC, "memcg": "/" + name, "killed": [{"name": name, "pid": 1}]})
    log.close()
    (rec,) = lines(path)
    assert rec["memcg"] == "/evil-\\xff\x1b[31m" and rec["killed"][0]["name"] == "evil-\\xff\x1b[31m"


def test_a_torn_line_is_ended_before_the_next_record(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path), clock=Clock())
    real = os.write
    calls = []

    def half_then_fail(fd, data):
        calls.append(1)
        if len(calls) == 1:
            return real(fd, bytes(data[:10]))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", half_then_fail)
    log.write({**REC, "t": 0})
    assert log.pending == 1
    log.reopen()
    monkeypatch.undo()
    log.close()
    text = path.read_text().splitlines()
    assert len(text) == 2 and json.loads(text[1])["t"] == 0       # the torn start, then the record whole


def test_check_says_when_the_event_log_cannot_be_created(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("check tests the log as the daemon's user, root")
    (tmp_path / "file").write_text("")
    cfg = tmp_path / "oomkit.toml"
    cfg.write_text(f'[daemon]\ncgroup = "v1"\nevent_log = "{tmp_path}/file/events.jsonl"\n')
    result = CliRunner().invoke(main, ["check", str(cfg)])
    assert result.exit_code == 2 and "daemon.event_log" in result.output and "cannot be created" in result.output
    (tmp_path / "dir.jsonl").mkdir()
    cfg.write_text(f'[daemon]\ncgroup = "v1"\nevent_log = "{tmp_path}/dir.jsonl"\n')
    result = CliRunner().invoke(main, ["check", str(cfg)])
    assert result.exit_code == 2 and "is a directory" in result.output
