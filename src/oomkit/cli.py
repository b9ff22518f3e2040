"""The ``oomkit`` command.  Every error a user can cause ends as one line
on stderr and exit status 2; never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from oomkit.errors import OOMKitError
from oomkit.text import TerminalFormatter, for_terminal, record_safe

EXIT_USAGE = 2


def _fail(message: str) -> None:
    # One line, whatever a file name or a policy's exception text holds.
    click.echo(f"oomkit: {for_terminal(message)}", err=True)
    sys.exit(EXIT_USAGE)


def _emit(result: object, as_json: bool, report) -> None:
    """A result as one JSON document, or as the readable ``report()``."""
    if as_json:
        import msgspec

        try:
            data = msgspec.json.encode(result)
        except UnicodeEncodeError:      # a name that was not UTF-8: \xNN, as the event log
            data = msgspec.json.encode(record_safe(msgspec.to_builtins(result)))
        click.echo(data.decode())
    else:
        report()


def _parse_attach(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        cgroup, sep, policy = value.partition("=")
        if not sep or not cgroup.startswith("/") or not policy:
            _fail(f"--attach {value!r}: write CGROUP=POLICY, e.g. --attach /=largest-task")
        out[cgroup] = from_shell(policy)
    return out


def from_shell(policy: str) -> str:
    """A policy file named on the command line (``./p.py:Class``) is relative to the
    shell's directory, not the scenario's: made absolute here."""
    import os

    where, sep, name = policy.rpartition(":")
    if sep and (where.endswith(".py") or "/" in where) and not os.path.isabs(where):
        return f"{os.path.abspath(where)}:{name}"
    return policy


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="oomkit")
def main() -> None:
    """Decide what happens when Linux runs out of memory."""


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--attach", "attach", multiple=True, metavar="CGROUP=POLICY",
              help="Attach POLICY to CGROUP, replacing the scenario's (repeatable).")
@click.option("--no-attach", is_flag=True,
              help="Drop the scenario's attachments: the kernel's OOM killer alone (then --attach).")
@click.option("--in-process", is_flag=True,
              help="Run policies inside this process, not in sandboxed workers (UNSAFE: debugging only).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw each cgroup's usage against its limit, each OOM, who decided and the victims "
                   "(PNG or SVG by extension; needs matplotlib).")
def simulate(scenario: Path, as_json: bool, attach: tuple[str, ...], no_attach: bool,
             in_process: bool, plot_file: Path | None) -> None:
    """Run SCENARIO (TOML) on the simulated kernel and report every OOM."""
    import dataclasses

    from oomkit.backends.sim.simulator import simulate as run
    from oomkit.config.scenario import load_scenario

    overrides = _parse_attach(attach)
    timeline, on_step = None, None
    if plot_file is not None:
        from oomkit import plot

        timeline = plot.Timeline(f"oomkit simulate {scenario}", "simulated seconds")
        on_step = lambda t, machine: timeline.sample(t, plot.machine_usages(machine))  # noqa: E731
    try:
        if plot_file is not None:
            plot.check_file(plot_file)
        loaded = load_scenario(scenario)
        if no_attach:
            loaded = dataclasses.replace(loaded, attach=[])
        with _policy_output(as_json):
            # A policy that does not load is reported with the file and key that name
            # it (as `oomkit check` does), by its worker or, in process, checked first.
            if in_process:
                _check_policies(loaded, overrides)
            result = run(loaded, overrides, "inprocess" if in_process else None, on_step=on_step)
        if timeline is not None and plot_file is not None:
            plot.draw(plot.from_simulation(timeline, result.ooms), plot_file)
    except OOMKitError as exc:
        _fail(str(exc))
    from oomkit.report import print_report

    _emit(result, as_json, lambda: print_report(result, f"oomkit simulate {scenario}"))


def _policy_output(as_json: bool):
    """While policies load and run: with ``--json``, what they print goes to
    stderr, so stdout is the one JSON document."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()


def _check_policies(loaded, overrides: dict[str, str]) -> None:
    from oomkit.config.check import check_policies
    from oomkit.errors import ConfigError, PolicyLoadError
    from oomkit.policies import make_policy

    replaced = set(overrides)
    check_policies([a for a in loaded.attach if a.cgroup not in replaced], loaded.file, loaded.base_dir)
    for cgroup, policy in overrides.items():
        try:
            make_policy(policy, {}, loaded.base_dir)
        except PolicyLoadError as exc:
            raise ConfigError(str(exc), where=f"--attach {cgroup}={policy}") from None


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check(file: Path) -> None:
    """Validate a scenario or daemon config and every policy it names."""
    from oomkit.config.check import check_file

    try:
        summary = check_file(file)
    except OOMKitError as exc:
        _fail(str(exc))
    click.echo(for_terminal(f"{file}: ok ({summary})"))


@main.command()
@click.argument("event_log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--index", type=int, default=-1, show_default=True,
              help="Which OOM of the log (0 is the first, -1 the last).")
@click.option("--attach", "attach", multiple=True, metavar="CGROUP=POLICY[{PARAMS}]",
              help="Attach POLICY to CGROUP for the replay (repeatable); none: the kernel alone. "
                   "PARAMS: a TOML inline table, e.g. '/=prefer-avoid{avoid = [\"^db\"]}'.")
@click.option("--json", "as_json", is_flag=True, help="Print the replayed record as JSON.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw the log's OOMs and the replayed decision, per cgroup (PNG or SVG by extension; "
                   "needs matplotlib).")
def replay(event_log: Path, index: int, attach: tuple[str, ...], as_json: bool,
           plot_file: Path | None) -> None:
    """Replay an OOM recorded by the daemon against other policies, offline."""
    from oomkit.config import attach_arg
    from oomkit.replay import replay_record

    try:
        if plot_file is not None:
            from oomkit import plot

            plot.check_file(plot_file)
        overrides = {a.cgroup: a for a in map(attach_arg.parse, attach)}
        with _policy_output(as_json):
            record = replay_record(event_log, index, overrides)
        if plot_file is not None:
            from oomkit.replay import log_records

            records = log_records(event_log)
            at = index % len(records)
            plot.draw(plot.from_log(records, at, record, f"oomkit replay {event_log} --index {index}"), plot_file)
    except OOMKitError as exc:
        _fail(str(exc))
    from oomkit.report import print_oom

    _emit(record, as_json, lambda: print_oom(record, f"replay of OOM {index} of {event_log}"))


@main.command()
@click.argument("logs", nargs=-1, required=True)
@click.option("--attach", "attach", multiple=True, metavar="CGROUP=POLICY[;CGROUP=POLICY...]",
              help="A candidate (repeatable: side by side); ';' joins one candidate's attachments; "
                   "CGROUP may be a glob.")
@click.option("--protect", multiple=True, metavar="PATTERN",
              help="Count kills of these (a /cgroup glob or a task-name regex; repeatable), "
                   "besides each candidate's own avoid and omit lists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), help="Write a chart (PNG; needs matplotlib).")
@click.option("--workers", type=click.IntRange(1, 1024), help="Processes (default: every core).")
@click.option("--dask", "dask_address", metavar="ADDRESS",
              help="Run on a Dask cluster (its scheduler's address), or 'local' for a LocalCluster.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
def evaluate(logs: tuple[str, ...], attach: tuple[str, ...], protect: tuple[str, ...], as_json: bool,
             plot_file: str | None, workers: int | None, dask_address: str | None, no_progress: bool) -> None:
    """Replay a fleet's recorded OOMs (LOGS: files, globs, directories; gzip or
    Parquet) under each candidate and the kernel alone, and compare with what happened."""
    from oomkit.fleet import cli as fleet_cli

    candidates = [_candidate(value, protect) for value in attach]
    try:
        fleet_cli.evaluate(logs, candidates, protect, as_json=as_json, plot_file=plot_file,
                           workers=workers, dask_address=dask_address,
                           progress=not no_progress and not as_json)
    except OOMKitError as exc:
        _fail(str(exc))


def _candidate(value: str, protect: tuple[str, ...]):
    from oomkit.config import attach_arg
    from oomkit.fleet.evaluate import Attachment, Candidate

    try:
        parsed = [attach_arg.parse(v) for v in attach_arg.split(value)]
    except OOMKitError as exc:
        _fail(str(exc))
    if not parsed or len({a.cgroup for a in parsed}) != len(parsed):
        _fail(f"--attach {value!r}: one policy per cgroup in a candidate")
    return Candidate.of(value, [Attachment(a.cgroup, a.policy, a.params) for a in parsed], protect)


@main.command()
@click.argument("logs", nargs=-1, required=True)
@click.option("--parquet", "out", required=True, type=click.Path(file_okay=False),
              help="The directory to write (partitioned host=/day=).")
def export(logs: tuple[str, ...], out: str) -> None:
    """Write event logs (files, globs, directories; gzip) as Parquet, partitioned by host and day."""
    from oomkit.fleet import cli as fleet_cli

    try:
        fleet_cli.export(logs, out)
    except OOMKitError as exc:
        _fail(str(exc))


@main.command()
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The daemon's TOML config.")
@click.option("--dry-run", is_flag=True, help="Decide and log, but release nothing.")
@click.option("-v", "--verbose", is_flag=True, help="Log more (--log-level debug).")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only (--log-level warning).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None,
              help="Log this and above (default info); kills and failures are warnings.")
def run(config: Path, dry_run: bool, verbose: bool, quiet: bool, log_level: str | None) -> None:
    """Run the daemon on this machine's real cgroups (root only)."""
    import logging
    import os

    from oomkit.text import JournalFormatter, stderr_is_journal

    if os.geteuid() != 0:
        _fail("oomkit run needs root: it writes cgroup files and kills processes (try sudo)")
    level = log_level or ("debug" if verbose else "warning" if quiet else "info")
    handler = logging.StreamHandler(sys.stderr)
    # Names in log lines are hostile: one escaped line each.  Under systemd, <N> priorities.
    journal = stderr_is_journal(os.environ.get("JOURNAL_STREAM"))
    handler.setFormatter((JournalFormatter if journal else TerminalFormatter)("%(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    from oomkit.daemon.main import run_daemon

    try:
        run_daemon(str(config), dry_run=dry_run)
    except OOMKitError as exc:
        _fail(str(exc))


@main.command()
@click.option("--state-dir", default="/run/oomkit", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The daemon's [daemon] state_dir.")
def restore(state_dir: Path) -> None:
    """Put back every setting a dead daemon left (the unit's ExecStopPost)."""
    import os

    if os.geteuid() != 0:
        _fail("oomkit restore needs root: it writes cgroup and /proc files (try sudo)")
    from oomkit.daemon.restore import restore_from_state

    try:
        lines = restore_from_state(state_dir)
    except OOMKitError as exc:
        _fail(str(exc))
    for line in lines:
        click.echo(f"oomkit: restored from {state_dir}: {line}")


@main.command()
@click.option("--state-dir", default="/run/oomkit", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The daemon's [daemon] state_dir.")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's status as JSON.")
def status(state_dir: Path, as_json: bool) -> None:
    """Show what the running daemon manages and what its OOMs came to (exit 1: none running)."""
    from oomkit.daemon.status import NotRunning, read_status

    try:
        st = read_status(state_dir)
    except NotRunning as exc:
        click.echo(f"oomkit: {for_terminal(str(exc))}", err=True)
        sys.exit(1)
    except OOMKitError as exc:
        _fail(str(exc))
    _emit(st, as_json, lambda: _print_status(st))


def _print_status(st) -> None:
    import json

    def t(v: object) -> str:
        return for_terminal(str(v))

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{t(k)} {n}" for k, n in sorted(d.items())) or "none"

    click.echo(f"oomkit {t(st.version)}, pid {st.pid}, running since {t(st.started_at)} "
               f"({t(st.running)}; config {t(st.config)})")
    click.echo(f"cgroup {t(st.hierarchy)} at {t(st.mount)}; tasks read by {t(st.task_reader)}"
               f"{'; DRY RUN: nothing is released' if st.dry_run else ''}")
    click.echo(f"event log {t(st.event_log)} ({st.event_log_errors} write errors); "
               f"reload failures: {st.reload_failures}"
               f"{f'; INTERNAL ERRORS: {st.internal_errors}' if st.internal_errors else ''}")
    click.echo(f"{len(st.managed)} cgroups managed, {len(st.attachments)} attachments:")
    for a in st.attachments:
        params = f" {t(json.dumps(a.params, sort_keys=True))}" if a.params else ""
        origin = f" (from {t(a.pattern)})" if a.pattern != a.cgroup else ""
        ceiling = f", ceiling {a.ceiling}" if a.ceiling is not None else ""
        click.echo(f"  {t(a.cgroup)}: {t(a.policy)}{params}{origin}{ceiling}")
        click.echo(f"      OOMs {a.ooms} ({counts(a.resolved)}), kills {a.kills}, failures {a.failures}"
                   f" ({a.consecutive_failures} in a row){', EJECTED' if a.ejected else ''}")
    click.echo(f"OOMs: {st.ooms} ({counts(st.ooms_by)}); kills by: {counts(st.kills_by)}")
    if st.last_ooms:
        click.echo("last OOMs:")
    for o in st.last_ooms:
        killed = ", ".join(f"pid {k.pid} ({t(k.name)}) by {t(k.by)}" for k in o.killed) or "nobody killed"
        ms = f", {o.latency_ms:g} ms" if o.latency_ms is not None else ""
        click.echo(f"  {t(o.detected_at)} {t(o.level)} {t(o.memcg)}: {t(o.resolved_by)} "
                   f"[{t(', '.join(o.policies)) or 'no policy'}]: {killed}{ms}")


@main.command("policies")
def list_policies() -> None:
    """List the built-in policies."""
    from oomkit.policies import BUILTINS

    for name, cls in BUILTINS.items():
        doc = (cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        click.echo(f"{name:18} {' '.join(doc.split())}")
        params = _params_of(cls)
        if params:
            click.echo(f"{'':18}   params: {params}")


def _params_of(cls: type) -> str:
    """``avoid = [], step = "64M"``: a policy's params and their defaults, as TOML would write them."""
    import inspect
    import json

    def toml(v: object) -> str:
        if v is None:
            return "unset"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (tuple, list)):
            return "[" + ", ".join(toml(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {toml(x)}" for k, x in v.items()) + "}"
        return json.dumps(v) if isinstance(v, str) else str(v)

    out = []
    for p in inspect.signature(cls).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out.append(p.name + ("" if p.default is p.empty else f" = {toml(p.default)}"))
    return ", ".join(out)


if __name__ == "__main__":  # pragma: no cover
    main()
