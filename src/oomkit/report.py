"""The readable report of ``oomkit simulate`` and ``oomkit replay`` (rich is
imported here only, never by the daemon).

Names in a record come from tasks and cgroups, which are hostile input: every
value interpolated into markup goes through :func:`_text` (``[/]`` is not
markup, an escape sequence does not reach the terminal).
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from oomkit.context import Level
from oomkit.schema import OOMRecord, SimResult
from oomkit.text import for_markup
from oomkit.units import format_size


def _text(value: object) -> str:
    return for_markup(str(value))


def _names(values: list[str]) -> str:
    return ", ".join(_text(v) for v in values) or "-"


def print_report(result: SimResult, title: str, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    console.print(f"[bold]{_text(title)}[/bold]: {len(result.ooms)} OOM(s)")
    for i, oom in enumerate(result.ooms):
        _print_oom(console, i, oom)
    console.print()
    console.print(f"[green]survivors[/green]: {_names(result.survivors)}")
    console.print(f"[red]killed[/red]:    {_names(result.killed)}")
    if result.exited:
        console.print(f"exited:    {_names(result.exited)}")
    for f in result.failed_allocations:
        console.print(f"[yellow]failed allocation[/yellow]: t={f.t:g}s {_text(f.task)} "
                      f"{format_size(f.alloc)}")
    if result.ejected:
        console.print(f"[yellow]ejected policies[/yellow]: {_names(result.ejected)}")
    table = Table("cgroup", "usage", "limit", title="final state", title_justify="left")
    for path, state in result.final.items():
        table.add_row(_text(path), format_size(state.usage), format_size(state.limit))
    console.print(table)


def _asked(oom: OOMRecord) -> str:
    if oom.declared_by is not None:
        why = f": {_text(oom.declared_reason)}" if oom.declared_reason else ""
        return f"declared by {_text(oom.declared_by)} from {_text(oom.declared_via or '?')}{why}"
    who = _text(oom.trigger) if oom.trigger else "a task"
    if oom.requested is None:
        return f"{who} hit the limit"
    return f"{who} asked for {format_size(oom.requested)}"


def print_oom(oom: OOMRecord, title: str, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    console.print(f"[bold]{_text(title)}[/bold]")
    _print_oom(console, 0, oom)


def _where(oom: OOMRecord) -> str:
    if oom.level == Level.MEMCG:
        return f"memcg OOM in {_text(oom.memcg)}"
    if oom.level == Level.NUMA:
        return f"numa OOM on nodes {list(oom.nodes)}"
    return "global OOM"


def _print_oom(console: Console, i: int, oom: OOMRecord) -> None:
    console.print(f"\n[bold]OOM #{i + 1}[/bold] t={oom.t:g}s {_where(oom)}: {_asked(oom)} -> "
                  f"resolved by [bold]{oom.resolved_by}[/bold]")
    for h in oom.handlers:
        claimed = f" (claimed {h.claimed})" if h.claimed else ""
        error = f" [yellow]{_text(h.error)}[/yellow]" if h.error else ""
        console.print(f"  {_text(h.cgroup)} {_text(h.policy)}: {h.verdict}{claimed}, "
                      f"freed {format_size(h.freed)}{error}")
        for a in h.actions:
            result = a.error if a.result < 0 else format_size(a.result)
            console.print(f"    {_text(a.action)} {_text(a.target)}: {_text(result)}")
    for k in oom.killed:
        console.print(f"  [red]killed[/red] pid {k.pid} ({_text(k.name)}) in {_text(k.cgroup)} "
                      f"by {_text(k.by)}")
    for lim in oom.limits:
        console.print(f"  limit of {_text(lim.cgroup)}: {format_size(lim.old)} -> {format_size(lim.new)}")
    if oom.note:
        console.print(f"  note: {_text(oom.note)}")
    if oom.ejected:
        console.print(f"  [yellow]ejected[/yellow]: {_names(oom.ejected)}")
