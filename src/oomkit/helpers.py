"""What a policy author needs besides the contract, public and stable: the
kernel's view of an OOM (who may be chosen, their badness, what the kernel
itself would kill) and cgroup path arithmetic.  The built-in policies use
these, as a third-party policy should::

    from oomkit import OOMPolicy, Verdict
    from oomkit.helpers import candidates

    class Largest(OOMPolicy):
        def handle_out_of_memory(self, oc, k):
            for t in sorted(candidates(oc), key=lambda t: -(t.rss + t.swap)):
                if k.kill_task(t, "largest") > 0:
                    return Verdict.HANDLED
            return Verdict.PASS
"""

from __future__ import annotations

from collections.abc import Sequence

from oomkit import oom_kill
from oomkit.context import OOMContext, TaskInfo, ancestors, is_within, parent_of
from oomkit.oom_kill import OOM_SCORE_ADJ_MIN, Decision, badness

__all__ = ["OOM_SCORE_ADJ_MIN", "Decision", "ancestors", "badness", "candidates", "is_within",
           "kernel_choice", "parent_of", "relieves", "tasks_that_relieve"]


def tasks_that_relieve(oc: OOMContext) -> Sequence[TaskInfo]:
    """The tasks the kernel would consider for this OOM: the OOMing memcg's
    subtree for a memcg OOM (only it is read on a live backend), every task of
    the attachment otherwise; exiting and ``-1000`` ones included."""
    return oom_kill.oom_tasks(oc)


def relieves(oc: OOMContext, task: TaskInfo) -> bool:
    """Would killing ``task`` give memory back to this OOM?  For a memcg OOM only
    memory charged inside the OOMing memcg counts; for a numa OOM only a task
    that may use the constrained nodes; for a global OOM anyone's."""
    return oom_kill.eligible(task, oc.level, oc.memcg, oc.nodes)


def candidates(oc: OOMContext) -> list[TaskInfo]:
    """The tasks a policy may usefully kill for this OOM: they relieve it, are not
    ``oom_score_adj`` -1000 (:data:`OOM_SCORE_ADJ_MIN`), and are not already exiting."""
    return [t for t in tasks_that_relieve(oc)
            if relieves(oc, t) and t.oom_score_adj > OOM_SCORE_ADJ_MIN and not t.exiting]


def kernel_choice(oc: OOMContext) -> Decision:
    """What the kernel's OOM killer would do here (``select_bad_process()``):
    ``.victims`` to kill (a ``memory.oom.group`` whole), ``.waiting_for`` an
    exiting victim, or neither.  Its ``.points`` is the victim's :func:`badness`."""
    return oom_kill.decide(oc)
