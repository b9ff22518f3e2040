"""``oomkit status`` against a live daemon on real v1 memcgs: what it manages
(with each attachment's policy and params), then an OOM's count, resolution
and kill; with no daemon running it says so and exits 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers.daemon import killed_pids
from helpers.procs import until

MiB = 1 << 20


def oomkit_status(state_dir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oomkit.cli", "status", "--state-dir", str(state_dir), *args],
                          capture_output=True, text=True, timeout=60)


def test_status_of_a_live_daemon(sandbox, oomkit_daemon):
    a = sandbox.cg("a", limit=32 * MiB)
    sandbox.cg("b", limit=32 * MiB)
    d = oomkit_daemon([{"cgroup": a, "policy": "largest-task"},
                       {"cgroup": sandbox.root + "/b*", "policy": "prefer-avoid",
                        "params": {"avoid": ["^db$"]}}])
    st = json.loads(oomkit_status(d.state_dir, "--json").stdout)
    assert st["pid"] == d.pid and st["hierarchy"] == "v1" and st["dry_run"] is False
    assert st["task_reader"] in ("proc", "bpf (css)", "bpf (task)")
    assert st["managed"] == [a, sandbox.root + "/b"]
    by_cg = {x["cgroup"]: x for x in st["attachments"]}
    assert by_cg[a]["policy"] == "largest-task" and by_cg[a]["pattern"] == a
    b = by_cg[sandbox.root + "/b"]
    assert (b["policy"], b["params"], b["pattern"]) == ("prefer-avoid", {"avoid": ["^db$"]}, sandbox.root + "/b*")
    assert st["ooms"] == 0 and st["last_ooms"] == [] and by_cg[a]["ooms"] == 0

    hog = sandbox.hog(a, 48)
    ev = d.wait_events(1)[0]
    assert killed_pids(ev) == {hog.pid}
    # Written after the record: by the time the log has it, the status soon does.
    assert until(lambda: json.loads(oomkit_status(d.state_dir, "--json").stdout)["ooms"] == 1, 10, step=0.1)
    st = json.loads(oomkit_status(d.state_dir, "--json").stdout)
    att = {x["cgroup"]: x for x in st["attachments"]}[a]
    assert (att["ooms"], att["resolved"], att["kills"], att["failures"], att["ejected"]) == \
        (1, {"policy": 1}, 1, 0, False)
    assert st["ooms_by"] == {"memcg/policy": 1} and st["kills_by"] == {f"policy:{a}": 1}
    last = st["last_ooms"][-1]
    assert last["memcg"] == a and last["resolved_by"] == "policy"
    assert [k["pid"] for k in last["killed"]] == [hog.pid] and last["policies"] == [f"largest-task@{a}"]

    text = oomkit_status(d.state_dir)
    assert text.returncode == 0, text.stderr
    assert f"pid {d.pid}" in text.stdout and "cgroup v1" in text.stdout
    assert f"{sandbox.root}/b: prefer-avoid {{\"avoid\": [\"^db$\"]}} (from {sandbox.root}/b*)" in text.stdout
    assert "OOMs 1 (policy 1), kills 1, failures 0" in text.stdout
    assert f"memcg {a}: policy [largest-task@{a}]: pid {hog.pid} (" in text.stdout, text.stdout
    assert oct(os.stat(d.state_dir / "status.json").st_mode & 0o777) == "0o600"

    d.stop()
    gone = oomkit_status(d.state_dir)
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.startswith("oomkit: no oomkit daemon is running"), gone.stderr
    assert not (d.state_dir / "status.json").exists()

