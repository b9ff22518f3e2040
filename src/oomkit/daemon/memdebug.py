"""An off-by-default look at the daemon's own memory, to tell a leak from a cache.

With ``OOMKIT_TRACEMALLOC=DIR`` in its environment the daemon starts
:mod:`tracemalloc` (``OOMKIT_TRACEMALLOC_FRAMES`` frames per traceback, 16 by
default; 0: not started, the JSON only) before it builds anything, and on
SIGUSR2 and at exit writes ``DIR/heap-PID-N.pickle`` (a
``tracemalloc.Snapshot``: ``Snapshot.load()``, then ``compare_to()`` another
one by ``"traceback"`` or ``"lineno"``) and ``DIR/heap-PID-N.json``: the OOMs
recorded so far, VmRSS and RssAnon, the Python heap tracemalloc traces (now,
and its peak since the dump before), gc's objects (containers) by type,
pymalloc's arenas (not under tracemalloc, whose hooks replace pymalloc's) and
glibc's heap (in use and free).

How to read them: the daemon is ``mlockall``'d (``main.lock_memory``), so a
page it touched stays resident until it is unmapped, and glibc cannot hand
back the free pages inside its heap (``malloc_trim``'s ``MADV_DONTNEED`` is
refused on ``VM_LOCKED`` memory, mm/madvise.c; only the heap's top is given
back): VmRSS is the high-water mark of the heaps.  VmRSS growing in steps
while what is in use (pymalloc's blocks, glibc's ``uordblks``, the traced
heap) stays flat is a bigger peak than before, not a leak; a traced line
that grows with the OOMs is one.

Without the variable nothing here runs and nothing is traced (tracemalloc
costs about twice the allocation time and a few MiB), and SIGUSR2 only logs
that the dumps are off.  The dumps are written
from the daemon's loop, never from the signal handler, each file whole
(:func:`oomkit.daemon.files.replace_file`: no symlink followed) in a
directory the daemon creates 0700 if it is not there.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import logging
import os
import pickle
import re
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path
from typing import Any

from oomkit.daemon.files import replace_file

log = logging.getLogger("oomkit")

ENV = "OOMKIT_TRACEMALLOC"
ENV_FRAMES = "OOMKIT_TRACEMALLOC_FRAMES"


class HeapDumps:
    """Dumps of the heap into one directory, numbered from 0."""

    def __init__(self, directory: str, frames: int = 16):
        self.dir = Path(directory)
        self.n = 0
        if frames > 0 and not tracemalloc.is_tracing():
            tracemalloc.start(frames)

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ[str] = os.environ) -> HeapDumps | None:
        directory = environ.get(ENV)
        if not directory:
            return None
        try:
            frames = int(environ.get(ENV_FRAMES, "16"))
        except ValueError:
            frames = 16
        return cls(directory, frames)

    def dump(self, ooms: int) -> Path | None:
        """Write the next pair of files; the JSON's path, or None (said why)."""
        snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        doc = stats(ooms)
        name = f"heap-{os.getpid()}-{self.n}"
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            if snapshot is not None:    # first: the JSON says the pair is whole
                replace_file(self.dir / f"{name}.pickle", pickle.dumps(snapshot), 0o600,
                             f".{name}.pickle.tmp")
            replace_file(self.dir / f"{name}.json", json.dumps(doc, indent=1).encode(), 0o600,
                         f".{name}.json.tmp")
        except OSError as exc:
            log.warning("oomkit: heap dump %s not written: %s", self.dir / name, exc)
            return None
        log.info("oomkit: heap dump %s: %d OOMs, traced %.1f MiB, VmRSS %.1f MiB", self.dir / name,
                 ooms, doc["traced"] / 2**20, doc["rss"] / 2**20)
        self.n += 1
        return self.dir / f"{name}.json"


def stats(ooms: int) -> dict[str, Any]:
    """What the JSON dump holds (also without tracemalloc: its figures are then 0)."""
    gc.collect()
    traced, peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()        # the next dump's peak is that of the time between the two
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    vm = vm_status()
    return {"ooms": ooms, "rss": vm.get("VmRSS", 0), "rss_anon": vm.get("RssAnon", 0),
            "traced": traced, "traced_peak": peak, "tracemalloc_self": tracemalloc.get_tracemalloc_memory(),
            "threads": threading.active_count(),
            "gc_objects": sum(counts.values()), "blocks": sys.getallocatedblocks(),
            "pymalloc": pymalloc_arenas(), "glibc": mallinfo(),
            "types": dict(counts.most_common())}


def vm_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def mallinfo() -> dict[str, int]:
    """glibc's heap (mallinfo2, glibc 2.33+): ``arena`` bytes from the system
    (sbrk'd and the threads' arenas), ``uordblks`` in use, ``fordblks`` free
    but kept, ``hblkhd`` in mmap'd chunks; {} elsewhere."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError) as exc:
        log.debug("oomkit: no mallinfo2 (%s)", exc)
        return {}
    fn.restype = _Mallinfo2
    info = fn()
    return {name: int(getattr(info, name)) for name in ("arena", "hblkhd", "uordblks", "fordblks", "keepcost")}


_ARENAS = re.compile(rb"^# (arenas allocated total|arenas reclaimed|arenas highwater mark|arenas allocated current"
                     rb"|bytes in allocated blocks|bytes in available blocks)\s*=\s*([\d,]+)", re.M)
_TOTAL = re.compile(rb"^Total\s*=\s*([\d,]+)", re.M)


def pymalloc_arenas() -> dict[str, int]:
    """pymalloc's arenas (``sys._debugmallocstats``, which prints to the C
    stderr: it is sent to a temporary file meanwhile, the logging handlers held
    so that no line of the daemon's goes there)."""
    handlers = [h for lg in (logging.getLogger(), log) for h in lg.handlers]
    for h in handlers:
        h.acquire()
    try:
        with tempfile.TemporaryFile() as tmp:
            sys.stderr.flush()
            saved = os.dup(2)
            try:
                os.dup2(tmp.fileno(), 2)
                sys._debugmallocstats()
                ctypes.CDLL(None).fflush(None)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            text = tmp.read()
    finally:
        for h in reversed(handlers):
            h.release()
    out = {m.group(1).decode().replace(" ", "_"): int(m.group(2).replace(b",", b"")) for m in _ARENAS.finditer(text)}
    total = _TOTAL.search(text)     # the first Total: the arenas' bytes
    if total:
        out["arena_bytes"] = int(total.group(1).replace(b",", b""))
    return out
