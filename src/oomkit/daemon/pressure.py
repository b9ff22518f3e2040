"""The policies' own PSI triggers, live (``OOMPolicy.psi_triggers()``; upstream's
``bpf_psi_ops``): each becomes a kernel PSI trigger on the cgroup's
``memory.pressure`` (cgroup v2) or on ``/proc/pressure/memory`` (the root, on
either hierarchy: cgroup v1 has no per-cgroup PSI), registered in the daemon's
one wait.  When one fires, the policy's ``handle_psi_event`` runs (under its
deadline, in its worker), and every OOM it declared with ``k.declare_oom``
runs the chain at once, recorded as declared."""

from __future__ import annotations

import logging
import select
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from oomkit.backends.base import OOMEvent
from oomkit.backends.live import LiveBackend, LiveStack
from oomkit.engine.chain import Engine
from oomkit.errors import KernelError
from oomkit.linux import notify, parse
from oomkit.policy import PressureEvent, PressureTrigger

log = logging.getLogger("oomkit")


def trigger_spec(t: PressureTrigger) -> str:
    """The line written to a pressure file: ``"<some|full> <stall us> <window us>"``."""
    return f"{t.kind} {round(t.threshold * 1e6)} {round(t.window * 1e6)}"


class Host(Protocol):
    """What this needs from the daemon."""

    engine: Engine
    stack: LiveStack

    @property
    def backend(self) -> LiveBackend: ...

    @property
    def version(self) -> str: ...

    def register(self, fd: int, callback: Callable[..., Any], *args: Any, events: int = ...) -> None: ...

    def unregister(self, fd: int, close: bool = True) -> None: ...

    def handle(self, oom: OOMEvent, pressure: bool = False) -> None: ...


class PolicyPressure:
    def __init__(self, daemon: Host):
        self.daemon = daemon
        self.fds: dict[tuple[str, PressureTrigger], int] = {}     # (attached cgroup, trigger) -> fd
        self._said: set[str] = set()

    def sync(self) -> None:
        """Register exactly the triggers the attached policies ask for now."""
        wanted = {(att.cgroup, t) for att, t in self.daemon.engine.psi_triggers()}
        for key in [k for k in self.fds if k not in wanted]:
            self.daemon.unregister(self.fds.pop(key))
        for key in sorted(wanted - set(self.fds), key=str):
            self._take(*key)

    def _take(self, attached: str, t: PressureTrigger) -> None:
        path = self.daemon.stack.pressure_file(t.cgroup)
        if path is None:
            self._say(t.cgroup, f"oomkit: no PSI trigger for {t.cgroup} (asked by the policy at "
                                f"{attached}): cgroup {self.daemon.version} has no per-cgroup "
                                "pressure; only / (the system-wide /proc/pressure/memory)")
            return
        try:
            fd = notify.psi_trigger(path, trigger_spec(t))
        except KernelError as exc:
            self._say(t.cgroup, f"oomkit: the PSI trigger {trigger_spec(t)!r} on {t.cgroup} (asked "
                                f"by the policy at {attached}) was refused: {exc}")
            return
        self.fds[(attached, t)] = fd
        self.daemon.register(fd, self._fired, attached, t, path, events=select.POLLPRI)

    def _say(self, cgroup: str, line: str) -> None:
        if cgroup not in self._said:
            self._said.add(cgroup)
            log.warning(line)

    def _fired(self, attached: str, t: PressureTrigger, path: Path, mask: int) -> None:
        engine = self.daemon.engine
        att = engine.attachments.get(attached)
        if att is None:
            return      # detached or ejected since: the next sync drops the trigger
        try:
            now = parse.psi(Path(path).read_text())
        except (OSError, ValueError) as exc:
            log.debug("oomkit: %s unreadable (%s): the event carries no averages", path, exc)
            now = {}
        event = PressureEvent(t, at=self.daemon.backend.clock.now(),
                              some=now.get("some", {}).get("avg10"), full=now.get("full", {}).get("avg10"))
        log.info("oomkit: pressure on %s (%s) for the policy at %s", t.cgroup, trigger_spec(t), attached)
        for oom in engine.psi_event(att, event):
            self.daemon.handle(oom, pressure=True)

    def close(self) -> None:
        for fd in self.fds.values():
            self.daemon.unregister(fd)
        self.fds.clear()
