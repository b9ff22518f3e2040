"""CgroupV2Backend and the daemon's v2 condition logic over a fake cgroup2
tree and a fake /proc in tmp_path (real file names and formats).

The pids are above any real pid_max (4194304), so a kill that reached
``pidfd_open`` could never hit a real process: it fails with ESRCH.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from oomkit.backends.base import OOMEvent
from oomkit.backends.cgroup_v2 import CgroupV2Backend
from oomkit.linux.cgroupfs import CgroupFS
from oomkit.linux.procfs import ProcFS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers
from helpers.inprocess import in_process_daemon  # noqa: E402

MiB = 1 << 20
FIX = Path(__file__).resolve().parents[1] / "fixtures" / "linux"
PID_A, PID_B, PID_C = 5_000_001, 5_000_002, 5_000_003
EVENTS = "low 0\nhigh {high}\nmax {max}\noom {oom}\noom_kill {kill}\noom_group_kill 0\n"


def cgroup(mount: Path, rel: str, *, current: int = 0, limit: int | None = None,
           high: int | None = None, procs=(), oom_group: bool = False, events=None,
           local=None) -> str:
    d = mount / rel.strip("/") if rel != "/" else mount
    d.mkdir(parents=True, exist_ok=True)
    ev = {"high": 0, "max": 0, "oom": 0, "kill": 0, **(events or {})}
    lo = {"high": 0, "max": 0, "oom": 0, "kill": 0, **(local or {})}
    files = {"memory.current": f"{current}\n", "memory.max": f"{limit if limit else 'max'}\n",
             "memory.high": f"{high if high else 'max'}\n", "memory.swap.current": "0\n",
             "cgroup.procs": "".join(f"{p}\n" for p in procs), "cgroup.kill": "",
             "memory.oom.group": f"{int(oom_group)}\n", "memory.events": EVENTS.format(**ev),
             "memory.events.local": EVENTS.format(**lo),
             "memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                                "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"}
    for name, text in files.items():
        (d / name).write_text(text)
    return "/" + rel.strip("/") if rel != "/" else "/"


def task(proc: Path, pid: int, name: str, rss_kb: int, adj: int = 0) -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    status = (FIX / "proc_status.txt").read_text().replace("python3", name)
    status = status.replace("VmRSS:\t   13508 kB", f"VmRSS:\t{rss_kb:8d} kB")
    (d / "status").write_text(status)
    (d / "stat").write_text((FIX / "proc_stat.txt").read_text().replace("4587 (python3)",
                                                                         f"{pid} ({name})", 1))
    (d / "cmdline").write_bytes(name.encode() + b"\0")
    (d / "oom_score_adj").write_text(f"{adj}\n")
    (d / "statm").write_text(f"4141 {rss_kb // 4} 1146 1 0 1013 0\n")


@pytest.fixture
def tree(tmp_path):
    mount, proc = tmp_path / "cg", tmp_path / "proc"
    cgroup(mount, "/", current=200 * MiB)
    (mount / "cgroup.controllers").write_text("cpu io memory pids\n")
    cgroup(mount, "/box", current=80 * MiB, limit=256 * MiB)
    cgroup(mount, "/box/a", current=57 * MiB, limit=64 * MiB, procs=[PID_A, PID_B])
    cgroup(mount, "/box/job", current=10 * MiB, limit=64 * MiB, procs=[PID_C], oom_group=True)
    proc.mkdir()
    (proc / "meminfo").write_text((FIX / "meminfo.txt").read_text())
    (proc / "self").mkdir()
    (proc / "self" / "mounts").write_text(f"cgroup2 {mount} cgroup2 rw,nosuid 0 0\n")
    task(proc, PID_A, "hog", 50 * 1024)
    task(proc, PID_B, "sleep", 1024)
    task(proc, PID_C, "job", 8 * 1024)
    return mount, proc


def backend(tree, **kw) -> CgroupV2Backend:
    mount, proc = tree
    return CgroupV2Backend(CgroupFS(mount, "v2"), ProcFS(proc), **kw)


def read(mount: Path, rel: str, name: str) -> str:
    return (mount / rel.strip("/") / name).read_text()


# -- the backend ----------------------------------------------------------------------


def test_context_reads_cgroup2_files(tree):
    b = backend(tree)
    oom = OOMEvent("memcg", "/box/a")
    info = b.cgroups(oom, "/box")["/box/a"]
    assert (info.usage, info.limit, info.oom_group, info.pids) == (57 * MiB, 64 * MiB, False,
                                                                   (PID_A, PID_B))
    assert info.events["oom_kill"] == 0
    assert b.cgroups(oom, "/box")["/box/job"].oom_group is True
    tasks = b.tasks(oom, "/box")
    assert [(t.pid, t.name, t.cgroup) for t in tasks] == [
        (PID_A, "hog", "/box/a"), (PID_B, "sleep", "/box/a"), (PID_C, "job", "/box/job")]
    assert tasks.by_pid(PID_A).rss == 50 * MiB
    assert b.totalpages(oom) == 64 * MiB // 4096


def test_whole_cgroup_kill_writes_cgroup_kill(tree):
    mount, _ = tree
    b = backend(tree)
    oom = OOMEvent("memcg", "/box/job")
    tasks = list(b.tasks(oom, "/box/job"))
    released = b.kill(tasks, oom, cgroup="/box/job")
    assert read(mount, "/box/job", "cgroup.kill") == "1"
    assert [(r.pid, r.cgroup, r.relief) for r in released] == [(PID_C, "/box/job", 8 * MiB)]


def test_cgroup_kill_not_used_when_a_task_must_survive(tree):
    """A -1000 task (left out of the tasks to kill) keeps cgroup.kill unwritten:
    task by task instead; these pids do not exist, so nothing is killed."""
    mount, proc = tree
    (proc / str(PID_B) / "oom_score_adj").write_text("-1000\n")
    b = backend(tree)
    oom = OOMEvent("memcg", "/box/a")
    killable = [t for t in b.tasks(oom, "/box/a") if t.oom_score_adj > -1000]
    assert b.kill(killable, oom, cgroup="/box/a") == []
    assert read(mount, "/box/a", "cgroup.kill") == ""


def test_dry_run_writes_nothing(tree):
    mount, _ = tree
    b = backend(tree, dry_run=True)
    oom = OOMEvent("memcg", "/box/job")
    assert len(b.kill(list(b.tasks(oom, "/box/job")), oom, cgroup="/box/job")) == 1
    b.set_limit("/box/a", 96 * MiB)
    assert read(mount, "/box/job", "cgroup.kill") == ""
    assert read(mount, "/box/a", "memory.max") == f"{64 * MiB}\n"


def test_protected_pid_is_never_in_a_cgroup_kill(tree):
    mount, _ = tree
    b = backend(tree, protected_pids=[PID_C])
    oom = OOMEvent("memcg", "/box/job")
    tasks = list(b.tasks(oom, "/box/job"))
    assert b.kill(tasks, oom, cgroup="/box/job") == []
    assert read(mount, "/box/job", "cgroup.kill") == ""


def test_headroom_is_bounded_by_parents_and_memavailable(tree):
    b = backend(tree)
    assert b.headroom("/box/a") == 256 * MiB - 80 * MiB
    assert b.kernel_fallback(OOMEvent("memcg", "/box/a")).resolved is False


# -- the daemon's v2 condition logic --------------------------------------------------


def test_one_task_is_found_by_its_cgroup_file_and_its_cmdline_is_read_only_when_used(tree):
    _, proc = tree
    (proc / str(PID_C) / "cgroup").write_text("0::/box/job\n")
    b = backend(tree)
    t = b.task(PID_C)
    assert (t.pid, t.name, t.cgroup, t.rss) == (PID_C, "job", "/box/job", 8 * MiB)
    (proc / str(PID_C) / "cmdline").write_bytes(b"job\0--late\0")   # read now, not at task()
    assert t.cmdline == ("job", "--late") and list(t.cmdline) == ["job", "--late"]
    assert b.task(4_999_999) is None                                  # no such pid


def test_a_task_in_do_exit_is_exiting(tree):
    _, proc = tree
    stat = proc / str(PID_B) / "stat"
    fields = stat.read_text().split(" ")
    fields[8] = str(int(fields[8]) | 0x4)           # PF_EXITING: killed by someone else
    stat.write_text(" ".join(fields))
    tasks = backend(tree).tasks(OOMEvent("memcg", "/box/a"), "/box")
    assert tasks.by_pid(PID_B).exiting is True and tasks.by_pid(PID_A).exiting is False


def make_daemon(tree, tmp_path, attach, **daemon):
    mount, proc = tree
    # A deadline a loaded machine cannot miss: these tests are about decisions, not time.
    return in_process_daemon(tmp_path, attach, cgroup="v2", mount=str(mount), proc=str(proc),
                             **{"handler_deadline": "5s", **daemon})


@pytest.fixture
def daemons(tree, tmp_path):
    """``start(attach, **daemon)``: a Daemon on the fake tree, reconciled once;
    every one started is stopped after the test."""
    made = []

    def start(attach, **daemon):
        d = make_daemon(tree, tmp_path, attach, **daemon)
        made.append(d)
        d.reconcile()
        return d

    yield start
    for d in made:
        d.stop()


@pytest.fixture
def box_daemon(tree, tmp_path):
    """A Daemon on the fake tree, policies on /box and /box/job, not started."""
    d = make_daemon(tree, tmp_path, [{"cgroup": "/box", "policy": "largest-task"},
                                     {"cgroup": "/box/job", "policy": "newest-task"}])
    try:
        yield d
    finally:
        d.stop()


def test_a_removed_cgroup_is_reported_to_the_policies_above_it(tree, box_daemon, monkeypatch):
    import dataclasses
    import shutil

    from oomkit.policies import BUILTINS

    mount, _ = tree
    d, offline = box_daemon, []
    # In process: the calls are observed through a monkeypatch of this process's class.
    d.engine.settings = dataclasses.replace(d.engine.settings, runner="inprocess")
    monkeypatch.setattr(BUILTINS["largest-task"], "handle_cgroup_offline",
                        lambda self, cgroup: offline.append(cgroup), raising=False)
    d.reconcile()
    assert set(d.engine.attachments) == {"/box", "/box/job"}
    shutil.rmtree(mount / "box" / "job")             # the cgroup goes away
    d.reconcile()
    assert offline == ["/box/job"]                   # told to the policy on /box
    assert set(d.engine.attachments) == {"/box"}     # the one on /box/job went with it
    assert "/box/job" not in d.managed


def test_taking_a_cgroup_reads_its_tasks_ahead_of_any_oom(box_daemon):
    assert len(box_daemon.backend.task_cache) == 0
    box_daemon.reconcile()
    assert len(box_daemon.backend.task_cache) == 3   # PID_A, PID_B, PID_C, each once


def test_subtree_procs_lists_each_cgroup_of_a_subtree_in_preorder(tree):
    mount, _ = tree
    fs = CgroupFS(mount, "v2")
    assert fs.subtree_procs("/box") == [("/box", []), ("/box/a", [PID_A, PID_B]),
                                        ("/box/job", [PID_C])]
    assert fs.subtree_procs("/box/gone") == []                 # removed meanwhile: skipped
    assert [cg for cg, _ in fs.subtree_procs("/")] == list(fs.walk("/"))
    cgroup(mount, "/box/a/late")                # a leaf that gains a child is listed again
    assert [cg for cg, _ in fs.subtree_procs("/box")] == ["/box", "/box/a", "/box/a/late", "/box/job"]
