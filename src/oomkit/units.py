"""Sizes and durations as people write them in TOML: pure parsing, no I/O.

Sizes are binary, as the kernel's own ``memparse()`` (lib/cmdline.c) reads
``memory.limit_in_bytes``: ``K``, ``M``, ``G``, ``T`` are powers of 1024, and
``KiB``/``KB``-style spellings mean the same.  Durations take ``ms``, ``s``,
``m`` or a bare number of seconds.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGTkmgt])(?:i?[Bb])?|[Bb])?\s*$")
_SHIFT = {"k": 10, "m": 20, "g": 30, "t": 40}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_DURATION_SCALE = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), None: Decimal(1)}

# Every size is at most 1 EiB: above any machine's memory (the kernel's own
# ceiling is PAGE_COUNTER_MAX pages, about 2^63 bytes), and low enough that
# sums of sizes stay inside the 64-bit integers JSON readers and msgspec take.
SIZE_MAX = 1 << 60
# Every duration is at most a year unless the key says less; a key's own range
# is checked by the config (``oomkit.config.common.duration_at``).
DURATION_MAX = 365 * 24 * 3600.0


class OutOfRange(ValueError):
    """A well-formed size or duration outside the range its key allows."""


def parse_size(value: int | float | str, low: int = 0, high: int = SIZE_MAX) -> int:
    """Bytes from ``1073741824``, ``"1G"``, ``"512M"``, ``"1.5G"``, within
    ``low``..``high``; ValueError (one line, with the range) otherwise."""
    number, unit = _number(value, _SIZE, "size", "write bytes or a number with K, M, G or T")
    size = int(number * (1 << _SHIFT[unit.lower()] if unit else 1))
    if not low <= size <= high:
        raise OutOfRange(f"{_show(value)} is out of range: {format_size(low)} to {format_size(high)}")
    return size


def parse_duration(value: int | float | str, low: float = 0.0, high: float = DURATION_MAX) -> float:
    """Seconds from ``0.5``, ``"500ms"``, ``"10s"``, ``"1m"``, within
    ``low``..``high``; ValueError (one line, with the range) otherwise."""
    number, unit = _number(value, _DURATION, "duration", "write seconds or a number with ms, s or m")
    seconds = number * _DURATION_SCALE[unit]
    if not Decimal(repr(low)) <= seconds <= Decimal(repr(high)):
        raise OutOfRange(f"{_show(value)} is out of range: "
                         f"{format_duration(low)} to {format_duration(high)}")
    return float(seconds)


def _number(value: int | float | str, pattern: re.Pattern, what: str,
            hint: str) -> tuple[Decimal, str | None]:
    """(number, unit) of a size or duration; a plain number has no unit.
    Exact (Decimal): a 400-digit number is a number out of range, not an
    OverflowError, and ``9007199254740993`` bytes stay that many."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a {what}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a {what}: write a finite number")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{_show(value)} is negative")
        return Decimal(value), None
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a {what}; {hint}")
    match = pattern.match(value)
    if not match:
        raise ValueError(f"{_show(value)} is not a {what}; {hint}")
    number, unit = match.groups()
    return Decimal(number), unit


def _show(value: object) -> str:
    """``repr(value)``, cut to a length that fits an error line."""
    if isinstance(value, int) and abs(value) >= 10 ** 30:
        # not str(): Python refuses to convert an int of more than 4300 digits
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_duration(seconds: float) -> str:
    """``50ms``, ``2s``, ``31536000s``: text for errors and reports."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:.10g}ms"
    return f"{seconds:.10g}s"


def format_size(n: int | None) -> str:
    """``1.2G``-style text for logs and reports (``max`` for no limit)."""
    if n is None:
        return "max"
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if abs(n) >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.1f}{unit}".replace(".0" + unit, unit)
    return f"{n}B"
