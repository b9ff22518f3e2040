"""The readable report of ``oomkit simulate`` (rich is imported here only,
never by the daemon)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from oomkit.text import for_markup
from oomkit.units import format_size


def _size(n: Any) -> str:
    return format_size(n) if n is None or isinstance(n, int) else _e(n)


def _e(value: Any) -> str:
    """Any value shown in a markup string, escaped: task and cgroup names are
    hostile (ANSI escapes, ``[/]``, bytes that were not UTF-8)."""
    return for_markup(str(value))


def _list(values: Any) -> str:
    return ", ".join(_e(v) for v in values)


def print_report(result: dict[str, Any], title: str, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    console.print(f"[bold]{_e(title)}[/bold]: {len(result['ooms'])} OOM(s)")
    for i, oom in enumerate(result["ooms"]):
        _print_oom(console, i, oom)
    console.print()
    console.print(f"[green]survivors[/green]: {_list(result['survivors']) or '-'}")
    console.print(f"[red]killed[/red]:    {_list(result['killed']) or '-'}")
    if result.get("exited"):
        console.print(f"exited:    {_list(result['exited'])}")
    for f in result.get("failed_allocations", []):
        console.print(f"[yellow]failed allocation[/yellow]: t={f['t']:g}s {_e(f['task'])} "
                      f"{_size(f['alloc'])}")
    if result.get("ejected"):
        console.print(f"[yellow]ejected policies[/yellow]: {_list(result['ejected'])}")
    table = Table("cgroup", "usage", "limit", title="final state", title_justify="left")
    for path, state in result["final"].items():
        table.add_row(_e(path), _size(state["usage"]), _size(state["limit"]))
    console.print(table)


def _asked(oom: dict[str, Any]) -> str:
    who = _e(oom.get("trigger") or "a task")
    if oom.get("requested") is None:
        return f"{who} hit the limit"
    return f"{who} asked for {_size(oom['requested'])}"


def print_oom(oom: dict[str, Any], title: str, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    console.print(f"[bold]{_e(title)}[/bold]")
    _print_oom(console, 0, oom)


def _print_oom(console: Console, i: int, oom: dict[str, Any]) -> None:
    where = {"memcg": f"memcg OOM in {_e(oom['memcg'])}",
             "numa": f"numa OOM on nodes {_e(oom.get('nodes'))}"}.get(oom["level"], "global OOM")
    console.print(f"\n[bold]OOM #{i + 1}[/bold] t={oom['t']:g}s {where}: "
                  f"{_asked(oom)} -> "
                  f"resolved by [bold]{_e(oom['resolved_by'])}[/bold]")
    for h in oom["handlers"]:
        claimed = f" (claimed {_e(h['claimed'])})" if h.get("claimed") else ""
        error = f" [yellow]{_e(h['error'])}[/yellow]" if h["error"] else ""
        console.print(f"  {_e(h['cgroup'])} {_e(h['policy'])}: {_e(h['verdict'])}{claimed}, "
                      f"freed {_size(h['freed'])}{error}")
        for a in h["actions"]:
            result = _e(a["error"]) if a["result"] < 0 else _size(a["result"])
            console.print(f"    {_e(a['action'])} {_e(a['target'])}: {result}")
    for k in oom["killed"]:
        console.print(f"  [red]killed[/red] pid {k['pid']} ({_e(k['name'])}) in {_e(k['cgroup'])} by {_e(k['by'])}")
    for lim in oom["limits"]:
        console.print(f"  limit of {_e(lim['cgroup'])}: {_size(lim['old'])} -> {_size(lim['new'])}")
    if oom.get("note"):
        console.print(f"  note: {_e(oom['note'])}")
    if oom.get("ejected"):
        console.print(f"  [yellow]ejected[/yellow]: {_list(oom['ejected'])}")
