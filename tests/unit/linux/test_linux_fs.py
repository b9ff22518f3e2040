"""CgroupFS, detect() and ProcFS over temp-dir trees with the kernel's file names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from oomkit.errors import CgroupGone, KernelError, NotPermitted, TaskGone
from oomkit.linux.cgroupfs import CgroupFS, detect
from oomkit.linux.procfs import ProcFS

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "linux"
UNLIMITED_V1 = "9223372036854771712\n"


def files(d: Path, **content: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in content.items():
        (d / name.replace("__", ".")).write_text(text)


def v1_group(d: Path, limit=UNLIMITED_V1, usage="0\n", oom="oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
             procs="") -> None:
    files(d, cgroup__procs=procs, cgroup__event_control="", memory__limit_in_bytes=limit,
          memory__usage_in_bytes=usage, memory__oom_control=oom, memory__failcnt="0\n",
          memory__stat=(FIX / "v1_memory.stat").read_text())


def v2_group(d: Path, maxv="max\n", current="0\n", events="low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
             group="0\n") -> None:
    files(d, cgroup__procs="", memory__max=maxv, memory__current=current, memory__events=events,
          memory__oom__group=group, memory__stat="anon 4096\nfile 8192\n")


@pytest.fixture
def v1(tmp_path):
    root = tmp_path / "memory"
    v1_group(root)
    v1_group(root / "batch", limit="33554432\n", usage="1048576\n")
    v1_group(root / "batch" / "job1", oom="oom_kill_disable 1\nunder_oom 1\noom_kill 2\n",
             procs="300\n301\n")
    v1_group(root / "batch" / "job2")
    v1_group(root / "web")
    return CgroupFS(root, "v1")


@pytest.fixture
def v2(tmp_path):
    root = tmp_path / "unified"
    files(root, cgroup__controllers="cpu io memory pids\n", cgroup__procs="")
    v2_group(root / "a", maxv="83886080\n", current="4096\n",
             events="low 0\nhigh 3\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\n", group="1\n")
    return CgroupFS(root, "v2")


# --- CgroupFS, v1 ------------------------------------------------------------

def test_tree(v1):
    assert v1.children("/") == ["/batch", "/web"]
    assert v1.children("/batch") == ["/batch/job1", "/batch/job2"]
    assert list(v1.walk("/")) == ["/", "/batch", "/batch/job1", "/batch/job2", "/web"]
    assert list(v1.walk("/batch/job1")) == ["/batch/job1"]
    assert v1.exists("/batch/job1") and not v1.exists("/nope")
    assert v1.procs("/batch/job1") == [300, 301]


def test_v1_typed(v1):
    assert v1.limit("/") is None
    assert v1.limit("/batch") == 32 << 20
    assert v1.usage("/batch") == 1 << 20
    assert v1.oom_control("/batch/job1") == {"oom_kill_disable": True, "under_oom": True, "oom_kill": 2}
    assert v1.events("/batch/job1") == {"oom_kill": 2, "failcnt": 0, "max": 0}
    assert v1.oom_group("/batch") is False
    assert v1.stat("/")["total_rss"] > 0


def test_v1_writes(v1):
    v1.set_limit("/web", 64 << 20)
    assert v1.read("/web", "memory.limit_in_bytes") == str(64 << 20) + "\n"
    v1.set_limit("/web", None)
    assert v1.read("/web", "memory.limit_in_bytes") == "-1\n"
    v1.set_oom_kill_disable("/web", True)
    assert v1.read("/web", "memory.oom_control") == "1\n"
    v1.attach("/web", 42)
    assert v1.read("/web", "cgroup.procs") == "42\n"


def test_mkdir_rmdir(v1):
    v1.mkdir("/web/new")
    assert v1.children("/web") == ["/web/new"]
    v1.rmdir("/web/new")
    assert v1.children("/web") == []
    with pytest.raises(ValueError):
        v1.rmdir("/")


def test_gone_cgroup(v1):
    for call in (lambda: v1.read("/gone", "memory.stat"), lambda: v1.usage("/gone"),
                 lambda: v1.children("/gone"), lambda: v1.rmdir("/gone"),
                 lambda: v1.write("/gone", "cgroup.procs", "1")):
        with pytest.raises(CgroupGone) as info:
            call()
        assert info.value.errno == 2 and "/gone" in info.value.path
    assert list(v1.walk("/gone")) == ["/gone"]


def test_mkdir_existing_is_kernel_error(v1):
    with pytest.raises(KernelError) as info:
        v1.mkdir("/web")
    assert type(info.value) is KernelError and info.value.errno == 17


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_permission_denied(v1):
    p = v1.path("/web", "memory.limit_in_bytes")
    p.chmod(0o400)
    with pytest.raises(NotPermitted):
        v1.set_limit("/web", 1)


@pytest.mark.parametrize("bad", ["batch", "/../etc", "/batch/../..", "/./x"])
def test_paths_stay_under_the_mount(v1, bad):
    with pytest.raises(ValueError):
        v1.path(bad)


def test_bad_file_name(v1):
    with pytest.raises(ValueError):
        v1.read("/", "../x")


def test_v2_only_features_refused_on_v1_and_back(v1, v2):
    with pytest.raises(KernelError):
        v2.oom_control("/a")
    with pytest.raises(KernelError):
        v2.set_oom_kill_disable("/a", True)
    with pytest.raises(ValueError):
        CgroupFS("/x", "v3")


# --- CgroupFS, v2 ------------------------------------------------------------

def test_v2_typed(v2):
    assert v2.children("/") == ["/a"]
    assert v2.limit("/a") == 80 << 20
    assert v2.usage("/a") == 4096
    assert v2.events("/a")["oom_kill"] == 1 and v2.events("/a")["high"] == 3
    assert v2.oom_group("/a") is True
    assert v2.stat("/a") == {"anon": 4096, "file": 8192}
    v2.set_limit("/a", None)
    assert v2.read("/a", "memory.max") == "max\n"


# --- detect ------------------------------------------------------------------

def fake_proc(tmp_path: Path, mounts: str) -> Path:
    proc = tmp_path / "proc"
    files(proc / "self", mounts=mounts)
    return proc


def test_detect_v1_from_real_mounts(tmp_path):
    # this machine's mounts: v1 memory at /sys/fs/cgroup/memory, a cgroup2
    # without memory at /sys/fs/cgroup/unified
    proc = fake_proc(tmp_path, (FIX / "mounts.txt").read_text())
    assert detect(proc_root=proc) == ("v1", Path("/sys/fs/cgroup/memory"))
    assert detect("v1", proc_root=proc) == ("v1", Path("/sys/fs/cgroup/memory"))


def test_detect_v2_needs_memory_in_controllers(tmp_path):
    cg2 = tmp_path / "cg2"
    files(cg2, cgroup__controllers="cpu io memory pids\n")
    proc = fake_proc(tmp_path, f"cgroup2 {cg2} cgroup2 rw,nosuid 0 0\n")
    assert detect(proc_root=proc) == ("v2", cg2)
    assert detect("v2", mount=cg2, proc_root=proc) == ("v2", cg2)
    (cg2 / "cgroup.controllers").write_text("cpu io\n")
    with pytest.raises(KernelError) as info:
        detect(proc_root=proc)
    assert "memory controller" in str(info.value)


def test_detect_nothing(tmp_path):
    proc = fake_proc(tmp_path, "proc /proc proc rw 0 0\n")
    with pytest.raises(KernelError):
        detect(proc_root=proc)
    with pytest.raises(KernelError):
        detect("v2", proc_root=fake_proc(tmp_path, (FIX / "mounts.txt").read_text()))
    with pytest.raises(ValueError):
        detect("v3", proc_root=proc)


# --- ProcFS ------------------------------------------------------------------

@pytest.fixture
def proc(tmp_path):
    root = tmp_path / "proc"
    files(root, meminfo=(FIX / "meminfo.txt").read_text(),
          stat="cpu  1 2 3\nbtime 1795630081\n")
    files(root / "pressure", memory=(FIX / "pressure_memory.txt").read_text())
    files(root / "4587", status=(FIX / "proc_status.txt").read_text(),
          stat=(FIX / "proc_stat.txt").read_text(), cmdline="python3\0-c\0print(1)\0",
          oom_score_adj="-500\n", oom_score="12\n", cgroup=(FIX / "proc_cgroup_v1.txt").read_text())
    files(root / "2", status=(FIX / "proc_status_kthread.txt").read_text(), cmdline="")
    files(root / "self", mounts="")
    return ProcFS(root)


def test_procfs(proc):
    assert proc.pids() == [2, 4587]
    assert proc.status(4587)["VmRSS"] == 13508 * 1024
    assert proc.stat(4587)["starttime"] == 52831
    assert proc.cmdline(4587) == ["python3", "-c", "print(1)"]
    assert proc.cmdline(2) == []
    assert proc.oom_score_adj(4587) == -500
    assert proc.oom_score(4587) == 12
    assert proc.cgroup(4587, "v1") == "/process_api/7a031620e9e9168f88f7760abd3132f9"
    assert proc.cgroup(4587, "v2") == "/"
    assert proc.boot_time() == 1795630081
    assert proc.start_time(4587) == pytest.approx(1795630081 + 52831 / os.sysconf("SC_CLK_TCK"))
    assert proc.meminfo()["MemTotal"] == 24684084 * 1024
    assert proc.pressure("memory")["full"]["total"] == 4358
    proc.set_oom_score_adj(4587, 1000)
    assert proc.oom_score_adj(4587) == 1000


def test_procfs_gone_task(proc):
    for call in (proc.status, proc.stat, proc.cmdline, proc.oom_score_adj,
                 lambda pid: proc.cgroup(pid, "v1")):
        with pytest.raises(TaskGone):
            call(999)


def test_procfs_missing_system_file_is_kernel_error(proc):
    with pytest.raises(KernelError) as info:
        proc.pressure("io")
    assert not isinstance(info.value, TaskGone)


def test_cmdline_rewritten_without_trailing_nul(proc, tmp_path):
    (tmp_path / "proc" / "4587" / "cmdline").write_text("nginx: worker process")
    assert proc.cmdline(4587) == ["nginx: worker process"]


def test_real_proc_self():
    p = ProcFS()
    me = os.getpid()
    assert p.stat(me)["pid"] == me
    assert p.status(me)["Tgid"] == me
    assert p.cmdline(me)
    assert me in p.pids()
