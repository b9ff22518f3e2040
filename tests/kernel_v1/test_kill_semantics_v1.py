"""Issue 12 / issue 10 item 2, on real v1 memcgs: a policy's kill kills every
process sharing the victim's mm, as the kernel's __oom_kill_process() does.

A hog clone()s a process with CLONE_VM and without CLONE_THREAD (two
processes, one mm) and then allocates past its memcg's limit.  With the
built-in largest-task, oomkit used to kill one of them: the mm stayed, nothing
was released and the memcg stayed under_oom.  Both must die, both be recorded,
and the memcg leave under_oom.  (cgroup v1 has no memory.oom.group: the
kernel's mem_cgroup_get_oom_group() returns NULL off the default hierarchy,
and so does oomkit's.)
"""

from __future__ import annotations

import os
import signal

from helpers.daemon import check_record, killed_pids
from helpers.procs import SHARED_HOG, until
from oomkit.errors import TaskGone
from oomkit.linux import pidfd

MiB = 1 << 20


def test_largest_task_kills_both_processes_sharing_an_mm(sandbox, oomkit_daemon):
    a = sandbox.cg("a", limit=48 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"}])
    hog = sandbox.hog(a, 80, script=SHARED_HOG)
    line = hog.read_line(30) or ""
    assert line.startswith("sharer "), line
    sharer = int(line.split()[1])
    sharer_fd = pidfd.open_pidfd(sharer)
    try:
        assert sharer in sandbox.fs.procs(a)
        ev = d.wait_events(1, timeout=30)[0]
        check_record(ev, a, "policy")
        assert killed_pids(ev) == {hog.pid, sharer}, ev["killed"]
        [h] = ev["handlers"]
        assert h["verdict"] == "HANDLED" and h["freed"] > 0
        assert h["actions"][0]["error"] == "1 sharing its mm", h["actions"]
        assert hog.wait_exit(10) and pidfd.wait_exit(sharer_fd, 10)
        assert until(lambda: not sandbox.fs.oom_control(a)["under_oom"], 10)
        assert len(d.wait_events(1, timeout=1)) == 1        # one OOM, one record
    finally:
        try:
            pidfd.send_signal(sharer_fd, signal.SIGKILL)
        except TaskGone:
            pass
        os.close(sharer_fd)
