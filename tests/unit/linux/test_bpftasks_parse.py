"""bpftasks/bpfload: the record format of tasks.bpf.c, and why BpfTasks.open() refuses.

No BPF needed: records are packed here as the program writes them (struct rec
in src/oomkit/linux/bpf/tasks.bpf.c), and open() is pointed at what is missing.
"""

from __future__ import annotations

import struct

import pytest

from oomkit.errors import CgroupGone, KernelError
from oomkit.linux import bpfload
from oomkit.linux.bpftasks import (
    RECORD,
    BpfTasks,
    cgroup_key,
    memcg_mount,
    mm_candidates,
    mm_keys,
    parse,
)
from oomkit.linux.taskcache import TaskSample

MiB = 1 << 20


def rec(pid=4587, adj=0, memcg=1018052, rss=20 * MiB, swap=0, pgtables=81920, start=791195,
        uid=0, exiting=0, comm=b"python3", mm=0x5EED):
    return RECORD.pack(pid, adj, memcg, rss, swap, pgtables, start, uid, exiting, comm, mm)


def test_record_is_the_c_struct():
    # u32 pid, s32 adj, 5 x u64, u32 uid, u32 exiting, char comm[16], u64 mm_key:
    # no padding anywhere, and mm_key 8-aligned (mm_keys() reads it as a column of u64)
    assert RECORD.size == 80
    assert RECORD.size % 8 == 0


def test_parse_one_record_per_process():
    data = rec() + rec(pid=7, adj=-1000, memcg=35, rss=0, swap=4096, pgtables=0, start=1,
                       uid=1000, exiting=1, comm=b"sleep")
    assert parse(data) == [
        (4587, 1018052, TaskSample("python3", 20 * MiB, 0, 81920, 0, 0, 791195, False)),
        (7, 35, TaskSample("sleep", 0, 4096, 0, -1000, 1000, 1, True)),
    ]


def test_parse_comm_full_length_padding_and_bad_utf8():
    full = parse(rec(comm=b"0123456789abcdef"))      # TASK_COMM_LEN: 15 chars + NUL in the kernel,
    assert full[0][2].comm == "0123456789abcdef"     # but never trust it: all 16 if no NUL
    assert parse(rec(comm=b"a\0stale-bytes"))[0][2].comm == "a"
    assert parse(rec(comm=b"caf\xc3"))[0][2].comm == "caf\ufffd"


def test_parse_nothing_and_types():
    assert parse(b"") == []
    (pid, memcg, s), = parse(bytearray(rec()))
    assert isinstance(s, TaskSample) and s.exiting is False


def test_parse_rejects_a_torn_record():
    with pytest.raises(struct.error):
        parse(rec()[:-1])


def test_cgroup_key_is_inode_and_depth(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    ino = (tmp_path / "a" / "b").stat().st_ino
    assert cgroup_key(tmp_path / "a" / "b", tmp_path) == (ino, 2)
    assert cgroup_key(tmp_path, tmp_path)[1] == 0
    # a memcg removed mid-OOM: CgroupGone, which the daemon expects, not a KernelError
    # that ends it (issue 10 item 6)
    with pytest.raises(CgroupGone):
        cgroup_key(tmp_path / "gone", tmp_path)


def test_open_says_why_without_btf(monkeypatch, tmp_path):
    monkeypatch.setattr(bpfload, "VMLINUX_BTF", str(tmp_path / "vmlinux"))
    with pytest.raises(KernelError, match="no kernel BTF"):
        BpfTasks.open()


def test_open_says_why_without_object(tmp_path):
    if not bpfload.os.path.exists(bpfload.VMLINUX_BTF):
        pytest.skip("this kernel has no BTF: that check comes first")
    with pytest.raises(KernelError, match="no .*tasks.bpf.o.*make -C"):
        BpfTasks.open(tmp_path / "tasks.bpf.o")


def test_open_says_why_without_libbpf(monkeypatch, tmp_path):
    if not bpfload.os.path.exists(bpfload.VMLINUX_BTF):
        pytest.skip("this kernel has no BTF: that check comes first")
    obj = tmp_path / "tasks.bpf.o"
    obj.write_bytes(b"")
    monkeypatch.setattr(bpfload, "LIBBPF", "libbpf-not-here.so.0")
    with pytest.raises(KernelError, match="cannot load libbpf-not-here"):
        BpfTasks.open(obj)


def test_open_says_why_for_a_bad_object(tmp_path):
    if not bpfload.os.path.exists(bpfload.VMLINUX_BTF):
        pytest.skip("this kernel has no BTF: that check comes first")
    try:
        bpfload.libbpf()
    except KernelError:
        pytest.skip("no libbpf.so.1 here")
    obj = tmp_path / "tasks.bpf.o"
    obj.write_bytes(b"not an ELF file")
    with pytest.raises(KernelError, match="BPF unavailable: open"):
        BpfTasks.open(obj)


class FakeReader(BpfTasks):
    """BpfTasks.read()'s parsing and reuse, over records given here (no BPF)."""

    def __init__(self):
        import threading
        self.lock = threading.Lock()
        self._make, self._made, self._last = None, {}, None
        self.data = b""

    def read_raw(self, cgroup_id, level=None):
        return self.data


def test_read_reuses_what_it_made_for_an_unchanged_record():
    r = FakeReader()
    r.data = rec(pid=1) + rec(pid=2)
    made = []

    def make(pid, memcg, sample):
        made.append(pid)
        return ("task", pid, memcg, sample.rss)

    first = r.read(5, make=make)
    assert first == [("task", 1, 1018052, 20 * MiB), ("task", 2, 1018052, 20 * MiB)]
    r.data = rec(pid=1) + rec(pid=2, rss=21 * MiB) + rec(pid=3)
    second = r.read(5, make=make)
    assert made == [1, 2, 2, 3]                    # pid 1 unchanged: not made again
    assert second[0] is first[0]
    assert second[1] == ("task", 2, 1018052, 21 * MiB)
    # without make: the (pid, memcg id, sample) triples, cached apart from make's objects
    assert r.read(5) == parse(r.data)
    assert r.read(5)[0] is r.read(5)[0]


def test_read_forgets_records_no_read_returns():
    r = FakeReader()
    for start in range(3000):                      # 3,000 reads of one task, each changed
        r.data = rec(start=start)
        assert r.read(5)[0][2].starttime == start
    assert len(r._made) <= 2 + 1024 + 1


def test_failure_names_the_verifiers_reason(monkeypatch):
    from oomkit.errors import NotPermitted
    log = ["libbpf: prog 'dump_tasks': BPF program load failed: Invalid argument",
           "libbpf: prog 'dump_tasks': -- BEGIN PROG LOAD LOG --\n0: (79) r0 = *(u64 *)(r5 +0)\n"
           "Type 'atomic_long_t' is not a struct\nprocessed 1546 insns\n-- END PROG LOAD LOG --",
           "libbpf: failed to load object 'tasks.bpf.o'"]
    monkeypatch.setattr(bpfload, "_log", log)
    err = bpfload._fail("load the task iterator", 22)
    assert "Invalid argument" in str(err) and "'atomic_long_t' is not a struct" in str(err)
    assert isinstance(bpfload._fail("load", 1), NotPermitted)
    # EACCES with a verifier log: the program was refused (6.1: "R0 !read_ok"), not us
    denied = bpfload._fail("load", 13)
    assert isinstance(denied, KernelError) and not isinstance(denied, NotPermitted)
    monkeypatch.setattr(bpfload, "_log", ["libbpf: failed to load object"])
    assert isinstance(bpfload._fail("load", 13), NotPermitted)


MOUNTINFO = """\
22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 31 0:32 / /sys/fs/cgroup/memory\\040x rw,relatime - cgroup cgroup rw,memory
"""


def test_memcg_mount_prefers_the_v1_memory_hierarchy(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert memcg_mount(str(info)) == "/sys/fs/cgroup/memory x"
    info.write_text("".join(ln + "\n" for ln in MOUNTINFO.splitlines() if "memory" not in ln))
    assert memcg_mount(str(info)) == "/sys/fs/cgroup/unified"
    info.write_text(MOUNTINFO.splitlines()[0] + "\n")
    with pytest.raises(KernelError, match="no memory cgroup hierarchy"):
        memcg_mount(str(info))


def test_open_knows_two_modes():
    with pytest.raises(ValueError, match="mode"):
        BpfTasks.open(mode="proc")


def test_link_info_is_the_kernels_layout():
    # union bpf_iter_link_info: the cgroup member {u32 order, u32 cgroup_fd, u64 cgroup_id}
    # is its largest; struct bpf_iter_attach_opts {size_t sz; void *link_info; u32 len}
    import ctypes
    assert ctypes.sizeof(bpfload._CgroupLinkInfo) == 16
    assert ctypes.sizeof(bpfload._IterAttachOpts) == 24
    assert ctypes.sizeof(bpfload._Config) == 72


def _libbpf_or_skip():
    try:
        bpfload.libbpf()
    except KernelError:
        pytest.skip("no libbpf.so.1 here")


def test_the_committed_object_has_the_layouts_read_here():
    # the object is opened, not loaded: nothing reaches the kernel, no privileges
    _libbpf_or_skip()
    from oomkit.linux.bpftasks import REC
    bpfload.check_object(bpfload.OBJECT, (REC, bpfload.CONFIG))
    assert REC.size == RECORD.size == 80
    assert REC.members["comm"] == (56, 16) and REC.members["mm_key"] == (72, 8)
    assert bpfload.CONFIG.members["pad"] == (52, 4) and bpfload.CONFIG.members["mm_cookie"] == (64, 8)


def test_a_record_read_otherwise_than_the_object_writes_it_is_refused():
    _libbpf_or_skip()
    from oomkit.linux.bpftasks import REC_FORMATS
    wide_pid = bpfload.Layout.packed("rec", {**REC_FORMATS, "pid": "Q"})
    with pytest.raises(bpfload.LayoutMismatch) as err:
        bpfload.check_object(bpfload.OBJECT, (wide_pid,))
    msg = str(err.value)
    assert "tasks.bpf.o does not match this oomkit" in msg and "make -B -C" in msg
    assert "struct rec is 80 bytes, oomkit reads 84" in msg
    assert "struct rec.pid is 4 bytes, oomkit reads 8" in msg
    assert "struct rec.oom_score_adj is at byte 4, oomkit reads it at 8" in msg
    renamed = {("cmd" if k == "comm" else k): v for k, v in REC_FORMATS.items()}
    with pytest.raises(bpfload.LayoutMismatch, match="has no member 'cmd'.*has member 'comm', "
                                                      "which oomkit does not read"):
        bpfload.check_object(bpfload.OBJECT, (bpfload.Layout.packed("rec", renamed),))
    with pytest.raises(bpfload.LayoutMismatch, match="no struct record"):
        bpfload.check_object(bpfload.OBJECT, (bpfload.Layout.packed("record", REC_FORMATS),))


def test_open_refuses_an_object_whose_records_differ(monkeypatch, caplog):
    # refused before the kernel sees it (no privileges needed), and not retried
    # with the task iterator, which writes the same records; the daemon then
    # reads /proc, with its one line saying why
    if not bpfload.os.path.exists(bpfload.VMLINUX_BTF):
        pytest.skip("this kernel has no BTF: that check comes first")
    _libbpf_or_skip()
    from oomkit.daemon.main import open_task_reader
    from oomkit.linux import bpftasks
    moved = {k: v for k, v in bpftasks.REC_FORMATS.items() if k not in ("rss", "swap")}
    monkeypatch.setattr(bpftasks, "REC", bpfload.Layout.packed("rec", {**moved, "rss": "Q", "swap": "Q"}))
    with pytest.raises(bpfload.LayoutMismatch, match=r"struct rec\.pgtables is at byte 32, "
                                                      "oomkit reads it at 16"):
        BpfTasks.open()
    caplog.set_level("WARNING", logger="oomkit")
    assert open_task_reader("auto", "/proc") is None
    assert "reading tasks from /proc (BPF unavailable: " in caplog.text
    assert "does not match this oomkit" in caplog.text


# -- the mm keys: which tasks the kill's sharer search must still ask kcmp about --

def test_mm_keys_is_the_column_of_each_records_key():
    assert mm_keys(rec(pid=1, mm=7) + rec(pid=2, mm=0) + rec(pid=3, mm=2**64 - 1)) == [7, 0, 2**64 - 1]
    assert mm_keys(b"") == []


class T:
    """A task object (identity is what counts, not its fields)."""

    def __init__(self, pid):
        self.pid = pid

    def __repr__(self):
        return f"T({self.pid})"


def test_only_the_victims_key_and_tasks_not_vouched_for_are_candidates():
    victim, sharer, other, other2, new, nomm = (T(p) for p in (10, 11, 12, 13, 14, 15))
    made = [victim, sharer, other, other2, new, nomm]
    keys = [0xA, 0xA, 0xB, 0xC, 0, 0]      # new: started after the read began; nomm: no mm
    assert mm_candidates(made, keys, [victim], made) == [victim, sharer, new, nomm]


def test_a_task_the_read_did_not_make_is_a_candidate():
    # read again since (or rebuilt by _replace()): another object, whatever its pid
    victim, other = T(10), T(12)
    again = T(12)
    assert mm_candidates([victim, other], [0xA, 0xB], [victim], [victim, other, again]) == [victim, again]


def test_a_dying_task_not_vouched_for_leaves_every_task_to_kcmp():
    victim, other = T(10), T(12)
    assert mm_candidates([victim, other], [0, 0xB], [victim], [victim, other]) is None
    assert mm_candidates([other], [0xB], [T(10)], [other]) is None
    # several dying: the keys of each, and None as soon as one is unknown
    a, b, c, d = T(1), T(2), T(3), T(4)
    assert mm_candidates([a, b, c, d], [1, 2, 1, 3], [a, b], [a, b, c, d]) == [a, b, c]
    assert mm_candidates([a, b, c, d], [1, 2, 1, 3], [a, T(2)], [a, b, c, d]) is None


def test_the_reader_goes_by_its_last_read_only():
    r = FakeReader()
    r.data = rec(pid=1, mm=0xA) + rec(pid=2, mm=0xA) + rec(pid=3, mm=0xB)
    assert r.mm_candidates([], []) is None          # no read yet

    def make(pid, memcg, sample):
        return T(pid)

    first = r.read(5, make=make)
    first.reverse()             # the caller's list to sort: the reader keeps its own order
    assert [t.pid for t in r.mm_candidates(first[-1:], first)] == [2, 1]
    first.reverse()
    r.data = rec(pid=1, mm=0xA) + rec(pid=3, mm=0xB, rss=1)   # pid 2 gone, pid 3 changed
    second = r.read(5, make=make)
    assert second[0] is first[0]                     # unchanged record: the same object
    # pid 2's object is not of this read, nor is the first object of pid 3: both candidates
    assert [t.pid for t in r.mm_candidates(first[:1], first)] == [1, 2, 3]
    assert [t.pid for t in r.mm_candidates(second[:1], second)] == [1]
