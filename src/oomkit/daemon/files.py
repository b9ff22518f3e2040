"""The one way the daemon replaces a small file of its own (the runtime state,
status.json, the metrics textfile): whole or not at all."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("oomkit")


def replace_file(path: Path, data: bytes, mode: int, tmp_name: str) -> None:
    """Write ``data`` to ``tmp_name`` beside ``path`` (created afresh, never
    through a symlink, ``mode`` whatever the umask), then rename it over
    ``path``.  OSError on failure, with the temporary file removed."""
    tmp = path.with_name(tmp_name)
    try:
        os.unlink(tmp)          # one a killed daemon with our pid left
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError as exc:
            log.debug("oomkit: %s not removed: %s", tmp, exc)
        raise


def remove_file(path: str | Path, what: str) -> None:
    """Remove ``path`` if it is there; a failure is logged (``what`` names it), not raised."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.debug("oomkit: %s %s not removed: %s", what, path, exc)
