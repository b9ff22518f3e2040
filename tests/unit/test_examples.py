"""The bundled examples: each passes ``oomkit check``, runs through
``oomkit simulate --json``, and shows the difference its opening comment
promises between the policies it attaches and the kernel's default.

The expected outcomes are derived from the model (badness arithmetic,
placement on NUMA nodes, limits and headroom), as the comments explain.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from oomkit.oom_kill import PAGE_SIZE
from oomkit.units import parse_size

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
M, G = 1 << 20, 1 << 30

COVERED = {"db-beside-leak.toml", "upstream-selftest.toml", "raise-limit.toml",
           "numa-node-oom.toml", "exiting-victim.toml", "shared-host.toml",
           "pressure-before-oom.toml"}


def oomkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oomkit.cli", *args], capture_output=True,
                          text=True, cwd=EXAMPLES.parent, timeout=60)


def simulate(name: str, *attach: str) -> dict:
    args = ["simulate", str(EXAMPLES / name), "--json"]
    for a in attach:
        args += ["--attach", a]
    proc = oomkit(*args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def killed(result: dict) -> list[str]:
    return [k["name"] for oom in result["ooms"] for k in oom["killed"]]


def badness(rss: int, adj: int, totalpages: int) -> int:
    """oom_badness() in pages, as the module doc of oomkit.oom_kill describes."""
    return rss // PAGE_SIZE + adj * (totalpages // 1000)


def scenario(name: str) -> dict:
    return tomllib.loads((EXAMPLES / name).read_text())


# -- every example ------------------------------------------------------------------

def test_every_example_is_covered_here():
    assert {p.name for p in EXAMPLES.glob("*.toml")} == COVERED


@pytest.mark.parametrize("name", sorted(COVERED))
def test_example_passes_check(name):
    proc = oomkit("check", str(EXAMPLES / name))
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


@pytest.mark.parametrize("name", sorted(COVERED))
def test_example_opens_with_a_comment_saying_what_to_compare(name):
    text = (EXAMPLES / name).read_text()
    head = text.split("\n\n")[0].splitlines()
    assert all(line.startswith("#") for line in head), "the file opens with its comment"
    comment = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for needed in ("What it models", "What to look at", "Compare",
                   f"oomkit simulate examples/{name}", "->"):
        assert needed in comment, f"{name}: the comment lacks {needed!r}"


@pytest.mark.parametrize("name", sorted(COVERED))
def test_example_is_deterministic(name):
    assert oomkit("simulate", str(EXAMPLES / name), "--json").stdout \
        == oomkit("simulate", str(EXAMPLES / name), "--json").stdout


# -- (a) a database beside a leaking batch job -------------------------------------------

def test_db_beside_leak_kernel_math():
    s = scenario("db-beside-leak.toml")
    db = next(t for t in s["task"] if t["name"] == "postgres")
    totalpages = parse_size(s["machine"]["memory"]) // PAGE_SIZE     # global OOM, no swap
    # At the OOM the leak holds 256M + 4 x 512M; the failing 512M is not charged.
    leak = 256 * M + 4 * 512 * M
    assert -1000 < db["oom_score_adj"] < 0
    assert badness(parse_size(db["rss"]), db["oom_score_adj"], totalpages) > badness(leak, 0, totalpages)


def test_db_beside_leak_policy_saves_the_database():
    r = simulate("db-beside-leak.toml")
    [oom] = r["ooms"]
    assert (oom["level"], oom["resolved_by"]) == ("global", "policy")
    assert oom["handlers"][0]["policy"] == "prefer-avoid"
    assert killed(r) == ["etl-leak"]
    assert {"postgres", "web"} <= set(r["survivors"])


@pytest.mark.parametrize("policy,victim", [("kernel-default", "postgres"),
                                           ("largest-task", "postgres"),
                                           ("largest-cgroup", "postgres"),
                                           ("newest-task", "etl-leak")])
def test_db_beside_leak_other_policies(policy, victim):
    r = simulate("db-beside-leak.toml", f"/={policy}")
    assert killed(r) == [victim]
    if victim == "postgres":
        # the leak goes on unhindered: it got its next 512M after the kill
        assert r["final"]["/batch"]["usage"] == 256 * M + 6 * 512 * M


# -- (b) the upstream selftest tree -------------------------------------------------------

def test_selftest_chain_passes_up_to_largest_cgroup():
    r = simulate("upstream-selftest.toml")
    [oom] = r["ooms"]
    assert (oom["level"], oom["memcg"]) == ("memcg", "/oom_test")
    assert [(h["cgroup"], h["policy"], h["verdict"]) for h in oom["handlers"]] == [
        ("/oom_test", "raise-limit", "PASS"), ("/", "upstream-selftest", "HANDLED")]
    assert oom["killed"] == [{"name": "cg4-30M", "pid": 102, "cgroup": "/oom_test/cg3/cg4",
                              "by": "policy:/"}]
    assert oom["limits"] == []               # the ceiling kept raise-limit from acting
    # 80M - 30M + the 20M that now fits
    assert r["final"]["/oom_test"] == {"usage": 70 * M, "limit": 80 * M}


def test_selftest_kernel_kills_twice():
    totalpages = 80 * M // PAGE_SIZE
    assert badness(10 * M, 1000, totalpages) > badness(30 * M, 0, totalpages)
    assert 10 * M < 20 * M                   # the +1000 victim alone does not make room
    r = simulate("upstream-selftest.toml", "/=kernel-default")
    assert killed(r) == ["cg1-10M", "cg4-30M"]
    assert len(r["ooms"]) == 2
    assert "cg2-40M" in r["survivors"]       # -1000 is never chosen


def test_selftest_copy_at_oom_test_handles_it_itself():
    r = simulate("upstream-selftest.toml", "/oom_test=largest-cgroup")
    [oom] = r["ooms"]
    assert [h["cgroup"] for h in oom["handlers"]] == ["/oom_test"]
    assert killed(r) == ["cg4-30M"]


# -- (c) a limit raise that saves everyone ------------------------------------------------

def test_raise_limit_saves_everyone():
    r = simulate("raise-limit.toml")
    [oom] = r["ooms"]
    assert (oom["memcg"], oom["resolved_by"]) == ("/apps/web", "policy")
    assert oom["limits"] == [{"cgroup": "/apps/web", "old": 2 * G, "new": 2 * G + 512 * M}]
    assert oom["killed"] == [] and r["killed"] == []
    assert set(r["survivors"]) == {"api", "cache", "worker"}
    # the parent /apps (6G) had the headroom: 1.8G + 1.5G used
    assert r["final"]["/apps"]["usage"] <= r["final"]["/apps"]["limit"]


@pytest.mark.parametrize("policy", ["kernel-default", "largest-task"])
def test_raise_limit_killers_kill_api(policy):
    r = simulate("raise-limit.toml", f"/apps/web={policy}")
    assert killed(r) == ["api"]
    assert r["ooms"][0]["limits"] == []


def test_raise_limit_ceiling_bounds_it(tmp_path):
    text = (EXAMPLES / "raise-limit.toml").read_text().replace('"3G"', '"2G"')
    path = tmp_path / "raise-limit-2G.toml"
    path.write_text(text)
    proc = oomkit("simulate", str(path), "--json")
    r = json.loads(proc.stdout)
    [oom] = r["ooms"]
    assert oom["handlers"][0]["verdict"] == "PASS"
    assert oom["resolved_by"] == "kernel"
    assert killed(r) == ["api"]


# -- (d) a NUMA OOM -----------------------------------------------------------------------

def test_numa_policy_kills_the_node_1_leak():
    r = simulate("numa-node-oom.toml")
    [oom] = r["ooms"]
    assert (oom["level"], oom["nodes"]) == ("numa", [1])
    assert killed(r) == ["ingest"]
    assert oom["handlers"][0]["freed"] == 256 * M + 3 * 512 * M     # all of it on node 1


def test_numa_kernel_kills_a_task_on_the_wrong_node_first():
    r = simulate("numa-node-oom.toml", "/=kernel-default")
    [oom] = r["ooms"]
    # cache (2.5G, unbound, placed on node 0) has the top badness, but releases
    # nothing on node 1; then the kernel fallback kills vm (2G on node 1).
    assert [(k["name"], k["by"]) for k in oom["killed"]] == [("cache", "policy:/"), ("vm", "kernel")]
    [action] = oom["handlers"][0]["actions"]
    assert action["result"] == 0
    assert oom["resolved_by"] == "kernel"
    # analytics is bound to node 0: never a candidate for a node-1 OOM
    assert {"analytics", "ingest"} <= set(r["survivors"])


# -- (e) an exiting victim ----------------------------------------------------------------

def test_exiting_victim_backoff_instead_of_a_second_kill():
    r = simulate("exiting-victim.toml")
    first, second = r["ooms"]
    assert killed(r) == ["render-a"]
    assert [h["verdict"] for h in first["handlers"]] == ["PASS", "HANDLED"]
    assert second["resolved_by"] == "backoff"
    assert [(h["policy"], h["verdict"]) for h in second["handlers"]] == [("wait-for-exiting", "BACKOFF")]
    assert {"render-b", "render-c"} <= set(r["survivors"])


def test_exiting_victim_naive_policy_kills_twice():
    r = simulate("exiting-victim.toml", "/work=largest-task")
    assert killed(r) == ["render-a", "render-b"]


def test_exiting_victim_kernel_waits_too():
    r = simulate("exiting-victim.toml", "/work=kernel-default", "/=kernel-default")
    assert killed(r) == ["render-a"]
    assert r["ooms"][1]["resolved_by"] == "backoff"


def test_exiting_victim_slow_exit_breaks_the_promise(tmp_path):
    path = tmp_path / "slow.toml"
    path.write_text((EXAMPLES / "exiting-victim.toml").read_text()
                    .replace('exit_delay = "300ms"', 'exit_delay = "2s"'))
    r = json.loads(oomkit("simulate", str(path), "--json").stdout)
    second = r["ooms"][1]
    assert second["handlers"][0]["claimed"] == "BACKOFF"
    assert second["handlers"][0]["verdict"] == "PASS"
    assert killed(r) == ["render-a", "render-b"]


# -- (f) a third-party policy ---------------------------------------------------------------

def test_shared_host_third_party_policy():
    r = simulate("shared-host.toml")
    [oom] = r["ooms"]
    assert oom["level"] == "global"
    assert oom["handlers"][0]["policy"] == "user-fair-share"
    # bob (8 x 400M) outweighs alice (2G); his newest 400M worker is the victim
    assert killed(r) == ["py-worker-8"]
    assert "matlab" in r["survivors"] and "py-worker-9" in r["survivors"]


def test_shared_host_kernel_kills_matlab():
    assert killed(simulate("shared-host.toml", "/=kernel-default")) == ["matlab"]


def test_example_policy_uses_only_the_public_api():
    source = (EXAMPLES / "policies" / "fair_share.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.startswith(("from __future__", "from collections", "from oomkit import",
                                "from oomkit.helpers import"))
               for line in imports), imports


def test_example_policy_rejects_bad_params(tmp_path):
    path = tmp_path / "bad.toml"
    text = (EXAMPLES / "shared-host.toml").read_text().replace(
        "params = { spare_uids = [0] }", 'params = { spare_uids = ["root"] }').replace(
        '"policies/fair_share.py:', f'"{EXAMPLES}/policies/fair_share.py:')
    path.write_text(text)
    proc = oomkit("check", str(path))
    assert proc.returncode != 0
    assert "spare_uids" in proc.stderr and "Traceback" not in proc.stderr


# -- a pressure policy acts before the kernel would ----------------------------------------

def test_pressure_before_oom_policy_kills_the_thrashing_job_early():
    r = simulate("pressure-before-oom.toml")
    [oom] = r["ooms"]
    assert (oom["t"], oom["memcg"], oom["resolved_by"]) == (49.0, "/batch/etl", "policy")
    assert oom["declared_by"] == "pressure-kill at /batch"
    assert oom["declared_via"] == "handle_psi_event"
    assert killed(r) == ["etl"] and r["survivors"] == ["report"]


def test_pressure_before_oom_without_it_the_kernel_kills_report_at_the_limit():
    r = simulate("pressure-before-oom.toml", "/batch=kernel-default")
    [oom] = r["ooms"]
    assert (oom["t"], oom["memcg"], oom.get("declared_by")) == (70.0, "/batch", None)
    assert killed(r) == ["report"] and r["survivors"] == ["etl"]
