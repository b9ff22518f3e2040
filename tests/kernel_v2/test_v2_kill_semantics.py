"""Issue 12 on cgroup v2 (in the VM): a standing decision's kill is the
kernel's own, so it has the kernel's semantics: a victim's mm sharers die with
it (mm/oom_kill.c __oom_kill_process), and one record names the victim."""

from __future__ import annotations

import os
import signal

from helpers.procs import SHARED_HOG, Proc, hog_argv, until
from oomkit.errors import TaskGone
from oomkit.linux import pidfd

MiB = 1 << 20


def test_the_kernel_kills_the_marked_task_and_its_mm_sharer(box, daemon):
    cg = box.cg("a", limit=96 * MiB)
    bystander = box.sleeper(cg)
    d = daemon(box, "largest-task")
    hog = Proc(hog_argv(160, flags=("-S",), script=SHARED_HOG))
    box.procs.append(hog)
    assert hog.wait_line("ready", 60)
    box.fs.write(cg, "cgroup.procs", str(hog.pid))
    hog.go()
    line = hog.read_line(60) or ""
    assert line.startswith("sharer "), line
    sharer = int(line.split()[1])
    sharer_fd = pidfd.open_pidfd(sharer)
    try:
        assert hog.wait_exit(120), f"the hog was not killed:\n{d.log}"
        assert pidfd.wait_exit(sharer_fd, 30), "its mm sharer lives on"
        assert bystander.alive()
        assert until(lambda: d.records(), 30, step=0.05), f"no record:\n{d.log}"
        rec = d.records()[0]
        assert rec["resolved_by"] == "policy" and rec.get("executed_by") == "kernel", rec
        # the kernel reports the one of the two it picked (both at 1000: the write
        # to one sets every process sharing the mm), kills both; the record is
        # the policy's either way
        assert [k["pid"] for k in rec["killed"]] in ([hog.pid], [sharer]), rec
        assert rec["killed"][0]["by"] == f"policy:{box.root}", rec
        assert box.events(cg)["oom_kill"] >= 1
    finally:
        try:
            pidfd.send_signal(sharer_fd, signal.SIGKILL)
        except TaskGone:
            pass
        os.close(sharer_fd)
    assert d.stop() == 0
