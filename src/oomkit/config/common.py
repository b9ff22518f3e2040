"""What scenario and daemon config files share: TOML loading, msgspec
validation with readable errors, sizes and durations at a key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from oomkit.errors import ConfigError
from oomkit.units import parse_duration, parse_size

T = TypeVar("T")

Size = str | int
Duration = str | int | float

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>[^`]+)`")
_MISSING = re.compile(r"Object missing required field `(?P<key>[^`]+)`")


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("no such file", file=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a TOML file", file=str(path)) from None
    except PermissionError:
        raise ConfigError("cannot be read (permission denied)", file=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(path),
                          hint="see https://toml.io for the syntax") from None


def convert(data: dict[str, Any], spec: type[T], file: str) -> T:
    """msgspec validation, its errors rewritten as one line a user can act on."""
    try:
        return msgspec.convert(data, spec, strict=True)
    except msgspec.ValidationError as exc:
        raise _config_error(str(exc), spec, file) from None


def _config_error(text: str, spec: type, file: str) -> ConfigError:
    m = _AT.match(text)
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


def size_at(value: Size | None, where: str, file: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    return _parsed(parse_size, value, where, file, "size",
                   'write e.g. "512M", "2G" or a number of bytes')


def duration_at(value: Duration | None, where: str, file: str) -> float | None:
    if value is None:
        return None
    return _parsed(parse_duration, value, where, file, "duration",
                   'write e.g. "500ms", "2s" or a number of seconds')


def _parsed(parse, value, where: str, file: str, what: str, hint: str):
    try:
        return parse(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bad {what}: {exc}", file=file, where=where, hint=hint) from None
