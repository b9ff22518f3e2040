"""oomkit.linux.parse against real kernel text (tests/fixtures/linux) and documented v2 formats."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from oomkit.linux import parse

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "linux"


def fixture(name: str) -> str:
    return (FIX / name).read_text()


# --- cgroupfs files ----------------------------------------------------------

def test_oom_control_real():
    assert parse.oom_control(fixture("v1_memory.oom_control")) == {
        "oom_kill_disable": False, "under_oom": False, "oom_kill": 0}


def test_oom_control_paused_and_old_kernel_without_oom_kill():
    assert parse.oom_control("oom_kill_disable 1\nunder_oom 1\noom_kill 3\n") == {
        "oom_kill_disable": True, "under_oom": True, "oom_kill": 3}
    assert parse.oom_control("oom_kill_disable 1\nunder_oom 0\n")["oom_kill"] == 0


def test_flat_keyed_v1_memory_stat_real():
    stat = parse.flat_keyed(fixture("v1_memory.stat"))
    assert stat["hierarchical_memory_limit"] == 9223372036854771712
    assert {"cache", "rss", "total_rss", "total_inactive_file", "pgmajfault"} <= stat.keys()
    assert all(isinstance(v, int) for v in stat.values())


def test_flat_keyed_v2_memory_events():
    # Documentation/admin-guide/cgroup-v2.rst, memory.events
    text = "low 0\nhigh 12\nmax 40\noom 2\noom_kill 1\noom_group_kill 0\n"
    assert parse.flat_keyed(text) == {"low": 0, "high": 12, "max": 40, "oom": 2,
                                      "oom_kill": 1, "oom_group_kill": 0}


def test_flat_keyed_skips_non_integer_and_blank_lines():
    assert parse.flat_keyed("a 1\n\nb x\nc 2") == {"a": 1, "c": 2}


@pytest.mark.parametrize("text, want", [
    ("9223372036854771712\n", None),      # 4 KiB pages, this machine
    ("9223372036854710272\n", None),      # 64 KiB pages
    ("33554432\n", 32 << 20),
    ("0\n", 0),
])
def test_limit_v1(text, want):
    assert parse.limit_v1(text) == want


def test_limit_v1_real_root_is_unlimited():
    assert parse.limit_v1(fixture("v1_memory.limit_in_bytes")) is None


def test_limit_v2():
    assert parse.limit_v2("max\n") is None
    assert parse.limit_v2("83886080\n") == 80 << 20


def test_pids():
    assert parse.pids("12\n7\n") == [12, 7]
    assert parse.pids("") == []


# --- /proc -------------------------------------------------------------------

def test_proc_status_real():
    st = parse.proc_status(fixture("proc_status.txt"))
    assert st["Name"] == "python3"
    assert st["State"] == "R"
    assert st["Uid"] == 0
    assert st["Tgid"] == 4587 and st["PPid"] == 4584
    assert st["VmRSS"] == 13508 * 1024
    assert st["VmPTE"] == 68 * 1024
    assert st["VmSwap"] == 0
    assert st["Kthread"] == 0


def test_proc_status_kernel_thread_has_no_vm_lines():
    st = parse.proc_status(fixture("proc_status_kthread.txt"))
    assert st["Name"] == "kthreadd" and st["Kthread"] == 1 and st["State"] == "S"
    assert st["VmRSS"] == st["VmSwap"] == st["VmPTE"] == 0


def test_proc_status_real_uid_is_first_column():
    assert parse.proc_status("Uid:\t1000\t0\t0\t0\n")["Uid"] == 1000


def test_proc_stat_real():
    st = parse.proc_stat(fixture("proc_stat.txt"))
    # flags (field 9) 4194304 is PF_RANDOMIZE (0x400000) alone: not PF_EXITING
    assert st == {"pid": 4587, "comm": "python3", "state": "R", "ppid": 4584, "flags": 4194304,
                  "starttime": 52831}
    assert not st["flags"] & parse.PF_EXITING


@pytest.mark.parametrize("comm", ["a b", "x) R 1 (y", "((", ")", ""])
def test_proc_stat_comm_with_spaces_and_parens(comm):
    text = fixture("proc_stat.txt").replace("(python3)", f"({comm})")
    st = parse.proc_stat(text)
    assert st["comm"] == comm and st["state"] == "R" and st["starttime"] == 52831


def test_proc_cgroup_v1_real():
    text = fixture("proc_cgroup_v1.txt")
    assert parse.proc_cgroup(text, "memory") == "/process_api/7a031620e9e9168f88f7760abd3132f9"
    assert parse.proc_cgroup(text, "cpuacct") == "/"
    assert parse.proc_cgroup(text, None) == "/"          # the 0:: line exists here too
    assert parse.proc_cgroup(text, "hugetlb") is None


def test_proc_cgroup_v1_joint_controllers_and_v2():
    assert parse.proc_cgroup("4:cpu,memory:/a/b\n", "memory") == "/a/b"
    assert parse.proc_cgroup("0::/user.slice/app:1.scope\n", None) == "/user.slice/app:1.scope"
    assert parse.proc_cgroup("4:memory:/a\n", None) is None


def test_psi_real_and_documented():
    assert parse.psi(fixture("pressure_memory.txt")) == {
        "some": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 5669},
        "full": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 4358}}
    p = parse.psi("some avg10=12.50 avg60=3.01 avg300=0.40 total=987654\n")
    assert p["some"]["avg10"] == 12.5 and p["some"]["total"] == 987654 and "full" not in p


def test_meminfo_real():
    mi = parse.meminfo(fixture("meminfo.txt"))
    assert mi["MemTotal"] == 24684084 * 1024
    assert mi["MemAvailable"] > 0
    assert mi["HugePages_Total"] == 0          # a count, not kB
    assert mi["Hugepagesize"] == 2048 * 1024


def test_btime():
    assert parse.proc_stat_btime("cpu 1 2 3\nbtime 1795630081\nprocesses 5\n") == 1795630081
    with pytest.raises(ValueError):
        parse.proc_stat_btime("cpu 1\n")


def test_mounts_real_and_escaped():
    table = parse.mounts(fixture("mounts.txt"))
    assert ("cgroup", "/sys/fs/cgroup/memory", "cgroup", ["rw", "relatime", "memory"]) in table
    assert any(t[2] == "cgroup2" for t in table)
    assert parse.mounts("cg /mnt/my\\040cg cgroup2 rw 0 0\n") == [("cg", "/mnt/my cg", "cgroup2", ["rw"])]


# --- /dev/kmsg ---------------------------------------------------------------

def kmsg_records():
    return fixture("kmsg_memcg_oom.txt").splitlines()


def test_kmsg_real_memcg_oom_kill():
    parsed = [parse.kmsg_oom_kill(r) for r in kmsg_records()]
    assert parsed[0] is None and parsed[1] is None     # the CPU line and the task dump
    summary, killed = parsed[2], parsed[3]
    assert summary == {
        "kind": "summary", "constraint": "CONSTRAINT_MEMCG", "nodemask": "(null)",
        "cpuset": "/", "mems_allowed": "0", "memcg": "/oomkit-test-4139af87/a",
        "global_oom": False, "task_memcg": "/oomkit-test-4139af87/a",
        "name": "python", "pid": 4491, "uid": 0}
    assert killed == {
        "kind": "killed", "message": "Memory cgroup out of memory", "memcg_oom": True,
        "pid": 4491, "name": "python", "total_vm": 49644 * 1024, "anon_rss": 39680 * 1024,
        "file_rss": 6812 * 1024, "shmem_rss": 0, "uid": 0, "pgtables": 136 * 1024,
        "oom_score_adj": 0}


def test_kmsg_global_oom_dmesg_line_and_odd_comm():
    line = ("[ 1234.567890] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,"
            "mems_allowed=0-1,global_oom,task_memcg=/user.slice/a,b,task=my, (odd) name,pid=77,uid=1000")
    s = parse.kmsg_oom_kill(line)
    assert s["global_oom"] is True and s["memcg"] is None
    assert s["mems_allowed"] == "0-1"
    assert s["task_memcg"] == "/user.slice/a,b"
    assert s["name"] == "my, (odd) name" and s["pid"] == 77 and s["uid"] == 1000


def test_kmsg_old_killed_format_and_reaper():
    k = parse.kmsg_oom_kill("Out of memory: Killed process 10 (a (b)) total-vm:8kB, anon-rss:4kB, "
                            "file-rss:0kB, shmem-rss:0kB")
    assert k["name"] == "a (b)" and k["memcg_oom"] is False and k["uid"] is None
    assert k["anon_rss"] == 4096
    r = parse.kmsg_oom_kill("6,1,2,-;oom_reaper: reaped process 10 (a), now anon-rss:0kB, "
                            "file-rss:0kB, shmem-rss:0kB\n SUBSYSTEM=x")
    assert r["kind"] == "reaped" and r["pid"] == 10


def test_kmsg_text_strips_prefixes_and_continuations():
    assert parse.kmsg_text("6,739,515601679,-;hello\n SUBSYSTEM=memory\n") == "hello"
    assert parse.kmsg_text("[   12.000001] hello") == "hello"
    assert parse.kmsg_oom_kill("6,1,2,-;something else") is None


# --- inotify -----------------------------------------------------------------

def test_inotify_events():
    name = b"job1".ljust(16, b"\0")
    buf = struct.pack("iIII", 1, 0x40000100, 0, len(name)) + name + struct.pack("iIII", 2, 2, 0, 0)
    assert parse.inotify_events(buf) == [(1, 0x40000100, 0, "job1"), (2, 2, 0, "")]


def _cn_proc(what: int, data: bytes) -> bytes:
    """One proc-connector message as the kernel sends it (nlmsghdr, cn_msg, proc_event)."""
    import struct

    event = struct.pack("=IIQ", what, 0, 123) + data
    cn = struct.pack("=IIIIHH", 1, 1, 0, 0, len(event), 0) + event
    msg = struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn
    return msg + b"\0" * (-len(msg) % 4)


def test_proc_forks_keeps_new_processes_only():
    import struct

    from oomkit.linux.parse import proc_forks

    fork = _cn_proc(1, struct.pack("=IIII", 100, 100, 200, 200))          # a new process
    thread = _cn_proc(1, struct.pack("=IIII", 100, 100, 201, 200))        # a new thread of 200
    exec_ = _cn_proc(2, struct.pack("=II", 200, 200) + b"\0" * 8)         # PROC_EVENT_EXEC
    assert proc_forks(fork + thread + exec_ + fork) == [(100, 200), (100, 200)]
    assert proc_forks(fork[:20]) == []                                     # truncated: nothing
    assert proc_forks(b"\0" * 16) == []                                    # len 0: no loop
