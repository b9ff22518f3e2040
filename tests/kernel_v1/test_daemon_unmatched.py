"""An attachment that matches no cgroup says so at start and on reload (a typo
no longer starts silently), and is taken when such a cgroup is made."""

from __future__ import annotations

import signal

MiB = 1 << 20


def test_unmatched_attachments_are_said_at_start_and_on_reload(sandbox, oomkit_daemon):
    a = sandbox.cg("a", limit=32 * MiB)
    nope, jobs = sandbox.root + "/nope", sandbox.root + "/job-*"
    attach = [{"cgroup": a, "policy": "largest-task"}, {"cgroup": nope, "policy": "largest-task"},
              {"cgroup": jobs, "policy": "newest-task"}]
    d = oomkit_daemon(attach)
    said = [line for line in d.lines if "matches no cgroup" in line]
    assert said == [f"oomkit: attachment {p} matches no cgroup yet (it is taken when one is made)"
                    for p in (nope, jobs)], d.stderr()

    n = len(d.lines)
    d.write_config([*attach, {"cgroup": sandbox.root + "/typo", "policy": "largest-task"}])
    d.signal(signal.SIGHUP)
    assert d.wait_line("oomkit: reloaded", 30, start=n) is not None, d.stderr()
    said = [line for line in d.lines[n:] if "matches no cgroup" in line]
    assert {line.split()[2] for line in said} == {nope, jobs, sandbox.root + "/typo"}, d.stderr()

    n = len(d.lines)
    sandbox.cg("job-1")
    assert d.wait_line(f"oomkit: {sandbox.root}/job-1: attached newest-task", 30, start=n) is not None, d.stderr()
