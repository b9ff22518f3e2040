"""Every process of a memory-cgroup subtree in one ``read()``, from a BPF iterator.

Without BPF an OOM's context costs, per task, a ``pread`` of ``statm`` and of
``oom_score_adj`` through fds kept open (:mod:`.taskcache`, ~3 us), plus a read
of ``cgroup.procs`` per cgroup (~20 us on v1), and two fds per task against
RLIMIT_NOFILE.  Here a BPF iterator writes one fixed-size record per process
of the subtree (``bpf/tasks.bpf.c`` says what each field mirrors in the
kernel), and user space unpacks them with :func:`struct.iter_unpack`.  No fd
per task, no /proc, no ``cgroup.procs``.  One of two programs of the object
runs (:attr:`BpfTasks.mode`):

- ``"css"`` (Linux 6.7+): a cgroup iterator (``SEC("iter/cgroup")``) attached
  to the subtree's top cgroup walks its cgroups, and the css task iterator
  lists each one's processes: a read costs what the subtree holds, whatever
  else runs on the machine.  A cgroup iterator is attached to one cgroup, so
  there is one link per subtree read, kept in a small LRU (:data:`LINKS`);
  the top's directory is opened by its id (``open_by_handle_at`` on the
  memory hierarchy's mount) to attach.  The records land in an mmap()ed array
  map (a cgroup iterator cannot be read across ``read()`` calls).
- ``"task"`` (Linux 5.8+), the fallback where the first does not load: a task
  iterator (``SEC("iter/task")``) walks every task of the machine and keeps
  the subtree's processes; its records are read from an iterator fd.

Each read makes a fresh iterator fd (``bpf_iter_create()``: an iterator fd
reads its sequence once).

Loaded through ctypes over libbpf.so.1 (no new Python dependency); the program
is CO-RE (compiled once, relocated by libbpf against the running kernel's BTF,
``/sys/kernel/btf/vmlinux``), so one ``tasks.bpf.o`` (built by
``bpf/Makefile``, shipped as package data) serves every kernel with BTF.
:meth:`BpfTasks.open` raises :class:`KernelError` saying why when BPF cannot be
used (no BTF, no libbpf, no object file, no CAP_BPF/CAP_PERFMON or
CAP_SYS_ADMIN); callers then fall back to :mod:`.taskcache`.

Differences from what /proc shows, all small and on purpose:
- rss and swap are the kernel's approximate counters, as ``get_mm_counter()``
  reads them (``tasks.bpf.c`` says why); /proc sums them exactly since 6.16;
- pids are in the initial pid namespace, start times without a time
  namespace's offset (run the daemon in the initial namespaces);
- a process whose leader thread exited before its other threads is reported
  exiting with no memory, as ``/proc/PID/statm`` shows it.
"""

from __future__ import annotations

import ctypes
import errno as E
import mmap
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from oomkit.errors import CgroupGone, KernelError, NotPermitted
from oomkit.linux._oserror import translate
from oomkit.linux.taskcache import TaskSample

OBJECT = Path(__file__).with_name("bpf") / "tasks.bpf.o"
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
LIBBPF = "libbpf.so.1"

# struct rec in tasks.bpf.c: pid, oom_score_adj, memcg_id, rss, swap, pgtables,
# starttime, uid, exiting, comm[16] -- 72 bytes, little-endian (x86, arm64).
RECORD = struct.Struct("<IiQQQQQII16s")
ANY_LEVEL = 0xFFFFFFFF
R = TypeVar("R")
_READ = 1 << 20     # bytes asked per read(); the seq_file hands out up to its buffer (8 pages) each time
LINKS = 64          # "css" mode: cgroup iterator links kept, one per subtree top read lately
CAPACITY = 16384    # "css" mode: records the array map holds at first (72 bytes each); grows
FILEID_KERNFS = 0xFE    # include/linux/exportfs.h: a kernfs file handle is the node's u64 id
BPF_CGROUP_ITER_DESCENDANTS_PRE = 2


class _Config(ctypes.Structure):
    """struct config in tasks.bpf.c: the programs' one global variable (their .bss)."""

    _fields_ = [("target_id", ctypes.c_uint64), ("target_level", ctypes.c_uint32),
                ("page_shift", ctypes.c_uint32), ("ns_per_tick", ctypes.c_uint64),
                ("count", ctypes.c_uint64), ("tasks_seen", ctypes.c_uint64),
                ("cgroups_seen", ctypes.c_uint64), ("top_level", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


class _CgroupLinkInfo(ctypes.Structure):
    """union bpf_iter_link_info's cgroup member (include/uapi/linux/bpf.h, 6.1+); 16 bytes,
    the size of the union."""

    _fields_ = [("order", ctypes.c_uint32), ("cgroup_fd", ctypes.c_uint32),
                ("cgroup_id", ctypes.c_uint64)]


class _IterAttachOpts(ctypes.Structure):
    """struct bpf_iter_attach_opts (libbpf.h)."""

    _fields_ = [("sz", ctypes.c_size_t), ("link_info", ctypes.c_void_p),
                ("link_info_len", ctypes.c_uint32)]


def parse(data: bytes | bytearray | memoryview) -> list[tuple[int, int, TaskSample]]:
    """(pid, memcg id, sample) for each record of ``data`` (whole records only)."""
    new = TaskSample._make
    return [(pid, memcg, new((comm.split(b"\0", 1)[0].decode("utf-8", "replace"),
                              rss, swap, pgtables, adj, uid, start, exiting != 0)))
            for pid, adj, memcg, rss, swap, pgtables, start, uid, exiting, comm
            in RECORD.iter_unpack(data)]


def cgroup_key(path: str | os.PathLike, mount: str | os.PathLike) -> tuple[int, int]:
    """(id, level) of the cgroup directory ``path`` under the hierarchy mounted at
    ``mount``: the id is the directory's inode number (kernfs_node id on 64-bit,
    fs/kernfs/inode.c), the level its depth below the mount (0 for the mount)."""
    rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(mount))
    try:
        ino = os.stat(path).st_ino
    except OSError as exc:
        # ENOENT: removed under us (a container runtime removes a memcg right after
        # its last task dies, maybe mid-OOM): the cgroup is gone, not a kernel fault.
        raise translate(exc, str(path), CgroupGone, what="stat cgroup") from exc
    return ino, len(rel.parts)


def _libbpf() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBBPF, use_errno=True)
    except OSError as exc:
        raise KernelError(f"BPF unavailable: cannot load {LIBBPF} ({exc}); "
                          "install libbpf1 (Debian) or libbpf (Fedora)") from exc
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for name, res, args in (
            ("bpf_object__open_file", vp, [cp, vp]),
            ("bpf_object__load", i, [vp]),
            ("bpf_object__close", None, [vp]),
            ("bpf_object__find_program_by_name", vp, [vp, cp]),
            ("bpf_object__find_map_by_name", vp, [vp, cp]),
            ("bpf_object__next_program", vp, [vp, vp]),
            ("bpf_program__name", cp, [vp]),
            ("bpf_program__set_autoload", i, [vp, ctypes.c_bool]),
            ("bpf_map__fd", i, [vp]),
            ("bpf_map__set_max_entries", i, [vp, ctypes.c_uint32]),
            ("bpf_program__attach_iter", vp, [vp, vp]),
            ("bpf_link__fd", i, [vp]),
            ("bpf_link__destroy", i, [vp]),
            ("bpf_iter_create", i, [i]),
            ("libbpf_set_print", vp, [vp])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


# libbpf's messages (why a load failed) are kept, not printed: the last few go
# into the error.  Its print callback gets a va_list, which on x86-64 and arm64
# Linux is passed as a pointer, so vsnprintf can format it.
_PRINT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_log: list[str] = []
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]


@_PRINT
def _keep(level: int, fmt: bytes, args: int) -> int:
    if level >= 2:      # LIBBPF_DEBUG: CO-RE relocation notes; the verifier log is a warning
        return 0
    buf = ctypes.create_string_buffer(1 << 20)     # a verifier log comes in one message
    _libc.vsnprintf(buf, len(buf), fmt, args)
    _log.append(buf.value.decode(errors="replace").rstrip())
    del _log[:-40]
    return 0


def _fail(what: str, err: int) -> KernelError:
    """The error for a failed libbpf/bpf call (``err`` positive errno), with libbpf's last words."""
    why = os.strerror(err) if err else "failed"
    detail = next((line for line in reversed(_log) if line), "")
    verifier = False
    for msg in reversed(_log):      # the verifier's own reason: the last line of its log
        if "-- END PROG LOAD LOG --" in msg:
            verifier = True
            lines = [ln for ln in msg.split("-- END PROG LOAD LOG --")[0].splitlines()
                     if ln.strip() and not ln.startswith(("processed ", "verification time"))]
            detail = (lines[-1].strip() if lines else detail) + "; " + detail
            break
    text = f"BPF unavailable: {what}: {why}" + (f" (libbpf: {detail})" if detail else "")
    if err == E.EACCES and verifier:     # the verifier's refusal, not a lack of privileges
        return KernelError(text, errno=err)
    if err in (E.EPERM, E.EACCES):
        return NotPermitted(text + " (needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)", errno=err)
    return KernelError(text, errno=err or None)


def memcg_mount(mountinfo: str = "/proc/self/mountinfo") -> str:
    """Where the memory controller's hierarchy is mounted: a v1 ``cgroup`` mount
    with ``memory`` among its options, else a ``cgroup2`` mount."""
    v2 = None
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise translate(exc, mountinfo, what="read mounts") from exc
    for line in lines:
        mine, _, theirs = line.partition(" - ")
        fields, other = mine.split(), theirs.split()
        if len(fields) < 5 or len(other) < 3:
            continue
        where = fields[4].replace("\\040", " ")
        if other[0] == "cgroup" and "memory" in other[2].split(","):
            return where
        if other[0] == "cgroup2" and v2 is None:
            v2 = where
    if v2 is None:
        raise KernelError("BPF subtree reads unavailable: no memory cgroup hierarchy mounted",
                          errno=E.ENOENT, path=mountinfo)
    return v2


class _Loaded:
    """One program of the object, loaded: the object, its globals, and for "css"
    the records' array map (mapped), for "task" its one link."""

    def __init__(self, lib: ctypes.CDLL, obj_file: str | os.PathLike, mode: str, capacity: int):
        self.lib, self.obj_file, self.mode, self.capacity = lib, obj_file, mode, capacity
        self.obj = self.bss = self.recs = self.link = None
        self.link_fd = -1
        _log.clear()
        lib.libbpf_set_print(ctypes.cast(_keep, ctypes.c_void_p))
        try:
            self.obj = lib.bpf_object__open_file(os.fsencode(obj_file), None)
            if not self.obj:    # libbpf 1.0+: NULL and errno
                raise _fail(f"open {obj_file}", ctypes.get_errno())
            want = b"dump_subtree" if mode == "css" else b"dump_tasks"
            prog, p = None, None
            while p := lib.bpf_object__next_program(self.obj, p):
                mine = lib.bpf_program__name(p) == want
                lib.bpf_program__set_autoload(p, mine)     # load only the one we want
                prog = p if mine else prog
            recs = lib.bpf_object__find_map_by_name(self.obj, b"recs")
            if not prog or (mode == "css" and not recs):
                raise KernelError(f"BPF unavailable: {obj_file} lacks {want.decode()} "
                                  "(rebuild it)", path=str(obj_file))
            if recs:
                lib.bpf_map__set_max_entries(recs, capacity if mode == "css" else 1)
            rc = lib.bpf_object__load(self.obj)
            if rc < 0:
                raise _fail("load the " + ("cgroup iterator (dump_subtree)" if mode == "css"
                                           else "task iterator"), -rc)
            self.prog = prog
            bss_map = lib.bpf_object__find_map_by_name(self.obj, b".bss")
            bss_fd = lib.bpf_map__fd(bss_map) if bss_map else -1
            if bss_fd < 0:
                raise KernelError(f"BPF unavailable: {obj_file} lacks its globals (rebuild it)",
                                  path=str(obj_file))
            # The .bss is a one-element array map created BPF_F_MMAPABLE (5.5+):
            # stores into this shared mapping are what the program reads, and
            # the program's stores (the counters) are what we read.
            # (libbpf 1.1 remaps its own image of it only for skeletons.)
            self.bss = self._map(bss_fd, mmap.PAGESIZE, "the program's globals")
            if mode == "css":
                size = -(-capacity * RECORD.size // mmap.PAGESIZE) * mmap.PAGESIZE
                self.recs = self._map(lib.bpf_map__fd(recs), size, "the records' map")
            else:
                self.link = lib.bpf_program__attach_iter(prog, None)
                if not self.link:
                    raise _fail("attach the task iterator", ctypes.get_errno())
                self.link_fd = lib.bpf_link__fd(self.link)
        except BaseException:
            self.close()
            raise
        finally:
            lib.libbpf_set_print(None)
        g = self.cfg = _Config.from_buffer(self.bss)
        g.page_shift = (os.sysconf("SC_PAGE_SIZE")).bit_length() - 1
        g.ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _map(fd: int, size: int, what: str) -> mmap.mmap:
        try:
            return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise _fail(f"map {what}", exc.errno or 0) from exc

    def attach(self, dir_fd: int) -> tuple[int, int]:
        """(link, link fd) of dump_subtree on the cgroup of directory ``dir_fd``."""
        info = _CgroupLinkInfo(BPF_CGROUP_ITER_DESCENDANTS_PRE, dir_fd, 0)
        opts = _IterAttachOpts(ctypes.sizeof(_IterAttachOpts),
                               ctypes.cast(ctypes.pointer(info), ctypes.c_void_p),
                               ctypes.sizeof(info))
        link = self.lib.bpf_program__attach_iter(self.prog, ctypes.byref(opts))
        if not link:
            err = ctypes.get_errno()
            raise translate(OSError(err, os.strerror(err)), None, what="attach the cgroup iterator")
        return link, self.lib.bpf_link__fd(link)

    def close(self) -> None:
        if getattr(self, "cfg", None) is not None:
            del self.cfg            # it exports the mapping's buffer
        for m in (self.bss, self.recs):
            if m is not None:
                m.close()
        if self.link:
            self.lib.bpf_link__destroy(self.link)
        if self.obj:
            self.lib.bpf_object__close(self.obj)
        self.obj = self.bss = self.recs = self.link = None


class BpfTasks:
    """A BPF iterator of a subtree's processes, loaded; :meth:`read` a subtree,
    :meth:`close` when done.

    :attr:`mode` says which program runs: ``"css"`` (the cgroup iterator, cost
    in proportion to the subtree) or ``"task"`` (the task iterator, cost in
    proportion to the machine's tasks); :attr:`fallback` why not ``"css"``
    (None when it is).
    """

    def __init__(self, lib: ctypes.CDLL, loaded: _Loaded, fallback: str | None = None,
                 mount: str | None = None):
        self._lib, self._s = lib, loaded
        self.mode: str = loaded.mode
        self.fallback = fallback
        self._mount = mount
        self._mount_fd = -1
        self._links: OrderedDict[int, tuple[int, int]] = OrderedDict()    # cgroup id -> (link, fd)
        self._make: Callable | None = None
        self._made: dict[bytes, object] = {}    # record -> what read() made of it
        self.lock = threading.Lock()

    @classmethod
    def open(cls, obj_file: str | os.PathLike = OBJECT, mode: str | None = None,
             capacity: int = CAPACITY) -> BpfTasks:
        """Load the cgroup iterator, or where it does not load (before 6.7: no
        css task iterator; before 6.1: no cgroup iterator) the task iterator;
        ``mode`` "css" or "task" asks for one only.  :class:`KernelError`
        (:class:`NotPermitted` for missing privileges) saying why BPF cannot be
        used here."""
        if mode not in (None, "css", "task"):
            raise ValueError(f"BpfTasks mode {mode!r}: None, 'css' or 'task'")
        if not os.path.exists(VMLINUX_BTF):
            raise KernelError(f"BPF unavailable: no kernel BTF ({VMLINUX_BTF}; "
                              "needs CONFIG_DEBUG_INFO_BTF=y)", errno=E.ENOENT, path=VMLINUX_BTF)
        if not os.path.exists(obj_file):
            raise KernelError(f"BPF unavailable: no {obj_file} (build it: make -C {Path(obj_file).parent})",
                              errno=E.ENOENT, path=str(obj_file))
        lib = _libbpf()
        fallback = None
        if mode != "task":
            try:
                mount = memcg_mount()
                return cls(lib, _Loaded(lib, obj_file, "css", max(1, capacity)), mount=mount)
            except KernelError as exc:
                if mode == "css":
                    raise
                fallback = ("the cgroup iterator with the css task iterator (Linux 6.7+) "
                            f"is not usable here: {exc}")
        return cls(lib, _Loaded(lib, obj_file, "task", 1), fallback)

    @property
    def visits(self) -> tuple[int, int]:
        """("css" mode) (cgroups, tasks) the last read visited: the tasks are every
        one the css task iterators returned, kept or not."""
        with self.lock:
            if self._s.obj is None or self.mode != "css":
                return (0, 0)
            return int(self._s.cfg.cgroups_seen), int(self._s.cfg.tasks_seen)

    def read(self, cgroup_id: int, level: int | None = None,
             make: Callable[[int, int, TaskSample], R] | None = None, *,
             path: str | os.PathLike | None = None) -> list:
        """(pid, memcg id, sample) of every process whose memory cgroup is the
        one with inode ``cgroup_id`` or below it; ``level`` (its depth, see
        :func:`cgroup_key`) if known spares the task iterator a walk of
        ancestors.  ``path``, the cgroup's directory, optional: the cgroup
        iterator otherwise opens it by its id.

        With ``make``, ``make(pid, memcg id, sample)`` for each instead (as
        :meth:`TaskCache.scan`).  A process whose record is byte for byte the
        one of an earlier read gets the object made then (it should be
        immutable): a dict hit costs a quarter of unpacking and making one.
        """
        data = (self.read_raw(cgroup_id, level) if path is None
                else self.read_raw(cgroup_id, level, path=path))
        with self.lock:
            if make is not self._make:
                self._make, self._made = make, {}
            made, size = self._made, RECORD.size
            keys = [data[i:i + size] for i in range(0, len(data), size)]
            out = list(map(made.get, keys))
            if None in out:
                for i, (k, m) in enumerate(zip(keys, out, strict=True)):
                    if m is None:
                        (m,) = parse(k)
                        out[i] = made[k] = m if make is None else make(*m)
            if len(made) > 2 * len(keys) + 1024:     # forget records no read returns any more
                self._made = dict(zip(keys, out, strict=True))
        return out

    def read_raw(self, cgroup_id: int, level: int | None = None, *,
                 path: str | os.PathLike | None = None) -> bytes:
        """The records of :meth:`read`, unparsed."""
        with self.lock:
            if self._s.obj is None:
                raise KernelError("BpfTasks is closed")
            if self.mode == "task":
                self._s.cfg.target_id = cgroup_id
                self._s.cfg.target_level = ANY_LEVEL if level is None else level
                return self._iterate(self._s.link_fd, True)
            while True:
                link_fd = self._link(cgroup_id, path)
                if link_fd < 0:
                    return b""          # the cgroup is gone
                g = self._s.cfg
                g.count = g.tasks_seen = g.cgroups_seen = 0
                self._iterate(link_fd, False)
                count = g.count
                del g           # a view of the globals' mapping, which _grow() unmaps
                recs = self._s.recs
                if recs is None:
                    raise KernelError("the BPF reader's record map is not mapped")
                if count <= self._s.capacity:
                    return recs[:count * RECORD.size]
                self._grow(count)       # then read again: the map was too small

    def _iterate(self, link_fd: int, keep: bool) -> bytes:
        fd = self._lib.bpf_iter_create(link_fd)
        if fd < 0:
            err = ctypes.get_errno() or -fd
            raise translate(OSError(err, os.strerror(err)), None, what="bpf_iter_create")
        try:
            chunks = []
            while True:
                chunk = os.read(fd, _READ)
                if not chunk:
                    break
                if keep:
                    chunks.append(chunk)
        except OSError as exc:
            raise translate(exc, None, what="read the BPF iterator") from exc
        finally:
            os.close(fd)
        return b"".join(chunks)

    def _link(self, cgroup_id: int, path: str | os.PathLike | None) -> int:
        """The fd of the cgroup iterator link for ``cgroup_id`` (made, and the least
        recently used one dropped, if not cached); -1 if the cgroup is gone."""
        hit = self._links.get(cgroup_id)
        if hit is not None:
            self._links.move_to_end(cgroup_id)
            return hit[1]
        dir_fd = self._open_cgroup(cgroup_id, path)
        if dir_fd < 0:
            return -1
        try:
            # cgroup_fd names a cgroup of any hierarchy (cgroup_v1v2_get_from_fd);
            # cgroup_id would name one of the v2 hierarchy only.  The link holds
            # a reference to the cgroup: the fd can go.
            link = self._s.attach(dir_fd)
        finally:
            os.close(dir_fd)
        self._links[cgroup_id] = link
        while len(self._links) > LINKS:
            _, (old, _) = self._links.popitem(last=False)
            self._lib.bpf_link__destroy(old)
        return link[1]

    def _open_cgroup(self, cgroup_id: int, path: str | os.PathLike | None) -> int:
        if path is not None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                return -1
            except OSError as exc:
                raise translate(exc, str(path), CgroupGone, what="open cgroup") from exc
            if os.fstat(fd).st_ino == cgroup_id:
                return fd
            os.close(fd)
            return -1           # another cgroup by that name now: ours is gone
        if self._mount_fd < 0:
            if self._mount is None:
                raise KernelError("no memory cgroup mount to read subtrees from")
            try:
                self._mount_fd = os.open(self._mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise translate(exc, self._mount, what="open the memory cgroup mount") from exc
        # A kernfs file handle (fs/kernfs/mount.c) is the node's id: the
        # directory opened by its inode number alone (needs CAP_DAC_READ_SEARCH).
        handle = struct.pack("<IiQ", 8, FILEID_KERNFS, cgroup_id)
        fd = _libc.open_by_handle_at(self._mount_fd, handle,
                                     os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            if err in (E.ESTALE, E.ENOENT):
                return -1
            raise translate(OSError(err, os.strerror(err)), f"{self._mount} cgroup id {cgroup_id}",
                            what="open_by_handle_at")
        return fd

    def _grow(self, count: int) -> None:
        """Reload dump_subtree with an array map for at least twice ``count`` records."""
        capacity = max(2 * count, 2 * self._s.capacity)
        new = _Loaded(self._lib, self._s.obj_file, "css", capacity)
        self._drop_links()
        self._s.close()
        self._s = new

    def forget(self, cgroup_id: int) -> None:
        """Drop the link kept for ``cgroup_id`` (a cgroup removed: the link holds
        it, so until dropped it stays in the kernel as a dying cgroup)."""
        with self.lock:
            link = self._links.pop(cgroup_id, None)
            if link is not None:
                self._lib.bpf_link__destroy(link[0])

    def _drop_links(self) -> None:
        for link, _ in self._links.values():
            self._lib.bpf_link__destroy(link)
        self._links.clear()

    def close(self) -> None:
        with self.lock:
            if self._s.obj is not None:
                self._drop_links()
                self._s.close()
            if self._mount_fd >= 0:
                os.close(self._mount_fd)
                self._mount_fd = -1

    def __enter__(self) -> BpfTasks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
