"""A policy's own PSI trigger, live on cgroup v2 (in the VM): ``psi_triggers()``
becomes a trigger on the cgroup's memory.pressure, its ``handle_psi_event``
declares an OOM there (``k.declare_oom``), and the chain runs at once: the
record says who declared it."""

from __future__ import annotations

from pathlib import Path

MiB = 1 << 20

POLICY = '''
from oomkit import OOMPolicy, Verdict
from oomkit.policy import PressureTrigger

class DeclareOnPressure(OOMPolicy):
    name = "declare-on-pressure"

    def __init__(self, cgroup):
        self.cgroup = cgroup

    def psi_triggers(self):
        return [PressureTrigger(self.cgroup, kind="some", threshold=0.05, window=2.0)]

    def handle_psi_event(self, event, k):
        k.declare_oom(event.cgroup, "some pressure over 50 ms in 2 s")

    def handle_out_of_memory(self, oc, k):
        tasks = sorted(oc.tasks.in_cgroup(oc.memcg), key=lambda t: -t.rss)
        for t in tasks:
            if k.kill_task(t, "largest under pressure") > 0:
                return Verdict.HANDLED
        return Verdict.PASS
'''


def test_a_policy_declares_an_oom_from_its_own_pressure_trigger(box, daemon, tmp_path):
    cg = box.cg("a", limit=64 * MiB)
    box.fs.write(cg, "memory.high", str(16 * MiB))     # the admin's throttle: pressure, no OOM
    policy = Path(tmp_path) / "declare.py"
    policy.write_text(POLICY)
    d = daemon(box, f"{policy}:DeclareOnPressure", params=f'{{cgroup = "{cg}"}}')
    hog = box.hog(cg, 24)
    assert hog.wait_exit(120), f"the pressure policy did not act:\n{d.log}"
    from helpers.procs import until
    assert until(lambda: d.records(), 30, step=0.05), f"no record:\n{d.log}"
    rec = d.records()[0]
    assert rec["declared_by"] == f"declare-on-pressure at {box.root}", rec
    assert rec["declared_via"] == "handle_psi_event" and "pressure" in rec["declared_reason"]
    assert rec["resolved_by"] == "policy" and [k["pid"] for k in rec["killed"]] == [hog.pid]
    assert box.events(cg)["oom_kill"] == 0          # oomkit's kill, not the kernel's
    assert d.stop() == 0
