"""``ConversationMemory``: a conversation cut to a token budget before it is sent to a model.

Tokens are counted with tiktoken exactly as ``agentflow``'s budgets count them (``count_prompt_tokens``,
with the encodings litellm ships: nothing is downloaded). Messages are dropped oldest first, in units
that a provider accepts on their own: an assistant message that calls tools goes together with the
tool results that answer it. System messages are always kept.

With ``strategy="summarize"`` the dropped messages are replaced by one system message holding a summary,
written by a recorded ``ctx.llm`` call: a resumed or replayed run is served the summary from the record.
The summary runs on: when more messages must go later, the model is asked to fold only those into the
summary it wrote before.
"""

from __future__ import annotations

import functools
import hashlib
import json
import weakref
from collections.abc import Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from agentflow._context import Context, SyncContext
from agentflow._tokens import count_prompt_tokens
from agentflow._tool import Tool
from agentflow.errors import ConfigurationError

__all__ = ["DEFAULT_SUMMARY_PROMPT", "SUMMARY_HEADER", "ConversationMemory", "Strategy", "window"]

Strategy = Literal["window", "summarize"]
Message = dict[str, Any]

SUMMARY_HEADER = "Summary of the earlier conversation:\n"
"""The start of the system message that stands for the messages a summarizing memory dropped."""

DEFAULT_SUMMARY_PROMPT = (
    "You keep the memory of a conversation between a user and an AI assistant. You are given the summary "
    "written so far (if any) and the messages that follow it. Write one updated summary that keeps every "
    "fact, name, number, preference, decision, tool result and open question the assistant needs to carry "
    "on. Be brief. Answer with the summary only."
)

_SYSTEM_ROLES = frozenset({"system", "developer"})
_RESULT_ROLES = frozenset({"tool", "function"})


# -- counting -----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)
def _tokens(model: str, message_json: str) -> int:
    # count_prompt_tokens adds 3 tokens per prompt (the reply's priming) and 3 per message.
    return count_prompt_tokens(model, [json.loads(message_json)]) - 3


def _message_tokens(model: str, message: Message) -> int:
    """The tokens ``message`` adds to a prompt; a prompt counts 3 plus its messages plus its tools."""
    # Keys keep their order: count_prompt_tokens encodes nested values (tool calls) as JSON in that order.
    return _tokens(model, json.dumps(message, default=str))


def _tools_tokens(model: str, tools: Sequence[Tool | Mapping[str, Any]] | None) -> int:
    if not tools:
        return 0
    schemas = [t.schema() if isinstance(t, Tool) else dict(t) for t in tools]
    return count_prompt_tokens(model, [], schemas) - 3


def _plain(messages: Sequence[Any]) -> list[Message]:
    out: list[Message] = []
    for m in messages:
        if isinstance(m, dict):
            out.append(m)
        elif isinstance(m, Mapping):
            out.append(dict(m))
        else:  # a pydantic message object (litellm's Message, for instance)
            from pydantic_core import to_jsonable_python

            out.append(to_jsonable_python(m))
    return out


def _summary_message(text: str) -> Message:
    return {"role": "system", "content": SUMMARY_HEADER + text}


# -- choosing what to drop ----------------------------------------------------------------------------------


@dataclass
class _Conversation:
    """A conversation cut into droppable units, with the tokens of each message counted once."""

    model: str
    messages: list[Message]
    costs: list[int]  # tokens of each message
    units: list[list[int]]  # indexes of the non-system messages, oldest first, in units dropped together
    protected: int  # how many units at the end are always kept (they hold the last ``keep_last`` messages)
    fixed: int  # tokens that are always sent: the prompt's framing, the tools, the system messages
    max_tokens: int
    keep_last: int

    @classmethod
    def build(
        cls,
        model: str,
        messages: Sequence[Any],
        max_tokens: int,
        keep_last: int,
        tools: Sequence[Tool | Mapping[str, Any]] | None,
    ) -> _Conversation:
        plain = _plain(messages)
        costs = [_message_tokens(model, m) for m in plain]
        units: list[list[int]] = []
        answering = False  # the last unit is an assistant's tool calls, so tool results join it
        fixed = 3 + _tools_tokens(model, tools)
        for i, m in enumerate(plain):
            role = m.get("role")
            if role in _SYSTEM_ROLES:
                fixed += costs[i]
            elif role in _RESULT_ROLES and answering:
                units[-1].append(i)
            else:
                units.append([i])
                answering = role == "assistant" and bool(m.get("tool_calls") or m.get("function_call"))
        protected, covered = 0, 0
        while covered < keep_last and protected < len(units):
            protected += 1
            covered += len(units[-protected])
        return cls(model, plain, costs, units, protected, fixed, max_tokens, keep_last)

    def unit_tokens(self, index: int) -> int:
        return sum(self.costs[i] for i in self.units[index])

    def total(self) -> int:
        return self.fixed + sum(self.costs[i] for unit in self.units for i in unit)

    def droppable(self) -> int:
        return len(self.units) - self.protected

    def units_to_drop(self, reserve: int = 0, at_least: int = 0) -> int:
        """How many units, oldest first, must go so that the rest and ``reserve`` tokens fit (0: all fit)."""
        total = self.total()
        if total <= self.max_tokens and at_least == 0:
            return 0
        kept = total
        for dropped in range(1, self.droppable() + 1):
            kept -= self.unit_tokens(dropped - 1)
            if dropped >= at_least and kept + reserve <= self.max_tokens:
                return dropped
        raise self.too_small(reserve)

    def too_small(self, reserve: int) -> ConfigurationError:
        tail = sum(self.unit_tokens(u) for u in range(self.droppable(), len(self.units)))
        need = self.fixed + tail + reserve
        summary = f", a summary of up to {reserve} tokens" if reserve else ""
        return ConfigurationError(
            f"a token budget of {self.max_tokens} is too small for this conversation on {self.model!r}: the "
            f"system messages and tools ({self.fixed} tokens){summary} and the last {self.keep_last} messages "
            f"({tail} tokens), which are always kept, need {need} tokens (counted with tiktoken). Raise max_tokens, "
            "or lower keep_last"
        )

    def dropped_messages(self, units: int) -> list[Message]:
        return [self.messages[i] for unit in self.units[:units] for i in unit]

    def kept(self, units: int, summary: str | None = None) -> list[Message]:
        """The conversation without its first ``units`` units; the summary goes where they were."""
        if units == 0:
            return list(self.messages)
        gone = {i for unit in self.units[:units] for i in unit}
        first_kept = self.units[units][0] if units < len(self.units) else len(self.messages)
        out: list[Message] = []
        for i, m in enumerate(self.messages):
            if i == first_kept and summary is not None:
                out.append(_summary_message(summary))
            if i not in gone:
                out.append(m)
        if first_kept == len(self.messages) and summary is not None:
            out.append(_summary_message(summary))
        return out


def window(
    model: str,
    messages: Sequence[Any],
    max_tokens: int,
    *,
    keep_last: int = 2,
    tools: Sequence[Tool | Mapping[str, Any]] | None = None,
) -> list[Message]:
    """``messages`` cut to ``max_tokens`` prompt tokens of ``model``, counted with tiktoken; no context needed.

    System messages are kept; the oldest other messages are dropped until the rest fits, an assistant
    message that calls tools together with the tool results answering it. The last ``keep_last`` messages
    are always kept: when even they do not fit, ``ConfigurationError`` says the budget is too small.
    ``tools`` (sent with the prompt) count too. The messages kept are the caller's objects, in order.
    """
    _check_budget(max_tokens, keep_last)
    conversation = _Conversation.build(model, messages, max_tokens, keep_last, tools)
    return conversation.kept(conversation.units_to_drop())


def _check_budget(max_tokens: int, keep_last: int) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ConfigurationError(f"max_tokens is a positive number of tokens, got {max_tokens!r}")
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise ConfigurationError(f"keep_last is a number of messages (0 or more), got {keep_last!r}")


# -- the memory ---------------------------------------------------------------------------------------------


class ConversationMemory:
    """Keeps a conversation within ``max_tokens`` prompt tokens, counted with tiktoken.

        memory = ConversationMemory(max_tokens=8000, strategy="summarize", summary_params={"temperature": 0})

        @app.workflow()
        async def chat(ctx: Context, turns: list[str]) -> str:
            messages = [{"role": "system", "content": "You are terse."}]
            for text in turns:
                messages.append({"role": "user", "content": text})
                prompt = await memory.fit(ctx, "gpt-4o-mini", messages)
                answer = await ctx.llm(model="gpt-4o-mini", messages=prompt)
                messages.append(answer.message())

    Pass the whole conversation to ``fit`` every turn; it returns the messages to send.

    ``strategy="window"`` drops the oldest messages; ``"summarize"`` replaces them with a summary (a system
    message starting with ``SUMMARY_HEADER``) written by ``summary_model`` (default: the model of the
    conversation) from ``summary_prompt``, in at most ``summary_tokens`` tokens; ``summary_params`` go to
    that call (``temperature``, ``api_key``: keys are never recorded). The summary call is a recorded
    ``ctx.llm`` step, so a resumed run is served it from the record, and the summary runs on: later turns
    ask the model to fold only the newly dropped messages into it. System messages and the last
    ``keep_last`` messages are always kept; a budget that cannot hold them raises ``ConfigurationError``.

    One memory may serve many runs and conversations at once: the running summaries are kept per run
    context and found by the messages they cover.
    """

    def __init__(
        self,
        max_tokens: int,
        *,
        strategy: Strategy = "window",
        keep_last: int = 2,
        summary_model: str | None = None,
        summary_prompt: str = DEFAULT_SUMMARY_PROMPT,
        summary_tokens: int = 256,
        summary_params: Mapping[str, Any] | None = None,
    ) -> None:
        _check_budget(max_tokens, keep_last)
        if strategy not in ("window", "summarize"):
            raise ConfigurationError(f"strategy is 'window' or 'summarize', got {strategy!r}")
        if isinstance(summary_tokens, bool) or not isinstance(summary_tokens, int) or summary_tokens <= 0:
            raise ConfigurationError(f"summary_tokens is a positive number of tokens, got {summary_tokens!r}")
        if strategy == "summarize" and summary_tokens >= max_tokens:
            raise ConfigurationError(
                f"summary_tokens ({summary_tokens}) must leave room in max_tokens ({max_tokens}) for the conversation"
            )
        if not isinstance(summary_prompt, str) or not summary_prompt.strip():
            raise ConfigurationError("summary_prompt must be a non-empty string")
        self.max_tokens = max_tokens
        self.strategy: Strategy = strategy
        self.keep_last = keep_last
        self.summary_model = summary_model
        self.summary_prompt = summary_prompt
        self.summary_tokens = summary_tokens
        self.summary_params: dict[str, Any] = dict(summary_params or {})
        # Per run context: the hash of a run of dropped messages -> the summary written for them. Built
        # again as a resumed run re-executes (its summary calls are served from the record).
        self._summaries: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return (
            f"ConversationMemory(max_tokens={self.max_tokens}, strategy={self.strategy!r}, keep_last={self.keep_last})"
        )

    def window(
        self, model: str, messages: Sequence[Any], *, tools: Sequence[Tool | Mapping[str, Any]] | None = None
    ) -> list[Message]:
        """``messages`` cut to this memory's budget by dropping the oldest (see the module's ``window``)."""
        return window(model, messages, self.max_tokens, keep_last=self.keep_last, tools=tools)

    @overload
    def fit(
        self,
        ctx: Context,
        model: str,
        messages: Sequence[Any],
        *,
        tools: Sequence[Tool | Mapping[str, Any]] | None = None,
    ) -> Coroutine[Any, Any, list[Message]]: ...
    @overload
    def fit(
        self,
        ctx: SyncContext,
        model: str,
        messages: Sequence[Any],
        *,
        tools: Sequence[Tool | Mapping[str, Any]] | None = None,
    ) -> list[Message]: ...

    def fit(
        self,
        ctx: Context | SyncContext,
        model: str,
        messages: Sequence[Any],
        *,
        tools: Sequence[Tool | Mapping[str, Any]] | None = None,
    ) -> Coroutine[Any, Any, list[Message]] | list[Message]:
        """The messages to send to ``model`` now: ``messages`` within the budget (``tools`` count too).

        With a ``Context`` await it; with a ``SyncContext`` (a ``def`` workflow) it returns the list.
        """
        plan = self._plan(ctx, model, messages, tools)
        if isinstance(ctx, SyncContext):
            return _drive_sync(ctx, plan, self._summary_call(model))
        return _drive(ctx, plan, self._summary_call(model))

    def _summary_call(self, model: str) -> dict[str, Any]:
        params = dict(self.summary_params)
        if "max_completion_tokens" not in params:
            params.setdefault("max_tokens", self.summary_tokens)
        return {"model": self.summary_model or model, **params}

    def _plan(
        self,
        ctx: Any,
        model: str,
        messages: Sequence[Any],
        tools: Sequence[Tool | Mapping[str, Any]] | None,
    ) -> Generator[list[Message], str, list[Message]]:
        """The work of ``fit``: yields each summary request, is sent the summary, returns the messages."""
        conversation = _Conversation.build(model, messages, self.max_tokens, self.keep_last, tools)
        if self.strategy == "window":
            return conversation.kept(conversation.units_to_drop())
        summaries = self._summaries.setdefault(ctx, {})
        summarizer = self.summary_model or model
        reserve = _message_tokens(model, _summary_message("")) + self.summary_tokens
        at_least = 0
        while True:
            units = conversation.units_to_drop(reserve, at_least)
            if units == 0:
                return conversation.kept(0)
            dropped = conversation.dropped_messages(units)
            chain = _prefix_hashes(summarizer, dropped)
            known = next((n for n in range(len(chain), 0, -1) if chain[n - 1] in summaries), 0)
            if known == len(dropped):  # summarized before: this run asked for it already
                summary = summaries[chain[-1]]
            else:  # fold the messages dropped since into the summary written for the ones before them
                previous = summaries[chain[known - 1]] if known else None
                summary = yield self._summary_request(previous, dropped[known:])
                summaries[chain[-1]] = summary
            used = _message_tokens(model, _summary_message(summary))
            kept = conversation.total() - sum(conversation.unit_tokens(u) for u in range(units))
            if kept + used <= self.max_tokens:
                return conversation.kept(units, summary)
            if units >= conversation.droppable():  # the summary came out longer than there is room for
                raise conversation.too_small(used)
            reserve, at_least = used, units + 1  # drop more, and fold that into the summary too

    def _summary_request(self, previous: str | None, dropped: list[Message]) -> list[Message]:
        parts = [f"Summary so far:\n{previous}"] if previous else []
        parts.append("Messages to add to the summary:\n" + "\n".join(_render(m) for m in dropped))
        return [{"role": "system", "content": self.summary_prompt}, {"role": "user", "content": "\n\n".join(parts)}]


def _prefix_hashes(seed: str, messages: list[Message]) -> list[str]:
    """A hash for each prefix of ``messages``: ``out[n - 1]`` stands for ``messages[:n]``."""
    out: list[str] = []
    digest = hashlib.sha256(seed.encode()).hexdigest()
    for m in messages:
        text = json.dumps(m, sort_keys=True, default=str)
        digest = hashlib.sha256(f"{digest}\x1f{text}".encode()).hexdigest()
        out.append(digest)
    return out


def _render(message: Message) -> str:
    """One message as a line of the transcript the summary is written from."""
    role = str(message.get("role") or "unknown")
    content = message.get("content")
    if isinstance(content, list):  # content parts: text, images...
        content = " ".join(
            str(p.get("text")) if isinstance(p, Mapping) and p.get("type") == "text" else "[attachment]"
            for p in content
        )
    text = "" if content is None else content if isinstance(content, str) else json.dumps(content, default=str)
    if role in _RESULT_ROLES:
        role = f"tool result ({message.get('name') or message.get('tool_call_id') or 'unnamed'})"
    calls = [
        f"{(c.get('function') or {}).get('name')}({(c.get('function') or {}).get('arguments') or ''})"
        for c in message.get("tool_calls") or []
        if isinstance(c, Mapping)
    ]
    if calls:
        text = f"{text} [calls {', '.join(calls)}]".strip()
    return f"{role}: {text}"


async def _drive(
    ctx: Context, plan: Generator[list[Message], str, list[Message]], call: dict[str, Any]
) -> list[Message]:
    try:
        request = next(plan)
        while True:
            answer = await ctx.llm(messages=request, **call)
            request = plan.send(answer.text or "")
    except StopIteration as done:
        result: list[Message] = done.value
        return result


def _drive_sync(
    ctx: SyncContext, plan: Generator[list[Message], str, list[Message]], call: dict[str, Any]
) -> list[Message]:
    try:
        request = next(plan)
        while True:
            request = plan.send(ctx.llm(messages=request, **call).text or "")
    except StopIteration as done:
        result: list[Message] = done.value
        return result
