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

Each record also says which mm the process has (``mm_key``, obfuscated, never
shown): the kill's search for processes sharing the victim's mm asks kcmp(2)
only about those whose key of the last read is the victim's, or that the read
cannot vouch for (:func:`mm_candidates`; ``tasks.bpf.c`` ``mm_key_of()`` says
why that never misses one).

The object is loaded by :mod:`.bpfload` (libbpf through ctypes), which checks
the record's layout declared here (:data:`REC`) against the object's BTF.
:meth:`BpfTasks.open` raises :class:`KernelError` saying why when BPF cannot be
used (no BTF, no libbpf, no object file, an object whose records are laid out
otherwise, no CAP_BPF/CAP_PERFMON or CAP_SYS_ADMIN); callers then fall back to
:mod:`.taskcache`.

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
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from itertools import compress, repeat
from pathlib import Path
from typing import TypeVar

from oomkit.errors import CgroupGone, KernelError
from oomkit.linux import bpfload
from oomkit.linux._oserror import translate
from oomkit.linux.bpfload import OBJECT, Layout, LayoutMismatch, Loaded
from oomkit.linux.taskcache import TaskSample

# struct rec in tasks.bpf.c, member -> struct format, little-endian (x86, arm64):
# 80 bytes, no padding.  Declared once: RECORD unpacks it, and the loader
# refuses an object whose BTF says otherwise.
REC_FORMATS = {"pid": "I", "oom_score_adj": "i", "memcg_id": "Q", "rss": "Q", "swap": "Q",
               "pgtables": "Q", "starttime": "Q", "uid": "I", "exiting": "I", "comm": "16s",
               "mm_key": "Q"}
REC = Layout.packed("rec", REC_FORMATS)
RECORD = struct.Struct("<" + "".join(REC_FORMATS.values()))
ANY_LEVEL = 0xFFFFFFFF
R = TypeVar("R")
T = TypeVar("T")
_READ = 1 << 20     # bytes asked per read(); the seq_file hands out up to its buffer (8 pages) each time
LINKS = 64          # "css" mode: cgroup iterator links kept, one per subtree top read lately
CAPACITY = 16384    # "css" mode: records the array map holds at first (80 bytes each); grows
FILEID_KERNFS = 0xFE    # include/linux/exportfs.h: a kernfs file handle is the node's u64 id

_libc = ctypes.CDLL(None, use_errno=True)
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]


def parse(data: bytes | bytearray | memoryview) -> list[tuple[int, int, TaskSample]]:
    """(pid, memcg id, sample) for each record of ``data`` (whole records only)."""
    new = TaskSample._make
    return [(pid, memcg, new((comm.split(b"\0", 1)[0].decode("utf-8", "replace"),
                              rss, swap, pgtables, adj, uid, start, exiting != 0)))
            for pid, adj, memcg, rss, swap, pgtables, start, uid, exiting, comm, _mm
            in RECORD.iter_unpack(data)]


def mm_keys(data: bytes | bytearray | memoryview) -> list[int]:
    """The ``mm_key`` of each record of ``data``, in order (0: not vouched for).
    A column of the records read as u64 words (native order: keys are only
    compared with each other and with 0)."""
    words, at = RECORD.size // 8, REC.members["mm_key"][0] // 8
    return memoryview(data).cast("B").cast("Q")[at::words].tolist() if len(data) else []


def mm_candidates(made: Sequence[object], keys: Sequence[int], dying: Iterable[T],
                  pool: Sequence[T]) -> list[T] | None:
    """The tasks of ``pool`` that may share an mm with one of ``dying``, given the
    objects ``made`` of one read and their records' ``keys``: those whose key is
    a dying one's, and those the read does not vouch for (not one of ``made``,
    or key 0).  None when a dying one is not vouched for: then any may.

    Matched by identity: an object of ``made`` was made from its record, so it
    is the very process (pid and start time) whose mm that read saw; a task
    read again since, or rebuilt (``_replace``), is another object and is not
    vouched for.  Keys of one read only: ``tasks.bpf.c`` ``mm_key_of()`` says
    why equal keys of one read are then the only sharers possible."""
    by_id = dict(zip(map(id, made), keys, strict=True))
    want = {0}
    for t in dying:
        key = by_id.get(id(t), 0)
        if not key:
            return None
        want.add(key)
    return list(compress(pool, map(want.__contains__, map(by_id.get, map(id, pool), repeat(0)))))


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


class BpfTasks:
    """A BPF iterator of a subtree's processes, loaded; :meth:`read` a subtree,
    :meth:`close` when done.

    :attr:`mode` says which program runs: ``"css"`` (the cgroup iterator, cost
    in proportion to the subtree) or ``"task"`` (the task iterator, cost in
    proportion to the machine's tasks); :attr:`fallback` why not ``"css"``
    (None when it is).
    """

    def __init__(self, loaded: Loaded, fallback: str | None = None, mount: str | None = None):
        self._s = loaded
        self.mode: str = loaded.mode
        self.fallback = fallback
        self._mount = mount
        self._mount_fd = -1
        self._links: OrderedDict[int, tuple[int, int]] = OrderedDict()    # cgroup id -> (link, fd)
        self._make: Callable | None = None
        self._made: dict[bytes, object] = {}    # record -> what read() made of it
        self._last: tuple[tuple, bytes] | None = None    # the last read(): what it returned, its records
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
        lib = bpfload.preflight(obj_file)
        fallback = None
        if mode != "task":
            try:
                mount = memcg_mount()
                return cls(Loaded(lib, obj_file, "css", max(1, capacity), REC), mount=mount)
            except LayoutMismatch:
                raise           # the other program reads the same records
            except KernelError as exc:
                if mode == "css":
                    raise
                fallback = ("the cgroup iterator with the css task iterator (Linux 6.7+) "
                            f"is not usable here: {exc}")
        return cls(Loaded(lib, obj_file, "task", 1, REC), fallback)

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
            # A tuple: callers sort the list they get, and it must stay in the records' order.
            self._last = (tuple(out), bytes(data))
        return out

    def mm_candidates(self, dying: Iterable[T], pool: Sequence[T]) -> list[T] | None:
        """:func:`mm_candidates` over the last :meth:`read`: the tasks of ``pool``
        kcmp(2) must still look at for sharing an mm with one of ``dying``; None if
        there is no read to go by, or it does not vouch for a dying one."""
        with self.lock:
            last = self._last
        if last is None:
            return None
        made, data = last
        return mm_candidates(made, mm_keys(data), dying, pool)

    def read_raw(self, cgroup_id: int, level: int | None = None, *,
                 path: str | os.PathLike | None = None) -> bytes:
        """The records of :meth:`read`, unparsed."""
        with self.lock:
            if self._s.obj is None:
                raise KernelError("BpfTasks is closed")
            if self.mode == "task":
                self._s.cfg.target_id = cgroup_id
                self._s.cfg.target_level = ANY_LEVEL if level is None else level
                self._s.cfg.read_start = 0      # the program takes the time at its first call
                return self._iterate(self._s.link_fd, True)
            while True:
                link_fd = self._link(cgroup_id, path)
                if link_fd < 0:
                    return b""          # the cgroup is gone
                g = self._s.cfg
                g.count = g.tasks_seen = g.cgroups_seen = g.read_start = 0
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
        fd = self._s.iterator(link_fd)
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
            self._s.detach(old)
        return link[1]

    def _open_cgroup(self, cgroup_id: int, path: str | os.PathLike | None) -> int:
        if path is not None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:   # gone: -1, what _link() expects
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
        new = Loaded(self._s.lib, self._s.obj_file, "css", capacity, REC)
        self._drop_links()
        self._s.close()
        self._s = new

    def forget(self, cgroup_id: int) -> None:
        """Drop the link kept for ``cgroup_id`` (a cgroup removed: the link holds
        it, so until dropped it stays in the kernel as a dying cgroup)."""
        with self.lock:
            link = self._links.pop(cgroup_id, None)
            if link is not None:
                self._s.detach(link[0])

    def _drop_links(self) -> None:
        for link, _ in self._links.values():
            self._s.detach(link)
        self._links.clear()

    def close(self) -> None:
        with self.lock:
            self._last = None
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
