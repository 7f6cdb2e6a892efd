"""A registered workflow: its function, its name, and how its input goes to JSON and back."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._codec import NO_TYPE, Codec
from ._llm import Budget
from ._refs import ref_of_function
from .errors import ConfigurationError

__all__ = ["Workflow"]


def _code_version(fn: Callable[..., Any]) -> str | None:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return None  # defined where the source is not available (a REPL)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@dataclass
class Workflow:
    """A workflow function registered with an ``AgentFlow`` under ``name``."""

    name: str
    fn: Callable[..., Any]
    codec: Codec
    budget: Budget | None = None
    deadline: float | None = None  # seconds each run may live, from its start
    is_async: bool = field(init=False)
    code_version: str | None = field(init=False)
    ref: str | None = field(init=False)  # module:qualname, for tools that must import the code by themselves
    # Computes the version when the code is an object whose behaviour can change (an Agent's instructions).
    version_source: Callable[[], str | None] | None = field(init=False, default=None)
    signature: inspect.Signature = field(init=False)
    # Where it was defined (set on registration): the same definition registered again replaces it.
    origin: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.fn)
        self.code_version = _code_version(self.fn)
        self.ref = ref_of_function(self.fn)
        self.signature = inspect.signature(self.fn)
        if not self.signature.parameters:
            raise ConfigurationError(
                f"workflow {self.name!r} must take the context as its first parameter: def {self.name}(ctx, ...)"
            )

    def current_version(self) -> str | None:
        """The code version now: recorded with each new run, compared by replays."""
        if self.version_source is not None:
            self.code_version = self.version_source()
        return self.code_version

    @property
    def return_type(self) -> Any:
        return self.codec.return_type(self.fn)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        try:
            return self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise ConfigurationError(f"workflow {self.name!r}: {exc}") from exc

    def encode_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        self.bind(args, kwargs)
        return self.codec.encode({"args": list(args), "kwargs": kwargs}, f"input of workflow {self.name!r}")

    def decode_input(self, text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments as the workflow declared them: each one rebuilt through its annotation."""
        data = self.codec.decode(text)
        bound = self.bind(tuple(data.get("args", ())), dict(data.get("kwargs", {})))
        hints = self.codec.parameter_types(self.fn)
        for name, value in list(bound.arguments.items())[1:]:
            hint = hints.get(name, NO_TYPE)
            if hint is NO_TYPE:
                continue
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                bound.arguments[name] = tuple(self._rebuild(v, hint) for v in value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                bound.arguments[name] = {k: self._rebuild(v, hint) for k, v in value.items()}
            else:
                bound.arguments[name] = self._rebuild(value, hint)
        return bound.args[1:], bound.kwargs

    def _rebuild(self, value: Any, hint: Any) -> Any:
        return self.codec.adapter(hint).validate_python(value)
