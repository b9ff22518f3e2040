"""What scenario and daemon config files share: TOML loading, msgspec
validation with readable errors, sizes and durations at a key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar, overload

import msgspec

from oomkit.config.files import read_config_bytes
from oomkit.errors import ConfigError
from oomkit.units import DURATION_MAX, SIZE_MAX, OutOfRange, parse_duration, parse_size

T = TypeVar("T")

Size = str | int
Duration = str | int | float

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>[^`]+)`")
_MISSING = re.compile(r"Object missing required field `(?P<key>[^`]+)`")


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict: a regular file of bounded size (see
    :mod:`oomkit.config.files`, also for what root refuses), parsed with
    every failure as one ConfigError."""
    data = read_config_bytes(path)
    file = str(path)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", file=file) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=file,
                          hint="see https://toml.io for the syntax") from None
    except RecursionError:
        raise ConfigError("not valid TOML for oomkit: arrays or tables nested too deeply",
                          file=file) from None
    except ValueError as exc:       # an integer of more than 4300 digits (int_max_str_digits)
        raise ConfigError(f"a number is too long for oomkit ({str(exc).split(';')[0]})",
                          file=file) from None


def convert(data: dict[str, Any], spec: type[T], file: str) -> T:
    """msgspec validation, its errors rewritten as one line a user can act on."""
    try:
        return msgspec.convert(data, spec, strict=True)
    except msgspec.ValidationError as exc:
        raise _config_error(str(exc), spec, file) from None
    except RecursionError:
        raise ConfigError("values nested too deeply", file=file) from None


def _config_error(text: str, spec: type, file: str) -> ConfigError:
    m = _AT.match(text)
    if m is None:       # _AT matches any text; kept for the type checker
        return ConfigError(text, file=file)
    msg, at = m.group("msg"), (m.group("at") or "").lstrip(".")
    if u := _UNKNOWN.match(msg):
        key = u.group("key")
        fields = _fields_at(spec, at)
        hint = f"valid keys here: {', '.join(fields)}" if fields else None
        return ConfigError(f"unknown key {key!r}", file=file, where=at or None, hint=hint)
    if u := _MISSING.match(msg):
        return ConfigError(f"missing required key {u.group('key')!r}", file=file, where=at or None)
    msg = msg.replace("Expected", "expected").replace("`", "")
    return ConfigError(msg, file=file, where=at or None)


def _fields_at(spec: type, at: str) -> tuple[str, ...]:
    """The field names of the struct found at msgspec path ``at`` (``task[0]``)."""
    current: Any = spec
    for part in filter(None, re.split(r"[.\[\]]", at)):
        if part.isdigit():
            continue
        hints = msgspec.structs.fields(current) if _is_struct(current) else ()
        match = [f for f in hints if f.encode_name == part]
        if not match:
            return ()
        current = _struct_in(match[0].type)
    return tuple(f.encode_name for f in msgspec.structs.fields(current)) if _is_struct(current) else ()


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _struct_in(tp: Any) -> Any:
    """The Struct inside ``list[S]`` or ``S | None``."""
    if _is_struct(tp):
        return tp
    for arg in getattr(tp, "__args__", ()):
        found = _struct_in(arg)
        if found is not None:
            return found
    return None


@overload
def size_at(value: Size, where: str, file: str, *, allow_none: bool = False,
            low: int = 0, high: int = SIZE_MAX) -> int: ...
@overload
def size_at(value: Size | None, where: str, file: str, *, allow_none: bool = False,
            low: int = 0, high: int = SIZE_MAX) -> int | None: ...
def size_at(value: Size | None, where: str, file: str, *, allow_none: bool = False,
            low: int = 0, high: int = SIZE_MAX) -> int | None:
    if value is None and allow_none:
        return None
    return _parsed(lambda v: parse_size(v, low, high), value, where, file, "size",
                   'write e.g. "512M", "2G" or a number of bytes')


@overload
def duration_at(value: Duration, where: str, file: str,
                between: tuple[float, float] = (0.0, DURATION_MAX)) -> float: ...
@overload
def duration_at(value: Duration | None, where: str, file: str,
                between: tuple[float, float] = (0.0, DURATION_MAX)) -> float | None: ...
def duration_at(value: Duration | None, where: str, file: str,
                between: tuple[float, float] = (0.0, DURATION_MAX)) -> float | None:
    if value is None:
        return None
    return _parsed(lambda v: parse_duration(v, *between), value, where, file, "duration",
                   'write e.g. "500ms", "2s" or a number of seconds')


def int_at(value: int, where: str, file: str, low: int, high: int, unit: str = "") -> int:
    """An integer key within ``low``..``high`` (msgspec has checked it is an int)."""
    if not low <= value <= high:
        shown = value if abs(value) < 10 ** 30 else "a number that large"
        raise ConfigError(f"{shown} is out of range: {low} to {high}{unit}", file=file, where=where)
    return value


def _parsed(parse, value, where: str, file: str, what: str, hint: str):
    try:
        return parse(value)
    except OutOfRange as exc:
        raise ConfigError(str(exc), file=file, where=where) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad {what}: {exc}", file=file, where=where, hint=hint) from None


def text_at(value: str, where: str, file: str) -> str:
    """A path or name that goes to the OS: no NUL byte (every syscall refuses it)."""
    if "\0" in value:
        raise ConfigError(f"{value!r} holds a NUL character", file=file, where=where)
    return value


# The bounds of every number a scenario or daemon config holds (the README's
# "Bounds" table).  Durations in seconds.  A value outside is refused with the
# range in the message: a deadline of an hour holds an OOM paused for an hour.
HANDLER_DEADLINE = (0.001, 60.0)     # wall time of a handler call
BACKOFF_WINDOW = (0.1, 3600.0)
BACKOFF_WAIT = (0.0, 10.0)           # an OOM waits this long for a BACKOFF's promise
BACKOFF_BUDGET = (0, 1000)
HANDLER_BUDGET = (1, 10 ** 9)        # Python lines per handler call (simulator)
WATCHDOG_TIMEOUT = (0.2, 300.0)      # the daemon beats 4 times per timeout
PROC_CACHE = (0, 1_000_000)
DEPTH = (1, 16)                      # v2: the chain's victim and its successors
# The defaults the daemon's TOML, its resolved config and the live stack's
# settings (backends/live.py LiveSettings) all take: written once, here.
PROC_CACHE_DEFAULT = 10_000          # tasks whose /proc fds are kept between OOMs
# 8: at depth 4 a fork burst outran the standing decision and the kernel's own
# pick (the old task) died in 9 of 20 trials on 6.1 (bench/RESULTS-v2.md, 2026-12-07).
DEPTH_DEFAULT = 8
REARM = (0.05, 60.0)                 # v2: seconds between two takes of a standing decision
EXIT_DELAY = (0.0, 3600.0)
EVENT_AT = (0.0, 365 * 24 * 3600.0)  # simulated seconds
UID = (0, 2 ** 32 - 2)               # (uid_t)-1 is "no uid"
