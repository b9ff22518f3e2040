"""Finding and instantiating policies.  Every failure is a
:class:`~oomkit.errors.PolicyLoadError` with one line that says what to fix."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from oomkit.errors import PolicyLoadError
from oomkit.policy import OOMPolicy

ENTRY_POINT_GROUP = "oomkit.policies"

#: The built-in policies by name, each as ``module:Class``: resolved when named,
#: as an entry point is (``policies.builtin`` uses this loader: ``settle`` makes
#: its ``then`` policy with it, so the loader must not import it at load time).
BUILTIN_REFS = {
    "kernel-default": "oomkit.policies.builtin:KernelDefault",
    "largest-task": "oomkit.policies.builtin:LargestTask",
    "largest-cgroup": "oomkit.policies.builtin:LargestCgroup",
    "newest-task": "oomkit.policies.builtin:NewestTask",
    "prefer-avoid": "oomkit.policies.builtin:PreferAvoid",
    "raise-limit": "oomkit.policies.builtin:RaiseLimit",
    "wait-for-exiting": "oomkit.policies.builtin:WaitForExiting",
    "settle": "oomkit.policies.builtin:Settle",
    "pressure-kill": "oomkit.policies.builtin:PressureKill",
}


def load_policy_class(ref: str, base_dir: str | Path | None = None, *,
                      fresh: bool = False) -> type[OOMPolicy]:
    """Resolve a built-in name, an entry point, ``module:Class`` or ``file.py:Class``.
    With ``fresh``, a policy file is read and imported again even if imported
    before (the daemon's reload: an edited file must take effect)."""
    if not isinstance(ref, str) or not ref:
        raise PolicyLoadError("policy must be a non-empty string")
    if ref in BUILTIN_REFS:
        module, _, name = BUILTIN_REFS[ref].partition(":")
        return _check_class(getattr(importlib.import_module(module), name), ref)
    if ":" not in ref:
        found = _entry_point(ref)
        if found is None:
            raise PolicyLoadError(f"unknown policy {ref!r}",
                                  hint=f"built-ins: {', '.join(BUILTIN_REFS)}; or 'module:Class', 'file.py:Class'")
        return _check_class(found, ref)
    where, _, name = ref.rpartition(":")
    module = _import_file(where, base_dir, fresh) if where.endswith(".py") or "/" in where else _import_module(where)
    cls = getattr(module, name, None)
    if cls is None:
        raise PolicyLoadError(f"{where} has no class {name!r}")
    return _check_class(cls, ref)


def make_policy(ref: str, params: dict[str, Any] | None = None,
                base_dir: str | Path | None = None, *, fresh: bool = False) -> OOMPolicy:
    """``Policy(**params)``, with unknown or bad params as a clear error."""
    cls = load_policy_class(ref, base_dir, fresh=fresh)
    params = dict(params or {})
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as exc:
        accepted = [p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs")]
        raise PolicyLoadError(f"policy {ref!r}: bad params: {exc}",
                              hint=f"it takes {', '.join(accepted) or 'no params'}") from None
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise PolicyLoadError(f"policy {ref!r}: bad params: {exc}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - third-party constructors may raise anything
        raise PolicyLoadError(f"policy {ref!r} failed to start: {type(exc).__name__}: {exc}") from None


def entry_points(**selection):
    """``importlib.metadata.entry_points``, imported only when a name needs it
    (it is slow to import and costs the daemon's RSS)."""
    from importlib.metadata import entry_points as find

    return find(**selection)


def _entry_point(name: str):
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                return ep.load()
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                raise PolicyLoadError(f"entry point {name!r} does not load: {type(exc).__name__}: {exc}") from None
    return None


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import failure is the user's to fix
        raise PolicyLoadError(f"module {name!r} does not import: {type(exc).__name__}: {exc}") from None


FILE_MODULE_PREFIX = "oomkit_policy_"


def file_modules() -> dict[str, Any]:
    """The policy files imported so far, by module name (to put back after a failed reload)."""
    return {k: v for k, v in list(sys.modules.items()) if k.startswith(FILE_MODULE_PREFIX)}


def restore_file_modules(saved: dict[str, Any]) -> None:
    """Exactly ``saved`` (from :func:`file_modules`) as the imported policy files again."""
    for name in [k for k in list(sys.modules) if k.startswith(FILE_MODULE_PREFIX)]:
        if name not in saved:
            del sys.modules[name]
    sys.modules.update(saved)


def _import_file(where: str, base_dir: str | Path | None, fresh: bool = False):
    path = Path(where)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if path.suffix != ".py":
        raise PolicyLoadError(f"policy file {str(path)!r} is not a .py file",
                              hint="write 'path/to/file.py:Class' or 'package.module:Class'")
    if not path.exists():
        raise PolicyLoadError(f"policy file {str(path)!r} does not exist",
                              hint="paths are relative to the file that names them")
    if not path.is_file():      # a FIFO would block the import, a device would never end
        raise PolicyLoadError(f"policy file {str(path)!r} is not a regular file")
    _check_trusted(path)
    import hashlib

    digest = hashlib.sha1(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    modname = f"{FILE_MODULE_PREFIX}{path.stem}_{digest}"
    old = sys.modules.get(modname)
    if old is not None and not fresh:
        return old
    # One module per file in sys.modules: a fresh import replaces the old one,
    # which lives on only as long as the policies made from it (no leak per reload).
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None:        # a .py path always has a loader; kept for the type checker
        raise PolicyLoadError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        # Compiled from the file itself, never from a __pycache__ entry: its
        # check (mtime in seconds and size) misses an edit of the same size
        # within the second, and root writes nothing next to the policy.
        code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - sys.exit() at import is a load error too
        if old is not None:
            sys.modules[modname] = old
        else:
            del sys.modules[modname]
        line = _error_line(exc, path)
        raise PolicyLoadError(f"policy file {str(path)!r} does not import{line}: "
                              f"{type(exc).__name__}: {exc}") from None
    return module


def _check_trusted(path: Path) -> None:
    """Root imports a policy file only if no one else could have written it."""
    from oomkit.config.files import check_trusted
    from oomkit.errors import ConfigError

    try:
        check_trusted(path, "policy file")
    except ConfigError as exc:
        raise PolicyLoadError(str(exc)) from None


def _error_line(exc: BaseException, path: Path) -> str:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line else ""


def _check_class(cls: Any, ref: str) -> type[OOMPolicy]:
    if not (inspect.isclass(cls) and issubclass(cls, OOMPolicy)):
        raise PolicyLoadError(f"{ref!r} is not an oomkit.OOMPolicy subclass")
    if cls.handle_out_of_memory is OOMPolicy.handle_out_of_memory:
        raise PolicyLoadError(f"{ref!r} does not define handle_out_of_memory(self, oc, k)")
    return cls
