"""A bug of oomkit's own in the daemon's loop on real v1 memcgs (daemon/main.py,
``Daemon._contain``): restarting the live stack hands a paused OOM to the kernel
before the memcgs are taken again, and the new stack alone answers the watchdog.

The daemon runs in this process (its loop is not needed: the error is handed
to ``_contain`` as the loop would); its policy workers are real.
"""

from __future__ import annotations

import pytest

from helpers.inprocess import at_restart, in_process_daemon
from helpers.procs import until

MiB = 1 << 20


@pytest.fixture
def daemon(sandbox, tmp_path):
    made = []

    def make(attach):
        d = in_process_daemon(tmp_path, attach, cgroup="v1", mount=str(sandbox.fs.mount),
                              handler_deadline="5s")
        made.append(d)
        d.reconcile()
        return d

    try:
        yield make
    finally:
        for d in made:
            d.stop()


def test_a_restart_hands_a_paused_oom_to_the_kernel_then_holds_the_memcg_again(
        sandbox, daemon, monkeypatch):
    a = sandbox.cg("a", limit=24 * MiB)
    d = daemon([{"cgroup": a, "policy": "largest-task"}])
    assert sandbox.fs.oom_control(a)["oom_kill_disable"] is True
    assert len(d.restorer.on_handback) == 1
    hog = sandbox.hog(a, 40)
    # The loop does not run: nothing reads the notification, the OOM stays paused.
    assert until(lambda: sandbox.fs.oom_control(a)["under_oom"], 60), "never went under OOM"
    assert hog.alive()
    seen = at_restart(monkeypatch, lambda: {
        "disabled": sandbox.fs.oom_control(a)["oom_kill_disable"],
        "hog died": hog.wait_exit(10)})
    d.running = True     # as in the loop
    d._contain(KeyError("a bug"))
    assert seen == {"disabled": False, "hog died": True}, seen
    control = sandbox.fs.oom_control(a)
    assert control["oom_kill"] == 1 and not control["under_oom"]      # the kernel's kill
    assert control["oom_kill_disable"] is True and d.managed == {a}    # held again
    # the old stack's rearm is gone from the watchdog's hand-back: one stack answers it
    assert d.restorer.on_handback == [d.stack.rearm]
    d.stop()
    assert sandbox.fs.oom_control(a)["oom_kill_disable"] is False
