"""``oomkit check``: validate a file and load every policy it names, running nothing."""

from __future__ import annotations

from pathlib import Path

from oomkit.config.common import read_toml
from oomkit.engine.attachment import Recipe
from oomkit.engine.chain import EngineSettings
from oomkit.errors import ConfigError, PolicyLoadError
from oomkit.policies import make_policy


def check_file(path: str | Path) -> str:
    """Raise ConfigError on the first problem; return a one-line summary."""
    data = read_toml(path)
    if "machine" in data:
        from oomkit.config.scenario import resolve

        scenario = resolve(data, str(path), Path(path).resolve().parent)
        # Building the simulator catches a start that does not fit its limits, and
        # builds every policy in its worker (a load error names the attach[] key).
        from oomkit.backends.sim.simulator import Simulator

        Simulator(scenario).engine.close()
        return (f"scenario: {len(scenario.cgroups)} cgroups, {len(scenario.tasks)} tasks, "
                f"{len(scenario.attach)} attachments, {len(scenario.events)} events")
    if "daemon" in data:
        from oomkit.config.daemon import resolve as resolve_daemon

        config = resolve_daemon(data, str(path), Path(path).resolve().parent)
        check_policies(config.attach, str(path), config.base_dir, config.settings)
        _check_event_log(config.event_log, str(path))
        return f"daemon config: {len(config.attach)} attachments"
    raise ConfigError("neither a scenario (it has no [machine] table) nor a daemon config "
                      "(no [daemon] table)", file=str(path))


def _check_event_log(event_log: str, file: str) -> None:
    """As root (the daemon's user), say when the event log cannot be created."""
    import os

    from oomkit.daemon.eventlog import log_problem

    problem = log_problem(event_log) if os.geteuid() == 0 else None
    if problem:
        raise ConfigError(f"the event log {event_log} cannot be created: {problem}", file=file,
                          where="daemon.event_log", hint="the daemon would keep its records in "
                          "memory only")


def check_policies(attachments, file: str, base_dir: Path, settings: EngineSettings | None = None,
                   keep: list | None = None) -> None:
    """Build each policy, then let it go: in a worker (the default) or, with
    ``settings.runner`` "inprocess" (and for the CLI's ``--in-process``), here.
    With ``keep`` (a list), the workers built are appended to it instead of
    ending (a reload hands them to its engine: a policy is not built twice)."""
    for i, att in enumerate(attachments):
        try:
            if settings is None or settings.runner == "inprocess":
                make_policy(att.policy, att.params, base_dir)
            else:
                check_recipe(Recipe(att.policy, dict(att.params), str(base_dir)), settings, keep)
        except PolicyLoadError as exc:
            if keep:
                for worker in keep:
                    worker.kill()
                keep.clear()
            raise ConfigError(str(exc), file=file, where=f"attach[{i}].policy") from None


def check_recipe(recipe: Recipe, settings: EngineSettings, keep: list | None = None) -> None:
    """Build ``recipe``'s policy in a worker confined as the daemon's would be."""
    import time

    from oomkit.sandbox.runner import LOAD_TIMEOUT, Confinement, Worker

    worker = Worker(recipe, Confinement(settings.policy_user, settings.policy_memory))
    try:
        worker.wait_ready(time.monotonic() + LOAD_TIMEOUT)
    except BaseException:
        worker.kill()
        raise
    if keep is None:
        worker.kill()
    else:
        keep.append(worker)
