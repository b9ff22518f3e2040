"""``oomkit replay``: run a recorded OOM again, offline, against other policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from oomkit.backends.replay import ReplayBackend, oom_event
from oomkit.engine.chain import Engine
from oomkit.errors import ConfigError
from oomkit.policies import make_policy


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The OOM records of an event log that carry a snapshot."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", file=str(path)) from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"not a JSON line: {exc}", file=str(path), where=f"line {n}") from None
        if isinstance(record, dict) and "snapshot" in record:
            records.append(record)
    return records


def replay_record(path: str | Path, index: int, attach: dict[str, str]) -> dict[str, Any]:
    records = read_records(path)
    if not records:
        raise ConfigError("has no OOM record with a snapshot", file=str(path))
    try:
        record = records[index]
    except IndexError:
        raise ConfigError(f"has {len(records)} OOM records; --index {index} is out of range",
                          file=str(path)) from None
    backend = ReplayBackend(record["snapshot"])
    engine = Engine(backend)
    scope = record["snapshot"]["scope"]
    for cgroup, policy in attach.items():
        if cgroup not in record["snapshot"]["cgroups"]:
            raise ConfigError(f"--attach {cgroup}: the snapshot holds only {scope} and below")
        engine.attach(cgroup, make_policy(policy))
    return engine.handle(oom_event(record)).to_dict()
