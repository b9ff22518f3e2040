"""A memory cgroup hierarchy (v1 or v2) seen through its files under a mount root.

Cgroup names are strings relative to the mount, "/" being the root and
"/batch/job1" a descendant, the way /proc/PID/cgroup prints them.  Every file
access goes through :meth:`CgroupFS.read`/:meth:`CgroupFS.write`, which turn
OS errors into :mod:`oomkit.errors` exceptions (ENOENT/ENODEV ->
:class:`CgroupGone`).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from oomkit.errors import CgroupGone, KernelError
from oomkit.linux import parse
from oomkit.linux._oserror import os_errors, translate

log = logging.getLogger("oomkit")

V1, V2 = "v1", "v2"

# File names per version (Documentation/admin-guide/cgroup-v1/memory.rst,
# Documentation/admin-guide/cgroup-v2.rst).
_USAGE = {V1: "memory.usage_in_bytes", V2: "memory.current"}
_LIMIT = {V1: "memory.limit_in_bytes", V2: "memory.max"}


class CgroupFS:
    """One mounted memory cgroup hierarchy; ``version`` is "v1" or "v2"."""

    def __init__(self, mount: str | os.PathLike, version: str):
        if version not in (V1, V2):
            raise ValueError(f"cgroup version must be 'v1' or 'v2', not {version!r}")
        self.mount = Path(mount)
        self.version = version
        self._dirs: dict[str, str] = {}     # cgroup -> its directory, validated once

    def __repr__(self) -> str:
        return f"CgroupFS({str(self.mount)!r}, {self.version!r})"

    # --- paths and raw files ---------------------------------------------

    def path(self, cg: str, name: str | None = None) -> Path:
        """The filesystem path of cgroup ``cg`` (or of its file ``name``).

        Refuses "." and ".." components so no name can leave the mount.
        """
        parts = [p for p in cg.split("/") if p]
        if not cg.startswith("/") or any(p in (".", "..") for p in parts):
            raise ValueError(f"cgroup path must be absolute below the mount: {cg!r}")
        if name is not None and ("/" in name or name in (".", "..")):
            raise ValueError(f"not a cgroup file name: {name!r}")
        base = self.mount.joinpath(*parts)
        return base / name if name else base

    def read(self, cg: str, name: str) -> str:
        # Raw os calls on a cached string path: reading a cgroup's files during
        # an OOM, Path objects and text file objects cost more than the reads.
        if "/" in name or name in (".", ".."):
            raise ValueError(f"not a cgroup file name: {name!r}")
        path = self._dir(cg) + "/" + name
        try:
            return _read_bytes(path).decode("utf-8", "surrogateescape")
        except OSError as exc:
            raise translate(exc, path, CgroupGone, "read") from exc

    def _dir(self, cg: str) -> str:
        d = self._dirs.get(cg)
        if d is None:
            if len(self._dirs) >= 65536:     # cgroups come and go: stay bounded
                self._dirs.clear()
            d = self._dirs[cg] = str(self.path(cg))
        return d

    def write(self, cg: str, name: str, text: str) -> None:
        """Write ``text`` with one write(2): cgroupfs files take one value per write.

        O_TRUNC is what ``echo > file`` does; kernfs ignores it, and a plain
        file in a test tree then holds just the last value.
        """
        path = self.path(cg, name)
        with os_errors(str(path), CgroupGone, f"write {text.strip()!r} to"):
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)

    def open(self, cg: str, name: str, flags: int = os.O_RDONLY) -> int:
        """A raw fd on a cgroup file (for eventfd and PSI registration); caller closes it."""
        path = self.path(cg, name)
        with os_errors(str(path), CgroupGone, "open"):
            return os.open(path, flags | os.O_CLOEXEC)

    # --- the tree ----------------------------------------------------------

    def exists(self, cg: str) -> bool:
        return self.path(cg).is_dir()

    def children(self, cg: str) -> list[str]:
        """Child cgroups, sorted; the control files are the only non-directories."""
        path = self.path(cg)
        with os_errors(str(path), CgroupGone, "list"):
            with os.scandir(path) as it:
                names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        return [_join(cg, n) for n in names]

    def walk(self, cg: str = "/") -> Iterator[str]:
        """``cg`` and its descendants, pre-order; a child removed meanwhile is skipped."""
        for name, _dir, _ino in self._tree(cg):
            yield name

    def subtree_procs(self, cg: str) -> list[tuple[str, list[int]]]:
        """(cgroup, its ``cgroup.procs``) for ``cg`` and every cgroup below it,
        pre-order; one removed meanwhile is skipped.  The same as :meth:`walk`
        plus :meth:`procs`, on plain string paths with raw ``os`` calls: during
        an OOM in a subtree of 1,000 memcgs, ``Path`` objects and text file
        objects cost half the time."""
        out = []
        for name, d, _ino in self._tree(cg):
            try:
                pids = parse.pids(_read_bytes(d + "/cgroup.procs"))
            except OSError as exc:     # no context manager per cgroup: this is the hot loop
                err = translate(exc, d + "/cgroup.procs", CgroupGone, "read")
                if isinstance(err, CgroupGone):
                    log.debug("oomkit: %s removed while its tasks were read: skipped", name)
                    continue
                raise err from exc
            out.append((name, pids))
        return out

    def cgroup_ids(self, cg: str) -> dict[int, str]:
        """{id: cgroup} for ``cg`` and every cgroup below it, where the id is the
        directory's inode number: the kernfs node id on 64-bit (fs/kernfs/inode.c
        ``kernfs_init_inode``), what a BPF program reads as ``cgroup->kn->id``."""
        out = {}
        for name, d, ino in self._tree(cg):
            if not ino:                # the top: its parent's listing was not read
                try:
                    ino = os.stat(d).st_ino
                except OSError as exc:
                    err = translate(exc, d, CgroupGone, "stat")
                    if isinstance(err, CgroupGone):
                        log.debug("oomkit: %s removed before its ids were read: none", name)
                        return {}
                    raise err from exc
            out[ino] = name
        return out

    def _tree(self, cg: str) -> Iterator[tuple[str, str, int]]:
        """(cgroup, its directory, its inode) for ``cg`` and every cgroup below
        it, pre-order, children sorted by name; the inode comes from the
        parent's listing (0 for ``cg`` itself).  A cgroup removed meanwhile
        ends its branch.  A leaf is not listed: kernfs keeps a directory's link
        count at 2 + its subdirectories (fs/kernfs/inode.c
        ``kernfs_refresh_inode``), as tmpfs and ext4 do, and listing a v1
        memcg's thirty-odd files costs ten times the ``stat`` that tells."""
        stack = [(cg, str(self.path(cg)), 0, False)]      # validated once, at the top
        while stack:
            name, d, ino, leaf = stack.pop()
            yield name, d, ino
            if leaf:
                continue
            try:
                kids = _subdirs(d)
            except CgroupGone:
                log.debug("oomkit: %s removed while the tree was walked: its branch ends", name)
                continue
            prefix = "" if name == "/" else name
            stack.extend((f"{prefix}/{n}", f"{d}/{n}", i, nlink == 2) for n, nlink, i in reversed(kids))

    def procs(self, cg: str) -> list[int]:
        """The thread-group ids in ``cgroup.procs`` (not sorted or unique: see cgroup-v1/cgroups.rst)."""
        return parse.pids(self.read(cg, "cgroup.procs"))

    def attach(self, cg: str, pid: int) -> None:
        """Move process ``pid`` (all its threads) into ``cg`` by writing ``cgroup.procs``."""
        self.write(cg, "cgroup.procs", f"{pid}\n")

    def mkdir(self, cg: str) -> None:
        path = self.path(cg)
        with os_errors(str(path), CgroupGone, "mkdir"):
            os.mkdir(path)

    def rmdir(self, cg: str) -> None:
        """Remove an empty cgroup; EBUSY (tasks or children left) is a KernelError."""
        if cg.strip("/") == "":
            raise ValueError("refusing to remove the root cgroup")
        path = self.path(cg)
        with os_errors(str(path), CgroupGone, "rmdir"):
            os.rmdir(path)

    # --- typed helpers -----------------------------------------------------

    def usage(self, cg: str) -> int:
        """Bytes charged: v1 memory.usage_in_bytes, v2 memory.current."""
        return parse.int_value(self.read(cg, _USAGE[self.version]))

    def limit(self, cg: str) -> int | None:
        """The hard limit in bytes (v1 memory.limit_in_bytes, v2 memory.max); None is unlimited."""
        text = self.read(cg, _LIMIT[self.version])
        return parse.limit_v1(text) if self.version == V1 else parse.limit_v2(text)

    def set_limit(self, cg: str, limit: int | None) -> None:
        """Set the hard limit; None removes it ("-1" in v1, "max" in v2).

        The kernel rounds down to whole pages.  In v1 a limit below the
        current usage makes the kernel reclaim first and fail with EBUSY
        (mm/memcontrol-v1.c mem_cgroup_resize_max); v2 reclaims, then OOM-kills.
        """
        if limit is None:
            text = "-1" if self.version == V1 else "max"
        else:
            text = str(int(limit))
        self.write(cg, _LIMIT[self.version], text + "\n")

    def oom_control(self, cg: str) -> dict:
        """v1 memory.oom_control: {oom_kill_disable, under_oom, oom_kill}."""
        self._need(V1, "memory.oom_control")
        return parse.oom_control(self.read(cg, "memory.oom_control"))

    def set_oom_kill_disable(self, cg: str, disable: bool) -> None:
        """v1: 1 pauses the memcg's OOMing tasks for userspace; 0 hands the OOM back at once.

        The root memcg refuses (EINVAL): see memory.rst section 10.
        """
        self._need(V1, "memory.oom_control")
        self.write(cg, "memory.oom_control", "1\n" if disable else "0\n")

    def events(self, cg: str, local: bool = False) -> dict[str, int]:
        """OOM-related counters.

        v2: memory.events (or memory.events.local): low, high, max, oom,
        oom_kill, oom_group_kill.  v1 has no such file; we return what it
        has: ``oom_kill`` (memory.oom_control, counted in the victim's own
        memcg only) and ``failcnt`` (memory.failcnt, times the limit was hit),
        also given as ``max``, the v2 counter nearest to it.
        """
        if self.version == V2:
            return parse.flat_keyed(self.read(cg, "memory.events.local" if local else "memory.events"))
        failcnt = parse.int_value(self.read(cg, "memory.failcnt"))
        return {"oom_kill": self.oom_control(cg)["oom_kill"], "failcnt": failcnt, "max": failcnt}

    def oom_group(self, cg: str) -> bool:
        """v2 memory.oom.group (kill the whole cgroup on OOM); v1 has none, so False."""
        if self.version == V1:
            return False
        return bool(parse.int_value(self.read(cg, "memory.oom.group")))

    def stat(self, cg: str) -> dict[str, int]:
        """memory.stat as a dict (v1 keys: rss, cache, total_*...; v2: anon, file...)."""
        return parse.flat_keyed(self.read(cg, "memory.stat"))

    def memory_stat(self, cg: str, swap: int | None = None) -> dict[str, int]:
        """memory.stat of ``cg``'s subtree in one vocabulary for v1 and v2
        (:func:`oomkit.linux.parse.memory_stat`; ``swap``: v2's memory.swap.current)."""
        return parse.memory_stat(self.read(cg, "memory.stat"), self.version, swap)

    def _need(self, version: str, what: str) -> None:
        if self.version != version:
            raise KernelError(f"{what} exists only in cgroup {version}", errno=errno.EOPNOTSUPP,
                              path=str(self.mount))


def _read_bytes(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        # A seq_file read fills the buffer but for the record that does not fit
        # (fs/seq_file.c seq_read_iter), and a cgroup file's records are short
        # lines: a read this short was the end, no second read(2) needed.
        if len(chunks[0]) <= 65536 - 4096:
            return chunks[0]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return b"".join(chunks)


def _join(cg: str, name: str) -> str:
    return ("" if cg == "/" else cg.rstrip("/")) + "/" + name


# --- finding the hierarchy ------------------------------------------------

def detect(cgroup: str = "auto", mount: str | os.PathLike | None = None,
           proc_root: str | os.PathLike = "/proc") -> tuple[str, Path]:
    """Which hierarchy holds the memory controller: ("v1"|"v2", mount path).

    v1: a ``cgroup`` mount with the ``memory`` option.  v2: a ``cgroup2``
    mount whose root ``cgroup.controllers`` lists ``memory`` (a controller
    lives in one hierarchy at a time, so at most one of the two matches).
    ``cgroup`` narrows to one version; ``mount`` checks a given mount point.
    Raises KernelError (ENOENT) when nothing fits.
    """
    if cgroup not in ("auto", V1, V2):
        raise ValueError(f"cgroup must be 'auto', 'v1' or 'v2', not {cgroup!r}")
    mounts_path = Path(proc_root) / "self" / "mounts"
    with os_errors(str(mounts_path), KernelError, "read"):
        table = parse.mounts(mounts_path.read_text())
    found: list[tuple[str, Path]] = []
    for _source, target, fstype, opts in table:
        if mount is not None and Path(target) != Path(mount):
            continue
        if fstype == "cgroup" and "memory" in opts:
            found.append((V1, Path(target)))
        elif fstype == "cgroup2" and _v2_has_memory(Path(target)):
            found.append((V2, Path(target)))
    for version, found_at in found:
        if cgroup in ("auto", version):
            return version, found_at
    want = "cgroup v1 or v2" if cgroup == "auto" else f"cgroup {cgroup}"
    where = f" at {mount}" if mount is not None else ""
    raise KernelError(f"no {want} hierarchy with the memory controller is mounted{where} "
                      f"(looked in {mounts_path})", errno=errno.ENOENT, path=str(mounts_path))


def _v2_has_memory(mount: Path) -> bool:
    try:
        return "memory" in (mount / "cgroup.controllers").read_text().split()
    except OSError as exc:
        log.debug("oomkit: %s/cgroup.controllers unreadable (%s): taken as no memory controller",
                  mount, exc)
        return False


def _subdirs(d: str) -> list[tuple[str, int, int]]:
    """(name, link count, inode) of each subdirectory of ``d``, sorted by name;
    link count 0 (unknown) for one removed meanwhile."""
    with os_errors(d, CgroupGone, "list"):
        with os.scandir(d) as it:
            return sorted((e.name, _nlink(e), e.inode()) for e in it if e.is_dir(follow_symlinks=False))


def _nlink(entry: os.DirEntry) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_nlink
    except OSError:     # removed meanwhile: 0 is "unknown", as the caller's contract says
        return 0
