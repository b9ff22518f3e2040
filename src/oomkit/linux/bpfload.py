"""Loading ``bpf/tasks.bpf.o`` through libbpf: the ctypes bindings, the object's
programs, maps and links.  What the records say is :mod:`.bpftasks`' business.

Loaded through ctypes over libbpf.so.1 (no new Python dependency); the program
is CO-RE (compiled once, relocated by libbpf against the running kernel's BTF,
``/sys/kernel/btf/vmlinux``), so one ``tasks.bpf.o`` (built by
``bpf/Makefile``, shipped as package data) serves every kernel with BTF.

The structs that user space and the programs share (the records, struct rec;
the globals, struct config) are checked against the object's own BTF before it
is loaded (:func:`layout_mismatches`): an object built from a changed
``tasks.bpf.c`` is refused with the difference named, instead of being read
with the wrong offsets.
"""

from __future__ import annotations

import ctypes
import errno as E
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from oomkit.errors import KernelError, NotPermitted
from oomkit.linux._oserror import translate

OBJECT = Path(__file__).with_name("bpf") / "tasks.bpf.o"
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
LIBBPF = "libbpf.so.1"
BPF_CGROUP_ITER_DESCENDANTS_PRE = 2
BTF_KIND_STRUCT = 4     # include/uapi/linux/btf.h


@dataclass(frozen=True)
class Layout:
    """A C struct of the object as Python reads it: its name in the object's
    BTF, its size, and its members in order, name -> (byte offset, size)."""

    name: str
    size: int
    members: dict[str, tuple[int, int]]

    @classmethod
    def packed(cls, name: str, formats: dict[str, str]) -> Layout:
        """The layout that ``struct.Struct("<" + "".join(formats.values()))``
        unpacks: packed ("<": no padding), so each member's offset is the sum of
        the sizes before it."""
        members, offset = {}, 0
        for member, fmt in formats.items():
            size = struct.calcsize("<" + fmt)
            members[member] = (offset, size)
            offset += size
        return cls(name, offset, members)

    @classmethod
    def of(cls, name: str, ctype: type[ctypes.Structure]) -> Layout:
        """The layout of a ctypes structure (native alignment, as it maps the globals)."""
        fields = [getattr(ctype, f[0]) for f in ctype._fields_]
        return cls(name, ctypes.sizeof(ctype),
                   {f[0]: (d.offset, d.size) for f, d in zip(ctype._fields_, fields, strict=True)})


class LayoutMismatch(KernelError):
    """The object's structs are not what oomkit reads: another build of tasks.bpf.c."""


class _Config(ctypes.Structure):
    """struct config in tasks.bpf.c: the programs' one global variable (their .bss)."""

    _fields_ = [("target_id", ctypes.c_uint64), ("target_level", ctypes.c_uint32),
                ("page_shift", ctypes.c_uint32), ("ns_per_tick", ctypes.c_uint64),
                ("count", ctypes.c_uint64), ("tasks_seen", ctypes.c_uint64),
                ("cgroups_seen", ctypes.c_uint64), ("top_level", ctypes.c_uint32),
                ("pad", ctypes.c_uint32), ("read_start", ctypes.c_uint64),
                ("mm_cookie", ctypes.c_uint64)]


CONFIG = Layout.of("config", _Config)


class _CgroupLinkInfo(ctypes.Structure):
    """union bpf_iter_link_info's cgroup member (include/uapi/linux/bpf.h, 6.1+); 16 bytes,
    the size of the union."""

    _fields_ = [("order", ctypes.c_uint32), ("cgroup_fd", ctypes.c_uint32),
                ("cgroup_id", ctypes.c_uint64)]


class _IterAttachOpts(ctypes.Structure):
    """struct bpf_iter_attach_opts (libbpf.h)."""

    _fields_ = [("sz", ctypes.c_size_t), ("link_info", ctypes.c_void_p),
                ("link_info_len", ctypes.c_uint32)]


class _BtfType(ctypes.Structure):
    """struct btf_type (include/uapi/linux/btf.h); a struct's ``vlen`` members follow it."""

    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32),
                ("size", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    """struct btf_member: with the struct's kind_flag, ``offset`` holds the bitfield
    size in its top 8 bits and the bit offset in the low 24."""

    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32),
                ("offset", ctypes.c_uint32)]


def libbpf() -> ctypes.CDLL:
    """libbpf.so.1 with the signatures used here, or a KernelError saying how to get it."""
    try:
        lib = ctypes.CDLL(LIBBPF, use_errno=True)
    except OSError as exc:
        raise KernelError(f"BPF unavailable: cannot load {LIBBPF} ({exc}); "
                          "install libbpf1 (Debian) or libbpf (Fedora)") from exc
    vp, cp, i, u32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32
    for name, res, args in (
            ("bpf_object__open_file", vp, [cp, vp]),
            ("bpf_object__load", i, [vp]),
            ("bpf_object__close", None, [vp]),
            ("bpf_object__btf", vp, [vp]),
            ("bpf_object__find_program_by_name", vp, [vp, cp]),
            ("bpf_object__find_map_by_name", vp, [vp, cp]),
            ("bpf_object__next_program", vp, [vp, vp]),
            ("bpf_program__name", cp, [vp]),
            ("bpf_program__set_autoload", i, [vp, ctypes.c_bool]),
            ("bpf_map__fd", i, [vp]),
            ("bpf_map__set_max_entries", i, [vp, u32]),
            ("bpf_program__attach_iter", vp, [vp, vp]),
            ("bpf_link__fd", i, [vp]),
            ("bpf_link__destroy", i, [vp]),
            ("bpf_iter_create", i, [i]),
            ("btf__find_by_name_kind", ctypes.c_int32, [vp, cp, u32]),
            ("btf__type_by_id", vp, [vp, u32]),
            ("btf__name_by_offset", cp, [vp, u32]),
            ("btf__resolve_size", ctypes.c_int64, [vp, u32]),
            ("libbpf_set_print", vp, [vp])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def preflight(obj_file: str | os.PathLike) -> ctypes.CDLL:
    """libbpf, once the kernel's BTF and the object are known to be there."""
    if not os.path.exists(VMLINUX_BTF):
        raise KernelError(f"BPF unavailable: no kernel BTF ({VMLINUX_BTF}; "
                          "needs CONFIG_DEBUG_INFO_BTF=y)", errno=E.ENOENT, path=VMLINUX_BTF)
    if not os.path.exists(obj_file):
        raise KernelError(f"BPF unavailable: no {obj_file} (build it: make -C {Path(obj_file).parent})",
                          errno=E.ENOENT, path=str(obj_file))
    return libbpf()


# libbpf's messages (why a load failed) are kept, not printed: the last few go
# into the error.  Its print callback gets a va_list, which on x86-64 and arm64
# Linux is passed as a pointer, so vsnprintf can format it.
_PRINT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_log: list[str] = []
_libc = ctypes.CDLL(None, use_errno=True)
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


# -- the layout check: the object's BTF against what Python reads --------------

def _btf_struct(lib: ctypes.CDLL, btf: int, name: str) -> tuple[int, dict[str, tuple[int, int]]] | None:
    """(size, member name -> (byte offset, size)) of ``struct name`` in ``btf``,
    None if it has none; a bitfield member's offset is -1 (never what we expect)."""
    type_id = lib.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_STRUCT)
    if type_id < 0:
        return None
    addr = lib.btf__type_by_id(btf, type_id)
    t = _BtfType.from_address(addr)
    vlen, kind_flag = t.info & 0xFFFF, t.info >> 31
    members = (_BtfMember * vlen).from_address(addr + ctypes.sizeof(_BtfType))
    out = {}
    for m in members:
        bits, bitfield = (m.offset & 0xFFFFFF, m.offset >> 24) if kind_flag else (m.offset, 0)
        name_m = (lib.btf__name_by_offset(btf, m.name_off) or b"").decode(errors="replace")
        offset = bits // 8 if bits % 8 == 0 and not bitfield else -1
        out[name_m] = (offset, int(lib.btf__resolve_size(btf, m.type)))
    return t.size, out


def layout_mismatches(lib: ctypes.CDLL, obj: int, layouts: tuple[Layout, ...]) -> list[str]:
    """How the structs of the opened object ``obj`` differ from ``layouts`` (empty: they match)."""
    btf = lib.bpf_object__btf(obj)
    if not btf:
        return ["it has no BTF"]
    diffs = []
    for want in layouts:
        found = _btf_struct(lib, btf, want.name)
        if found is None:
            diffs.append(f"no struct {want.name}")
            continue
        size, members = found
        where = f"struct {want.name}"
        if size != want.size:
            diffs.append(f"{where} is {size} bytes, oomkit reads {want.size}")
        for member, (offset, msize) in want.members.items():
            if member not in members:
                diffs.append(f"{where} has no member {member!r}")
            elif members[member][0] != offset:
                at = members[member][0]
                diffs.append(f"{where}.{member} is at byte {at if at >= 0 else '(a bitfield)'}, "
                             f"oomkit reads it at {offset}")
            elif members[member][1] != msize:
                diffs.append(f"{where}.{member} is {members[member][1]} bytes, oomkit reads {msize}")
        diffs += [f"{where} has member {m!r}, which oomkit does not read"
                  for m in members if m not in want.members]
    return diffs


def _check(lib: ctypes.CDLL, obj: int, obj_file: str | os.PathLike, layouts: tuple[Layout, ...]) -> None:
    diffs = layout_mismatches(lib, obj, layouts)
    if diffs:
        raise LayoutMismatch(f"BPF unavailable: {obj_file} does not match this oomkit "
                             f"({'; '.join(diffs)}): rebuild it from its tasks.bpf.c "
                             f"(make -B -C {Path(obj_file).parent})", path=str(obj_file))


def check_object(obj_file: str | os.PathLike, layouts: tuple[Layout, ...]) -> None:
    """Open ``obj_file`` (no privileges needed: nothing reaches the kernel), and
    raise :class:`LayoutMismatch` if its structs are not ``layouts``."""
    lib = libbpf()
    obj = lib.bpf_object__open_file(os.fsencode(obj_file), None)
    if not obj:
        raise _fail(f"open {obj_file}", ctypes.get_errno())
    try:
        _check(lib, obj, obj_file, layouts)
    finally:
        lib.bpf_object__close(obj)


class Loaded:
    """One program of the object, loaded: the object, its globals (:attr:`cfg`,
    mapped), and for "css" the records' array map (:attr:`recs`, mapped), for
    "task" its one link (:attr:`link_fd`).  ``record`` is the layout of one
    record, checked against the object's BTF with the globals' before loading."""

    def __init__(self, lib: ctypes.CDLL, obj_file: str | os.PathLike, mode: str, capacity: int,
                 record: Layout):
        self.lib, self.obj_file, self.mode, self.capacity = lib, obj_file, mode, capacity
        self.record = record
        self.obj: int | None = None
        self.link: int | None = None
        self.bss: mmap.mmap | None = None     # the globals, mapped; cfg is a view of them
        self.recs: mmap.mmap | None = None
        self.link_fd = -1
        _log.clear()
        lib.libbpf_set_print(ctypes.cast(_keep, ctypes.c_void_p))
        try:
            self.obj = lib.bpf_object__open_file(os.fsencode(obj_file), None)
            if not self.obj:    # libbpf 1.0+: NULL and errno
                raise _fail(f"open {obj_file}", ctypes.get_errno())
            _check(lib, self.obj, obj_file, (record, CONFIG))
            bss = self._load()
        except BaseException:
            self.close()
            raise
        finally:
            lib.libbpf_set_print(None)
        g = self.cfg = _Config.from_buffer(bss)
        g.page_shift = (os.sysconf("SC_PAGE_SIZE")).bit_length() - 1
        g.ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        # The records' mm_key is the mm's address xor this: equal for equal mms,
        # and no kernel address in our memory (or in what prints it by mistake).
        g.mm_cookie = int.from_bytes(os.urandom(8), "little")

    def _load(self) -> mmap.mmap:
        """Load the program of :attr:`mode` and map its maps; the globals' mapping."""
        lib, obj_file, mode = self.lib, self.obj_file, self.mode
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
            lib.bpf_map__set_max_entries(recs, self.capacity if mode == "css" else 1)
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
        bss = self.bss = self._map(bss_fd, mmap.PAGESIZE, "the program's globals")
        if mode == "css":
            size = -(-self.capacity * self.record.size // mmap.PAGESIZE) * mmap.PAGESIZE
            self.recs = self._map(lib.bpf_map__fd(recs), size, "the records' map")
        else:
            self.link = lib.bpf_program__attach_iter(prog, None)
            if not self.link:
                raise _fail("attach the task iterator", ctypes.get_errno())
            self.link_fd = lib.bpf_link__fd(self.link)
        return bss

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

    def detach(self, link: int) -> None:
        """Destroy a link :meth:`attach` made."""
        self.lib.bpf_link__destroy(link)

    def iterator(self, link_fd: int) -> int:
        """A fresh iterator fd of the link ``link_fd`` (an iterator fd reads its sequence once)."""
        fd = self.lib.bpf_iter_create(link_fd)
        if fd < 0:
            err = ctypes.get_errno() or -fd
            raise translate(OSError(err, os.strerror(err)), None, what="bpf_iter_create")
        return fd

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
