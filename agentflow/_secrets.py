"""Secrets kept out of the record: API keys, tokens, passwords and auth headers reach the provider or the
tool, never the store.

A value is secret by its name (a parameter, a header, a tool argument) or because the caller marked the
name (``secret_params``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["is_secret_name", "strip_secrets"]

# Parameter, header and tool-argument names whose values are never recorded: the name, with '-' read as
# '_', holds one of these as a whole word ("x_api_key", "X-Custom-Token", "aws_secret_access_key"), so
# that "max_tokens" or "top_k" are kept.
_SECRET_NAME = re.compile(
    r"(^|_)(api_?key|key|keys|secret|password|passwd|pwd|credentials?|token|auth|authorization|bearer|cookie|"
    r"signature|private_?key)($|_)",
    re.I,
)


def is_secret_name(name: str, marked: Sequence[str] = ()) -> bool:
    return name in marked or _secret_by_name(name)


@functools.lru_cache(maxsize=512)  # the same few parameter and header names, call after call
def _secret_by_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name.replace("-", "_")))


def strip_secrets(params: Mapping[str, Any], marked: Sequence[str] = ()) -> dict[str, Any]:
    """``params`` without secret values: keys, tokens, passwords, auth headers, and the names in ``marked``."""
    clean: dict[str, Any] = {}
    for name, value in params.items():
        if is_secret_name(name, marked):
            continue
        if name in ("headers", "extra_headers") and isinstance(value, Mapping):
            value = {h: v for h, v in value.items() if not is_secret_name(h, marked)}
        clean[name] = value
    return clean
