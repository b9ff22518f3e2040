"""``oomkit evaluate`` and ``oomkit export``, behind :mod:`oomkit.cli`: the
input planned, the job run with a progress bar (stderr), the result printed."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence

import click

from oomkit.errors import ConfigError
from oomkit.fleet import sources
from oomkit.fleet.evaluate import Candidate, kernel_alone
from oomkit.text import record_safe


def need(module: str, what: str):
    """An optional extra's module, or one clear line saying how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs {module.split('.')[0]}: pip install 'oomkit[fleet]'") from None


def evaluate(logs: Sequence[str], candidates: Sequence[Candidate], protect: Sequence[str], *,
             as_json: bool, plot_file: str | None, workers: int | None, dask_address: str | None,
             progress: bool) -> None:
    from oomkit.fleet import report, run

    everyone = [kernel_alone(protect), *candidates]
    labels = [c.label for c in everyone]
    if len(set(labels)) != len(labels):
        raise ConfigError("a candidate is given twice")
    for c in everyone:
        c.check()
    paths = sources.expand(logs)
    if any(sources.kind_of(p) == "parquet" for p in paths):
        need("pyarrow.parquet", "reading Parquet")
    if plot_file:
        need("matplotlib", "--plot")
    units = sources.plan(paths)
    with _progress(units, progress) as tick:
        if dask_address:
            need("distributed", "--dask")
            summary = run.run_dask(dask_address, units, everyone, None, tick, workers)
        else:
            summary = run.run_local(units, everyone, None, workers, tick)
    if as_json:
        import msgspec

        data = report.to_json(summary, everyone)
        try:
            click.echo(msgspec.json.encode(data).decode())
        except UnicodeEncodeError:      # a name that was not UTF-8: \xNN, as the event log
            click.echo(msgspec.json.encode(record_safe(data)).decode())
    else:
        report.print_report(summary, everyone, f"oomkit evaluate: {len(paths):,} files")
    if plot_file:
        report.plot(summary, everyone, plot_file)


@contextlib.contextmanager
def _progress(units: Sequence[sources.Unit], show: bool) -> Iterator:
    if not show or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

    with Progress("replaying", BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=sum(u.size for u in units) or 1)
        yield lambda unit: bar.advance(task, unit.size)


def export(logs: Sequence[str], out: str) -> None:
    from oomkit.fleet import export as exp

    need("pyarrow", "oomkit export")
    paths = sources.expand(logs)
    written, hosts, skipped = exp.export(paths, out)
    click.echo(f"oomkit: {written:,} records from {hosts:,} hosts written to {out}"
               + (f"; {skipped:,} unreadable lines skipped" if skipped else ""), err=True)
