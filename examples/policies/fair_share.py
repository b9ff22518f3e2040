"""An example third-party oomkit policy: share memory fairly between users.

Copy this file to start your own policy.  It uses only the public, stable
API (``oomkit`` and ``oomkit.helpers``), as code outside oomkit must.

The idea: on a shared login or build host, the kernel kills the single
*largest process*.  When one user runs many medium-sized processes, the
kernel's victim is usually someone else's one big process.  This policy adds
up memory per user (uid) and takes the victim from the heaviest user instead.

Use it from a scenario or a daemon config (paths are relative to that file)::

    [[attach]]
    cgroup = "/"
    policy = "policies/fair_share.py:UserFairShare"
    params = { spare_uids = [0] }

and check it without running anything: ``oomkit check examples/shared-host.toml``.
"""

from __future__ import annotations

from collections import defaultdict

from oomkit import OOMContext, OOMPolicy, ReleaseActions, Verdict
from oomkit.helpers import candidates


class UserFairShare(OOMPolicy):
    """Kill the largest process of the user (uid) using the most memory."""

    # The name the OOM report shows for this policy (like ``oom_policy=<name>``).
    name = "user-fair-share"

    # Params: a scenario's ``params = {...}`` become keyword arguments here
    # (``UserFairShare(**params)``).  oomkit rejects unknown params with a
    # clear error, so give every param a name and a default.  Validate them
    # here: a ValueError or TypeError is reported as "bad params" by
    # ``oomkit check``, before anything runs.
    def __init__(self, spare_uids: list[int] | tuple[int, ...] = (0,)):
        if not all(isinstance(u, int) and not isinstance(u, bool) for u in spare_uids):
            raise ValueError("spare_uids must be a list of uids (integers)")
        self.spare_uids = frozenset(spare_uids)

    # Called for every OOM that reaches this attachment: an OOM in the cgroup
    # it is attached to or below (for the root attachment, also global and
    # NUMA OOMs), after every policy attached further down has passed.
    #
    #   oc: the read-only OOM context (oc.level, oc.memcg, oc.nodes,
    #       oc.requested, oc.cgroups, oc.tasks, oc.memory_freed, ...).
    #       Assigning anything in it raises ContextReadOnly.
    #   k:  the release actions (typed by the ReleaseActions protocol), the
    #       only way to free memory:
    #       k.kill_task(task, reason), k.kill_cgroup(path, reason),
    #       k.raise_limit(path, new_limit, reason).  Each returns the bytes
    #       it released for *this* OOM (> 0), 0, or a negative Refused that
    #       says why (e.g. -EPERM for an oom_score_adj -1000 task).
    #
    # Return HANDLED only when an action released memory (oomkit checks:
    # a false claim counts as PASS), BACKOFF when memory is about to come
    # back and you did nothing destructive, PASS to let the next policy up
    # the chain (and finally the kernel's OOM killer) decide.
    def handle_out_of_memory(self, oc: OOMContext, k: ReleaseActions) -> Verdict:
        # 1. Who could we kill so that it helps *this* OOM?  candidates() gives
        #    the tasks whose memory this OOM gets back (inside the OOMing cgroup,
        #    or on its NUMA nodes), minus oom_score_adj -1000 and exiting ones.
        mine = [t for t in candidates(oc) if t.uid not in self.spare_uids]
        if not mine:
            return Verdict.PASS

        # 2. Memory per user; the heaviest user first (ties: lower uid first,
        #    so the choice is deterministic).
        per_user: dict[int, int] = defaultdict(int)
        for t in mine:
            per_user[t.uid] += t.rss + t.swap
        users = sorted(per_user, key=lambda uid: (-per_user[uid], uid))

        # 3. Kill one process: that user's largest (ties: the newest, the
        #    least work lost).  One kill at a time, like the kernel: if memory
        #    is still short, the allocation fails again and we are asked again.
        for uid in users:
            theirs = sorted((t for t in mine if t.uid == uid),
                            key=lambda t: (-(t.rss + t.swap), -t.start_time, -t.pid))
            for task in theirs:
                reason = f"uid {uid} uses {per_user[uid] >> 20}M, the most of any user"
                if k.kill_task(task, reason) > 0:
                    return Verdict.HANDLED
                # A refused or useless kill is recorded by oomkit; try the next.
        return Verdict.PASS

    # Optional: the cgroup this policy is attached to (or one below it) was
    # removed.  Drop any state kept for it.  This policy keeps none.
    def handle_cgroup_offline(self, cgroup: str) -> None:
        pass
