"""Every process of a memory-cgroup subtree in one ``read()``, from a BPF task iterator.

Without BPF an OOM's context costs, per task, a ``pread`` of ``statm`` and of
``oom_score_adj`` through fds kept open (:mod:`.taskcache`, ~3 us), plus a read
of ``cgroup.procs`` per cgroup (~20 us on v1), and two fds per task against
RLIMIT_NOFILE.  Here a task iterator (``SEC("iter/task")``, kernel 5.8+) walks
the kernel's task list and writes one fixed-size record per process of the
subtree (``bpf/tasks.bpf.c`` says what each field mirrors in the kernel); user
space reads them from an iterator fd made fresh for each read
(``bpf_iter_create()``: an iterator fd reads its sequence once) and unpacks
them with :func:`struct.iter_unpack`.  No fd per task, no /proc, no
``cgroup.procs``.

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
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from oomkit.errors import KernelError, NotPermitted
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


class _Config(ctypes.Structure):
    """struct config in tasks.bpf.c: the program's one global variable (its .bss)."""

    _fields_ = [("target_id", ctypes.c_uint64), ("target_level", ctypes.c_uint32),
                ("page_shift", ctypes.c_uint32), ("ns_per_tick", ctypes.c_uint64)]


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
        raise translate(exc, str(path), what="stat cgroup") from exc
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
            ("bpf_map__fd", i, [vp]),
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
_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


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
    for msg in reversed(_log):      # the verifier's own reason: the last line of its log
        if "-- END PROG LOAD LOG --" in msg:
            lines = [ln for ln in msg.split("-- END PROG LOAD LOG --")[0].splitlines()
                     if ln.strip() and not ln.startswith(("processed ", "verification time"))]
            detail = (lines[-1].strip() if lines else detail) + "; " + detail
            break
    text = f"BPF unavailable: {what}: {why}" + (f" (libbpf: {detail})" if detail else "")
    if err in (E.EPERM, E.EACCES):
        return NotPermitted(text + " (needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)", errno=err)
    return KernelError(text, errno=err or None)


class BpfTasks:
    """The task iterator, loaded and attached; :meth:`read` a subtree, :meth:`close` when done."""

    def __init__(self, lib: ctypes.CDLL, obj: int, link: int, link_fd: int, bss: mmap.mmap,
                 cfg: _Config):
        self._lib, self._obj, self._link, self._link_fd = lib, obj, link, link_fd
        self._bss, self._cfg = bss, cfg
        self._make: Callable | None = None
        self._made: dict[bytes, object] = {}    # record -> what read() made of it
        self.lock = threading.Lock()

    @classmethod
    def open(cls, obj_file: str | os.PathLike = OBJECT) -> BpfTasks:
        """Load and attach the iterator; :class:`KernelError` (:class:`NotPermitted`
        for missing privileges) saying why BPF cannot be used here."""
        if not os.path.exists(VMLINUX_BTF):
            raise KernelError(f"BPF unavailable: no kernel BTF ({VMLINUX_BTF}; "
                              "needs CONFIG_DEBUG_INFO_BTF=y)", errno=E.ENOENT, path=VMLINUX_BTF)
        if not os.path.exists(obj_file):
            raise KernelError(f"BPF unavailable: no {obj_file} (build it: make -C {Path(obj_file).parent})",
                              errno=E.ENOENT, path=str(obj_file))
        lib = _libbpf()
        _log.clear()
        lib.libbpf_set_print(ctypes.cast(_keep, ctypes.c_void_p))
        obj = lib.bpf_object__open_file(os.fsencode(obj_file), None)
        if not obj:     # libbpf 1.0+: NULL and errno
            raise _fail(f"open {obj_file}", ctypes.get_errno())
        link = bss = None
        try:
            rc = lib.bpf_object__load(obj)
            if rc < 0:
                raise _fail("load the task iterator", -rc)
            prog = lib.bpf_object__find_program_by_name(obj, b"dump_tasks")
            bss_map = lib.bpf_object__find_map_by_name(obj, b".bss")
            bss_fd = lib.bpf_map__fd(bss_map) if bss_map else -1
            if not prog or bss_fd < 0:
                raise KernelError(f"BPF unavailable: {obj_file} lacks dump_tasks or its globals "
                                  "(rebuild it)", path=str(obj_file))
            # The .bss is a one-element array map created BPF_F_MMAPABLE (5.5+):
            # stores into this shared mapping are what the program reads.
            # (libbpf 1.1 remaps its own image of it only for skeletons.)
            try:
                bss = mmap.mmap(bss_fd, mmap.PAGESIZE, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as exc:
                raise _fail("map the program's globals", exc.errno or 0) from exc
            link = lib.bpf_program__attach_iter(prog, None)
            if not link:
                raise _fail("attach the task iterator", ctypes.get_errno())
            link_fd = lib.bpf_link__fd(link)
        except BaseException:
            if bss is not None:
                bss.close()
            if link:
                lib.bpf_link__destroy(link)
            lib.bpf_object__close(obj)
            raise
        finally:
            lib.libbpf_set_print(None)
        g = _Config.from_buffer(bss)
        g.page_shift = (os.sysconf("SC_PAGE_SIZE")).bit_length() - 1
        g.ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        return cls(lib, obj, link, link_fd, bss, g)

    def read(self, cgroup_id: int, level: int | None = None,
             make: Callable[[int, int, TaskSample], R] | None = None) -> list:
        """(pid, memcg id, sample) of every process whose memory cgroup is the
        one with inode ``cgroup_id`` or below it; ``level`` (its depth, see
        :func:`cgroup_key`) if known spares the program a walk of ancestors.

        With ``make``, ``make(pid, memcg id, sample)`` for each instead (as
        :meth:`TaskCache.scan`).  A process whose record is byte for byte the
        one of an earlier read gets the object made then (it should be
        immutable): a dict hit costs a quarter of unpacking and making one.
        """
        data = self.read_raw(cgroup_id, level)
        with self.lock:
            if make is not self._make:
                self._make, self._made = make, {}
            made, size = self._made, RECORD.size
            keys = [data[i:i + size] for i in range(0, len(data), size)]
            out = list(map(made.get, keys))
            if None in out:
                for i, (k, m) in enumerate(zip(keys, out)):
                    if m is None:
                        (m,) = parse(k)
                        out[i] = made[k] = m if make is None else make(*m)
            if len(made) > 2 * len(keys) + 1024:     # forget records no read returns any more
                self._made = dict(zip(keys, out))
        return out

    def read_raw(self, cgroup_id: int, level: int | None = None) -> bytes:
        """The records of :meth:`read`, unparsed."""
        with self.lock:
            if self._obj is None:
                raise KernelError("BpfTasks is closed")
            self._cfg.target_id = cgroup_id
            self._cfg.target_level = ANY_LEVEL if level is None else level
            fd = self._lib.bpf_iter_create(self._link_fd)
            if fd < 0:
                err = ctypes.get_errno() or -fd
                raise translate(OSError(err, os.strerror(err)), None, what="bpf_iter_create")
            try:
                chunks = []
                while True:
                    chunk = os.read(fd, _READ)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except OSError as exc:
                raise translate(exc, None, what="read the task iterator") from exc
            finally:
                os.close(fd)
        return b"".join(chunks)

    def close(self) -> None:
        with self.lock:
            if self._obj is not None:
                del self._cfg           # it exports the mapping's buffer
                self._bss.close()
                self._lib.bpf_link__destroy(self._link)
                self._lib.bpf_object__close(self._obj)
                self._obj = self._link = None

    def __enter__(self) -> BpfTasks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
