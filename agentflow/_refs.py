"""Where a workflow's code lives: ``module:qualname`` refs recorded with each run, and loading them back.

A run records the ref of its workflow so that a process that never registered it (the CLI, the pytest
plugin, a notebook replaying a production run) can import the code by itself. A function defined at the
top of a module is ``package.module:function``; an ``Agent`` kept in a module-level variable is
``package.module:variable``. Code in a script run as ``__main__`` is referred to by the script's path
(``examples/support_agent.py:agent``). Functions defined inside other functions have no ref: pass
``--app`` (or register them) instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

__all__ = ["holder_of", "load_ref", "ref_of_function", "ref_of_object", "register_code"]


def _module_part(module_name: str) -> str | None:
    if module_name != "__main__":
        return module_name
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return str(spec.name)  # run with python -m package.module
    path = getattr(main, "__file__", None)
    return None if path is None else str(Path(path).resolve())


def ref_of_function(fn: Any) -> str | None:
    """``module:qualname`` of a function defined at the top level of a module (or a class in one)."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        return None
    part = _module_part(module)
    return None if part is None else f"{part}:{qualname}"


def holder_of(obj: Any, module_name: str | None) -> str | None:
    """``module:variable`` of the module-level variable of ``module_name`` that holds ``obj``, if one does
    (``__main__:agent`` in a notebook, where ``ref_of_object`` has no path to give)."""
    module = sys.modules.get(module_name) if module_name else None
    if module is None:
        return None
    name = next((name for name, value in vars(module).items() if value is obj and not name.startswith("__")), None)
    return None if name is None else f"{module_name}:{name}"


def ref_of_object(obj: Any, module_name: str | None) -> str | None:
    """``module:variable`` of an object held by a module-level variable of ``module_name``, if one is, with
    the module as it can be imported again (a script's path for ``__main__``)."""
    holder = holder_of(obj, module_name)
    part = None if holder is None or module_name is None else _module_part(module_name)
    return None if holder is None or part is None else f"{part}:{holder.rpartition(':')[2]}"


def load_ref(ref: str) -> Any:
    """The object a ref names: imports the module (or the script at a path) and follows the qualname."""
    module_part, sep, qualname = ref.rpartition(":")
    if not sep or not module_part or not qualname:
        raise ConfigurationError(f"{ref!r} is not a ref: write module:name (package.module:app, or path.py:agent)")
    try:
        if module_part.endswith(".py"):
            module = _import_path(Path(module_part))
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # like python -m: modules of the current folder
            module = importlib.import_module(module_part)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_part!r} for {ref!r}: {exc}") from exc
    value: Any = module
    for attr in qualname.split("."):
        try:
            value = getattr(value, attr)
        except AttributeError:
            raise ConfigurationError(f"{module_part!r} has no {qualname!r} (from {ref!r})") from None
    return value


def register_code(app: Any, workflow_name: str, ref: str) -> None:
    """Register on ``app`` the code ``ref`` names for the workflow ``workflow_name``: the workflow of that
    name from an ``AgentFlow``, an ``Agent`` (under its own name), or a workflow function."""
    from ._app import AgentFlow

    found = load_ref(ref)
    if isinstance(found, AgentFlow):
        app.adopt_workflow(found, workflow_name)
    elif getattr(found, "__agentflow_workflow__", None) is not None:  # an Agent or a PlanningAgent
        app.register(found)
    elif callable(found):
        app.register(found, name=workflow_name)
    else:
        raise ConfigurationError(
            f"{ref} is a {type(found).__name__}, not an AgentFlow, a workflow function or an Agent"
        )


def _import_path(path: Path) -> Any:
    if not path.exists():
        raise ImportError(f"there is no file {path}")
    name = f"_agentflow_script_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
