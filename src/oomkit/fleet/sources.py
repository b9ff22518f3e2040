"""Where a fleet's records come from: event logs (plain or gzip, named as
files, globs or directories) and Parquet files written by ``oomkit export``.

The input is cut into *units* of work, a few megabytes each: several small
files, one log, or one Parquet row group.  A unit is read as a stream (one
line, one batch of rows at a time), so memory is bounded whatever the size
of the input.  ``oomkit replay FILE --index N`` names a record by its file
and its place among that file's records that carry a snapshot: a unit knows
where its first record stands.
"""

from __future__ import annotations

import glob
import gzip
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from oomkit.config.files import open_log
from oomkit.errors import ConfigError
from oomkit.schema import OOMRecord

UNIT_BYTES = 2 * 1024 * 1024       # of JSON (a gzip file's size counts 20x: what the logs compress to)
PARQUET = b"PAR1"
GZIP = b"\x1f\x8b"

_decoder = msgspec.json.Decoder(OOMRecord)


@dataclass(frozen=True)
class Piece:
    path: str
    row_group: int | None = None    # Parquet: one row group; None: the whole file
    first: int = 0                  # the replay index of its first record with a snapshot


@dataclass(frozen=True)
class Unit:
    pieces: tuple[Piece, ...]
    size: int                       # bytes on disk, for the progress bar


def expand(args: Sequence[str]) -> list[str]:
    """The files that LOGS... names: files, globs, directories (every regular
    file below, sorted); each named once, in a stable order."""
    out: dict[str, None] = {}
    for arg in args:
        matches = sorted(glob.glob(arg, recursive=True)) if glob.has_magic(arg) else [arg]
        if not matches:
            raise ConfigError("matches no file", file=arg)
        for m in matches:
            if os.path.isdir(m):
                for root, dirs, files in os.walk(m):
                    dirs.sort()
                    for f in sorted(files):
                        if not f.startswith("."):
                            out[os.path.join(root, f)] = None
            elif os.path.exists(m):
                out[m] = None
            else:
                raise ConfigError("cannot be read: no such file", file=m)
    if not out:
        raise ConfigError("no log file found in " + " ".join(args))
    return list(out)


def kind_of(path: str) -> str:
    """``parquet``, ``gzip`` or ``jsonl``, by the file's first bytes (not its name)."""
    with open_log(path) as f:
        head = f.read(4)
    if head == PARQUET:
        return "parquet"
    return "gzip" if head[:2] == GZIP else "jsonl"


def plan(paths: Sequence[str], unit_bytes: int = UNIT_BYTES) -> list[Unit]:
    """Cut the input into units: small files together, a Parquet file by row group."""
    units: list[Unit] = []
    batch: list[Piece] = []
    size = 0
    for path in paths:
        kind = kind_of(path)
        if kind == "parquet":
            units.extend(Unit((p,), s) for p, s in _row_groups(path))
            continue
        weight = os.path.getsize(path) * (20 if kind == "gzip" else 1)
        batch.append(Piece(path))
        size += weight
        if size >= unit_bytes:
            units.append(Unit(tuple(batch), size))
            batch, size = [], 0
    if batch:
        units.append(Unit(tuple(batch), size))
    return units


def pieces(path: str) -> list[Piece]:
    """One file's pieces: the whole log, or each of a Parquet file's row groups."""
    if kind_of(path) == "parquet":
        return [p for p, _ in _row_groups(path)]
    return [Piece(path)]


def _row_groups(path: str) -> Iterator[tuple[Piece, int]]:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    first = 0
    for i in range(f.num_row_groups):
        yield Piece(path, i, first), f.metadata.row_group(i).total_byte_size
        col = f.read_row_group(i, columns=["replayable"]).column(0)
        first += sum(1 for v in col.to_pylist() if v)


def records(piece: Piece) -> Iterator[tuple[OOMRecord | str, int]]:
    """The piece's records, each with its replay index (records without a
    snapshot get -1); a line that is not an OOM record comes as the text
    ``"FILE:LINE: why"`` instead, and the stream goes on."""
    if piece.row_group is not None:
        yield from _parquet_records(piece)
        return
    with open_log(piece.path) as raw:
        f = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == GZIP else raw
        try:
            lines = ((f"{piece.path}:{n}", line) for n, line in enumerate(f, 1) if line.strip())
            yield from _decoded(lines, piece.first)
        except (OSError, EOFError) as exc:      # a truncated gzip (a log being rotated)
            yield f"{piece.path}: cannot be read to its end: {exc}", -1


def _parquet_records(piece: Piece) -> Iterator[tuple[OOMRecord | str, int]]:
    import pyarrow.parquet as pq

    index = piece.first
    # A thousand rows at a time: a row group of 10,000 records is ~60 MB of JSON.
    batches = pq.ParquetFile(piece.path).iter_batches(batch_size=1000, row_groups=[piece.row_group],
                                                       columns=["record"])
    blobs = (blob for batch in batches for blob in batch.column(0).to_pylist())
    yield from _decoded(((f"{piece.path}:row group {piece.row_group}:{n}", blob)
                         for n, blob in enumerate(blobs)), index)


def _decoded(items: Iterator[tuple[str, Any]], index: int) -> Iterator[tuple[OOMRecord | str, int]]:
    """Each (where, JSON) decoded as a record with its replay index (-1 without a
    snapshot), or the line ``"where: not an OOM record: why"``."""
    for where, blob in items:
        try:
            record = _decoder.decode(blob)
        except (msgspec.DecodeError, RecursionError) as exc:
            yield f"{where}: not an OOM record: {_why(exc)}", -1
            continue
        if record.snapshot is not None:
            yield record, index
            index += 1
        else:
            yield record, -1


def _why(exc: Exception) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc).replace("`", "")


def is_parquet(path: str | Path) -> bool:
    return kind_of(str(path)) == "parquet"
