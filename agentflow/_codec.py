"""JSON in and out of the store: payloads, typed rebuilds, canonical request fingerprints.

Payloads are JSON, never pickle. A value goes in through pydantic's serializer (models, dataclasses,
datetimes, UUIDs...) and comes back through a ``TypeAdapter`` of the annotation that produced it, so a step
annotated ``-> Order`` returns an ``Order`` on resume. pydantic is imported on first use, not at
``import agentflow``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .errors import SerializationError

__all__ = ["Codec", "canonical_json", "compact_json_encoder", "escape_surrogates", "fingerprint", "sha256"]

NO_TYPE = object()  # the marker for "no declared type"


def _fallback(value: Any) -> str:
    # Arguments that have no JSON form still take part in the fingerprint by their type, so that
    # passing a connection or a client object to a step does not make it unrecordable.
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def compact_json_encoder(default: Callable[[Any], Any] | None = None) -> Callable[[Any], str]:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=default)``,
    with the encoder made once: ``json.dumps`` builds a ``JSONEncoder`` and its C encoder at every call,
    three Python frames per call, two calls a model call: ~20 us a model call inside a run, where the
    caches are cold (A/B in ``benchmarks/llm_overhead.py``'s conditions, medians of 8 rounds).
    Without circular-reference checks: a circular value raises ``ValueError`` all the same, from the
    checked ``json.dumps`` it is handed to when encoding fails.
    """

    def checked(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=default)

    from json import encoder as json_encoder

    make = getattr(json_encoder, "c_make_encoder", None)
    if make is None:  # a Python without the _json accelerator
        return checked
    try:
        one_shot = make(None, default, json_encoder.encode_basestring, None, ":", ",", True, False, True)
    except TypeError:  # another signature than CPython 3.10-3.13's
        return checked

    def encode(value: Any) -> str:
        try:
            return "".join(one_shot(value, 0))
        except RecursionError:
            return checked(value)

    sample = {"b": [1, 2.5, "\u00e9\n", None, True, float("nan")], "a": {"z": 1, "y": 'q"'}}
    try:
        same = encode(sample) == checked(sample)
    except Exception:
        same = False
    return encode if same else checked


_canonical = compact_json_encoder()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal requests give equal text."""
    try:  # plain JSON data (the usual request) goes straight through the C encoder
        return _canonical(value)
    except (TypeError, ValueError):
        pass
    from pydantic_core import to_jsonable_python

    plain = to_jsonable_python(value, fallback=_fallback)
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def escape_surrogates(value: Any) -> Any:
    """``value`` with each lone surrogate in its strings and mapping keys written as its escape: "\\ud83d"
    (half an emoji, as a model cut at a token boundary can write it) becomes the six characters ``\\ud83d``.

    A lone surrogate has no UTF-8 form, so a request holding one can be neither fingerprinted nor stored;
    escaped, it can, and the call can be refused with an error that says why (``Tool.validate``).
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, Mapping):
        return {escape_surrogates(k): escape_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escape_surrogates(v) for v in value]
    return value


def _builtin_sha256() -> Callable[[bytes], Any]:
    """CPython's own sha256 (``_sha256``, ``_sha2`` from 3.12), checked against hashlib's; hashlib's when
    there is none."""
    import importlib

    for name in ("_sha256", "_sha2"):
        try:
            make = getattr(importlib.import_module(name), "sha256", None)
        except ImportError:
            continue
        if make is not None and make(b"agentflow").digest() == hashlib.sha256(b"agentflow").digest():
            return make  # type: ignore[no-any-return]
    return hashlib.sha256


_small_sha256 = _builtin_sha256()
_SMALL = 4096  # from here on OpenSSL's speed per byte wins


def sha256(data: bytes) -> Any:
    """``hashlib.sha256(data)``; the same digest, cheaper for the small values a step records.

    Below 4 KiB, CPython's own sha256 rather than OpenSSL's: OpenSSL 3 is faster per byte (0.5 against
    1.5 us for 500 bytes in a tight loop) but sets up each hash through far more code, and inside a run,
    where litellm's work between two calls leaves that code cold, the four hashes of a model call took
    ~8 us less this way (A/B in ``benchmarks/llm_overhead.py``'s conditions).
    """
    return _small_sha256(data) if len(data) < _SMALL else hashlib.sha256(data)


def fingerprint(canonical: str) -> str:
    """sha256 of a canonical request: proves a recorded step was asked for the same thing."""
    return sha256(canonical.encode()).hexdigest()  # type: ignore[no-any-return]


class Codec:
    """Encodes values to JSON text and decodes them back to the type a function declared.

    One per ``AgentFlow``; it caches the resolved return types and ``TypeAdapter`` objects.
    """

    def __init__(self) -> None:
        self._return_types: dict[Callable[..., Any], Any] = {}
        self._adapters: dict[Any, Any] = {}

    def encode(self, value: Any, where: str) -> str:
        """JSON text for ``value``; a value with no JSON form is a ``SerializationError`` naming ``where``."""
        from pydantic_core import PydanticSerializationError, to_json

        try:
            return to_json(value).decode()
        except (PydanticSerializationError, ValueError) as exc:  # ValueError: circular reference
            raise SerializationError(where, value, str(exc).splitlines()[0]) from exc

    def decode(self, text: str | None, annotation: Any = NO_TYPE) -> Any:
        """The value stored as ``text``, rebuilt as ``annotation`` when one is given."""
        if text is None:
            return None
        if annotation is NO_TYPE or annotation is Any or annotation is None or annotation is type(None):
            return json.loads(text)
        return self.adapter(annotation).validate_json(text)

    def return_type(self, fn: Callable[..., Any]) -> Any:
        """The declared return type of ``fn`` (awaited type for coroutines), or a marker for none."""
        try:
            return self._return_types[fn]
        except KeyError:
            pass
        except TypeError:  # unhashable callable
            return self._resolve_return(fn)
        resolved = self._resolve_return(fn)
        self._return_types[fn] = resolved
        return resolved

    def parameter_types(self, fn: Callable[..., Any]) -> dict[str, Any]:
        """Resolved annotations of ``fn``'s parameters (unresolvable ones are left out)."""
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}
        hints.pop("return", None)
        return hints

    def _resolve_return(self, fn: Callable[..., Any]) -> Any:
        target = inspect.unwrap(fn)
        try:
            hints = typing.get_type_hints(target)
        except Exception:
            return NO_TYPE
        return hints.get("return", NO_TYPE)

    def adapter(self, annotation: Any) -> Any:
        """The cached pydantic ``TypeAdapter`` for ``annotation``."""
        try:
            return self._adapters[annotation]
        except KeyError:
            pass
        except TypeError:
            return self._make_adapter(annotation)
        adapter = self._make_adapter(annotation)
        self._adapters[annotation] = adapter
        return adapter

    @staticmethod
    def _make_adapter(annotation: Any) -> Any:
        from pydantic import TypeAdapter

        return TypeAdapter(annotation)
