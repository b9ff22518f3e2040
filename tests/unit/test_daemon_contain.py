"""A bug of oomkit's own that escapes a turn of the daemon's loop (daemon/main.py,
``Daemon._contain``): the live stack is closed, which puts back what it changed,
and opened anew; bugs that keep coming stop the daemon with every setting back.

On the fake cgroup2 tree of test_live_v2_fake (pids above any real pid_max).
"""

from __future__ import annotations

import json
import logging

import pytest
from test_live_v2_fake import (  # noqa: F401  (fixtures)
    PID_A,
    PID_B,
    MiB,
    daemons,
    tree,
)
from test_v2_standing import adj, val

from helpers.inprocess import at_restart  # tests/ on sys.path: test_live_v2_fake, above
from oomkit.backends.cgroup_v2 import V2Stack
from oomkit.daemon import main as daemon_main
from oomkit.errors import InternalError


def high(mount, rel) -> str:
    return val(mount, rel, "memory.high")


def turns(d, n):
    """Let ``d.loop()`` run ``n`` turns, then end it."""
    left = [n]
    step = d._reload_step

    def counted():
        step()
        left[0] -= 1
        if left[0] <= 0:
            d.running = False

    d._reload_step = counted
    d.running = True


def callbacks_of(d, stack) -> list:
    return [cb for cb, _ in d.reactor._callbacks.values() if getattr(cb, "__self__", None) is stack]


def test_an_internal_error_restarts_the_stack_with_every_setting_put_back_first(
        tree, daemons, monkeypatch, caplog, tmp_path):
    """/box/a is in its zone: the hog is marked 1000 and /box/job waits at a
    memory.high wake point.  A KeyError out of the stack's timer (as the
    kmsg double line raised once) puts both back before a new stack takes the
    cgroups again, and the daemon goes on."""
    mount, proc = tree
    (tmp_path / "state").mkdir(mode=0o700)        # the restorer's, at a real start
    d = daemons([{"cgroup": "/box", "policy": "largest-task"}])
    old = d.stack
    assert adj(proc, PID_A) == 1000 and high(mount, "/box/job") == f"{56 * MiB}"
    assert callbacks_of(d, old)

    def broken():
        raise KeyError(4242)

    monkeypatch.setattr(old, "on_timer", broken)
    seen = at_restart(monkeypatch, lambda: {
        "adj": adj(proc, PID_A), "high": high(mount, "/box/job"), "held": dict(d.restorer.held)})
    turns(d, 2)
    with caplog.at_level(logging.WARNING, logger="oomkit"):
        d.loop()
    assert seen == {"adj": 0, "high": "max", "held": {}}
    assert d.stack is not old and not callbacks_of(d, old)
    assert d.engine.backend is d.stack.backend and d.stack.decider is not None
    assert adj(proc, PID_A) == 1000 and adj(proc, PID_B) == 999     # taken and decided again
    assert high(mount, "/box/job") == f"{56 * MiB}"
    assert d.managed == {"/box", "/box/a", "/box/job"}
    assert d.book.internal_errors == 1
    shown = json.loads((tmp_path / "state" / "status.json").read_text())     # oomkit status
    assert shown["internal_errors"] == 1 and shown["managed"] == ["/box", "/box/a", "/box/job"]
    text = caplog.text
    assert "internal error (an exception oomkit did not expect" in text and "KeyError: 4242" in text
    assert "live stack was restarted" in text
    d.stop()
    assert adj(proc, PID_A) == 0 and d.restorer.held == {}


def test_internal_errors_that_keep_coming_stop_the_daemon_and_stop_puts_everything_back(
        tree, daemons, monkeypatch):
    mount, proc = tree
    d = daemons([{"cgroup": "/box", "policy": "largest-task"}])
    calls = []

    def broken(self):
        calls.append(self)
        raise RuntimeError("always")

    monkeypatch.setattr(V2Stack, "on_timer", broken)
    turns(d, 100)
    with pytest.raises(InternalError, match=r"4 internal errors within 60s: stopping"):
        d.loop()
    assert len(calls) == d.RESTARTS + 1 and len(set(map(id, calls))) == d.RESTARTS + 1  # a new stack each
    assert d.book.internal_errors == d.RESTARTS + 1
    assert adj(proc, PID_A) == 1000         # the last stack stands until stop, as in run()'s finally
    d.stop()
    assert adj(proc, PID_A) == 0 and high(mount, "/box/job") == "max" and d.restorer.held == {}


def test_errors_spread_over_more_than_the_window_are_each_contained(tree, daemons, monkeypatch):
    d = daemons([{"cgroup": "/box", "policy": "largest-task"}])
    d.running = True
    clock = [1000.0]
    for _ in range(2 * d.RESTARTS):
        monkeypatch.setattr(d.backend.clock, "now", lambda: clock[0])     # each new stack's clock
        d._contain(RuntimeError("now and then"))
        clock[0] += d.RESTART_WINDOW / d.RESTARTS + 1
    assert d.book.internal_errors == 2 * d.RESTARTS
    assert d.managed == {"/box", "/box/a", "/box/job"}


def test_a_stack_that_cannot_be_restarted_stops_the_daemon(tree, daemons, monkeypatch):
    mount, proc = tree
    d = daemons([{"cgroup": "/box", "policy": "largest-task"}])

    def no_stack(*args):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(daemon_main, "open_stack", no_stack)
    d.running = True
    with pytest.raises(InternalError, match=r"could not be restarted .*OSError.*Too many open files"):
        d._contain(KeyError(1))
    # the old stack was closed before the new one failed: nothing of ours stands
    assert adj(proc, PID_A) == 0 and high(mount, "/box/job") == "max" and d.restorer.held == {}


def test_a_stop_step_that_raises_leaves_the_rest_to_run(tree, daemons, monkeypatch, caplog):
    """The stack's close fails: the restorer (which puts back what the daemon
    still held) and the event log are closed anyway, and the log says so."""
    d = daemons([{"cgroup": "/box", "policy": "largest-task"}])
    closed = []

    def stuck():
        raise RuntimeError("stuck")

    monkeypatch.setattr(d.stack, "close", stuck)
    monkeypatch.setattr(d.restorer, "close", lambda: closed.append("restorer"))
    events_close = d.events.close
    monkeypatch.setattr(d.events, "close", lambda: (closed.append("events"), events_close()))
    with caplog.at_level(logging.INFO, logger="oomkit"):
        d.stop()
    assert closed == ["restorer", "events"]
    assert "stop: closing the live stack failed: RuntimeError: stuck" in caplog.text
    assert "stopped; closing the live stack failed (above)" in caplog.text
    assert "every setting restored" not in caplog.text
    type(d.stack).close(d.stack)        # the real close, for this test's fds


def test_an_error_in_the_turn_that_stops_the_daemon_leaves_the_close_to_stop(tree, daemons):
    """SIGTERM came in the same turn (running is False): no restart; stop() closes."""
    mount, proc = tree
    d = daemons([{"cgroup": "/box", "policy": "largest-task"}])
    old = d.stack
    d.running = False
    d._contain(KeyError(1))
    assert d.stack is old and d.book.internal_errors == 1 and adj(proc, PID_A) == 1000
    d.stop()
    assert adj(proc, PID_A) == 0 and d.restorer.held == {}
