"""The LLM gateway: calls go through litellm; requests, responses and streams are recorded.

What is recorded for a call, under ``scope/llm#n``:

- the request without secrets: model, parameters, and blob references for the messages, the tools and
  the response format. Messages are a hash-linked chain of blobs (each node holds one message and the
  hash of the node before it), so a conversation of n turns stores n nodes, not n growing lists;
- the response as litellm gave it and, for a stream, every raw chunk with its arrival offset;
- tokens and cost, counted from the response's usage and litellm's cost map.

litellm is imported on the first call, not at ``import agentflow``; it is told to use the cost map it
ships (``LITELLM_LOCAL_MODEL_COST_MAP``), so nothing is fetched from the network and costs are
reproducible. Tokens are counted offline with tiktoken in ``_tokens``.
"""

from __future__ import annotations

import bisect
import datetime
import email.utils
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._codec import compact_json_encoder, sha256
from ._models import Usage
from ._secrets import ambient_secrets, redact_cut
from ._store._packing import hash_text
from ._store._records import build_frozen
from .errors import AgentFlowError, ProviderAnswerError

__all__ = [
    "Budget",
    "LLMResponse",
    "StreamChunk",
    "ToolCall",
    "import_litellm",
]


@dataclass(frozen=True)
class Budget:
    """Limits for one run: total tokens (prompt + completion) and total cost in USD. ``None``: no limit."""

    max_tokens: int | None = None
    max_cost: float | None = None


def import_litellm() -> Any:
    """litellm, imported on first use with its bundled cost map (no network at import)."""
    litellm = sys.modules.get("litellm")
    if litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm
    return litellm


# -- content-addressed messages ---------------------------------------------------------------------------


def blob_hash(data: bytes) -> str:
    """The sha256 of ``data``, base64url without padding: 43 characters where hex takes 64."""
    return hash_text(sha256(data).digest())


@dataclass
class MessageChain:
    """Turns message lists into chain heads, storing each message once per conversation branch.

    A node is the JSON array ``[previous node hash or null, [messages...]]``. A call that resends its
    conversation plus a few messages adds one node. When a call shares only part of the previous call's
    last node (the same history, another last message), the shared part becomes a node of its own, so
    calls that branch there later add only what is new. The chain keeps the last call's messages
    (copies) and where its nodes end, so only new messages are hashed and copied.

    A node is made when a call is prepared but stored when a call is recorded, and a prepared call may
    never be recorded (a budget stop, a stream never read). So the chain keeps the nodes it made until
    ``written`` says they are stored, and ``head`` hands out all of the head's unstored ancestors too.
    """

    _messages: list[Any] = field(default_factory=list)
    _ends: list[int] = field(default_factory=list)  # how many messages each node of the chain covers
    _nodes: list[str] = field(default_factory=list)  # the node hashes, in chain order
    _unwritten: dict[str, bytes] = field(default_factory=dict)

    def written(self, hashes: Iterable[str]) -> None:
        """These nodes are in the store now."""
        for h in hashes:
            self._unwritten.pop(h, None)

    def shared(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """How many of ``messages``, from the first, are the chain's: all of the chain's when the call
        extends it (``covers``)."""
        known = len(self._messages)
        head = messages[:known]
        if len(messages) >= known and self._messages == (head if type(head) is list else list(head)):
            return known  # the usual case, a conversation that grew: one list comparison, in C
        shared = 0
        limit = min(known, len(messages))
        while shared < limit and self._messages[shared] == messages[shared]:
            shared += 1
        return shared

    def covers(self, shared: int) -> bool:
        """Whether a call sharing ``shared`` messages with the chain extends it (or repeats it)."""
        return shared == len(self._messages)

    def extended_by(self, messages: Sequence[Mapping[str, Any]]) -> bool:
        """Whether ``messages`` extend the chain (or repeat it): its last message first, which tells a
        sibling branch (same history, another last message) at once."""
        known = len(self._messages)
        if known > len(messages) or (known and self._messages[-1] != messages[known - 1]):
            return False
        head = messages[:known]
        return self._messages == (head if type(head) is list else list(head))

    def copy(self) -> MessageChain:
        """A chain at the same point, to branch off without losing this one's tip."""
        return MessageChain(list(self._messages), list(self._ends), list(self._nodes), self._unwritten)

    def head(self, messages: Sequence[Mapping[str, Any]], new_blobs: dict[str, bytes], shared: int) -> str | None:
        """The hash of the node standing for ``messages``, which share ``shared`` messages with the
        chain; the chain's nodes not yet stored go to ``new_blobs``."""
        keep = bisect.bisect_right(self._ends, shared)  # nodes lying wholly within the shared prefix
        del self._ends[keep:], self._nodes[keep:]
        start = self._ends[-1] if self._ends else 0
        del self._messages[start:]
        for stop in sorted({shared, len(messages)}):
            if stop > start:
                self._add(messages[start:stop])
                start = stop
        if self._unwritten:
            in_chain = set(self._nodes)
            new_blobs.update((h, d) for h, d in self._unwritten.items() if h in in_chain)
        return self._nodes[-1] if self._nodes else None

    def _add(self, added: Sequence[Mapping[str, Any]]) -> None:
        previous = self._nodes[-1] if self._nodes else None
        text = _canonical([previous, list(added)])
        node = blob_hash(text.encode())
        self._unwritten[node] = text.encode()
        self._ends.append(len(self._messages) + len(added))
        self._nodes.append(node)
        # Copies, since the caller may change its messages in place later. Their dicts and lists are new,
        # so any change shows; their strings and numbers are the caller's own (immutable), so comparing
        # the next call's prefix finds them identical without reading them (~20 us less for 50 messages
        # inside a run, where they are cold). Anything else: a copy through JSON.
        try:
            self._messages.extend(_copy_plain(m) for m in added)
        except _NotPlain:
            del self._messages[self._ends[-1] - len(added) :]
            self._messages.extend(json.loads(text)[1])


class _NotPlain(Exception):
    """A value holds something other than dicts, lists, tuples, strings, numbers, booleans and None."""


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _copy_plain(value: Any) -> Any:
    """A copy of JSON-like ``value`` with new containers and the same (immutable) leaves."""
    kind = type(value)
    if kind is dict:
        return {key: _copy_plain(item) for key, item in value.items()}
    if kind is list:
        return [_copy_plain(item) for item in value]
    if kind is tuple:
        return tuple(_copy_plain(item) for item in value)
    if kind in _SCALARS:
        return value
    raise _NotPlain


_CHAINS_PER_SCOPE = 8  # conversations carried on at once in one scope (beyond: the oldest is dropped)


@dataclass
class MessageChains:
    """A run's message chains: per scope (the key of the enclosing step, empty at the top), one per
    conversation carried on there, the most recently used first.

    How a chain splits a conversation into nodes depends on the calls made before in it, and the node
    hashes are part of a call's recorded request, so of its fingerprint. The calls made in one scope are the
    same live, on resume and on replay; but a nested step served from the record makes none of the calls
    inside it, so chains are per scope. And concurrent conversations in one scope (asyncio.gather) may
    interleave their calls in another order on replay than live, so each conversation extends a chain of
    its own: a call extends the chain it continues, else branches off the last call's chain (a new chain;
    the old tip stays), else starts a chain. Each conversation is then split the same way, whatever
    the interleaving, and stores each message once. Nodes not yet stored are shared: ``written`` is told
    once, whichever chain made them.
    """

    _chains: dict[str, list[MessageChain]] = field(default_factory=dict)
    _unwritten: dict[str, bytes] = field(default_factory=dict)

    def forget(self, scope: str) -> None:
        """The step ``scope`` is tried again: its calls (and those of steps inside it) start their chains
        anew, as they did in its first attempt, so that they make the same requests."""
        prefix = scope + "/"
        for name in [s for s in self._chains if s == scope or s.startswith(prefix)]:
            del self._chains[name]

    def head(self, scope: str, messages: Sequence[Mapping[str, Any]], new_blobs: dict[str, bytes]) -> str | None:
        """``MessageChain.head`` on the chain of ``scope`` that ``messages`` continue."""
        chains = self._chains.get(scope)
        if chains is None:
            chain = MessageChain(_unwritten=self._unwritten)
            self._chains[scope] = [chain]
            return chain.head(messages, new_blobs, 0)
        first = chains[0]
        shared = first.shared(messages)
        if first.covers(shared):  # the usual case: the conversation of the last call goes on
            return first.head(messages, new_blobs, shared)
        for chain in chains[1:]:
            if chain.extended_by(messages):  # another conversation of this scope goes on
                chains.remove(chain)
                chains.insert(0, chain)
                return chain.head(messages, new_blobs, len(chain._messages))
        # A new branch, off the last call's chain: a copy, so that its tip stays for its conversation.
        branch = first.copy() if shared else MessageChain(_unwritten=self._unwritten)
        chains.insert(0, branch)
        del chains[_CHAINS_PER_SCOPE:]
        return branch.head(messages, new_blobs, shared)

    def written(self, hashes: Iterable[str]) -> None:
        """These nodes are in the store now."""
        for h in hashes:
            self._unwritten.pop(h, None)


_canonical = compact_json_encoder(default=str)


def read_messages(head: str | None, get_blobs: Any) -> list[dict[str, Any]]:
    """Rebuild the message list of a recorded request from its chain head."""
    parts: list[list[dict[str, Any]]] = []
    node = head
    while node is not None:
        data = get_blobs([node]).get(node)
        if data is None:
            raise AgentFlowError(f"message blob {node} is missing from the store")
        node, added = json.loads(data)
        parts.append(added)
    return [message for part in reversed(parts) for message in part]


# -- responses ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model asked for; ``arguments`` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str

    def args(self) -> dict[str, Any]:
        """The arguments parsed; ``{}`` for empty text. Invalid JSON raises ``ValueError``."""
        if not self.arguments.strip():
            return {}
        parsed = json.loads(self.arguments)
        if not isinstance(parsed, dict):
            raise ValueError(f"tool call {self.name!r}: arguments are not a JSON object")
        return parsed


@dataclass(frozen=True)
class LLMResponse:
    """A model's answer, live or served from the record: the same object either way.

    ``parsed`` is the pydantic object when the call asked for a ``response_format`` model. ``raw`` is the
    response as litellm returned it (a dict). ``replayed`` says it came from the record.
    """

    model: str
    text: str | None
    tool_calls: list[ToolCall]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: float
    raw: dict[str, Any]
    reasoning: str | None = None
    parsed: Any = None
    replayed: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def usage(self) -> Usage:
        """The tokens this call used, as ``Usage`` (the type ``run.usage`` and ``step.usage`` have)."""
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            msg["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        return msg

    @classmethod
    def from_raw(cls, raw: dict[str, Any], cost: float, *, replayed: bool) -> LLMResponse:
        choices = raw.get("choices") or [{}]
        choice = choices[0]
        message = choice.get("message") or {}
        calls = [
            ToolCall(
                id=c.get("id") or "",
                name=(c.get("function") or {}).get("name") or "",
                arguments=(c.get("function") or {}).get("arguments") or "",
            )
            for c in message.get("tool_calls") or []
        ]
        usage = raw.get("usage") or {}
        values = {
            "model": raw.get("model") or "",
            "text": message.get("content"),
            "tool_calls": calls,
            "finish_reason": choice.get("finish_reason"),
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
            "cost": cost,
            "raw": raw,
            "reasoning": message.get("reasoning_content"),
            "parsed": None,
            "replayed": replayed,
        }
        return build_frozen(cls, values)


@dataclass(frozen=True)
class StreamChunk:
    """One streamed piece: the text and reasoning it adds, its raw form, and when it arrived (seconds
    after the call started). A replay yields the same chunks.

    ``index`` is the chunk's position in the stream; ``choice_index`` the choice it belongs to (0 unless
    the call asked for several, ``n=2``, whose chunks arrive interleaved).
    """

    index: int
    text: str | None
    reasoning: str | None
    offset: float
    raw: dict[str, Any]
    choice_index: int = 0

    @classmethod
    def from_raw(cls, index: int, raw: dict[str, Any], offset: float) -> StreamChunk:
        choices = raw.get("choices") or []
        choice = choices[0] if choices else {}
        delta = choice.get("delta") or {}
        return cls(
            index=index,
            text=delta.get("content"),
            reasoning=delta.get("reasoning_content"),
            offset=offset,
            raw=raw,
            choice_index=int(choice.get("index") or 0),
        )


# -- provider errors ----------------------------------------------------------------------------------------


def retry_after(exc: BaseException, now: float | None = None) -> float | None:
    """Seconds a provider asked us to wait (a 429's headers), if it said: ``retry-after-ms``
    (milliseconds, sent by OpenAI and Azure) first, else ``Retry-After`` in seconds or as an HTTP date.

    A date is measured from ``now`` (the engine passes its clock's time; wall time when not given). A
    date already past asks for no wait (0); an unreadable, negative or infinite value is no answer (None).
    """
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    millis = _seconds(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a date without a zone is taken as UTC
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _seconds(value: Any) -> float | None:
    """A header's non-negative, finite number; None for anything else."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def is_retryable(exc: BaseException) -> bool:
    """Rate limits, timeouts, conflicts and server errors are worth retrying; other 4xx errors are not,
    nor an answer that says so (``x-should-retry: false``, as OpenAI's SDK reads it)."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is not None and str(headers.get("x-should-retry", "")).lower() == "false":
        return False
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500:
        return status in (408, 409, 429)
    return True


def check_choices(answer: Any) -> None:
    """Raise ``ProviderAnswerError`` when litellm's ``answer`` holds no choice: there is nothing to read."""
    if not getattr(answer, "choices", None):
        raise ProviderAnswerError(
            "the provider answered without any choice (HTTP 200 with an empty 'choices' list): there is no "
            "message to read"
        )


def explain_provider_error(exc: Exception, secrets: Iterable[str] = ()) -> Exception:
    """``exc``, saying plainly that the provider's answer was not JSON when that is why it was raised.

    litellm reports a body it cannot parse in the JSON parser's words ("Expecting value: line 1 column 1
    (char 0)"). The ``JSONDecodeError`` it chains holds the body, whose start tells what answered (a
    proxy's HTML error page, say). The exception keeps its type: retry decisions and the recorded error
    type stay as they were. The body may echo a key: ``secrets`` (the call's) and ``ambient_secrets`` are
    replaced in it before it is cut, so that a key across the cut leaves none of its characters.
    """
    decode = _json_decode_error(exc)
    message = getattr(exc, "message", None)
    if decode is None or not isinstance(message, str):
        return exc
    body = decode.doc
    if not body.strip():
        plain = "the provider's answer was empty, not valid JSON"
    else:
        head = redact_cut(body, 200, [*secrets, *ambient_secrets()])
        plain = f"the provider's answer was not valid JSON ({decode.msg} at character {decode.pos}); it began {head!r}"
    prefix = message.split(": ", 1)[0] if message.startswith("litellm.") else type(exc).__name__
    exc.message = f"{prefix}: {plain}"  # type: ignore[attr-defined]  # litellm's exceptions print .message
    return exc


def _json_decode_error(exc: BaseException) -> json.JSONDecodeError | None:
    """The ``JSONDecodeError`` behind ``exc``: in its cause or context chain, or its ``original_exception``."""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        if isinstance(current, json.JSONDecodeError):
            return current
        seen.add(id(current))
        original = getattr(current, "original_exception", None)
        pending += [current.__cause__, current.__context__, original if isinstance(original, BaseException) else None]
    return None
