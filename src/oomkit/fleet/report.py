"""What ``oomkit evaluate`` prints: a table per candidate, the services, and
the records where a candidate differs from what happened (with the replay
command that shows each); ``--json`` the same as one document; ``--plot`` a
chart (matplotlib, optional)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from oomkit.fleet.evaluate import HAPPENED, KERNEL, RESOLUTIONS, Candidate, Summary, protected
from oomkit.text import for_markup

SERVICES = 15         # rows of the service table (the most OOMs first)


def columns(summary: Summary, candidates: Sequence[Candidate]) -> list[str]:
    return [HAPPENED] + [c.label for c in candidates]


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f}"


def rows(summary: Summary, names: Sequence[str]) -> list[tuple[str, list[str]]]:
    cols = [summary.columns.get(n) for n in names]

    def line(title: str, get) -> tuple[str, list[str]]:
        return title, [get(c) if c is not None else "-" for c in cols]

    out = [line(f"resolved: {r}", lambda c, r=r: f"{c.resolved.get(r, 0):,}") for r in RESOLUTIONS]
    out += [
        line("killed",  lambda c: f"{c.processes_killed:,}"),
        line("memory killed, GiB", lambda c: _gib(c.memory_killed)),
        line("beyond need, GiB", lambda c: _gib(c.memory_beyond_need)),
        line("protected killed", lambda c: f"{c.protected_killed:,}"),
        line("differs", lambda c: f"{c.differs:,}"),
    ]
    if any(c is not None and c.errors for c in cols):
        out.append(line("replays that failed", lambda c: f"{c.errors:,}"))
    return out


def replay_command(source: str, index: int, attach: Sequence[str]) -> str:
    """The ``oomkit replay`` that shows one record under a candidate."""
    cmd = ["oomkit", "replay", source, "--index", str(index)]
    for a in attach:
        cmd += ["--attach", a]
    return shlex.join(cmd)


def to_json(summary: Summary, candidates: Sequence[Candidate]) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(summary)
    out["candidates"] = [{"label": c.label, "protect": list(c.protect),
                          "attach": [{"cgroup": a.cgroup, "policy": a.policy, "params": a.params}
                                     for a in c.attach]} for c in candidates]
    out["hosts"] = len(summary.hosts)
    out["protected"] = protected(candidates)
    for samples in out["samples"].values():
        for s in samples:
            s["replay"] = replay_command(s["source"], s["index"], s["attach"])
            del s["key"]
    return out


def print_report(summary: Summary, candidates: Sequence[Candidate], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    names = columns(summary, candidates)
    console.print(f"[bold]{for_markup(title)}[/]")
    console.print(f"{summary.records:,} OOM records from {len(summary.hosts):,} hosts; "
                  f"{summary.replayed:,} replayed, {summary.not_replayable:,} without a snapshot of what "
                  f"the first handler saw, {summary.unreadable:,} unreadable")
    for where in summary.unreadable_where:
        console.print(f"  unreadable: {for_markup(where)}")
    t = Table(show_edge=False)
    t.add_column("")
    for n in names:
        t.add_column(for_markup(n), justify="right")
    for title_, cells in rows(summary, names):
        t.add_row(title_, *cells)
    console.print(t)
    _services(console, summary, names)
    for label in names[1:]:
        samples = summary.samples.get(label, [])
        if not samples:
            continue
        console.print(f"\n[bold]Where {for_markup(label)} differs from what happened[/] "
                      f"({summary.columns[label].differs:,} OOMs; {len(samples)} of them):")
        for s in samples:
            console.print(f"  {for_markup(s.host or '?')} {for_markup(s.detected_at or '')} "
                          f"{for_markup(s.memcg)}\n    happened:  {for_markup(s.happened)}\n"
                          f"    {for_markup(label)}: {for_markup(s.candidate)}\n"
                          f"    {for_markup(replay_command(s.source, s.index, s.attach))}")


def _services(console, summary: Summary, names: Sequence[str]) -> None:
    from rich.table import Table

    def weight(cols: dict[str, list[int]]) -> int:
        return max(v[0] for v in cols.values())

    top = sorted(summary.services.items(), key=lambda kv: (-weight(kv[1]), kv[0]))[:SERVICES]
    t = Table(title="per service: OOMs in it; processes killed in it (GiB)", show_edge=False)
    t.add_column("service")
    t.add_column("OOMs", justify="right")
    for n in names:
        t.add_column(for_markup(n), justify="right")
    for svc, cols in top:
        t.add_row(for_markup(svc), f"{cols.get('', [0])[0]:,}",
                  *[f"{cols.get(n, [0, 0])[0]:,} ({_gib(cols.get(n, [0, 0])[1])})" for n in names])
    console.print(t)
    if len(summary.services) > SERVICES:
        console.print(f"  ... and {len(summary.services) - SERVICES:,} more services (--json has all)")


def plot(summary: Summary, candidates: Sequence[Candidate], path: str) -> None:
    """Bars per column: processes killed, memory killed beyond need, protected kills."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = columns(summary, candidates)
    cols = [summary.columns.get(n) for n in names]
    metrics = [("processes killed", lambda c: c.processes_killed),
               ("memory killed beyond need (GiB)", lambda c: c.memory_beyond_need / 2**30),
               ("protected processes killed", lambda c: c.protected_killed),
               ("OOMs unresolved", lambda c: c.resolved.get("unresolved", 0))]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4))
    for ax, (title, get) in zip(axes, metrics, strict=True):
        ax.bar(range(len(names)), [get(c) if c is not None else 0 for c in cols],
               color=["#888888", "#cc6666"] + ["#4477aa"] * (len(names) - 2))
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{summary.replayed:,} OOMs replayed from {len(summary.hosts):,} hosts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["KERNEL", "plot", "print_report", "replay_command", "to_json"]
