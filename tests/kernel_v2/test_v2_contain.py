"""A bug of oomkit's own in the daemon's loop on a real cgroup v2 memcg
(daemon/main.py, ``Daemon._contain``): restarting the live stack puts the
armed task's own ``oom_score_adj`` and the wake point back before the memcg is
taken again, and the new stack arms it again.

The daemon runs in this process (its loop is not needed: the error is handed
to ``_contain`` as the loop would); its policy worker is real.
"""

from __future__ import annotations

from helpers.inprocess import at_restart, in_process_daemon
from helpers.procs import score_adj as adj

MiB = 1 << 20


def test_a_restart_puts_the_mark_back_then_arms_again(box, tmp_path, monkeypatch):
    cg = box.cg("a", limit=128 * MiB)
    hog = box.hog(cg, 112, step=1, delay=0.01)      # climbs into the zone and holds there
    assert hog.wait_line("allocated", 120), "the hog did not get its memory"
    (tmp_path / "state").mkdir(mode=0o700)
    d = in_process_daemon(tmp_path, [{"cgroup": cg, "policy": "largest-task"}], cgroup="v2",
                          mount=str(box.fs.mount), task_reader="proc", handler_deadline="20s")
    try:
        d.reconcile()
        assert adj(hog.pid) == 1000, f"not armed at usage {box.fs.usage(cg)}"
        seen = at_restart(monkeypatch, lambda: {"adj": adj(hog.pid), "held": dict(d.restorer.held)})
        d.running = True     # as in the loop
        d._contain(KeyError("a bug"))
        assert seen == {"adj": 0, "held": {}}, seen
        assert adj(hog.pid) == 1000 and d.managed == {cg}          # armed again
        assert hog.alive() and box.events(cg)["oom_kill"] == 0      # nothing died for it
        assert d.book.internal_errors == 1
    finally:
        d.stop()
    assert adj(hog.pid) == 0 and d.restorer.held == {}
