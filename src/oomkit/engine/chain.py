"""The engine: runs the chain of attached policies for one OOM.

This is ``bpf_handle_oom()`` of the upstream proposal, with what the review
asked for on top.  Handlers run from the OOMing memcg up to the root (for a
global or numa OOM, only the root attachment); the chain stops at the first
handler that really released memory (the dual check: verdict *and*
``memory_freed``), at an accepted BACKOFF whose promise is kept, or, beyond
the kernel, as soon as the OOM condition is gone, so a second handler never
kills needlessly.  When the whole chain fails, the backend's kernel OOM
killer acts.

The engine does not know which backend it drives (``oomkit.backends.base``).

Where a policy's code runs is the runner's business: an attachment made from
a :class:`~oomkit.engine.attachment.Recipe` runs in a worker process of its
own (``oomkit.sandbox``: unprivileged, filtered, capped, killed at its
deadline) unless ``EngineSettings.runner`` is ``"inprocess"``; a policy
*instance* handed to :meth:`Engine.attach` already lives in this process and
runs here, on the :class:`~oomkit.engine.guard.Guard`'s thread.  In process,
a policy can reach everything the daemon can: for debugging only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oomkit.backends.base import Backend, OOMEvent, Release
from oomkit.context import CgroupInfo, Level, OOMContext, TaskInfo, ancestors, is_within
from oomkit.engine import snapshot
from oomkit.engine.actions import Actions
from oomkit.engine.attachment import Attachment, Recipe
from oomkit.engine.backoff import BackoffBudget
from oomkit.engine.guard import Guard, Outcome, RemoteError
from oomkit.engine.pressure import PressureCalls
from oomkit.errors import AttachError
from oomkit.policy import OOMPolicy, PressureEvent, PressureTrigger, Refused, Verdict
from oomkit.schema import HandlerRecord, Killed, OOMRecord, ResolvedBy

if TYPE_CHECKING:  # pragma: no cover
    from oomkit.sandbox.runner import Worker, WorkerRunner

log = logging.getLogger("oomkit")


@dataclass(frozen=True)
class EngineSettings:
    handler_deadline: float = 0.050      # wall seconds per handler call
    handler_budget: int | None = None    # Python lines per handler call (deterministic; simulator)
    backoff_budget: int = 3              # promises per attachment per window
    backoff_window: float = 10.0
    backoff_wait: float = 0.5            # how long a promise may take to come true
    max_failures: int = 3                # consecutive failures before ejection
    io_cap: float = 1.0                  # most of oomkit's own I/O added to a handler's deadline
    record_timing: bool = False          # put wall times in records (live only)
    snapshot: bool = False               # put the context's snapshot in records (live: for replay)
    runner: str = "worker"               # where a Recipe's policy runs: "worker" or "inprocess" (unsafe)
    policy_user: str = "nobody"          # the worker's uid and gid, when oomkit is root
    policy_memory: int | None = 256 << 20   # the worker's address-space cap (RLIMIT_AS)
    deadline_clock: str = "wall"         # a worker's deadline: "wall", or "cpu" (its CPU time; simulator)
    declare_budget: int = 3              # k.declare_oom per attachment per window
    declare_window: float = 30.0


def describe(error: BaseException) -> str:
    """An error as the record says it: ``Type: message`` (a worker's comes worded)."""
    if isinstance(error, RemoteError):
        return error.text
    return f"{type(error).__name__}: {error}"


ReleaseHook = Callable[[Release, str, str, str], None]


class Engine:
    def __init__(self, backend: Backend, settings: EngineSettings | None = None,
                 on_release: ReleaseHook | None = None, tick: Callable[[], None] | None = None):
        self.backend = backend
        self.settings = settings or EngineSettings()
        self.attachments: dict[str, Attachment] = {}
        self.ejected: list[str] = []
        self.on_release = on_release
        self.busy = False                # a chain is running: no OOM may be declared
        self._victims: list[TaskInfo] = []   # killed in this chain, as seen before (the snapshot)
        self._states: snapshot.States = {}   # the last snapshot's task states (snapshot.take)
        self._triggers: dict[str, tuple[PressureTrigger, ...]] = {}   # attachment -> its triggers
        # ``tick`` (the live daemon's watchdog heartbeat) goes on while a handler runs.
        self._guard = Guard(self.settings.handler_deadline, self.settings.handler_budget,
                            io_cap=self.settings.io_cap, tick=tick)
        self._tick = tick
        self._workers: WorkerRunner | None = None

    @property
    def workers(self) -> WorkerRunner:
        if self._workers is None:
            from oomkit.sandbox.runner import Confinement, WorkerRunner

            s = self.settings
            self._workers = WorkerRunner(s.handler_deadline, s.handler_budget, io_cap=s.io_cap,
                                         tick=self._tick,
                                         confinement=Confinement(s.policy_user, s.policy_memory),
                                         clock=s.deadline_clock)
        return self._workers

    def adopt(self, workers: list) -> None:
        """Policy workers built beforehand (a reload's, on its thread): attach()
        takes one built from the same recipe instead of building it again."""
        if workers:
            self.workers.spares.extend(workers)

    def drop_spares(self) -> None:
        """End the adopted workers no attachment took."""
        if self._workers is not None:
            self._workers.drop_spares()

    # -- attachments ---------------------------------------------------------

    def attach(self, cgroup: str, policy: OOMPolicy | Recipe, *, ceiling: int | None = None) -> Attachment:
        """Attach ``policy`` to ``cgroup``; a second one there is an error (EEXIST).
        A Recipe is built in its worker (PolicyLoadError if it cannot be), or here
        with the in-process runner; an instance runs here."""
        if cgroup in self.attachments:
            raise AttachError(f"{cgroup} already has policy {self.attachments[cgroup].label} attached",
                              hint="one policy per cgroup, as the kernel's EEXIST")
        s = self.settings
        instance, worker = None, None
        if not isinstance(policy, Recipe):
            instance = policy
        elif s.runner == "inprocess":
            from oomkit.policies.loader import make_policy

            instance = make_policy(policy.ref, policy.params, policy.base_dir)
        else:
            worker = self.workers.start(policy)
        att = Attachment(cgroup, instance, ceiling, BackoffBudget(s.backoff_budget, s.backoff_window),
                         worker=worker, declares=BackoffBudget(s.declare_budget, s.declare_window))
        self.attachments[cgroup] = att
        return att

    def detach(self, cgroup: str) -> Attachment | None:
        self._triggers.pop(cgroup, None)
        att = self.attachments.pop(cgroup, None)
        if att is not None and att.worker is not None:
            self.workers.stop(att.worker)
        return att

    def close(self) -> None:
        """Detach everything (its policy workers end) and end the in-process
        handlers' thread (a reload replaces the engine)."""
        for cg in list(self.attachments):
            self.detach(cg)
        self._guard.close()

    def cgroup_offline(self, path: str) -> None:
        """``path`` was removed: tell the policies at and above it, drop those at or below."""
        for cg, att in list(self.attachments.items()):
            if is_within(path, cg) or is_within(cg, path):
                self._triggers.pop(cg, None)        # asked again: a trigger there is gone
                self._notify_offline(att, path)
            if is_within(cg, path):
                self.detach(cg)

    def chain(self, oom: OOMEvent) -> list[Attachment]:
        start = oom.memcg if oom.level == "memcg" else "/"
        return [self.attachments[cg] for cg in ancestors(start) if cg in self.attachments]

    # -- one OOM ----------------------------------------------------------------

    def handle(self, oom: OOMEvent) -> OOMRecord:
        record = OOMRecord.new(round(self.backend.clock.now(), 6), oom.level, oom.memcg,
                               trigger=oom.trigger, requested=oom.requested, nodes=oom.nodes)
        if oom.declared is not None:
            d = oom.declared
            record.declared_by = f"{d.policy} at {d.attached}"
            record.declared_reason, record.declared_via = d.reason, d.via
        self.busy = True
        try:
            frozen = snapshot.freeze(self.backend, oom) if self.settings.snapshot else None
            self._victims.clear()
            first = self._run_chain(oom, record, frozen)
            if self.settings.snapshot:
                # Each task's state kept from one snapshot to the next (only those seen
                # again): a standing decision's rehearsals snapshot the same read 4 times.
                states: snapshot.States = {}
                record.snapshot = snapshot.take(self.backend, oom, first, frozen, self._victims,
                                                (self._states, states))
                self._states = states
        finally:
            self.busy = False
        return record

    def _condition_gone(self, oom: OOMEvent, record: OOMRecord) -> bool:
        """A declared OOM holds until a handler releases memory (no charge failed
        that could now fit); the kernel's killer acts if none does."""
        if oom.declared is not None:
            return record.memory_freed > 0
        return self.backend.condition_gone(oom)

    def _run_chain(self, oom: OOMEvent, record: OOMRecord,
                   frozen: dict[str, CgroupInfo] | None) -> OOMContext | None:
        """Run the handlers until one ends the OOM, else the kernel's killer;
        returns the first handler's context (what it read, for the snapshot)."""
        chain = self.chain(oom)
        # One OOM, one totalpages: a live backend reads it from /proc and cgroupfs.
        pages = self.backend.totalpages(oom) if chain else 0
        first = None
        for i, att in enumerate(chain):
            if i and self._condition_gone(oom, record):
                self._gone(record)
                return first
            oc = self._context(att, oom, record, pages, frozen if i == 0 else None)
            first = first or oc
            if self._accept(att, oom, self._run(att, oom, record, oc), record):
                return first
        if self._condition_gone(oom, record):
            self._gone(record)
        else:
            if self.settings.snapshot and first is not None:
                snapshot.preload(first, oom)    # the kernel's victim, before the kernel kills it
            self.fall_back(oom, record)
        return first

    @staticmethod
    def _gone(record: OOMRecord) -> None:
        """The OOM ended between handlers: by a release that was not claimed, or by itself."""
        if record.memory_freed:
            record.resolved_by = ResolvedBy.POLICY
        else:
            record.resolved_by = ResolvedBy.KERNEL
            record.note = "the OOM condition cleared without a release"

    def _accept(self, att: Attachment, oom: OOMEvent, h: HandlerRecord, record: OOMRecord) -> bool:
        """Does this handler's verdict end the chain? Records why not, if not."""
        if h.verdict == Verdict.HANDLED:
            if h.freed > 0:
                record.resolved_by = ResolvedBy.POLICY
                return True
            self._demote(h, "false claim: HANDLED but no release action released memory")
        elif h.verdict == Verdict.BACKOFF:
            if h.freed > 0:
                # BACKOFF promises that nothing destructive was done; this handler
                # did release memory, so it ends the chain as HANDLED would.
                h.claimed, h.verdict = h.verdict, Verdict.HANDLED
                h.error = "BACKOFF after releasing memory: counted as HANDLED"
                record.resolved_by = ResolvedBy.POLICY
                return True
            return self._backoff(att, oom, h, record)
        return False

    def _backoff(self, att: Attachment, oom: OOMEvent, h: HandlerRecord, record: OOMRecord) -> bool:
        now = self.backend.clock.now()
        if not att.backoff.take(now):
            self._demote(h, f"backoff budget spent ({att.backoff.promises} per "
                            f"{att.backoff.window:g}s)")
            return False
        if self.backend.wait_for_relief(oom, self.settings.backoff_wait):
            record.resolved_by = ResolvedBy.BACKOFF
            return True
        self._demote(h, f"backoff promise not kept within {self.settings.backoff_wait * 1000:g} ms")
        return False

    @staticmethod
    def _demote(h: HandlerRecord, why: str) -> None:
        h.claimed, h.verdict, h.error = h.verdict, Verdict.PASS, why

    def _run(self, att: Attachment, oom: OOMEvent, record: OOMRecord, oc: OOMContext) -> HandlerRecord:
        h = HandlerRecord.new(att.cgroup, att.label)
        record.handlers.append(h)
        k = Actions(backend=self.backend, oom=oom, attachment=att, oc=oc, handler=h,
                    record=record, by=f"policy:{att.cgroup}", on_release=self.on_release)
        outcome = self._callback(att, lambda p: p.handle_out_of_memory(oc, k),
                                 lambda w: self.workers.handle(w, oc, k),
                                 on_timeout=lambda: k.revoke("the handler's deadline passed"))
        self._victims.extend(k.victims)     # the snapshot's, if it reads the tasks after the chain
        if self.settings.record_timing:
            h.ms = round(outcome.elapsed * 1000, 3)
        failure = self._failure(outcome)
        if failure:
            h.verdict, h.error = Verdict.PASS, failure
            self._count_failure(att, record)
            return h
        att.failures = 0
        h.verdict = outcome.value
        return h

    def _failure(self, outcome: Outcome) -> str | None:
        if outcome.timed_out:
            return (f"deadline: still running after {self.settings.handler_deadline * 1000:g} ms "
                    f"of its own time ({outcome.io * 1000:.1f} ms more reading and acting for it"
                    f"{'; ' + outcome.note if outcome.note else ''})")
        if outcome.error is not None:
            return describe(outcome.error)
        if not isinstance(outcome.value, Verdict):
            return f"returned {outcome.value!r}, not a Verdict"
        return None

    def _count_failure(self, att: Attachment, record: OOMRecord | None) -> None:
        att.failures += 1
        if att.failures >= self.settings.max_failures and self.attachments.get(att.cgroup) is att:
            self.detach(att.cgroup)
            self.ejected.append(att.cgroup)
            if record is not None:
                record.ejected.append(att.cgroup)
            log.warning("oomkit: ejected policy %s at %s after %d consecutive failures",
                        att.label, att.cgroup, att.failures)

    def _context(self, att: Attachment, oom: OOMEvent, record: OOMRecord, pages: int,
                 frozen: dict[str, CgroupInfo] | None) -> OOMContext:
        backend = self.backend
        cgroups = backend.cgroups(oom, att.cgroup)
        if frozen:
            cgroups.preload(frozen)
        return OOMContext(level=oom.level, memcg=oom.memcg, attached_to=att.cgroup,
                          nodes=oom.nodes, requested=oom.requested, cgroups=cgroups,
                          tasks=backend.tasks(oom, att.cgroup),
                          totalpages=pages,
                          freed=lambda: record.memory_freed, in_flight=backend.in_flight)

    def fall_back(self, oom: OOMEvent, record: OOMRecord) -> None:
        """Let the backend's kernel OOM killer act, and record what it did."""
        outcome = self.backend.kernel_fallback(oom)
        for r in outcome.killed:
            record.killed.append(Killed(name=r.name, pid=r.pid, cgroup=r.cgroup, by="kernel"))
            if self.on_release:
                self.on_release(r, "kernel", "/", "the kernel OOM killer")
        if outcome.waiting_for is not None:
            record.note = f"kernel waits for exiting victim pid {outcome.waiting_for}"
        elif outcome.note:
            record.note = outcome.note
        record.resolved_by = ResolvedBy.KERNEL if outcome.resolved else ResolvedBy.UNRESOLVED

    def _callback(self, att: Attachment, here: Callable[[OOMPolicy], object],
                  there: Callable[[Worker], tuple[Outcome, Worker]],
                  on_timeout: Callable[[], None] = lambda: None) -> Outcome:
        """One of ``att``'s policy's callbacks, where the policy lives: ``there`` in
        its worker (which the runner may replace), else ``here`` on the guard's
        thread, under the same deadline either way."""
        if att.worker is not None:
            outcome, att.worker = there(att.worker)
            return outcome
        policy = att.policy
        assert policy is not None
        return self._guard.call(lambda: here(policy), on_timeout=on_timeout)

    def _notify_offline(self, att: Attachment, path: str) -> None:
        outcome = self._callback(att, lambda p: p.handle_cgroup_offline(path),
                                 lambda w: self.workers.offline(w, path))
        if outcome.error is not None or outcome.timed_out:
            log.warning("oomkit: %s.handle_cgroup_offline(%s) failed: %s", att.label, path,
                        describe(outcome.error) if outcome.error is not None else "deadline")

    # -- pressure (upstream's bpf_psi_ops; see oomkit.engine.pressure) ---------------

    def psi_triggers(self) -> list[tuple[Attachment, PressureTrigger]]:
        """Every attached policy's PSI triggers that the kernel would take, within
        its attachment (asked once, and again after a cgroup comes or goes)."""
        out: list[tuple[Attachment, PressureTrigger]] = []
        for cg, att in list(self.attachments.items()):
            if cg not in self._triggers:
                self._triggers[cg] = self._ask_triggers(att)
            out.extend((att, t) for t in self._triggers[cg])
        return out

    def _ask_triggers(self, att: Attachment) -> tuple[PressureTrigger, ...]:
        # In process the triggers are listed on the guard's thread (a generator is policy code).
        outcome = self._callback(att, lambda p: tuple(p.psi_triggers()), self.workers.triggers)
        if self._callback_failed(att, "psi_triggers", outcome):
            return ()
        good = []
        for t in outcome.value:
            why = (f"{t!r} is not a PressureTrigger" if not isinstance(t, PressureTrigger)
                   else t.problem() or (None if is_within(t.cgroup, att.cgroup)
                                        else f"{t.cgroup} is outside {att.cgroup}"))
            if why:
                log.warning("oomkit: %s at %s: PSI trigger ignored: %s", att.label, att.cgroup, why)
            else:
                good.append(t)
        return tuple(good)

    def psi_event(self, att: Attachment, event: PressureEvent) -> list[OOMEvent]:
        """``att``'s trigger fired: its ``handle_psi_event``, under the handler
        deadline (in its worker, if it has one); returns the OOMs it declared,
        for the host to handle now."""
        if self.attachments.get(att.cgroup) is not att:
            return []       # detached or ejected since the trigger was taken
        k = PressureCalls(self, att, "handle_psi_event")
        outcome = self._callback(att, lambda p: p.handle_psi_event(event, k),
                                 lambda w: self.workers.psi_event(w, event, k),
                                 on_timeout=lambda: k.revoke("the callback's deadline passed"))
        k.revoke("the callback returned")
        if self._callback_failed(att, "handle_psi_event", outcome):
            return []
        att.failures = 0
        return k.declared

    def cgroup_online(self, path: str) -> None:
        """``path`` appeared: tell the policies at and above it; their triggers are
        asked again."""
        for cg, att in list(self.attachments.items()):
            if not is_within(path, cg):
                continue
            self._triggers.pop(cg, None)
            outcome = self._callback(att, lambda p: p.handle_cgroup_online(path),
                                     lambda w: self.workers.online(w, path))
            self._callback_failed(att, "handle_cgroup_online", outcome)

    def _callback_failed(self, att: Attachment, name: str, outcome: Outcome) -> bool:
        """A pressure callback that raised or overran counts as a handler failure."""
        if not outcome.timed_out and outcome.error is None:
            return False
        why = self._failure(outcome)
        log.warning("oomkit: %s.%s at %s failed: %s", att.label, name, att.cgroup, why)
        self._count_failure(att, None)
        return True

    def exists(self, path: str, scope: str) -> bool:
        """Is there a cgroup ``path`` within ``scope`` (as the backend sees it)?"""
        return path in self.backend.cgroups(OOMEvent(Level.MEMCG, path), scope)

    @staticmethod
    def log_refused(att: Attachment, via: str, cgroup: object, refused: Refused) -> None:
        log.info("oomkit: %s at %s: declare_oom(%r) from %s refused: %s", att.label, att.cgroup,
                 cgroup, via, refused)
