"""``oomkit export LOGS... --parquet DIR``: the records as Parquet, partitioned
by host and day (``DIR/host=<host>/day=<YYYY-MM-DD>/part-0.parquet``).

A row is one OOM record: a few flat columns to filter and count with any
Parquet tool (``t``, ``detected_at``, ``level``, ``memcg``, ``resolved_by``,
``killed``, ``replayable``) and the record itself, ``record``, as the JSON
the daemon wrote, so ``oomkit evaluate`` and ``oomkit replay`` read back
exactly what was logged.  Written as a stream of batches: memory is
bounded whatever the input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import msgspec

from oomkit.fleet import sources
from oomkit.schema import OOMRecord

BATCH = 5_000
ROWS_PER_GROUP = 10_000
UNKNOWN = "unknown"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def schema():
    import pyarrow as pa

    return pa.schema([("host", pa.string()), ("day", pa.string()), ("t", pa.float64()),
                      ("detected_at", pa.string()), ("level", pa.string()), ("memcg", pa.string()),
                      ("resolved_by", pa.string()), ("killed", pa.int32()), ("replayable", pa.bool_()),
                      ("source", pa.string()), ("record", pa.binary())])


def partition_value(text: str | None) -> str:
    """A host or day as a directory name: hostile text (``../``, ``/``) cannot
    leave DIR; anything but letters, digits, ``.``, ``_``, ``-`` becomes ``_``."""
    if not text:
        return UNKNOWN
    safe = _UNSAFE.sub("_", text)[:253]
    return safe if safe.strip(".") else UNKNOWN


def _rows(paths: Sequence[str], counts: dict[str, int]) -> Iterator[dict]:
    encoder = msgspec.json.Encoder()
    for path in paths:
        for piece in sources.pieces(path):
            for item, _index in sources.records(piece):
                if isinstance(item, str):
                    counts["skipped"] += 1
                    continue
                yield _row(item, path, encoder)


def _row(r: OOMRecord, path: str, encoder: msgspec.json.Encoder) -> dict:
    return {"host": partition_value(r.host), "day": partition_value((r.detected_at or "")[:10]),
            "t": r.t, "detected_at": r.detected_at, "level": r.level.value, "memcg": r.memcg,
            "resolved_by": r.resolved_by.value, "killed": len(r.killed),
            "replayable": r.snapshot is not None, "source": path,
            "record": _encode(r, encoder)}


def _encode(r: OOMRecord, encoder: msgspec.json.Encoder) -> bytes:
    try:
        return encoder.encode(r)
    except UnicodeEncodeError:      # a name that was not UTF-8: \xNN, as the event log
        return encoder.encode(r.to_dict())


def _batches(paths: Sequence[str], counts: dict[str, int]):
    import pyarrow as pa

    sch = schema()
    rows: list[dict] = []
    for row in _rows(paths, counts):
        rows.append(row)
        counts["written"] += 1
        if len(rows) >= BATCH:
            yield pa.RecordBatch.from_pylist(rows, schema=sch)
            rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=sch)


def export(paths: Sequence[str], out: str) -> tuple[int, int, int]:
    """Write ``paths``' records under ``out``; (records written, hosts, lines skipped)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    counts = {"written": 0, "skipped": 0}
    hosts: set[str] = set()

    def batches():
        for b in _batches(paths, counts):
            hosts.update(b.column(0).to_pylist())
            yield b

    part = ds.partitioning(pa.schema([("host", pa.string()), ("day", pa.string())]), flavor="hive")
    ds.write_dataset(batches(), out, schema=schema(), format="parquet", partitioning=part,
                     basename_template="part-{i}.parquet", existing_data_behavior="overwrite_or_ignore",
                     max_rows_per_group=ROWS_PER_GROUP, min_rows_per_group=min(ROWS_PER_GROUP, BATCH),
                     max_open_files=512)
    return counts["written"], len(hosts), counts["skipped"]
