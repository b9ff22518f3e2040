"""Hostile text made safe for output, in one place.

Task names (comm), argv and cgroup names are chosen by the processes in the
cgroups oomkit manages: any user can set them to bytes that are not UTF-8,
to ANSI escape sequences, to newlines that forge a log line, or to rich
markup such as ``[/]``.  oomkit reads them with ``surrogateescape`` (PEP
383), so a cgroup path still names its directory when written back to the
filesystem; that internal form must never reach an output as is:

- :func:`for_record` gives valid UTF-8 for JSON records: each byte that was
  not UTF-8 (a lone surrogate U+DC80..U+DCFF) becomes the four characters
  ``\\xNN``; any other lone surrogate becomes ``\\uXXXX``.  Everything else
  is kept, so a record is what the kernel said, escaped only where it must be.
- :func:`for_terminal` is for a line a person reads (stderr, the readable
  report): :func:`for_record`, and also every control character (C0, DEL,
  C1: ESC and CSI start ANSI sequences; newline and CR forge lines),
  Unicode format characters (bidi overrides that reorder what is shown,
  zero-width characters) and line/paragraph separators become ``\\xNN`` or
  ``\\uXXXX``.  Nothing raw reaches a terminal.
- :func:`for_markup` is :func:`for_terminal` and then rich's markup escape,
  for text interpolated into a rich markup string (rich is imported only
  when it is called: the daemon never does).

A backslash in the input is kept as is: ``\\x80`` in an output may be a byte
that was not UTF-8 or those four characters; the record stays readable, and
nothing in oomkit parses these escapes back.  Pure functions, no I/O.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Any

# Fast path: a plain ASCII printable string needs nothing.
_PLAIN = re.compile(r"[ -~]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Categories that are never shown as themselves: Cc (controls: C0, DEL, C1),
# Cf (format: bidi overrides, zero-width), Zl/Zp (line/paragraph separators),
# Cs (surrogates, already escaped by for_record), Co/Cn (private use, unassigned:
# a terminal may render them as anything).
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _escape_char(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape could not decode
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def for_record(s: str) -> str:
    """``s`` as valid UTF-8 text: lone surrogates (bytes that were not UTF-8,
    decoded with surrogateescape) become ``\\xNN``, others ``\\uXXXX``."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub(lambda m: _escape_char(m.group()), s)
    return s


def for_terminal(s: str) -> str:
    """``s`` safe to print on a terminal or a log line: :func:`for_record`,
    and every control, format or separator character escaped."""
    if _PLAIN.fullmatch(s):
        return s
    s = for_record(s)
    return "".join(_escape_char(c) if unicodedata.category(c) in _UNSAFE else c for c in s)


def for_markup(s: str) -> str:
    """``s`` safe inside a rich markup string: :func:`for_terminal`, then rich's
    own markup escape (``[/]`` becomes ``\\[/]``, a trailing backslash doubled)."""
    from rich.markup import escape

    return escape(for_terminal(s))


def record_safe(value: Any) -> Any:
    """``value`` (a record: dicts, lists, tuples, scalars) with every string,
    keys included, passed through :func:`for_record`."""
    if isinstance(value, str):
        return for_record(value)
    if isinstance(value, dict):
        return {record_safe(k): record_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [record_safe(v) for v in value]
    return value


class TerminalFormatter(logging.Formatter):
    """A log formatter for stderr: the message is one :func:`for_terminal`
    line whatever the names in it hold (a newline in a task name cannot forge
    a second line); a traceback keeps its lines, each escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return for_terminal(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _lines(super().formatStack(stack_info))


def _lines(text: str) -> str:
    return "\n".join(for_terminal(line) for line in text.split("\n"))


#: syslog priorities (``<N>`` prefixes journald reads on a stream, sd-daemon(3)).
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                   logging.CRITICAL: 2}


class JournalFormatter(TerminalFormatter):
    """:class:`TerminalFormatter` lines, each with the ``<N>`` prefix journald
    turns into the entry's priority (``journalctl -p warning`` shows kills)."""

    def format(self, record: logging.LogRecord) -> str:
        prio = SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).split("\n"))


def stderr_is_journal(journal_stream: str | None, fd: int = 2) -> bool:
    """``$JOURNAL_STREAM`` (``DEV:INODE``, set by systemd) names our stderr: the
    journal reads it.  A child whose stderr was redirected keeps the variable
    but not the file, hence the comparison (systemd.exec(5))."""
    import os

    dev, _, ino = (journal_stream or "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))
