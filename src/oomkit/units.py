"""Sizes and durations as people write them in TOML: pure parsing, no I/O.

Sizes are binary, as the kernel's own ``memparse()`` (lib/cmdline.c) reads
``memory.limit_in_bytes``: ``K``, ``M``, ``G``, ``T`` are powers of 1024, and
``KiB``/``KB``-style spellings mean the same.  Durations take ``ms``, ``s``,
``m`` or a bare number of seconds.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGTkmgt])(?:i?[Bb])?|[Bb])?\s*$")
_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def parse_size(value: int | float | str) -> int:
    """Bytes from ``1073741824``, ``"1G"``, ``"512M"``, ``"1.5G"``; ValueError otherwise."""
    number, unit = _number(value, _SIZE, "size", "write bytes or a number with K, M, G or T")
    return int(number * (1 << _SHIFT[unit.lower()] if unit else 1))


def parse_duration(value: int | float | str) -> float:
    """Seconds from ``0.5``, ``"500ms"``, ``"10s"``, ``"1m"``; ValueError otherwise."""
    number, unit = _number(value, _DURATION, "duration", "write seconds or a number with ms, s or m")
    return float(number) * _DURATION_SCALE[unit]


def _number(value: int | float | str, pattern: re.Pattern, what: str,
            hint: str) -> tuple[int | float, str | None]:
    """(number, unit) of a size or duration; a plain number has no unit."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a {what}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return value, None
    match = pattern.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a {what}; {hint}")
    number, unit = match.groups()
    return float(number), unit


def format_size(n: int | None) -> str:
    """``1.2G``-style text for logs and reports (``max`` for no limit)."""
    if n is None:
        return "max"
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if abs(n) >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.1f}{unit}".replace(".0" + unit, unit)
    return f"{n}B"
