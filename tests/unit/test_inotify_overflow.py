"""Issue 10 item 9: when the inotify queue overflows (``IN_Q_OVERFLOW``: the
kernel dropped events, e.g. a burst of new cgroups past max_queued_events),
the daemon matches the whole tree again, and the v2 stack looks at every
managed memcg.  The overflow is fed as the kernel writes it (struct
inotify_event, wd -1, no name) through the parser the daemon reads with; the
machine-global max_queued_events is left alone."""

from __future__ import annotations

import struct

from oomkit.backends.cgroup_v2 import V2Stack
from oomkit.daemon.main import Daemon
from oomkit.linux import notify, parse

EVENT = struct.Struct("iIII")


def raw(wd: int, mask: int, name: bytes = b"") -> bytes:
    padded = name.ljust((len(name) // 16 + 1) * 16, b"\0") if name else b""   # NUL-terminated, padded
    return EVENT.pack(wd, mask, 0, len(padded)) + padded


class FakeInotify:
    def __init__(self, *chunks: bytes):
        self.buf = b"".join(chunks)

    def read(self):
        buf, self.buf = self.buf, b""
        return parse.inotify_events(buf)


def daemon_with(inotify: FakeInotify, watches: dict[int, str]) -> tuple[Daemon, list[int]]:
    d = Daemon.__new__(Daemon)          # no kernel: only the inotify dispatch is under test
    d.inotify, d.watches = inotify, dict(watches)
    calls: list[int] = []
    d.reconcile = lambda: calls.append(1)       # type: ignore[method-assign]
    return d, calls


def test_an_overflow_rescans_the_tree():
    d, calls = daemon_with(FakeInotify(raw(-1, notify.IN_Q_OVERFLOW)), {1: "/a"})
    d._on_inotify(0)
    assert calls == [1]


def test_events_on_unwatched_or_unrelated_wds_rescan_nothing():
    d, calls = daemon_with(FakeInotify(raw(7, notify.IN_CREATE | notify.IN_ISDIR, b"x")), {1: "/a"})
    d._on_inotify(0)
    assert calls == []
    d.inotify = FakeInotify(raw(1, notify.IN_IGNORED))
    d._on_inotify(0)
    assert calls == [] and d.watches == {}


def test_one_rescan_for_an_overflow_among_other_events():
    d, calls = daemon_with(FakeInotify(raw(1, notify.IN_CREATE | notify.IN_ISDIR, b"new"),
                                       raw(-1, notify.IN_Q_OVERFLOW),
                                       raw(1, notify.IN_DELETE | notify.IN_ISDIR, b"old")), {1: "/a"})
    d._on_inotify(0)
    assert calls == [1]


def test_v2_an_overflow_looks_at_every_managed_memcg():
    stack = V2Stack.__new__(V2Stack)
    stack.inotify = FakeInotify(raw(-1, notify.IN_Q_OVERFLOW))
    stack.watches = {3: "/a/memory.events"}
    stack.episodes = {"/a": object(), "/b": object()}       # type: ignore[dict-item]
    looked: list[str] = []
    stack._look = looked.append                              # type: ignore[method-assign]
    stack._on_inotify(0)
    assert sorted(looked) == ["/a", "/b"]
