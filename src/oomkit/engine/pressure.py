"""Pressure for policies: the engine's side of upstream's ``bpf_psi_ops`` and
``bpf_out_of_memory()`` (v1, v2 of the series).

A policy names PSI triggers (``psi_triggers()``), gets each firing
(``handle_psi_event(event, k)``) and may declare an OOM there
(``k.declare_oom(cgroup, reason)``).  The host (the simulator, a live stack)
measures pressure and calls :meth:`Engine.psi_event`; the engine runs the
callback under the handler deadline and hands back the OOMs it declared, which
the host runs through the chain at once, as any OOM.

What oomkit allows, and why:

* ``declare_oom`` from ``handle_psi_event`` only (``handle_cgroup_online``
  gets no ``k``: it may only ask for triggers).
  From ``handle_out_of_memory`` it is refused with ``-EBUSY``: v3 forbids
  ``bpf_out_of_memory()`` in ``bpf_oom_ops`` because the OOM being handled is
  already a chain, and a nested one would run the same handlers again
  (recursion).  The engine refuses any declaration while a chain runs, however
  the call got there (a ``k`` kept from an earlier event is revoked anyway).
* The chain runs when the callback returns, not inside it: the callback runs
  under its own deadline in the policy's worker (or on the in-process
  handler thread), which the chain's handlers need, the declaring policy's
  own first of all; and its deadline must not be spent by other policies'
  handlers.
* A budget per attachment (``declare_budget`` per ``declare_window``, like
  BACKOFF's): a policy that keeps declaring gets ``-EAGAIN``, so a trigger
  that keeps firing (the kernel signals at most once per window) cannot turn
  into a kill per window for ever.
* Scope as for kills: a policy declares only within the cgroup it is attached
  to (the root attachment: anywhere, and ``/`` is a global OOM).
"""

from __future__ import annotations

import errno
from typing import Protocol

from oomkit.backends.base import Backend, Declaration, OOMEvent
from oomkit.context import Level, is_within
from oomkit.engine.attachment import Attachment
from oomkit.policy import Refused


class Host(Protocol):
    """What the calls need from the engine (``oomkit.engine.chain.Engine``)."""

    backend: Backend
    busy: bool

    def exists(self, path: str, scope: str) -> bool: ...

    def log_refused(self, att: Attachment, via: str, cgroup: object, refused: Refused) -> None: ...


class PressureCalls:
    """``k`` of ``handle_psi_event``: bound to one call of one attachment,
    revoked when it returns."""

    def __init__(self, engine: Host, att: Attachment, via: str):
        self._engine, self._att, self._via = engine, att, via
        self._revoked: str | None = None
        self.declared: list[OOMEvent] = []

    def declare_oom(self, cgroup: str, reason: str = "") -> int:
        refused = self._check(cgroup)
        if refused is not None:
            self._engine.log_refused(self._att, self._via, cgroup, refused)
            return refused
        if any(o.memcg == cgroup for o in self.declared):
            return 0            # declared already in this call: one chain for it
        level = Level.GLOBAL if cgroup == "/" else Level.MEMCG
        self.declared.append(OOMEvent(level, cgroup, declared=Declaration(
            self._att.label, self._att.cgroup, str(reason), self._via)))
        return 0

    def now(self) -> float:
        return self._engine.backend.clock.now()

    def revoke(self, why: str) -> None:
        self._revoked = why

    def _check(self, cgroup: str) -> Refused | None:
        engine, att = self._engine, self._att
        if self._revoked:
            return Refused(-errno.ETIME, self._revoked)
        if engine.busy:
            return Refused.ebusy("an OOM chain is running (no declare_oom from inside one)")
        if not isinstance(cgroup, str) or not is_within(cgroup, att.cgroup):
            return Refused.eperm(f"{cgroup!r} is outside {att.cgroup}, where this policy is attached")
        if not engine.exists(cgroup, att.cgroup):
            return Refused.esrch(f"no cgroup {cgroup}")
        if not att.declares.take(engine.backend.clock.now()):
            return Refused.eagain(f"declare budget spent ({att.declares.promises} per "
                                  f"{att.declares.window:g}s)")
        return None
