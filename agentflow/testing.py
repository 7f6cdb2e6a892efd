"""A fake OpenAI-compatible provider for tests: scripted answers at the HTTP level.

The fake answers ``POST {base_url}/chat/completions`` through respx, so litellm's real request building,
response parsing, streaming and error mapping all run; only the network is replaced.

    from agentflow.testing import FakeProvider, error, malformed, reply, tool_call

    with FakeProvider() as fake:            # intercepts https://api.openai.com/v1/chat/completions
        fake.script(
            reply("Hello!"),                                  # a plain completion
            tool_call("lookup_order", {"order_id": "A-1"}),   # one tool call (several: tool_calls([...]))
            reply('{"total": 3.5}'),                          # structured output is just JSON text
            error(429, retry_after=7),                        # 429 with a Retry-After header
            error(500),
            malformed(),                                      # 200 with a body that is not JSON
        )
        litellm.completion(model="gpt-4o-mini", messages=..., api_key="sk-fake", max_retries=0)
        fake.calls        # the parsed JSON bodies of the requests, in order
        fake.call_count

Scripted answers are consumed one per request, in order. A script item may also be a responder: a callable
that takes the parsed request body and returns the answer (``fake.script(lambda request: reply(...))``).
``fake.default`` answers every request once the script is used up; without it, such a request gets an HTTP
500 saying so and is recorded in ``fake.unexpected``. A request whose body has ``"stream": true`` is
answered with Server-Sent Events, chunked as OpenAI does.

``record_bundles`` records runs of your workflows with such a fake model and exports them as bundles
(regression cases for the pytest plugin's ``agentflow_bundles``, traces for evals): see ``BundleCase``.

While the fake is active every request made through httpx goes to its router: requests to other hosts or
paths raise respx's ``AllMockedAssertionError`` instead of reaching the network (add routes of your own
through ``fake.router``). Pass ``max_retries=0`` to litellm: the OpenAI SDK otherwise retries 429 and 5xx
answers, sleeping for real and honouring ``Retry-After``.
"""

from __future__ import annotations

import http
import json
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, TypeAlias

import httpx
import respx

from ._recording import BundleCase, record_bundles
from .errors import ConfigurationError

# litellm reads this when it is imported: set here, a test file that imports agentflow.testing before
# litellm prices calls from the cost map litellm ships, not one fetched from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__all__ = [
    "BundleCase",
    "ErrorResponse",
    "FakeProvider",
    "Malformed",
    "Reply",
    "Responder",
    "ScriptItem",
    "ScriptedResponse",
    "ToolCall",
    "error",
    "malformed",
    "record_bundles",
    "reply",
    "stream",
    "tool_call",
    "tool_calls",
]

CREATED = 1_700_000_000
"""The ``created`` timestamp of every fake completion (litellm rewrites it in streamed chunks)."""

_ARGUMENT_FRAGMENT = 8  # characters of tool-call arguments per streamed chunk


@dataclass(frozen=True)
class ToolCall:
    """One function call an assistant turn asks for; ``arguments`` is the JSON text the model wrote."""

    name: str
    arguments: str
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """A successful assistant turn: text, tool calls or both. Build it with `reply` or `tool_call`."""

    text: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    model: str | None = None
    usage: tuple[int, int] | None = None
    finish_reason: str = "stop"
    reasoning: str | None = None
    chunks: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ErrorResponse:
    """An HTTP error answer in OpenAI's shape (``{"error": {...}}``). Build it with `error`."""

    status: int
    message: str
    type: str
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Malformed:
    """An answer whose body is served verbatim, e.g. JSON cut short. Build it with `malformed`."""

    body: bytes
    status: int = 200


ScriptedResponse: TypeAlias = Reply | ErrorResponse | Malformed
"""What the fake can answer one request with."""
Responder: TypeAlias = Callable[[dict[str, Any]], ScriptedResponse]
"""A callable that answers a request, given its parsed JSON body."""
ScriptItem: TypeAlias = ScriptedResponse | Responder
"""One entry of a script: a fixed answer or a responder."""


def reply(
    text: str,
    *,
    model: str | None = None,
    usage: tuple[int, int] | None = None,
    finish_reason: str = "stop",
    reasoning: str | None = None,
    chunks: Sequence[str] | None = None,
) -> Reply:
    """A plain completion with ``text``.

    ``usage`` is ``(prompt_tokens, completion_tokens)``; by default it is counted from the words of the
    request and the reply. ``model`` overrides the model echoed from the request. ``reasoning`` is sent as
    ``reasoning_content``. ``chunks`` fixes how a streamed answer splits ``text`` (default: word by word).
    """
    if chunks is not None and "".join(chunks) != text:
        raise ValueError(f"chunks {list(chunks)!r} do not join to the reply text {text!r}")
    return Reply(
        text,
        model=model,
        usage=usage,
        finish_reason=finish_reason,
        reasoning=reasoning,
        chunks=None if chunks is None else tuple(chunks),
    )


def stream(chunks: Sequence[str], **options: Any) -> Reply:
    """A reply whose text is streamed exactly as ``chunks``: ``reply("".join(chunks), chunks=chunks)``."""
    return reply("".join(chunks), chunks=chunks, **options)


def tool_call(
    name: str,
    arguments: Mapping[str, Any] | str,
    *,
    id: str | None = None,
    text: str | None = None,
    model: str | None = None,
    usage: tuple[int, int] | None = None,
) -> Reply:
    """An assistant turn that calls one tool. A ``str`` for ``arguments`` is sent verbatim (even if invalid).

    The call's id defaults to ``call_fake_<request number>_<index>``.
    """
    return tool_calls([(name, arguments, id)], text=text, model=model, usage=usage)


def tool_calls(
    calls: Sequence[tuple[str, Mapping[str, Any] | str] | tuple[str, Mapping[str, Any] | str, str | None]],
    *,
    text: str | None = None,
    model: str | None = None,
    usage: tuple[int, int] | None = None,
) -> Reply:
    """An assistant turn that calls several tools at once: ``tool_calls([(name, arguments[, id]), ...])``."""
    built = tuple(
        ToolCall(
            call[0], call[1] if isinstance(call[1], str) else json.dumps(call[1]), call[2] if len(call) > 2 else None
        )
        for call in calls
    )
    return Reply(text, tool_calls=built, model=model, usage=usage, finish_reason="tool_calls")


def error(
    status: int,
    *,
    message: str | None = None,
    retry_after: float | None = None,
    type: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ErrorResponse:
    """An HTTP error in OpenAI's shape; litellm maps it as it maps the real one (429: RateLimitError, ...).

    ``retry_after`` becomes a ``Retry-After`` header; ``code`` e.g. ``"context_length_exceeded"``.
    ``type`` defaults to what OpenAI sends for the status; ``headers`` are added to the answer.
    """
    if message is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:  # 529 (Anthropic: overloaded), 520-524 (Cloudflare): not in HTTPStatus
            phrase = "Error"
        message = f"{status} {phrase} (scripted by FakeProvider)"
    if type is None:
        type = "server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error"
    if code is None and status == 429:
        code = "rate_limit_exceeded"
    extra = dict(headers or {})
    if retry_after is not None:
        extra["retry-after"] = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
    return ErrorResponse(status, message, type, code, tuple(extra.items()))


def _check_item(item: Any, where: str) -> None:
    if not (isinstance(item, Reply | ErrorResponse | Malformed) or callable(item)):
        raise TypeError(
            f"{where}: {item!r} is not an answer; use reply(...), tool_call(...), error(...), malformed(...), "
            "or a responder (a function of the request body returning one of those)"
        )


def _forget_litellm_clients(litellm: Any) -> None:
    """Drop the HTTP clients litellm keeps between calls: one made before the fake was entered (on
    aiohttp) would carry the next request past respx, to the network."""
    flush = getattr(getattr(litellm, "in_memory_llm_clients_cache", None), "flush_cache", None)
    if callable(flush):
        flush()


def malformed(body: bytes = b"{not json", *, status: int = 200) -> Malformed:
    """An answer whose body is ``body`` verbatim; a streamed request gets it as the data of one SSE event."""
    return Malformed(body, status)


class FakeProvider:
    """Answers OpenAI chat-completion requests from a script, at the HTTP level (respx).

    Use it as a context manager (``with`` or ``async with``). While active it routes all httpx traffic to
    its router and sets ``litellm.disable_aiohttp_transport = True`` (so litellm's async path uses httpx),
    restoring the previous value on exit. ``usage=False`` leaves usage out of every answer.

    Scripted answers go to requests in arrival order. Calls made concurrently (``asyncio.gather``)
    arrive in an order the test does not control: answer them with a responder that looks at the
    request (``fake.default = lambda request: reply(...)``), not with a script.

    A responder that raises (a failed ``assert`` on the request, say) or returns something that is not an
    answer: the request gets a 500 that is not retried, the error is kept in ``errors``, and leaving the
    ``with`` block raises the first one, so that a test cannot pass over it. One fake per ``base_url`` at
    a time: entering a second one for the same URL is an error.

    Attributes:
        calls: the parsed JSON body of every chat-completion request, in arrival order.
        unexpected: the requests that found neither a scripted answer nor a default (each answered 500).
        errors: what responders raised (or returned instead of an answer), in order.
        default: the answer (or responder) for every request once the script is used up.
        router: the respx router; add routes to it for other HTTP services a test talks to.
    """

    _active: ClassVar[set[str]] = set()  # the base URLs of the fakes now entered, in this process
    _active_lock = threading.Lock()

    def __init__(self, base_url: str = "https://api.openai.com/v1", *, usage: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.usage = usage
        self.calls: list[dict[str, Any]] = []
        self.unexpected: list[dict[str, Any]] = []
        self.errors: list[Exception] = []
        self._default: ScriptItem | None = None
        self.router = respx.MockRouter(assert_all_called=False)
        self.router.post(f"{self.base_url}/chat/completions").mock(side_effect=self._handle)
        self._script: deque[ScriptItem] = deque()
        self._lock = threading.Lock()
        self._saved_aiohttp_flag: bool | None = None

    def script(self, *items: ScriptItem) -> FakeProvider:
        """Queue answers (or responders) for the next requests, in order; returns the provider."""
        for item in items:
            _check_item(item, "fake.script(...)")
        with self._lock:
            self._script.extend(items)
        return self

    @property
    def default(self) -> ScriptItem | None:
        """The answer (or responder) for every request once the script is used up."""
        return self._default

    @default.setter
    def default(self, item: ScriptItem | None) -> None:
        if item is not None:
            _check_item(item, "fake.default")
        self._default = item

    @property
    def call_count(self) -> int:
        """How many chat-completion requests arrived."""
        return len(self.calls)

    @property
    def remaining(self) -> int:
        """How many scripted answers are still unused."""
        return len(self._script)

    def __enter__(self) -> FakeProvider:
        import litellm

        with FakeProvider._active_lock:
            if self.base_url in FakeProvider._active:
                raise ConfigurationError(
                    f"a FakeProvider for {self.base_url} is active already: script that one (the first to be "
                    "entered answers every request), or leave it before entering another"
                )
            FakeProvider._active.add(self.base_url)
        self._saved_aiohttp_flag = litellm.disable_aiohttp_transport
        litellm.disable_aiohttp_transport = True
        _forget_litellm_clients(litellm)
        self.router.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        import litellm

        try:
            self.router.__exit__(exc_type, exc, tb)
        finally:
            if self._saved_aiohttp_flag is not None:
                litellm.disable_aiohttp_transport = self._saved_aiohttp_flag
                self._saved_aiohttp_flag = None
            _forget_litellm_clients(litellm)  # clients made on the fake's transport settings
            with FakeProvider._active_lock:
                FakeProvider._active.discard(self.base_url)
        if exc_type is None and self.errors:
            raise AssertionError(f"a FakeProvider responder failed: {self.errors[0]!r}") from self.errors[0]

    async def __aenter__(self) -> FakeProvider:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        body: dict[str, Any] = json.loads(request.content)
        with self._lock:
            self.calls.append(body)
            number = len(self.calls)
            item = self._script.popleft() if self._script else self.default
            if item is None:
                self.unexpected.append(body)
        if item is None:
            message = f"FakeProvider: no scripted response left for request #{number}"
            # x-should-retry: a retry would meet the same empty script.
            return _render_error(error(500, message=message, headers={"x-should-retry": "false"}))
        try:
            answer = item if isinstance(item, Reply | ErrorResponse | Malformed) else item(body)
            if not isinstance(answer, Reply | ErrorResponse | Malformed):
                raise TypeError(
                    f"a responder returned {answer!r}; it must return an answer: reply(...), tool_call(...), "
                    "error(...) or malformed(...)"
                )
        except Exception as exc:  # kept, raised when the fake is left; the request is not retried
            with self._lock:
                self.errors.append(exc)
            message = f"FakeProvider: the responder for request #{number} failed: {exc!r}"
            return _render_error(error(500, message=message, headers={"x-should-retry": "false"}))
        if isinstance(answer, ErrorResponse):
            return _render_error(answer)
        streamed = body.get("stream") is True
        if isinstance(answer, Malformed):
            if streamed:
                return _sse_response(answer.status, b"data: " + answer.body + b"\n\n")
            return httpx.Response(answer.status, content=answer.body, headers={"content-type": "application/json"})
        completion = _Completion(answer, body, number, self.usage)
        if streamed:
            options = body.get("stream_options") or {}
            events = completion.chunks(include_usage=bool(options.get("include_usage")))
            return _sse_response(200, b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events))
        return httpx.Response(200, json=completion.body())


def _render_error(answer: ErrorResponse) -> httpx.Response:
    body = {"error": {"message": answer.message, "type": answer.type, "param": None, "code": answer.code}}
    return httpx.Response(answer.status, json=body, headers=dict(answer.headers))


def _sse_response(status: int, content: bytes) -> httpx.Response:
    return httpx.Response(status, content=content + b"data: [DONE]\n\n", headers={"content-type": "text/event-stream"})


def _words(value: object) -> int:
    """Words in every string inside a JSON value: a deterministic stand-in for a token count."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, Mapping):
        return sum(_words(v) for v in value.values())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    return 0


def _split_words(text: str) -> list[str]:
    """``text`` in word-sized pieces that join back to it exactly."""
    return re.findall(r"^\s+|\S+\s*", text)


class _Completion:
    """One scripted reply rendered for one request, as a whole body or as stream chunks."""

    def __init__(self, answer: Reply, request: dict[str, Any], number: int, with_usage: bool) -> None:
        self.answer = answer
        self.id = f"chatcmpl-fake-{number}"
        self.model = answer.model or str(request.get("model") or "gpt-4o-mini")
        self.calls = [(call.id or f"call_fake_{number}_{index}", call) for index, call in enumerate(answer.tool_calls)]
        self.usage = self._usage(request) if with_usage else None

    def _usage(self, request: dict[str, Any]) -> dict[str, Any]:
        answer = self.answer
        reasoning = _words(answer.reasoning or "")
        if answer.usage is not None:
            prompt, completion = answer.usage
        else:
            prompt = max(1, _words(request.get("messages", [])))
            produced = [answer.text or "", *(f"{c.name} {c.arguments}" for c in answer.tool_calls)]
            completion = max(1, _words(produced) + reasoning)
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
        usage["total_tokens"] = prompt + completion
        if answer.reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": min(max(1, reasoning), completion)}
        return usage

    def body(self) -> dict[str, Any]:
        """The ``chat.completion`` body of a non-streamed answer."""
        message: dict[str, Any] = {"role": "assistant", "content": self.answer.text, "refusal": None}
        if self.answer.reasoning is not None:
            message["reasoning_content"] = self.answer.reasoning
        if self.calls:
            message["tool_calls"] = [
                {"id": id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for id, call in self.calls
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.answer.finish_reason}
        body = self._envelope("chat.completion", [choice])
        if self.usage is not None:
            body["usage"] = self.usage
        return body

    def chunks(self, *, include_usage: bool) -> Iterator[dict[str, Any]]:
        """The ``chat.completion.chunk`` events of a streamed answer, as OpenAI orders them."""
        answer = self.answer
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": "" if answer.text is not None else None}]
        deltas += [{"reasoning_content": piece} for piece in _split_words(answer.reasoning or "")]
        text_pieces = answer.chunks if answer.chunks is not None else _split_words(answer.text or "")
        deltas += [{"content": piece} for piece in text_pieces]
        for index, (id, call) in enumerate(self.calls):
            head = {"index": index, "id": id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            deltas.append({"tool_calls": [head]})
            for start in range(0, len(call.arguments), _ARGUMENT_FRAGMENT):
                fragment = call.arguments[start : start + _ARGUMENT_FRAGMENT]
                deltas.append({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
        finish: list[str | None] = [None] * len(deltas)
        deltas.append({})
        finish.append(answer.finish_reason)
        for delta, reason in zip(deltas, finish, strict=True):
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            chunk = self._envelope("chat.completion.chunk", [choice])
            if include_usage:
                chunk["usage"] = None
            yield chunk
        if include_usage and self.usage is not None:
            yield {**self._envelope("chat.completion.chunk", []), "usage": self.usage}

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": CREATED, "model": self.model, "choices": choices}
