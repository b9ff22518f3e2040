"""Built-in policies, registered by name (one line each), and the loader for
third-party ones (``module:Class``, ``path/to/file.py:Class``, or the
``oomkit.policies`` entry-point group)."""

from oomkit.policies import builtin

BUILTINS = {
    "kernel-default": builtin.KernelDefault,
    "largest-task": builtin.LargestTask,
    "largest-cgroup": builtin.LargestCgroup,
    "newest-task": builtin.NewestTask,
    "prefer-avoid": builtin.PreferAvoid,
    "raise-limit": builtin.RaiseLimit,
    "wait-for-exiting": builtin.WaitForExiting,
    "settle": builtin.Settle,
}

from oomkit.policies.loader import load_policy_class, make_policy  # noqa: E402

__all__ = ["BUILTINS", "load_policy_class", "make_policy"]
