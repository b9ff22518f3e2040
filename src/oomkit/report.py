"""The readable report of ``oomkit simulate`` (rich is imported here only,
never by the daemon)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from oomkit.units import format_size


def _size(n: Any) -> str:
    return format_size(n) if n is None or isinstance(n, int) else str(n)


def print_report(result: dict[str, Any], title: str, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    console.print(f"[bold]{title}[/bold]: {len(result['ooms'])} OOM(s)")
    for i, oom in enumerate(result["ooms"]):
        _print_oom(console, i, oom)
    console.print()
    console.print(f"[green]survivors[/green]: {', '.join(result['survivors']) or '-'}")
    console.print(f"[red]killed[/red]:    {', '.join(result['killed']) or '-'}")
    if result.get("exited"):
        console.print(f"exited:    {', '.join(result['exited'])}")
    for f in result.get("failed_allocations", []):
        console.print(f"[yellow]failed allocation[/yellow]: t={f['t']:g}s {f['task']} "
                      f"{_size(f['alloc'])}")
    if result.get("ejected"):
        console.print(f"[yellow]ejected policies[/yellow]: {', '.join(result['ejected'])}")
    table = Table("cgroup", "usage", "limit", title="final state", title_justify="left")
    for path, state in result["final"].items():
        table.add_row(path, _size(state["usage"]), _size(state["limit"]))
    console.print(table)


def _asked(oom: dict[str, Any]) -> str:
    who = oom.get("trigger") or "a task"
    if oom.get("requested") is None:
        return f"{who} hit the limit"
    return f"{who} asked for {_size(oom['requested'])}"


def print_oom(oom: dict[str, Any], title: str, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    console.print(f"[bold]{title}[/bold]")
    _print_oom(console, 0, oom)


def _print_oom(console: Console, i: int, oom: dict[str, Any]) -> None:
    where = {"memcg": f"memcg OOM in {oom['memcg']}",
             "numa": f"numa OOM on nodes {oom.get('nodes')}"}.get(oom["level"], "global OOM")
    console.print(f"\n[bold]OOM #{i + 1}[/bold] t={oom['t']:g}s {where}: "
                  f"{_asked(oom)} -> "
                  f"resolved by [bold]{oom['resolved_by']}[/bold]")
    for h in oom["handlers"]:
        claimed = f" (claimed {h['claimed']})" if h.get("claimed") else ""
        error = f" [yellow]{h['error']}[/yellow]" if h["error"] else ""
        console.print(f"  {h['cgroup']} {h['policy']}: {h['verdict']}{claimed}, "
                      f"freed {_size(h['freed'])}{error}")
        for a in h["actions"]:
            result = a["error"] if a["result"] < 0 else _size(a["result"])
            console.print(f"    {a['action']} {a['target']}: {result}")
    for k in oom["killed"]:
        console.print(f"  [red]killed[/red] pid {k['pid']} ({k['name']}) in {k['cgroup']} by {k['by']}")
    for lim in oom["limits"]:
        console.print(f"  limit of {lim['cgroup']}: {_size(lim['old'])} -> {_size(lim['new'])}")
    if oom.get("note"):
        console.print(f"  note: {oom['note']}")
    if oom.get("ejected"):
        console.print(f"  [yellow]ejected[/yellow]: {', '.join(oom['ejected'])}")
