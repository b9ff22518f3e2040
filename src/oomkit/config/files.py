"""Reading the files oomkit is told to trust: config files and policy files.

Two rules, both for files a root daemon acts on:

- A config file is read only if it is a regular file, and at most
  ``CONFIG_MAX_BYTES``: a FIFO would block the reader for ever, ``/dev/zero``
  would be read until memory runs out.  The file is opened ``O_NONBLOCK``
  (a FIFO's open() does not wait for a writer) and checked with ``fstat`` on
  that very descriptor.
- Running as root, a config or policy file is refused when someone other
  than root could change it: the file or any directory above it (up to
  ``/``) owned by another user, writable by a group other than root's, or
  writable by every user.  This is sudo's ``sudo_secure_file()``
  (lib/util/secure_path.c: owner, then ``S_IWOTH``, then ``S_IWGRP`` unless
  the group is the expected one) applied to each directory as well, as
  systemd and OpenSSH check the directories above their files: whoever can
  write a directory can replace the file in it.  A sticky directory
  writable by all (``/tmp``) is accepted, because only the owner of an
  entry can replace it there, and that owner is checked next.  When not
  root nothing is refused: a developer's own files are theirs to trust.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from oomkit.errors import ConfigError

CONFIG_MAX_BYTES = 4 << 20      # 4 MiB: a config is a few KiB; a scenario of 10,000 tasks < 1 MiB


def read_config_bytes(path: str | Path, max_bytes: int = CONFIG_MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; ConfigError otherwise."""
    file = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError("no such file", file=file) from None
    except PermissionError:
        raise ConfigError("cannot be read (permission denied)", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot be opened: {exc.strerror}", file=file) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError("is a directory, not a TOML file", file=file)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"is not a regular file (a {_kind(st.st_mode)}); "
                              "only regular files are read", file=file)
        check_trusted_stat(file, st, "config")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise ConfigError(f"is larger than {max_bytes >> 20} MiB; a config file is far smaller",
                              file=file)
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", file=file) from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def check_trusted(path: str | Path, what: str, euid: int | None = None) -> None:
    """ConfigError if running as root (``euid`` 0) and ``path`` or a directory
    above it could be changed by someone other than root."""
    if (os.geteuid() if euid is None else euid) != 0:
        return
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"cannot be checked: {exc.strerror}", file=str(path)) from None
    check_trusted_stat(str(path), st, what, euid=0)


def check_trusted_stat(path: str, st: os.stat_result, what: str, euid: int | None = None) -> None:
    """:func:`check_trusted`, the file's own ``stat`` already taken (from its fd)."""
    if (os.geteuid() if euid is None else euid) != 0:
        return
    why = insecure(st, path) or _insecure_parents(path)
    if why:
        raise ConfigError(f"refusing to trust this {what} as root: {why}", file=path,
                          hint="make it and every directory above it owned by root and not "
                               "writable by group or others: chown root, chmod go-w")


def insecure(st: os.stat_result, path: str) -> str | None:
    """Why an inode may be changed by someone other than root, or None (pure)."""
    if st.st_uid != 0:
        return f"{path} is owned by uid {st.st_uid}"
    if stat.S_ISLNK(st.st_mode):
        return None                 # a symlink's mode means nothing; its owner and directory do
    sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    if st.st_mode & stat.S_IWOTH and not sticky_dir:
        return f"{path} is writable by every user (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0 and not sticky_dir:
        return f"{path} is writable by group {st.st_gid} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _insecure_parents(path: str) -> str | None:
    """The first directory above ``path`` (as written, and as resolved through
    symlinks) that someone other than root could change, or a symlink on the
    way that is not root's."""
    lexical = Path(os.path.abspath(path))
    real = Path(os.path.realpath(path))
    seen: set[str] = set()
    for chain, look in ((_above(lexical), os.lstat), ([lexical], os.lstat), (_above(real), os.stat)):
        for p in chain:
            if str(p) in seen:
                continue
            seen.add(str(p))
            try:
                st = look(p)
            except OSError as exc:
                return f"{p} cannot be checked: {exc.strerror}"
            if p == lexical and not stat.S_ISLNK(st.st_mode):
                continue                # the file itself: checked by the caller
            why = insecure(st, str(p))
            if why:
                return why
    return None


def _above(path: Path) -> list[Path]:
    """The directories above ``path``, from ``/`` down."""
    return list(reversed(path.parents))


def open_log(path: str | Path):
    """The log, opened for reading if it is a regular file (not a FIFO that would
    block forever, nor /dev/zero that never ends)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", file=str(path)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError("cannot be read: not a regular file", file=str(path))
    return open(fd, "rb")
