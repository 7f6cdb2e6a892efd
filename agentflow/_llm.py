"""The LLM gateway: calls go through litellm; requests, responses and streams are recorded.

What is recorded for a call, under ``scope/llm#n``:

- the request without secrets: model, parameters, and blob references for the messages, the tools and
  the response format. Messages are a hash-linked chain of blobs (each node holds one message and the
  hash of the node before it), so a conversation of n turns stores n nodes, not n growing lists;
- the response as litellm gave it and, for a stream, every raw chunk with its arrival offset;
- tokens and cost, counted from the response's usage and litellm's cost map.

litellm is imported on the first call, not at ``import agentflow``; it is told to use the cost map it
ships (``LITELLM_LOCAL_MODEL_COST_MAP``), so nothing is fetched from the network and costs are
reproducible. Prompt tokens are counted before a call with tiktoken, from the encodings litellm ships.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._codec import compact_json_encoder, sha256
from ._store._packing import hash_text
from ._store._records import build_frozen
from .errors import AgentFlowError

__all__ = [
    "Budget",
    "LLMResponse",
    "StreamChunk",
    "ToolCall",
    "count_prompt_tokens",
    "import_litellm",
]

_BUNDLED_ENCODINGS = ("cl100k_base", "o200k_base")


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


# -- tokens -------------------------------------------------------------------------------------------------


@functools.cache
def _encoding(name: str) -> Any:
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        spec = importlib.util.find_spec("litellm")
        if spec and spec.submodule_search_locations:
            bundled = os.path.join(next(iter(spec.submodule_search_locations)), "litellm_core_utils", "tokenizers")
            os.environ["TIKTOKEN_CACHE_DIR"] = bundled
    import tiktoken

    return tiktoken.get_encoding(name)


def _encoding_name(model: str) -> str:
    import tiktoken.model

    base = model.rsplit("/", 1)[-1]
    try:
        name = tiktoken.model.encoding_name_for_model(base)
    except KeyError:
        return "o200k_base"
    # Only the encodings litellm ships load offline; others would be downloaded.
    return name if name in _BUNDLED_ENCODINGS else "cl100k_base"


def count_prompt_tokens(model: str, messages: Sequence[Mapping[str, Any]], tools: Any = None) -> int:
    """Prompt tokens as OpenAI counts them (content plus ~3 tokens of framing a message), offline."""
    enc = _encoding(_encoding_name(model))
    total = 3  # the reply is primed with <|start|>assistant<|message|>
    for message in messages:
        total += 3
        for name, value in message.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str) if value else ""
            total += len(enc.encode(text, disallowed_special=()))
            if name == "name":
                total += 1
    if tools:
        total += len(enc.encode(json.dumps(tools, default=str), disallowed_special=()))
    return total


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

    def head(self, messages: Sequence[Mapping[str, Any]], new_blobs: dict[str, bytes]) -> str | None:
        """The hash of the node standing for ``messages``; the chain's nodes not yet stored go to
        ``new_blobs``."""
        known = len(self._messages)
        head = messages[:known]
        if len(messages) >= known and self._messages == (head if type(head) is list else list(head)):
            shared = known  # the usual case, a conversation that grew: one list comparison, in C
        else:
            shared = 0
            limit = min(known, len(messages))
            while shared < limit and self._messages[shared] == messages[shared]:
                shared += 1
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


@dataclass
class MessageChains:
    """A run's message chains: one per scope (the key of the enclosing step, empty at the top).

    How a chain splits a conversation into nodes depends on the calls made before in it, and the node
    hashes are part of a call's recorded request, so of its fingerprint. The calls made in one scope are the
    same, in the same order, live, on resume and on replay; but a nested step served from the record makes
    none of the calls inside it. With one chain per run, a sub-agent's calls (in a plan's graph node, say)
    would split the caller's next conversation differently live than on replay, and a strict replay would
    diverge on identical messages. Nodes not yet stored are shared: ``written`` is told once, whichever
    chain made them.
    """

    _chains: dict[str, MessageChain] = field(default_factory=dict)
    _unwritten: dict[str, bytes] = field(default_factory=dict)

    def head(self, scope: str, messages: Sequence[Mapping[str, Any]], new_blobs: dict[str, bytes]) -> str | None:
        """``MessageChain.head`` on the chain of ``scope``."""
        chain = self._chains.get(scope)
        if chain is None:
            chain = self._chains[scope] = MessageChain(_unwritten=self._unwritten)
        return chain.head(messages, new_blobs)

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
    after the call started). A replay yields the same chunks."""

    index: int
    text: str | None
    reasoning: str | None
    offset: float
    raw: dict[str, Any]

    @classmethod
    def from_raw(cls, index: int, raw: dict[str, Any], offset: float) -> StreamChunk:
        choices = raw.get("choices") or []
        delta = (choices[0].get("delta") or {}) if choices else {}
        return cls(
            index=index,
            text=delta.get("content"),
            reasoning=delta.get("reasoning_content"),
            offset=offset,
            raw=raw,
        )


# -- provider errors ----------------------------------------------------------------------------------------


def retry_after(exc: BaseException) -> float | None:
    """Seconds a provider asked us to wait (a 429's Retry-After header), if it said."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def is_retryable(exc: BaseException) -> bool:
    """Rate limits, timeouts, conflicts and server errors are worth retrying; other 4xx errors are not."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500:
        return status in (408, 409, 429)
    return True
