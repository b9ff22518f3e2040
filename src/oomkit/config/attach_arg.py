"""``--attach CGROUP=POLICY{PARAMS}``: an attachment on the command line, with
the params a config file's ``params = {...}`` would hold, written the same way
(a TOML inline table)::

    --attach /=largest-task
    --attach '/=prefer-avoid{avoid = ["^postgres"], prefer = ["/batch.slice/*"]}'

A policy reference never holds ``{`` (built-in names, ``module:Class``,
``file.py:Class``), so the params start at the first one.  ``split`` cuts a
list of them at ``;`` outside braces and quotes (``oomkit evaluate``: one
candidate's attachments).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any

from oomkit.errors import ConfigError

USAGE = "write CGROUP=POLICY or CGROUP=POLICY{key = value, ...}, e.g. --attach /=largest-task"


@dataclass(frozen=True)
class AttachArg:
    cgroup: str
    policy: str
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.cgroup}={self.policy}{_inline(self.params) if self.params else ''}"


def parse(value: str) -> AttachArg:
    cgroup, sep, rest = value.strip().partition("=")
    policy, brace, table = rest.partition("{")
    policy = policy.strip()
    if not sep or not cgroup.startswith("/") or not policy:
        raise ConfigError(f"--attach {value!r}: {USAGE}")
    params: dict[str, Any] = {}
    if brace:
        try:
            params = tomllib.loads(f"params = {{{table}")["params"]
        except (tomllib.TOMLDecodeError, RecursionError, ValueError) as exc:  # ValueError: > 4300 digits
            raise ConfigError(f"--attach {value!r}: the params are not a TOML inline table: {exc}",
                              hint='e.g. {avoid = ["^postgres"]}') from None
    return AttachArg(cgroup.strip(), policy, params)


def split(value: str) -> list[str]:
    """``value`` cut at each ``;`` outside braces, brackets and quotes."""
    out, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(value):
        if quote:
            quote = "" if ch == quote and value[i - 1] != "\\" else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif ch == ";" and depth == 0:
            out.append(value[start:i])
            start = i + 1
    out.append(value[start:])
    return [p.strip() for p in out if p.strip()]


def _inline(value: Any) -> str:
    """``value`` as TOML (an inline table, array, string, number or boolean)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    import json

    return json.dumps(str(value), ensure_ascii=False)      # a TOML basic string is a JSON string


def _key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else _inline(k)
