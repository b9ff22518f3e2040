"""``oomkit replay``: read the daemon's event log and run a recorded OOM again,
offline, against other policies (over :class:`~oomkit.backends.snapshot.SnapshotBackend`).

Every line of the log is decoded as an :class:`~oomkit.schema.OOMRecord`,
which validates it: a malformed line is one error naming the file and line,
never a traceback, and nothing unchecked (a relative cgroup path, a string
for a size) reaches the engine.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from oomkit.backends.base import OOMEvent
from oomkit.backends.snapshot import SnapshotBackend
from oomkit.config.attach_arg import AttachArg
from oomkit.config.files import open_log
from oomkit.context import ancestors
from oomkit.engine.attachment import Recipe
from oomkit.engine.chain import Engine
from oomkit.errors import ConfigError
from oomkit.schema import OOMRecord, Snapshot

_decoder = msgspec.json.Decoder(OOMRecord)


def read_records(path: str | Path, index: int) -> tuple[OOMRecord, int]:
    """The ``index``-th OOM record of an event log that carries a snapshot (0 the
    first, -1 the last), and how many such records the log holds."""
    keep: collections.deque[OOMRecord] = collections.deque(maxlen=-index if index < 0 else 1)
    count = 0
    for record in _records(path):
        if index < 0 or count == index:
            keep.append(record)
        count += 1
    if not count:
        raise ConfigError("has no OOM record with a snapshot", file=str(path))
    if index >= count or -index > count:
        raise ConfigError(f"has {count} OOM records; --index {index} is out of range",
                          file=str(path))
    return keep[0], count


def log_records(path: str | Path) -> list[OOMRecord]:
    """Every record of the log with a snapshot, in order (``replay --plot``'s timeline)."""
    return list(_records(path))


def _records(path: str | Path) -> Iterator[OOMRecord]:
    """The log's records with a snapshot (the kernel's own kills, recorded without one, are skipped).
    A gzip log (rotated) or a Parquet file of ``oomkit export`` is read too."""
    with open_log(path) as raw:
        head = raw.peek(4)[:4]
    if head == b"PAR1" or head[:2] == b"\x1f\x8b":
        yield from _fleet_records(path)
        return
    with open_log(path) as lines:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = _decoder.decode(line)
            except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError included
                raise ConfigError(f"not an OOM record: {_why(exc)}", file=f"{path}:{n}") from None
            if isinstance(record.snapshot, Snapshot):
                yield record


def _fleet_records(path: str | Path) -> Iterator[OOMRecord]:
    from oomkit.fleet import sources

    for piece in sources.pieces(str(path)):
        for item, index in sources.records(piece):
            if isinstance(item, str):
                file, _, why = item.partition(": ")
                raise ConfigError(why, file=file)
            if index >= 0:
                yield item


def _why(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).replace("`", "")


def oom_event(record: OOMRecord) -> OOMEvent:
    """The OOM a record describes."""
    return OOMEvent(record.level, record.memcg, record.nodes, record.requested, record.trigger)


def replay_record(path: str | Path, index: int, attach: dict[str, str] | dict[str, AttachArg]) -> OOMRecord:
    """The ``index``-th record replayed with ``attach`` (cgroup -> policy, or -> an
    ``--attach`` with params)."""
    record, _ = read_records(path, index)
    snap = record.snapshot
    assert isinstance(snap, Snapshot)       # read_records yields only records with one
    engine = Engine(SnapshotBackend(snap))
    chain = set(ancestors(record.memcg)) if record.level == "memcg" else {"/"}
    for cgroup, policy in attach.items():
        if cgroup not in snap.cgroups and cgroup not in chain:
            raise ConfigError(f"--attach {cgroup}: the snapshot holds only {snap.scope} and below "
                              "(and the chain above it)")
        if isinstance(policy, AttachArg):
            engine.attach(cgroup, Recipe(policy.policy, dict(policy.params), os.getcwd()))
        else:
            engine.attach(cgroup, Recipe(policy, {}, os.getcwd()))
    try:
        return engine.handle(oom_event(record))
    finally:
        engine.close()
