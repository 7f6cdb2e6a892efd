"""Secrets kept out of the record: API keys, tokens, passwords and auth headers reach the provider or the
tool, never the store.

A value is secret by its name (a parameter, a header, a tool argument, a key of a nested mapping, a URL's
query parameter) or because the caller marked the name (``secret_params``, ``@tool(secret=[...])``). The
credentials of a URL (``https://user:password@host``) are secret wherever the URL is. ``split_secrets``
also hands back the secret values it removed, so that an error which echoes one (a provider's "Incorrect
API key provided: sk-...") can be ``redact``-ed before it is recorded; ``ambient_secrets`` are the keys a
failure may echo without having been given them (the environment's, litellm's settings).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["REDACTED", "ambient_secrets", "is_secret_name", "redact", "redact_cut", "split_secrets", "strip_secrets"]

REDACTED = "[secret]"

Names = Literal["params", "tool"]

# Model-call parameters, headers and URL query parameters: the name, split into words (camelCase and
# '-' read as '_': "X-AccessToken" is x_access_token), holds one of these as a whole word, or a word that
# ends in a glued one ("accesstoken", "clientsecret"). So "max_tokens", "top_k", "prompt_tokens" and
# "X-Session-Id" are kept.
_SECRET_PARAM = re.compile(
    r"(^|_)(api_?key|key|keys|secrets?|password|passwd|pwd|passphrase|credentials?|token|auth|authorization|"
    r"authentication|bearer|cookie|signature|sig|private_?key|[a-z0-9]*(?:token|secret|password|apikey|"
    r"privatekey|secretkey|accesskey))($|_)"
)
# Parameters whose names look like secrets above but are none: litellm's custom prices
# ("input_cost_per_token", "cache_read_input_token_cost"), cache routing keys ("prompt_cache_key") and a
# prompt template's "bos_token" / "eos_token". They stay in the record and the fingerprint.
_NOT_SECRET_PARAM = re.compile(r"(^|_)cost_per_[a-z0-9_]+$|_token_cost$|(^|_)cache_key$|^[be]os_token$")
# Tool arguments name what the tool works on, where "key", "token", "auth" or "signature" are often no
# secret (kv_get(key=...), list_items(page_token=...)): only names that end in an unambiguous one are
# secret ("api_key", "new_password", "client_secret", "accessToken"); a tool marks others with
# ``@tool(secret=[...])``.
_SECRET_ARGUMENT = re.compile(
    r"(^|_)(api_?key|api_?token|api_?secret|secret|secret_?key|secret_?access_?key|client_?secret|password|"
    r"passwd|passphrase|credentials?|authorization|authentication|(?:access|refresh|id|session|auth|bearer|"
    r"oauth|csrf)_?token|private_?key)$"
)
# A URL's query parameters that carry credentials besides those named like a parameter above: Azure
# Functions' "code", a SAS "sig" (in the pattern).
_SECRET_QUERY = frozenset({"code"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[-.\s]+")
# Secret values shorter than this are not looked for in error text: they would match ordinary words.
_MIN_REDACTED = 6
# The environment's values named like secrets count from this length: "POSTGRES_PASSWORD=postgres" must
# not blank out every "postgres" of an error.
_MIN_ENV_SECRET = 16
# A text cut short that ends in this many first characters of a secret, or more, ends in "[secret]".
_MIN_CUT_PREFIX = 4


def is_secret_name(name: str, marked: Sequence[str] = (), names: Names = "params") -> bool:
    """Whether a value under ``name`` is secret: marked, or named like a secret (see the patterns above;
    ``names="tool"`` for tool arguments)."""
    return name in marked or _secret_by_name(name, names)


@functools.lru_cache(maxsize=1024)  # the same few parameter, header and argument names, call after call
def _secret_by_name(name: str, names: Names) -> bool:
    words = _SEPARATORS.sub("_", _CAMEL.sub("_", name)).lower()
    if names == "tool":
        return bool(_SECRET_ARGUMENT.search(words))
    return bool(_SECRET_PARAM.search(words)) and not _NOT_SECRET_PARAM.search(words)


def strip_secrets(params: Mapping[str, Any], marked: Sequence[str] = (), names: Names = "params") -> dict[str, Any]:
    """``params`` without secret values: keys, tokens, passwords, auth headers, URL credentials, and the
    names in ``marked``, at any depth of nested mappings and lists."""
    return split_secrets(params, marked, names)[0]


def split_secrets(
    params: Mapping[str, Any], marked: Sequence[str] = (), names: Names = "params"
) -> tuple[dict[str, Any], list[str]]:
    """``(params without secret values, the secret string values taken out)``.

    A secret name is left out with its value; a URL loses its user and password, and the values of its
    query parameters named like secrets become ``[secret]`` (the rest of the URL, ``api-version=...``
    for instance, stays in the record and the fingerprint).
    """
    found: list[str] = []
    return _clean_mapping(params, marked, names, found), found


def _clean_mapping(params: Mapping[str, Any], marked: Sequence[str], names: Names, found: list[str]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(name, str) and is_secret_name(name, marked, names):
            _collect(value, found)
        else:
            clean[name] = _clean(value, marked, names, found)
    return clean


def _clean(value: Any, marked: Sequence[str], names: Names, found: list[str]) -> Any:
    if isinstance(value, str):
        return _clean_url(value, found) if "://" in value else value
    if isinstance(value, Mapping):
        return _clean_mapping(value, marked, names, found)
    if isinstance(value, list | tuple):
        return [_clean(v, marked, names, found) for v in value]
    return value


def _collect(value: Any, found: list[str]) -> None:
    """Every string inside a secret value; a header value's words too ("Bearer sk-...": "sk-...")."""
    if isinstance(value, str):
        found.append(value)
        words = value.split()
        if len(words) > 1:
            found.extend(words[1:])
    elif isinstance(value, Mapping):
        for v in value.values():
            _collect(v, found)
    elif isinstance(value, list | tuple):
        for v in value:
            _collect(v, found)


def _clean_url(text: str, found: list[str]) -> str:
    if "@" not in text and "?" not in text and "#" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        for part in (userinfo, *userinfo.split(":", 1)):
            found.extend((part, unquote(part)))
    query = _clean_query(parts.query, found)
    fragment = _clean_query(parts.fragment, found)
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return text
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _clean_query(query: str, found: list[str]) -> str:
    """``a=1&key=sk-...`` as ``a=1&key=[secret]``; the rest of the text as given."""
    if "=" not in query:
        return query
    pairs = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        plain = unquote(name.replace("+", " "))
        if eq and value and (plain.lower() in _SECRET_QUERY or _secret_by_name(plain, "params")):
            found.extend((value, unquote(value.replace("+", " "))))
            pair = f"{name}={REDACTED}"
        pairs.append(pair)
    return "&".join(pairs)


def redact(text: str, values: Iterable[str]) -> str:
    """``text`` with each of ``values`` (longest first) replaced by ``[secret]``."""
    for value in sorted({v for v in values if len(v) >= _MIN_REDACTED}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def redact_cut(text: str, limit: int, values: Iterable[str]) -> str:
    """``text`` ``redact``-ed, then cut to about ``limit`` characters ("..." marks a cut).

    Redacted before it is cut, so that a secret across the cut is replaced whole rather than leave its
    first characters; a "[secret]" the cut would split is kept whole; and a text that ends in the first
    characters of a secret (a body the provider cut short) ends in "[secret]" instead.
    """
    secrets = [v for v in values if len(v) >= _MIN_REDACTED]
    text = redact(text, secrets)
    if len(text) > limit:
        cut = limit
        for start in range(max(0, limit - len(REDACTED) + 1), limit):
            if text.startswith(REDACTED, start):
                cut = start + len(REDACTED)
                break
        text, more = text[:cut], "..."
    else:
        more = ""
    for value in sorted(set(secrets), key=len, reverse=True):
        for size in range(min(len(value) - 1, len(text)), _MIN_CUT_PREFIX - 1, -1):
            if text.endswith(value[:size]):
                text = text[:-size] + REDACTED
                break
    return text + more


def ambient_secrets() -> list[str]:
    """Secret values an error may echo though nobody passed them to the call, step or tool that failed:
    the environment's (litellm takes a key not given from ``OPENAI_API_KEY`` and the like; a tool reads
    them too), and the keys set on litellm itself (``litellm.api_key``, ``litellm.openai_key``...).

    From the environment, only values of at least 16 characters under names like secrets; from litellm
    (when it is imported: this does not import it), its lower-case string attributes named like secrets.
    """
    found = [v for n, v in list(os.environ.items()) if len(v) >= _MIN_ENV_SECRET and is_secret_name(n)]
    litellm = sys.modules.get("litellm")
    if litellm is not None:
        settings = list(vars(litellm).items())  # a copy: another thread may set an attribute meanwhile
        found += [v for n, v in settings if isinstance(v, str) and v and n.islower() and is_secret_name(n)]
    return found
