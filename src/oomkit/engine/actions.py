"""The release actions a policy gets as ``k``: the only way it frees memory.

Like the kernel's release kfuncs (``bpf_oom_kill_process()`` and the
limit-raising helper the review asked for), each action checks what it is
asked, acts through the backend, and adds what it really released for this
OOM to ``memory_freed`` (``bpf_memory_freed``), which the policy can read but
not write.  A refused action returns :class:`~oomkit.policy.Refused` (a
negative errno that says why) and is recorded like every other action.

Rules (from the upstream design and the review):
* a kill is the kernel OOM killer's kill (``bpf_oom_kill_process()`` kills
  "in exactly the same way"): the victim, the rest of its
  ``memory.oom.group`` (the highest one up to the OOMing memcg), and every
  process sharing the mm of one that dies; :func:`oomkit.oom_kill.oom_kill_set`
  decides who, for the kernel model and here alike.  Every one is recorded.
* scope: a policy acts only inside the subtree of the cgroup it is attached
  to; the root attachment acts anywhere.
* ``oom_score_adj`` -1000 is never killed (``OOM_SCORE_ADJ_MIN``); neither
  is anything the backend protects (oomkit itself, its watchdog, pid 1).
* only what relieves this OOM counts as released: memory charged inside the
  OOMing memcg (anywhere, for a global OOM; on the constrained nodes for a
  numa OOM), or headroom added to the limit that was hit.
* after the handler's deadline the actions are revoked: a handler that runs
  late can no longer touch anything.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from oomkit import oom_kill
from oomkit.context import Level, OOMContext, TaskInfo, is_within, metered
from oomkit.oom_kill import OOM_SCORE_ADJ_MIN
from oomkit.policy import Refused
from oomkit.schema import ActionRecord, HandlerRecord, Killed, LimitChange, OOMRecord
from oomkit.units import format_size

if TYPE_CHECKING:  # pragma: no cover
    from oomkit.backends.base import Backend, OOMEvent
    from oomkit.engine.attachment import Attachment


def _metered(action):
    """An action's own work (system calls, /proc) is oomkit's time, not the policy's."""
    @functools.wraps(action)
    def run(self, *args, **kwargs):
        with metered():
            return action(self, *args, **kwargs)
    return run


class Actions:
    """``k``: the trusted release actions, bound to one handler call."""

    def __init__(self, *, backend: Backend, oom: OOMEvent, attachment: Attachment,
                 oc: OOMContext, handler: HandlerRecord, record: OOMRecord, by: str,
                 on_release=None):
        self._backend, self._oom, self._att, self._oc = backend, oom, attachment, oc
        self._handler, self._record, self._by = handler, record, by
        self._on_release = on_release
        self._revoked: str | None = None
        self._raised: dict[str, int] = {}   # limits this call set: newer than the context's
        self.victims: list[TaskInfo] = []   # each task killed, as seen before the kill (the snapshot's)

    # -- what policies call ------------------------------------------------------

    @_metered
    def kill_task(self, task: TaskInfo | int, reason: str = "") -> int:
        """SIGKILL one task. Returns bytes released for this OOM, or Refused."""
        # Always judge the live task by its pid, never the TaskInfo handed in: a
        # stale or rebuilt (``t._replace(...)``) TaskInfo must not pass the
        # scope and -1000 checks for a task that fails them.
        pid = task.pid if isinstance(task, TaskInfo) else int(task)
        target = self._oc.tasks.by_pid(pid)
        if target is None:  # outside the attachment's view: EPERM if it exists at all
            target = self._backend.task(pid)
        label = f"pid {pid}"
        refused = self._check_revoked() or self._check_task(target, pid)
        if refused or target is None:       # _check_task refuses a missing task
            return self._log("kill_task", label, reason, refused or Refused.esrch(f"no task {pid}"))
        if target.exiting or target.pid in self._backend.in_flight():
            return self._log("kill_task", label, reason, 0, "already exiting")
        domain = self._oom.memcg if self._oom.level == Level.MEMCG else "/"
        group = oom_kill.oom_group(target, self._oc.cgroups, domain)
        kill = oom_kill.oom_kill_set(target, group, self._pool(target.cgroup),
                                     self._backend.mm_sharers, self._backend.protected)
        notes = []
        if group is not None:
            notes.append(f"memory.oom.group {group}: {len(kill.members) - 1} more")
        if kill.sharers:
            notes.append(f"{len(kill.sharers)} sharing its mm")
        freed = self._kill(kill, reason)
        return self._log("kill_task", label, reason, freed, "; ".join(notes) or None)

    @_metered
    def kill_cgroup(self, path: str, reason: str = "") -> int:
        """SIGKILL every task of ``path``'s subtree (``memory.oom.group`` semantics:
        ``-1000`` tasks are skipped), and every process sharing the mm of one
        of them. Returns bytes released, or Refused."""
        refused = self._check_revoked() or self._check_scope(path)
        if refused:
            return self._log("kill_cgroup", path, reason, refused)
        members = self._oc.tasks.in_cgroup(path)
        kill = oom_kill.oom_kill_set(None, path, self._pool(path), self._backend.mm_sharers,
                                     self._backend.protected)
        if not kill.members:
            return self._log("kill_cgroup", path, reason, 0, "no killable task")
        skipped = len(members) - len(kill.members)
        notes = [f"skipped {skipped} unkillable or exiting"] if skipped else []
        if kill.sharers:
            notes.append(f"{len(kill.sharers)} sharing their mm")
        return self._log("kill_cgroup", path, reason, self._kill(kill, reason),
                         "; ".join(notes) or None)

    @_metered
    def raise_limit(self, path: str, new_limit: int, reason: str = "") -> int:
        """Raise ``path``'s memory limit to ``new_limit`` bytes, within the parent's
        headroom and the attachment's ceiling. Returns the bytes added to the
        limit that was hit (0 for any other cgroup), or Refused."""
        label = f"{path} -> {format_size(new_limit)}"
        refused = self._check_revoked() or self._check_scope(path) or self._check_raise(path, new_limit)
        if refused:
            return self._log("raise_limit", label, reason, refused)
        old = self._limit(path)
        assert old is not None          # _check_raise refused a cgroup without a limit
        self._backend.set_limit(path, int(new_limit))
        self._raised[path] = int(new_limit)
        self._record.limits.append(LimitChange(cgroup=path, old=old, new=int(new_limit)))
        # Headroom added to the limit that was hit is memory freed for this OOM.
        freed = int(new_limit) - old if path == self._oom.memcg else 0
        self._handler.freed += freed
        return self._log("raise_limit", label, reason, freed)

    @_metered
    def headroom(self, path: str) -> int:
        """How far ``path``'s limit may be raised now (parents and ceiling)."""
        limit = self._limit(path) if path in self._oc.cgroups else None
        if limit is None:
            return 0
        room = self._backend.headroom(path)
        if self._att.ceiling is not None:
            room = min(room, self._att.ceiling - limit)
        return max(0, room)

    @_metered
    def is_oom_victim(self, task: TaskInfo | int) -> bool:
        """``bpf_task_is_oom_victim()``: is this task already dying?"""
        pid = task.pid if isinstance(task, TaskInfo) else int(task)
        info = task if isinstance(task, TaskInfo) else self._oc.tasks.by_pid(pid)
        return pid in self._backend.in_flight() or bool(info and info.exiting)

    def declare_oom(self, cgroup: str, reason: str = "") -> int:
        """Refused (``-EBUSY``): this handler is already in a chain, and v3 forbids
        ``bpf_out_of_memory()`` in ``bpf_oom_ops`` (a nested chain is recursion).
        Declare from ``handle_psi_event`` (:mod:`oomkit.engine.pressure`)."""
        return self._log("declare_oom", str(cgroup), reason,
                         Refused.ebusy("declare_oom from an OOM handler (already in a chain)"))

    def now(self) -> float:
        """The backend's clock, in seconds (simulated time in the simulator), for a
        policy that compares what it sees from one OOM to the next; never sleep on it."""
        return self._backend.clock.now()

    # -- the engine's side -------------------------------------------------------

    def revoke(self, why: str) -> None:
        self._revoked = why

    def _pool(self, path: str) -> Sequence[TaskInfo]:
        """Where a kill's group members and mm sharers are looked for: the OOM's
        own tasks (already read, as a rule), or the attachment's for a kill
        outside them.  The kernel looks at every process for sharers; oomkit
        sees what its attachment sees."""
        if self._oom.level == Level.MEMCG and is_within(path, self._oom.memcg):
            return self._oc.tasks.in_cgroup(self._oom.memcg)
        return self._oc.tasks

    def _kill(self, kill: oom_kill.KillSet, reason: str) -> int:
        released = self._backend.kill(kill.victims, self._oom, cgroup=kill.group)
        dead = {r.pid for r in released}
        self.victims += [t for t in kill.victims if t.pid in dead]
        shared = {t.pid for t in kill.sharers}
        if shared:
            # One address space comes back once: counted with the task that held the kill.
            released = [replace(r, relief=0) if r.pid in shared else r for r in released]
        for r in released:
            self._record.killed.append(Killed(name=r.name, pid=r.pid, cgroup=r.cgroup, by=self._by))
            if self._on_release:
                self._on_release(r, self._handler.policy, self._att.cgroup, reason)
        freed = sum(r.relief for r in released)
        self._handler.freed += freed
        return freed

    def _limit(self, path: str) -> int | None:
        """``path``'s limit now: as this call raised it, else as the context read it."""
        return self._raised.get(path, self._oc.cgroups[path].limit)

    def _check_revoked(self) -> Refused | None:
        return Refused(-errno.ETIME, self._revoked) if self._revoked else None

    def _check_scope(self, path: str) -> Refused | None:
        if not is_within(path, self._att.cgroup):
            return Refused.eperm(f"{path} is outside {self._att.cgroup}, where this policy is attached")
        if path not in self._oc.cgroups:
            return Refused.esrch(f"no cgroup {path}")
        return None

    def _check_task(self, target: TaskInfo | None, asked: object) -> Refused | None:
        if target is None:
            return Refused.esrch(f"no task {asked}")
        if not is_within(target.cgroup, self._att.cgroup):
            return Refused.eperm(f"pid {target.pid} is in {target.cgroup}, outside {self._att.cgroup}")
        if target.oom_score_adj <= OOM_SCORE_ADJ_MIN:
            return Refused.eperm(f"pid {target.pid} ({target.name}) has oom_score_adj -1000")
        protected = self._backend.protected(target.pid)
        return Refused.eperm(protected) if protected else None

    def _check_raise(self, path: str, new_limit: int) -> Refused | None:
        limit = self._limit(path)
        if limit is None:
            return Refused.einval(f"{path} has no limit to raise")
        if new_limit <= limit:
            return Refused.einval(f"{format_size(new_limit)} is not above the limit {format_size(limit)}")
        if self._att.ceiling is not None and new_limit > self._att.ceiling:
            return Refused.eperm(f"above the attachment's ceiling {format_size(self._att.ceiling)}")
        room = self._backend.headroom(path)
        if new_limit - limit > room:
            return Refused.eperm(f"the parent has only {format_size(room)} of headroom")
        return None

    def _log(self, action: str, target: str, reason: str, result: int, note: str | None = None) -> int:
        error = result.reason if isinstance(result, Refused) else note
        if isinstance(result, Refused):
            error = f"{result.errno_name}: {result.reason}"
        self._handler.actions.append(ActionRecord(action=action, target=target, reason=reason,
                                                  result=int(result), error=error))
        return result
