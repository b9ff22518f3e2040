"""The man pages, generated: ``python -m oomkit.manpages [DIR]`` writes
``oomkit.1`` and ``oomkit.toml.5`` (default: ``man/``, committed and installed
with the package).

``oomkit(1)`` comes from the click commands themselves (each command's help,
usage and every option's help line as ``--help`` shows them), and
``oomkit.toml(5)`` from the config schema (every key of
:class:`~oomkit.config.daemon.DaemonSpec` and ``AttachSpec`` with its default,
and the bounds :mod:`oomkit.config.common` checks).  Only the sentence that
says what a key is for lives here, in :data:`KEYS`; a key without one is an
error, so a new key cannot ship undocumented.  ``tests/unit/test_manpages.py``
checks that regenerating gives the committed pages.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from oomkit.config import common
from oomkit.config.daemon import AttachSpec, DaemonSpec

DATE = "2025"   # fixed: regenerating must give the committed page byte for byte


def _dur(s: float) -> str:
    return f"{s * 1000:g}ms" if s < 1 else f"{s:g}s"


def _dur_range(r: tuple[float, float]) -> str:
    return f"{_dur(r[0])} to {_dur(r[1])}"


#: What each [daemon] key is for, and its bounds where the config checks some.
KEYS: dict[str, tuple[str, str | None]] = {
    "cgroup": ('The hierarchy that holds the memory controller: "v1", "v2", or "auto" (found from '
               "/proc/self/mountinfo).", None),
    "mount": ("Where that hierarchy is mounted, if not where mountinfo says.", None),
    "proc": ("The procfs root (another one only for tests).", None),
    "handler_deadline": ("Wall time a policy's handler may take; longer counts as a failure.",
                         _dur_range(common.HANDLER_DEADLINE)),
    "backoff_budget": ("BACKOFF promises an attachment may make per backoff_window.",
                       f"{common.BACKOFF_BUDGET[0]} to {common.BACKOFF_BUDGET[1]}"),
    "backoff_window": ("The window backoff_budget counts in.", _dur_range(common.BACKOFF_WINDOW)),
    "backoff_wait": ("How long an OOM waits for a BACKOFF's promise to come true.",
                     _dur_range(common.BACKOFF_WAIT)),
    "event_log": ("The JSON-lines event log: one record per OOM (reopened on SIGHUP).", None),
    "dry_run": ("Decide and log, but release nothing (as oomkit run --dry-run).", None),
    "watchdog_timeout": ("v1: paused OOMs go back to the kernel if the daemon is silent this long.",
                         _dur_range(common.WATCHDOG_TIMEOUT)),
    "task_reader": ('How an OOM\'s tasks are read: "bpf", "proc", or "auto" (BPF if it loads).', None),
    "proc_cache": ("Tasks whose /proc fds stay open between OOMs (0: read every task afresh).",
                   f"{common.PROC_CACHE[0]} to {common.PROC_CACHE[1]:,}".replace(",", " ")),
    "state_dir": ("What the daemon changed (for a restart and oomkit restore), its lock and "
                  "status.json (oomkit status); an absolute path.", None),
    "headroom": ('v2: within this of memory.max the chain\'s choice is marked for the kernel; "auto" '
                 "is 1/8 of memory.max.", "auto: 4M to 1G"),
    "rearm": ("v2: how often a standing decision is taken again.", _dur_range(common.REARM)),
    "depth": ("v2: how many of the chain's choices stand at once: its victim (oom_score_adj 1000) and "
              "the successors it would choose next, graded below it.",
              f"{common.DEPTH[0]} to {common.DEPTH[1]}"),
    "pressure": ('A PSI trigger ("some 150ms 2s") that runs the chain early; "off" by default.',
                 "window 500ms to 10s, stall within it"),
    "tripwire": ("Before 0.2 (memory.high as a throttle); ignored now.", None),
    "executor": ('v1: who kills the chain\'s victim: "daemon" (by pidfd) or "kernel" (its own OOM killer '
                 "kills what the chain marked).", None),
    "mem_available_min": ("With / attached: a system-wide OOM only while MemAvailable is below this.", None),
    "global_pressure": ("With / attached: the PSI trigger on /proc/pressure/memory.",
                        "window 500ms to 10s, stall within it"),
    "host": ("Written into every record (a fleet's logs merged); default the hostname.", None),
    "policy_runner": ('Where policies run: "worker" (a sandboxed process each) or "inprocess" '
                      "(unsafe: for debugging).", None),
    "policy_user": ("The policy workers' user and group.", None),
    "policy_memory": ("Each policy worker's address-space cap (RLIMIT_AS).", None),
    "metrics": ('"HOST:PORT": serve Prometheus metrics on /metrics (needs the metrics extra); off '
                "unless set. Keep it on loopback.", "port 1 to 65535"),
    "metrics_textfile": ("A .prom file for node_exporter's textfile collector, written after each OOM "
                         "(needs the metrics extra).", None),
}

#: What each [[attach]] key is for.
ATTACH_KEYS: dict[str, tuple[str, str | None]] = {
    "cgroup": ('A cgroup path relative to the mount, or a glob ("/batch.slice/*") matched again as '
               "cgroups come and go. One policy per cgroup.", None),
    "policy": ("A built-in policy's name (oomkit policies) or FILE.py:Class, relative to this file.", None),
    "params": ("The policy's parameters, a TOML table.", None),
    "ceiling": ("The most a policy's raise_limit may raise this cgroup's limit to.", None),
}


def esc(text: str) -> str:
    """Text for a troff line: backslashes and hyphens escaped, a leading dot or quote guarded."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _para(text: str) -> list[str]:
    """Paragraphs (click's help text, blank-line separated) as troff lines."""
    out: list[str] = []
    for i, block in enumerate(p for p in text.strip().split("\n\n") if p.strip()):
        if i:
            out.append(".PP")
        out.append(esc(" ".join(block.split())))
    return out


def oomkit_1(group: click.Group) -> str:
    from oomkit import __version__

    ctx = click.Context(group, info_name="oomkit")
    lines = [f'.TH OOMKIT 1 "{DATE}" "oomkit {__version__}" "User Commands"',
             ".SH NAME", "oomkit \\- " + esc(group.help or ""),
             ".SH SYNOPSIS", ".B oomkit", "[\\fB\\-h\\fR] [\\fB\\-\\-version\\fR]",
             "\\fICOMMAND\\fR [\\fIARGS\\fR]...",
             ".SH DESCRIPTION",
             *_para("oomkit decides what happens when Linux runs out of memory: OOM policies written in "
                    "Python, tried on a simulated kernel (simulate), checked (check), replayed against "
                    "recorded OOMs (replay, evaluate), and run on the machine's real memory cgroups "
                    "(run, a root daemon). Every error a user can cause is one line on stderr, "
                    "\"oomkit: ...\", and exit status 2."),
             ".SH COMMANDS"]
    for name in sorted(group.commands):
        cmd = group.commands[name]
        sub = click.Context(cmd, info_name=name, parent=ctx)
        usage = " ".join(cmd.collect_usage_pieces(sub))
        lines += [".SS " + esc(f"oomkit {name} {usage}".strip()), *_para(cmd.help or "")]
        for param in cmd.params:
            # Options only: arguments are in the usage line (click 8.5 also gives
            # them a help record, empty; 8.4 did not: one page for both)
            record = param.get_help_record(sub) if isinstance(param, click.Option) else None
            if record is None:
                continue
            opts, help_text = record
            lines += [".TP", "\\fB" + esc(opts) + "\\fR", esc(" ".join(help_text.split())) or "\\&"]
    lines += [".SH EXIT STATUS", "0: done. 1: oomkit status found no daemon running. "
              "2: bad input (a file, an option, a policy), said in one line.",
              ".SH FILES",
              ".TP", "/etc/oomkit.toml", "The daemon's config, see \\fBoomkit.toml\\fR(5).",
              ".TP", "/var/log/oomkit/events.jsonl", "The event log: one JSON record per OOM.",
              ".TP", "/run/oomkit", "The daemon's state: what it changed, its lock, status.json.",
              ".SH SEE ALSO", "\\fBoomkit.toml\\fR(5), \\fBsystemd\\-oomd\\fR(8), \\fBearlyoom\\fR(8), "
              "\\fBproc\\fR(5) (oom_score_adj)"]
    return "\n".join(lines) + "\n"


def _default(spec: type, name: str) -> str:
    field = next(f for f in msgspec.structs.fields(spec) if f.name == name)
    value: Any = field.default
    if value is msgspec.NODEFAULT:
        if field.default_factory is not msgspec.NODEFAULT:
            value = field.default_factory()
        else:
            return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{}"
    return str(value)


def _keys(spec: type, docs: dict[str, tuple[str, str | None]], table: str) -> list[str]:
    names = [f.name for f in msgspec.structs.fields(spec)]
    missing = [n for n in names if n not in docs]
    if missing:
        raise KeyError(f"{table} keys without a line in oomkit.manpages: {', '.join(missing)}")
    lines: list[str] = []
    for name in names:
        text, bounds = docs[name]
        lines += [".TP", f"\\fB{esc(name)}\\fR = {esc(_default(spec, name))}",
                  esc(text + (f" Bounds: {bounds}." if bounds else ""))]
    return lines


def oomkit_toml_5() -> str:
    from oomkit import __version__

    lines = [f'.TH OOMKIT.TOML 5 "{DATE}" "oomkit {__version__}" "File Formats"',
             ".SH NAME", "oomkit.toml \\- the oomkit daemon's configuration",
             ".SH SYNOPSIS", "/etc/oomkit.toml",
             ".SH DESCRIPTION",
             "A TOML file read by \\fBoomkit run \\-\\-config\\fR \\fIFILE\\fR and checked by "
             "\\fBoomkit check\\fR \\fIFILE\\fR:",
             *_para("one [daemon] table (every key optional) and any number of [[attach]] tables. An unknown "
                    "key, a value out of bounds or a policy that does not load is an error naming the file "
                    "and the key. SIGHUP reloads the file if it validates whole (cgroup, mount, proc, "
                    "watchdog_timeout, task_reader, state_dir, metrics and metrics_textfile need a restart)."),
             ".PP", "Sizes are bytes or K, M, G, T (powers of 1024, as the kernel's memparse). "
             "Durations are seconds or take ms, s or m.",
             ".SH [daemon]", *_keys(DaemonSpec, KEYS, "[daemon]"),
             ".SH [[attach]]", *_keys(AttachSpec, ATTACH_KEYS, "[[attach]]"),
             ".SH EXAMPLE", ".nf", ".RS",
             *[esc(line) for line in _EXAMPLE.strip().splitlines()],
             ".RE", ".fi",
             ".SH SEE ALSO", "\\fBoomkit\\fR(1)"]
    return "\n".join(lines) + "\n"


_EXAMPLE = """
[daemon]
event_log = "/var/log/oomkit/events.jsonl"
metrics = "127.0.0.1:9464"

[[attach]]
cgroup = "/batch.slice/*"
policy = "largest-task"

[[attach]]
cgroup = "/user.slice"
policy = "prefer-avoid"
params = { avoid = ["^sshd$", "^systemd"] }
"""


def pages() -> dict[str, str]:
    from oomkit.cli import main

    return {"oomkit.1": oomkit_1(main), "oomkit.toml.5": oomkit_toml_5()}


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in pages().items():
        (directory / name).write_text(text)
        out.append(directory / name)
    return out


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "man")):
        print(path)
