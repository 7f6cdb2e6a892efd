"""``@tool``: a typed function becomes a ``Tool`` with a name, a description and a JSON schema.

The schema comes from the signature through pydantic and is built on first use, so decorating a tool
does not import pydantic. Arguments are validated before the call; a validation error is a result the
model can read, not a crash (see ``Context.tool``). A parameter annotated ``IdempotencyKey`` is not part
of the schema: the engine fills it with the call's idempotency key, the same on every retry and resume,
so an external system (a payment API) can deduplicate.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar, overload

from ._codec import escape_surrogates
from ._secrets import is_secret_name
from .errors import ConfigurationError

__all__ = ["IdempotencyKey", "Tool", "ToolArgumentsError", "ToolResult", "tool"]

F = TypeVar("F", bound=Callable[..., Any])


class IdempotencyKey(str):
    """Annotate a tool parameter with this type to receive the call's idempotency key."""


class ToolArgumentsError(ValueError):
    """The arguments given to a tool do not match its schema; the message lists what is wrong."""


@dataclass(frozen=True)
class ToolResult:
    """What a tool call gave: ``value`` when ``ok``, else ``error`` (a message the model can act on).

    ``content`` is the text to hand back to a model as the tool message.
    """

    name: str
    key: str
    ok: bool
    value: Any = None
    error: str | None = None
    # The value as recorded (JSON text), when it went through the record: ``content`` is made from it,
    # so a live call and the same call served on resume hand a model the very same text (a datetime
    # returned by an unannotated tool comes back from the record as a string).
    recorded: str | None = field(default=None, repr=False, compare=False)

    @property
    def content(self) -> str:
        if not self.ok:
            return f"error: {self.error}"
        if self.recorded is not None:
            if self.recorded.startswith('"'):  # a JSON string: its text, as a tool returning a str gives
                text: str = json.loads(self.recorded)
                return text
            return self.recorded
        if isinstance(self.value, str):
            return self.value
        from pydantic_core import to_json  # pydantic models and dataclasses as JSON, not their repr

        return to_json(self.value, fallback=str).decode()


@dataclass(frozen=True, eq=False)
class Tool:
    """A function the engine can call as a recorded step and a model can call by name."""

    fn: Callable[..., Any]
    name: str
    description: str
    idempotent: bool = True
    # Asked with the call's arguments: true when a person must approve this call first (an agent waits,
    # durably, for an "approval" event before it makes the call).
    needs_approval: Callable[[dict[str, Any]], bool] | None = None
    # Arguments whose values reach the tool but are never recorded nor fingerprinted, besides those named
    # like a secret ("api_key", "password", "client_secret", "access_token"...; see agentflow._secrets).
    secret: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:  # checked now if the hints resolve now, else (a type defined further down) at first use
            typing.get_type_hints(self.fn, include_extras=True)
        except Exception:
            return
        self.key_parameter  # noqa: B018

    @cached_property
    def key_parameter(self) -> str | None:
        """The parameter that receives the call's idempotency key (typed ``IdempotencyKey``, or
        ``IdempotencyKey | None``), if any."""
        keys = [n for n, h in _hints(self).items() if _is_key_type(h)]
        if len(keys) > 1:
            raise ConfigurationError(f"tool {self.name!r} has more than one IdempotencyKey parameter: {keys}")
        return keys[0] if keys else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function directly, outside any run (tests, notebooks)."""
        return self.fn(*args, **kwargs)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    @property
    def _arguments_model(self) -> Any:
        return self._arguments[0]

    @cached_property
    def _arguments(self) -> tuple[Any, dict[str, str]]:
        """The pydantic model of the arguments, and the parameter each of its fields stands for."""
        from pydantic import BaseModel, ConfigDict, Field, create_model

        hints = _hints(self)
        names = set(inspect.signature(self.fn).parameters)
        fields: dict[str, Any] = {}
        parameters: dict[str, str] = {}
        for pname, param in inspect.signature(self.fn).parameters.items():
            if pname == self.key_parameter:
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ConfigurationError(f"tool {self.name!r}: *args and **kwargs cannot be described to a model")
            if param.kind is param.POSITIONAL_ONLY:
                raise ConfigurationError(
                    f"tool {self.name!r}: parameter {pname!r} is positional-only; a tool is called with named "
                    "arguments, so drop the '/' from its signature"
                )
            if pname.startswith("_"):  # pydantic keeps such names private: not an argument a model can give
                if param.default is inspect.Parameter.empty:
                    raise ConfigurationError(
                        f"tool {self.name!r}: parameter {pname!r} starts with '_', which a model cannot be asked "
                        "for; rename it, or give it a default (it is then left out of the schema)"
                    )
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            field_name = pname
            if pname.startswith("model_") or hasattr(BaseModel, pname):
                # pydantic's own names ("model_config", "model_dump", "json", "copy"): the field gets another
                # name and the parameter's name as its alias, which the schema and the validation use.
                while field_name in names or field_name.startswith("model_") or hasattr(BaseModel, field_name):
                    field_name = f"arg_{field_name}"
                default = Field(default, alias=pname)
            fields[field_name] = (hints.get(pname, Any), default)
            parameters[field_name] = pname
        config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())
        return create_model(f"{self.name}_arguments", __config__=config, **fields), parameters

    @cached_property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments a model gives.

        Secret parameters (named like a secret, ``api_key``, or marked with ``@tool(secret=[...])``) are
        left out: the caller or their default gives them, and a default API key must not reach the model
        provider nor the record of the call.
        """
        schema: dict[str, Any] = self._arguments_model.model_json_schema()
        schema.pop("title", None)
        properties: dict[str, Any] = schema.get("properties", {})
        hidden = [name for name in properties if is_secret_name(name, self.secret, names="tool")]
        for name in hidden:
            del properties[name]
        if hidden and "required" in schema:
            schema["required"] = [name for name in schema["required"] if name not in hidden]
            if not schema["required"]:
                del schema["required"]
        if hidden and "$defs" in schema:
            _drop_unused_definitions(schema)
        for prop in properties.values():
            prop.pop("title", None)  # the property's own name says it; titles only cost the model tokens
        return schema

    def schema(self) -> dict[str, Any]:
        """The tool as an OpenAI-style function declaration, for ``ctx.llm(tools=[...])``."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments converted to the declared types; ``ToolArgumentsError`` naming each problem."""
        from pydantic import ValidationError

        halves = _lone_surrogates(arguments, "")
        if halves:
            raise ToolArgumentsError(
                f"invalid arguments for tool {self.name!r}: {'; '.join(halves)}: holds half of a character (a "
                "lone UTF-16 surrogate), which is not text; send the call again with whole characters"
            )
        try:
            model = self._arguments_model.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}" for err in exc.errors()
            )
            raise ToolArgumentsError(f"invalid arguments for tool {self.name!r}: {problems}") from None
        parameters = self._arguments[1]
        return {parameters[name]: getattr(model, name) for name in type(model).model_fields}


@overload
def tool(fn: F, /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    idempotent: bool = True,
    needs_approval: Callable[[dict[str, Any]], bool] | None = None,
    secret: Sequence[str] = (),
) -> Callable[[F], Tool]: ...


def tool(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    idempotent: bool = True,
    needs_approval: Callable[[dict[str, Any]], bool] | None = None,
    secret: Sequence[str] = (),
) -> Tool | Callable[[F], Tool]:
    """Make a typed function (sync or async) a ``Tool``: ``@tool`` or ``@tool(idempotent=False)``.

    The description is the docstring unless given. ``idempotent=False`` marks a tool whose effect must
    not happen twice (a payment): a replay never runs it again, and it should take an ``IdempotencyKey``.
    ``needs_approval(arguments)`` returning true makes an ``Agent`` wait (durably: the run is suspended)
    for an ``approval`` event, ``{"approved": true}`` or not, before it makes the call.
    ``secret=["param", ...]`` names arguments that reach the tool but are never recorded (nor part of the
    call's fingerprint), besides those named like a secret (``api_key``, ``password``, ``access_token``...).
    """
    marked = (secret,) if isinstance(secret, str) else tuple(secret)

    def make(f: F) -> Tool:
        doc = description if description is not None else inspect.getdoc(f) or ""
        unknown = [p for p in marked if p not in inspect.signature(f).parameters]
        if unknown:
            raise ConfigurationError(f"tool {name or f.__name__!r}: secret={unknown} names no parameter of it")
        return Tool(
            fn=f,
            name=name or f.__name__,
            description=doc,
            idempotent=idempotent,
            needs_approval=needs_approval,
            secret=marked,
        )

    return make(fn) if fn is not None else make


def _hints(t: Tool) -> dict[str, Any]:
    """The tool function's resolved annotations, ``Annotated`` constraints and descriptions kept."""
    try:
        return typing.get_type_hints(t.fn, include_extras=True)
    except Exception as exc:
        raise ConfigurationError(
            f"tool {t.name!r}: its type annotations do not resolve ({type(exc).__name__}: {exc}); import the "
            "types they name at module level (not only under TYPE_CHECKING), so that its schema and its "
            "IdempotencyKey parameter can be found"
        ) from exc


def _lone_surrogates(value: Any, where: str) -> list[str]:
    """The places in ``value`` that hold a lone surrogate ("\\ud83d": half an emoji, as a model cut at a
    token boundary can write it). Such a string has no UTF-8 form: it can be neither fingerprinted nor
    recorded, nor written to a file or a socket. The places are shown with their surrogates escaped."""
    if isinstance(value, str):
        return [where or "arguments"] if not _is_utf8(value) else []
    found: list[str] = []
    if isinstance(value, Mapping):
        for name, item in value.items():
            shown = escape_surrogates(name) if isinstance(name, str) else repr(name)
            inner = f"{where}.{shown}" if where else shown
            if isinstance(name, str) and not _is_utf8(name):
                found.append(f"the name {inner}")
            found += _lone_surrogates(item, inner)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += _lone_surrogates(item, f"{where}.{index}" if where else str(index))
    return found


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _drop_unused_definitions(schema: dict[str, Any]) -> None:
    """Remove the ``$defs`` that only the removed (secret) properties referred to."""
    definitions: dict[str, Any] = schema["$defs"]
    used: set[str] = set()
    pending = [json.dumps({k: v for k, v in schema.items() if k != "$defs"})]
    while pending:
        text = pending.pop()
        for name, definition in definitions.items():
            if name not in used and f'"#/$defs/{name}"' in text:
                used.add(name)
                pending.append(json.dumps(definition))
    for name in [n for n in definitions if n not in used]:
        del definitions[name]
    if not definitions:
        del schema["$defs"]


def _is_key_type(hint: Any) -> bool:
    """``IdempotencyKey``, also inside ``Annotated[...]`` or as ``IdempotencyKey | None``."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if hint is IdempotencyKey:
        return True
    args = typing.get_args(hint)
    return (
        typing.get_origin(hint) in (typing.Union, types.UnionType)
        and IdempotencyKey in args
        and all(a is IdempotencyKey or a is type(None) for a in args)
    )
