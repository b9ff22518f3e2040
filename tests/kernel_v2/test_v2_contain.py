"""A bug of oomkit's own in the daemon's loop on a real cgroup v2 memcg
(daemon/main.py, ``Daemon._contain``): restarting the live stack puts the
armed task's own ``oom_score_adj`` and the wake point back before the memcg is
taken again, and the new stack arms it again.

The daemon runs in this process (its loop is not needed: the error is handed
to ``_contain`` as the loop would); its policy worker is real.
"""

from __future__ import annotations

from pathlib import Path

from helpers.restorer import FakeRestorer
from oomkit.config.daemon import resolve
from oomkit.daemon import main as daemon_main

MiB = 1 << 20


def adj(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def test_a_restart_puts_the_mark_back_then_arms_again(box, tmp_path, monkeypatch):
    cg = box.cg("a", limit=128 * MiB)
    hog = box.hog(cg, 112, step=1, delay=0.01)      # climbs into the zone and holds there
    assert hog.wait_line("allocated", 120), "the hog did not get its memory"
    (tmp_path / "state").mkdir(mode=0o700)
    config = resolve({"daemon": {"cgroup": "v2", "mount": str(box.fs.mount), "task_reader": "proc",
                                 "event_log": str(tmp_path / "ev.jsonl"),
                                 "state_dir": str(tmp_path / "state"), "handler_deadline": "20s"},
                      "attach": [{"cgroup": cg, "policy": "largest-task"}]})
    d = daemon_main.Daemon(config, restorer=FakeRestorer())
    try:
        d.reconcile()
        assert adj(hog.pid) == 1000, f"not armed at usage {box.fs.usage(cg)}"
        seen = {}
        real_open = daemon_main.open_stack

        def open_stack(*args):
            # between the old stack's close and the new one's take
            seen.update(adj=adj(hog.pid), held=dict(d.restorer.held))
            return real_open(*args)

        monkeypatch.setattr(daemon_main, "open_stack", open_stack)
        d.running = True     # as in the loop
        d._contain(KeyError("a bug"))
        assert seen == {"adj": 0, "held": {}}, seen
        assert adj(hog.pid) == 1000 and d.managed == {cg}          # armed again
        assert hog.alive() and box.events(cg)["oom_kill"] == 0      # nothing died for it
        assert d.book.internal_errors == 1
    finally:
        d.stop()
    assert adj(hog.pid) == 0 and d.restorer.held == {}
