"""Model calls as recorded steps: ``llm`` and ``LLMStream`` run on a ``RunEngine``.

The request is normalized (secrets removed, messages, tools and response format as blob references)
before it is fingerprinted, so the record proves the same request without holding a key; the live call
gets everything. A recorded call is served without touching litellm or the network.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ._codec import canonical_json
from ._engine import RunEngine
from ._llm import (
    Budget,
    LLMResponse,
    StreamChunk,
    blob_hash,
    check_choices,
    explain_provider_error,
    import_litellm,
    is_retryable,
    retry_after,
)
from ._models import keep_secrets_out, redact_error
from ._retry import RetryPolicy
from ._scope import yield_to_siblings
from ._secrets import split_secrets
from ._store import StepRecord
from ._tokens import count_completion_tokens, count_prompt_tokens
from ._tool import Tool
from .errors import AgentFlowError, BudgetExceeded, ProviderAnswerError, StepFailed, StructuredOutputError

__all__ = ["LLMCall", "LLMStream", "call_llm", "finish_open_streams", "over_budget", "prepare_llm_call"]


@dataclass
class LLMCall:
    """One model call, prepared: its key, the recorded request, what the live call needs."""

    key: str
    request: str
    fp: str
    record: StepRecord | None
    blobs: dict[str, bytes]
    model: str
    messages: list[dict[str, Any]]
    call_kwargs: dict[str, Any]
    response_format: Any
    retry: RetryPolicy
    # The secret values taken out of the request (API key, auth headers, URL credentials): never recorded,
    # only looked for in the text of a failure, to be replaced there before it is recorded.
    secrets: list[str]


def _plain_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    if set(map(type, messages)) <= {dict}:  # the usual case, checked in C: every message a plain dict
        return list(messages)  # the dicts are not copied: the message chain keeps copies of what it records
    out: list[dict[str, Any]] = []
    for m in messages:
        if type(m) is dict:
            out.append(m)  # not copied: the message chain keeps copies of what it records
        elif isinstance(m, Mapping):
            out.append(dict(m))
        else:  # a pydantic message object (litellm's Message, for instance)
            from pydantic_core import to_jsonable_python

            out.append(to_jsonable_python(m))
    return out


def _blob_ref(engine: RunEngine, value: Any, blobs: dict[str, bytes]) -> str | None:
    if value is None:
        return None
    data = canonical_json(value).encode()
    ref = blob_hash(data)
    if ref not in engine.written_blobs:
        blobs[ref] = data
    return ref


def _response_format_schema(response_format: Any) -> Any:
    if isinstance(response_format, type) and hasattr(response_format, "model_json_schema"):
        return {"type": "json_schema", "name": response_format.__name__, "schema": response_format.model_json_schema()}
    return response_format


def prepare_llm_call(
    engine: RunEngine,
    scope: str,
    *,
    model: str,
    messages: Sequence[Any],
    tools: Sequence[Tool | Mapping[str, Any]] | None,
    response_format: Any,
    retry: RetryPolicy | None,
    secret_params: Sequence[str],
    params: dict[str, Any],
    stream: bool,
) -> LLMCall:
    """Allocate the key (in call order) and build the recorded request; finds a recorded answer."""
    plain = _plain_messages(messages)
    blobs: dict[str, bytes] = {}
    head = engine.extras.message_chain.head(scope, plain, blobs)  # adds the chain's nodes not stored yet
    tool_schemas = [t.schema() if isinstance(t, Tool) else dict(t) for t in tools] if tools else None
    recorded_params, secret_values = split_secrets(params, secret_params)
    request: dict[str, Any] = {"model": model, "messages": head, "n_messages": len(plain)}
    # Only what is there: a record holds no empty fields (a conversation records one request a turn).
    if tool_schemas:
        request["tools"] = _blob_ref(engine, tool_schemas, blobs)
    if response_format is not None:
        request["response_format"] = _blob_ref(engine, _response_format_schema(response_format), blobs)
    if recorded_params:
        request["params"] = recorded_params
    if stream:
        request["stream"] = True
    key, request_json, fp, rec = engine.begin(scope, "llm", request, blobs)
    call_kwargs: dict[str, Any] = {"model": model, "messages": plain, "max_retries": 0, **params}
    if tool_schemas:
        call_kwargs["tools"] = tool_schemas
    if response_format is not None:
        call_kwargs["response_format"] = response_format
    if stream:
        call_kwargs["stream"] = True
        call_kwargs.setdefault("stream_options", {"include_usage": True})
    policy = retry or engine.extras.llm_retry or engine.default_retry
    return LLMCall(key, request_json, fp, rec, blobs, model, plain, call_kwargs, response_format, policy, secret_values)


def check_budget(engine: RunEngine, call: LLMCall) -> None:
    """Raise ``BudgetExceeded`` when this call could take the run past its budget; otherwise hold its
    estimate in ``engine.extras.llm_in_flight`` until it is recorded, so that calls made concurrently
    (``asyncio.gather``) count the ones asked before them. ``release_budget`` lets the hold go; a call
    that is recorded without it (a stream) lets go at the next check."""
    budget = engine.extras.budget
    if budget is None or (budget.max_tokens is None and budget.max_cost is None):
        return
    in_flight = engine.extras.llm_in_flight
    for key in [key for key in in_flight if engine.journal.recorded(key) is not None]:
        del in_flight[key]  # recorded: its tokens and cost are in the run's totals now
    prompt, completion = _call_tokens(call.model, call.messages, call.call_kwargs)
    cost = _price(call.model, prompt, completion, call.call_kwargs) if budget.max_cost is not None else 0.0
    problem = _unpriced(budget, call.model) if cost is None else _over(
        budget,
        engine.prompt_tokens + engine.completion_tokens,
        engine.cost,
        (prompt, completion, cost),
        held_tokens=sum(p + c for p, c, _ in in_flight.values()),
        held_cost=sum(held for _, _, held in in_flight.values()),
    )  # fmt: skip
    if problem is not None:
        raise BudgetExceeded(f"{call.key}: run {engine.run_id!r} {problem}; the call was not made")
    in_flight[call.key] = (prompt, completion, cost or 0.0)


def release_budget(engine: RunEngine, key: str) -> None:
    """The call at ``key`` holds no budget any more: it was recorded, failed, or was cancelled."""
    engine.extras.llm_in_flight.pop(key, None)


def over_budget(
    budget: Budget,
    used_tokens: int,
    used_cost: float,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
) -> str | None:
    """What a call with ``messages`` and ``params`` would pass in ``budget`` (None: nothing), having used
    ``used_tokens`` and ``used_cost`` already. Prompt tokens are counted with tiktoken, offline."""
    if budget.max_tokens is None and budget.max_cost is None:
        return None
    prompt, completion = _call_tokens(model, messages, params)
    cost = _price(model, prompt, completion, params) if budget.max_cost is not None else 0.0
    if cost is None:
        return _unpriced(budget, model)
    return _over(budget, used_tokens, used_cost, (prompt, completion, cost))


def _call_tokens(model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> tuple[int, int]:
    """The tokens a call needs at least, known before it: its prompt (tiktoken) and its ``max_tokens``."""
    prompt = count_prompt_tokens(model, messages, params.get("tools"))
    return prompt, int(params.get("max_tokens") or params.get("max_completion_tokens") or 0)


def _over(
    budget: Budget,
    used_tokens: int,
    used_cost: float,
    needs: tuple[int, int, float],
    *,
    held_tokens: int = 0,
    held_cost: float = 0.0,
) -> str | None:
    """What a call that ``needs`` (prompt tokens, completion tokens, cost) would pass in ``budget``, after
    what the run used and what its calls in flight hold."""
    prompt, completion, cost = needs
    if budget.max_tokens is not None and used_tokens + held_tokens + prompt + completion > budget.max_tokens:
        held = f" (and its calls in flight hold {held_tokens} more)" if held_tokens else ""
        return (
            f"has used {used_tokens} of its {budget.max_tokens} tokens{held} and this call needs at least "
            f"{prompt + completion} ({prompt} prompt, counted with tiktoken"
            f"{f', plus max_tokens={completion}' if completion else ''})"
        )
    if budget.max_cost is not None and used_cost + held_cost + cost > budget.max_cost:
        held = f" (and its calls in flight hold ${held_cost:.6f} more)" if held_cost else ""
        return (
            f"has spent ${used_cost:.6f} of its ${budget.max_cost:.6f}{held} and this call would cost at "
            f"least ${cost:.6f}"
        )
    return None


def _unpriced(budget: Budget, model: str) -> str:
    """Why a call to a model without a known price cannot be made under a cost budget."""
    return (
        f"has a cost budget (${budget.max_cost}), but litellm's cost map has no price for model {model!r}, so "
        "what the call costs cannot be known: give its price (litellm.register_model, or input_cost_per_token= "
        "and output_cost_per_token= on the call), or budget the run in tokens (Budget(max_tokens=...))"
    )


def _price(model: str, prompt_tokens: int, completion_tokens: int, params: Mapping[str, Any]) -> float | None:
    """What the tokens cost: at the call's own prices when it gives them (as litellm takes them), else at
    litellm's cost map's; None when neither knows the model."""
    given_in, given_out = params.get("input_cost_per_token"), params.get("output_cost_per_token")
    if given_in is not None or given_out is not None:
        return prompt_tokens * float(given_in or 0.0) + completion_tokens * float(given_out or 0.0)
    litellm = import_litellm()
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except Exception:  # a model missing from litellm's cost map
        return None
    return float(prompt_cost + completion_cost)


def _priced(engine: RunEngine, call: LLMCall, answer: Any) -> tuple[dict[str, Any], LLMResponse]:
    """litellm's answer as recorded data and as a response, with its tokens and cost.

    When the provider reported no usage (litellm then gives zeros), both are estimated: the prompt as
    counted with tiktoken (before the call, when the run has a budget), the completion's text, reasoning
    and tool calls with tiktoken, priced with litellm's cost map. The recorded usage then says
    ``"estimated": true``, and a replay serves the same estimates.
    """
    raw = _dump(answer)
    response = LLMResponse.from_raw(raw, _cost(answer), replayed=False)
    if response.prompt_tokens or response.completion_tokens:
        return raw, response
    held = engine.extras.llm_in_flight.get(call.key)  # counted before the call, for the budget
    prompt = held[0] if held else count_prompt_tokens(call.model, call.messages, call.call_kwargs.get("tools"))
    completion = count_completion_tokens(call.model, response.text, response.tool_calls, response.reasoning)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    raw = {**raw, "usage": {**usage, "estimated": True}}
    cost = _price(call.model, prompt, completion, call.call_kwargs) or 0.0
    return raw, LLMResponse.from_raw(raw, cost, replayed=False)


def _cost(response: Any) -> float:
    # litellm prices every response it returns; pricing it again costs ~190 us a call. Its price is in a
    # pydantic private attribute: read from pydantic's dict of them where there is one (getattr goes
    # through BaseModel.__getattr__ in Python).
    private = getattr(response, "__pydantic_private__", None)
    hidden = private.get("_hidden_params") if type(private) is dict else getattr(response, "_hidden_params", None)
    priced = (hidden or {}).get("response_cost")
    if priced is not None:
        return float(priced)
    litellm = import_litellm()
    try:
        return float(litellm.completion_cost(completion_response=response) or 0.0)
    except Exception:
        return 0.0


def _parse(call: LLMCall, response: LLMResponse) -> LLMResponse:
    fmt = call.response_format
    if not (isinstance(fmt, type) and hasattr(fmt, "model_validate_json")):
        return response
    try:
        parsed = fmt.model_validate_json(response.text or "")
    except ValueError as exc:
        raise StructuredOutputError(
            f"{call.key}: the model's answer does not parse as {fmt.__name__}: {str(exc).splitlines()[0]}"
        ) from exc
    return replace(response, parsed=parsed)


def _dump(model: Any) -> dict[str, Any]:
    """A litellm response or chunk as JSON data, without the many null fields it carries.

    Through the model's pydantic serializer itself: what ``model_dump`` does after litellm's and
    pydantic's Python wrappers around it (tested to give the same data).
    """
    serializer = getattr(type(model), "__pydantic_serializer__", None)
    if serializer is None:
        dumped: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
        return dumped
    data: dict[str, Any] = serializer.to_python(model, mode="json", exclude_none=True)
    return data


def _json(value: Any) -> str:
    from pydantic_core import to_json  # not at import: ``import agentflow`` does not import pydantic

    return to_json(value).decode()


def _record(engine: RunEngine, call: LLMCall, started: float, attempts: int, **fields: Any) -> None:
    """Record the call (with the blobs it refers to) and tell the message chain they are stored."""
    engine.record(key=call.key, kind="llm", name="llm", fp=call.fp, request=call.request, started=started,
                  attempts=attempts, blobs=call.blobs, **fields)  # fmt: skip
    engine.extras.message_chain.written(call.blobs)
    limiter = engine.extras.rate_limiter
    if limiter is not None:
        limiter.after_call(call.key, attempts, fields.get("prompt_tokens", 0) + fields.get("completion_tokens", 0))


def _failed(
    engine: RunEngine, call: LLMCall, started: float, error: Exception, attempts: int, output: str | None = None
) -> StepFailed:
    """Record the failed call (with ``output``: a stream's chunks handed out before it failed); the
    ``StepFailed`` to raise from ``error``.

    A provider may echo the key it was given ("Incorrect API key provided: sk-..."): the call's secret
    values, and the keys of the environment and of litellm's settings (litellm takes a key not given from
    ``OPENAI_API_KEY`` or ``litellm.api_key``; ``ambient_secrets``), are replaced by ``[secret]`` in the
    recorded message and traceback, in the ``StepFailed``'s message, and in any recorded traceback that
    chains ``error`` (a run that fails with the ``StepFailed``).
    """
    keep_secrets_out(error, call.secrets)  # ErrorInfo.of adds the ambient ones wherever error is recorded
    _record(engine, call, started, attempts, output=output, error=error)
    return StepFailed(call.key, type(error).__qualname__, redact_error(error, str(error)), attempts)


def _served(call: LLMCall) -> LLMResponse:
    assert call.record is not None
    rec = call.record
    if rec.status == "failed":
        err = json.loads(rec.error or "{}")
        if err.get("type") == BudgetExceeded.__qualname__:  # refused, not made
            raise BudgetExceeded(err.get("message", ""))
        raise StepFailed(rec.key, err.get("type", "Error"), err.get("message", ""), rec.attempt)
    output = json.loads(rec.output or "{}")
    return _parse(call, LLMResponse.from_raw(output["response"], rec.cost, replayed=True))


async def _ask_provider(engine: RunEngine, call: LLMCall) -> tuple[Any, float, int]:
    """Check the budget, then call litellm under the call's retry policy.

    Returns ``(litellm's answer, start time, attempts)``; a final failure is recorded and raised as
    ``StepFailed``, a refusal by the budget recorded (no attempt) and raised as ``BudgetExceeded``. A
    stream's answer is an ``_OpenedStream``: an attempt lasts until its first chunk arrived, so a failure
    before any chunk (a connection reset, a 500, a malformed first chunk) is retried; once chunks are
    handed out, a failure is final.
    """
    try:
        check_budget(engine, call)
    except BudgetExceeded as refused:  # recorded: a replay or a resume is refused there the same way
        _record(engine, call, engine.clock.time(), 0, error=refused)
        raise
    limiter = engine.extras.rate_limiter  # a run of a rate-limited queue, executed by a worker
    if limiter is not None:
        await limiter.before_call(engine, call.key, call.model, call.messages, call.call_kwargs)
    litellm = import_litellm()
    started = engine.clock.time()
    done = await engine.attempts(
        call.key,
        call.retry,
        lambda: _ask_once(litellm, call),
        retryable=is_retryable,
        wait_at_least=lambda exc: retry_after(exc, engine.clock.time()),  # an HTTP-date, by the run's clock
    )
    if done.error is not None:
        error = explain_provider_error(done.error, call.secrets)
        raise _failed(engine, call, started, error, done.count) from error
    return done.value, started, done.count


@dataclass
class _OpenedStream:
    """A stream whose first chunk has arrived: the chunks after it, and ``time.monotonic()`` readings."""

    chunks: AsyncIterator[Any]
    first: Any
    opened_at: float  # when the provider answered, before any chunk: the offsets count from here
    first_at: float


async def _ask_once(litellm: Any, call: LLMCall) -> Any:
    """One attempt: litellm's answer, checked to hold a choice; for a stream, opened to its first chunk."""
    answer = await litellm.acompletion(**call.call_kwargs)
    if not call.call_kwargs.get("stream"):
        check_choices(answer)
        return answer
    opened_at = time.monotonic()
    chunks: AsyncIterator[Any] = aiter(answer)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise ProviderAnswerError("the provider's stream ended without any chunk") from None
    return _OpenedStream(chunks, first, opened_at, time.monotonic())


async def call_llm(engine: RunEngine, call: LLMCall) -> LLMResponse:
    """The answer to a prepared call: from the record, or from the provider (then recorded)."""
    if call.record is not None:
        await yield_to_siblings()
        return _served(call)
    try:
        answer, started, attempts = await _ask_provider(engine, call)
        raw, response = _priced(engine, call, answer)
        _record(engine, call, started, attempts, output=_json({"response": raw}), prompt_tokens=response.prompt_tokens,
                completion_tokens=response.completion_tokens, cost=response.cost)  # fmt: skip
    finally:
        release_budget(engine, call.key)  # recorded, failed or cancelled
    return _parse(call, response)


def _chunks_of(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chunks of a stream that would have given ``response``: for each choice, a delta with all it
    says and then its finish; then the usage. For a record that has no chunks of its own."""
    base = {name: response[name] for name in ("id", "created", "model") if name in response}
    base["object"] = "chat.completion.chunk"
    chunks: list[dict[str, Any]] = []
    for position, choice in enumerate(response.get("choices") or []):
        index = choice.get("index", position)
        message = choice.get("message") or {}
        delta = {name: message[name] for name in ("role", "content", "reasoning_content") if message.get(name)}
        calls = message.get("tool_calls")
        if calls:
            delta["tool_calls"] = [{**call, "index": n} for n, call in enumerate(calls)]
        chunks.append({**base, "choices": [{"index": index, "delta": delta}]})
        finish = choice.get("finish_reason")
        chunks.append({**base, "choices": [{"index": index, "delta": {}, "finish_reason": finish}]})
    if response.get("usage"):
        chunks.append({**base, "choices": [], "usage": response["usage"]})
    return chunks


async def finish_open_streams(engine: RunEngine) -> None:
    """Read the rest of each live stream the run made and left unread or half read (a loop left with
    ``break``, a stream never iterated), so that it is recorded whole before the run ends or waits: a
    replay or a resume then serves it, instead of finding a call that the run made without a record."""
    streams = engine.extras.open_streams
    while streams:
        key, drain = next(iter(streams.items()))
        await drain()
        streams.pop(key, None)


class LLMStream:
    """A streamed model call: iterate it for ``StreamChunk`` objects, then read ``response``.

        async with ctx.llm_stream(model=..., messages=...) as stream:
            async for chunk in stream:
                print(chunk.text or "", end="")
        print(stream.response.usage)

    Live, every raw chunk is recorded with its arrival offset, with the assembled response, once the
    stream ends. A stream left early is recorded whole all the same: leaving the ``async with`` (at its
    end, or by an error) reads the rest first, and a stream left otherwise (a loop left with ``break``, a
    stream never iterated) is read to its end before the run ends or waits. A reading task cancelled
    mid-stream (``asyncio.wait_for``) leaves no record: a resume makes the call again. Served from the
    record, the same chunks come back; ``pace=True`` waits out the recorded offsets.

    Failures: until the first chunk arrives, a failure (a connection reset, a 500, a malformed chunk)
    follows the call's retry policy, and each attempt opens the stream anew. Once a chunk was handed
    out, a failure is final: it is recorded and raised as ``StepFailed``, since the chunks already read
    cannot be taken back. ``await ctx.llm(..., stream=True)`` returns the same stream.
    """

    def __init__(self, engine: RunEngine, call: LLMCall, pace: bool) -> None:
        self._engine = engine
        self._call = call
        self._pace = pace
        self._iterator: AsyncIterator[StreamChunk] | None = None
        self._response: LLMResponse | None = None
        if call.record is None:  # made live: recorded whole, however it is left (``finish_open_streams``)
            engine.extras.open_streams[call.key] = self._drain

    @property
    def key(self) -> str:
        return self._call.key

    @property
    def response(self) -> LLMResponse:
        """The assembled response; available once the stream has been read to its end."""
        if self._response is None:
            raise AgentFlowError(f"{self._call.key}: read the stream to its end (or call finish()) first")
        return self._response

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        if self._iterator is None:
            self._iterator = self._chunks()
        return self._iterator

    async def __aenter__(self) -> LLMStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            await self.finish()
        elif issubclass(exc_type, Exception):  # an error in the block: the call is recorded whole all the same
            await self._drain()

    async def finish(self) -> LLMResponse:
        """Read what is left of the stream and return the assembled response."""
        async for _ in self:
            pass
        return self.response

    async def _drain(self) -> None:
        """Read what is left, for the record. A failure of the rest is recorded (and served as such), not
        raised: whoever left the stream is not reading it any more."""
        with contextlib.suppress(Exception):
            async for _ in self:
                pass

    async def _chunks(self) -> AsyncIterator[StreamChunk]:
        if self._call.record is not None:
            async for chunk in self._replayed():
                yield chunk
            return
        async for chunk in self._live():
            yield chunk

    async def _replayed(self) -> AsyncIterator[StreamChunk]:
        """The recorded chunks, as they came (paced, if asked); then the recorded failure, or the response
        (parsed after the chunks, as live: an answer that does not parse fails at the same point)."""
        rec = self._call.record
        assert rec is not None
        await yield_to_siblings()
        output = json.loads(rec.output or "{}")
        failed = rec.status == "failed"
        if "chunks" in output or failed:  # a failure keeps the chunks handed out before it
            raws, offsets = output.get("chunks", []), output.get("offsets", [])
        else:  # recorded without chunks (a fork's override, say): the response, as a stream would give it
            raws = _chunks_of(output["response"])
            offsets = [0.0] * len(raws)
        previous = 0.0
        for index, (raw, offset) in enumerate(zip(raws, offsets, strict=True)):
            if self._pace and offset > previous:
                await self._engine.clock.sleep(offset - previous)
            previous = offset
            yield StreamChunk.from_raw(index, raw, offset)
        if failed:
            _served(self._call)  # raises the recorded failure
        response = LLMResponse.from_raw(output["response"], rec.cost, replayed=True)
        self._response = _parse(self._call, response)

    async def _live(self) -> AsyncIterator[StreamChunk]:
        try:
            async for chunk in self._streamed():
                yield chunk
        finally:
            release_budget(self._engine, self._call.key)  # recorded, failed, or left unread
            self._engine.extras.open_streams.pop(self._call.key, None)

    async def _streamed(self) -> AsyncIterator[StreamChunk]:
        engine, call = self._engine, self._call
        opened: _OpenedStream
        opened, started, attempts = await _ask_provider(engine, call)
        live: list[Any] = []
        raws: list[dict[str, Any]] = []
        offsets: list[float] = []

        def keep(chunk: Any, arrived_at: float) -> StreamChunk:
            raw = _dump(chunk)
            offset = round(arrived_at - opened.opened_at, 6)
            live.append(chunk)
            raws.append(raw)
            offsets.append(offset)
            return StreamChunk.from_raw(len(raws) - 1, raw, offset)

        try:
            yield keep(opened.first, opened.first_at)
            async for chunk in opened.chunks:
                yield keep(chunk, time.monotonic())
        except Exception as exc:
            error = explain_provider_error(exc, call.secrets)
            handed_out = _json({"chunks": raws, "offsets": offsets})  # served before the failure, as live
            raise _failed(engine, call, started, error, attempts, handed_out) from error
        built = import_litellm().stream_chunk_builder(live, messages=call.messages)
        raw_response = _dump(built)
        response = LLMResponse.from_raw(raw_response, _cost(built), replayed=False)
        _record(engine, call, started, attempts,
                output=_json({"response": raw_response, "chunks": raws, "offsets": offsets}),
                prompt_tokens=response.prompt_tokens, completion_tokens=response.completion_tokens,
                cost=response.cost)  # fmt: skip
        self._response = _parse(call, response)
