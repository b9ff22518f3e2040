"""Built-in policies, registered by name (one line each, in
``loader.BUILTIN_REFS``), and the loader for third-party ones (``module:Class``,
``path/to/file.py:Class``, or the ``oomkit.policies`` entry-point group)."""

from oomkit.policies.loader import BUILTIN_REFS, load_policy_class, make_policy

#: name -> class of every built-in policy
BUILTINS = {name: load_policy_class(name) for name in BUILTIN_REFS}

__all__ = ["BUILTINS", "load_policy_class", "make_policy"]
