"""Model calls as recorded steps: ``llm`` and ``LLMStream`` run on a ``RunEngine``.

The request is normalized (secrets removed, messages, tools and response format as blob references)
before it is fingerprinted, so the record proves the same request without holding a key; the live call
gets everything. A recorded call is served without touching litellm or the network.
"""

from __future__ import annotations

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
    count_prompt_tokens,
    import_litellm,
    is_retryable,
    retry_after,
)
from ._retry import RetryPolicy
from ._secrets import strip_secrets
from ._store import StepRecord
from ._tool import Tool
from .errors import AgentFlowError, BudgetExceeded, StepFailed, StructuredOutputError

__all__ = ["LLMCall", "LLMStream", "call_llm", "over_budget", "prepare_llm_call"]


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
    recorded_params = strip_secrets(params, secret_params)
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
    key, request_json, fp, rec = engine.begin(scope, "llm", request)
    call_kwargs: dict[str, Any] = {"model": model, "messages": plain, "max_retries": 0, **params}
    if tool_schemas:
        call_kwargs["tools"] = tool_schemas
    if response_format is not None:
        call_kwargs["response_format"] = response_format
    if stream:
        call_kwargs["stream"] = True
        call_kwargs.setdefault("stream_options", {"include_usage": True})
    policy = retry or engine.extras.llm_retry or engine.default_retry
    return LLMCall(key, request_json, fp, rec, blobs, model, plain, call_kwargs, response_format, policy)


def check_budget(engine: RunEngine, call: LLMCall) -> None:
    """Raise ``BudgetExceeded`` when this call could take the run past its budget."""
    budget = engine.extras.budget
    if budget is None or (budget.max_tokens is None and budget.max_cost is None):
        return
    problem = over_budget(
        budget,
        engine.prompt_tokens + engine.completion_tokens,
        engine.cost,
        call.model,
        call.messages,
        call.call_kwargs,
    )
    if problem is not None:
        raise BudgetExceeded(f"{call.key}: run {engine.run_id!r} {problem}; the call was not made")


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
    prompt = count_prompt_tokens(model, messages, params.get("tools"))
    completion = int(params.get("max_tokens") or params.get("max_completion_tokens") or 0)
    if budget.max_tokens is not None and used_tokens + prompt + completion > budget.max_tokens:
        return (
            f"has used {used_tokens} of its {budget.max_tokens} tokens and this call needs at least "
            f"{prompt + completion} ({prompt} prompt, counted with tiktoken"
            f"{f', plus max_tokens={completion}' if completion else ''})"
        )
    if budget.max_cost is not None:
        estimate = _cost_estimate(model, prompt, completion)
        if used_cost + estimate > budget.max_cost:
            return (
                f"has spent ${used_cost:.6f} of its ${budget.max_cost:.6f} and this call would cost at least "
                f"${estimate:.6f}"
            )
    return None


def _cost_estimate(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    litellm = import_litellm()
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except Exception:  # a model missing from litellm's cost map costs what we cannot know
        return 0.0
    return float(prompt_cost + completion_cost)


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


def _failed(engine: RunEngine, call: LLMCall, started: float, error: Exception, attempts: int) -> StepFailed:
    _record(engine, call, started, attempts, error=error)
    return StepFailed(call.key, type(error).__qualname__, str(error), attempts)


def _served(call: LLMCall) -> LLMResponse:
    assert call.record is not None
    rec = call.record
    if rec.status == "failed":
        err = json.loads(rec.error or "{}")
        raise StepFailed(rec.key, err.get("type", "Error"), err.get("message", ""), rec.attempt)
    output = json.loads(rec.output or "{}")
    return _parse(call, LLMResponse.from_raw(output["response"], rec.cost, replayed=True))


async def _ask_provider(engine: RunEngine, call: LLMCall) -> tuple[Any, float, int]:
    """Check the budget, then call litellm under the call's retry policy.

    Returns ``(litellm's answer, start time, attempts)``; a final failure is recorded and raised as
    ``StepFailed``. For a stream this covers opening it: once chunks are handed out, a failure is final.
    """
    check_budget(engine, call)
    limiter = engine.extras.rate_limiter  # a run of a rate-limited queue, executed by a worker
    if limiter is not None:
        await limiter.before_call(engine, call.key, call.model, call.messages, call.call_kwargs)
    litellm = import_litellm()
    started = engine.clock.time()
    done = await engine.attempts(
        call.key,
        call.retry,
        lambda: litellm.acompletion(**call.call_kwargs),
        retryable=is_retryable,
        wait_at_least=retry_after,
    )
    if done.error is not None:
        raise _failed(engine, call, started, done.error, done.count) from done.error
    return done.value, started, done.count


async def call_llm(engine: RunEngine, call: LLMCall) -> LLMResponse:
    """The answer to a prepared call: from the record, or from the provider (then recorded)."""
    if call.record is not None:
        return _served(call)
    answer, started, attempts = await _ask_provider(engine, call)
    raw = _dump(answer)
    response = LLMResponse.from_raw(raw, _cost(answer), replayed=False)
    _record(engine, call, started, attempts, output=_json({"response": raw}), prompt_tokens=response.prompt_tokens,
            completion_tokens=response.completion_tokens, cost=response.cost)  # fmt: skip
    return _parse(call, response)


class LLMStream:
    """A streamed model call: iterate it for ``StreamChunk`` objects, then read ``response``.

        async with ctx.llm_stream(model=..., messages=...) as stream:
            async for chunk in stream:
                print(chunk.text or "", end="")
        print(stream.response.usage)

    Live, every raw chunk is recorded with its arrival offset, with the assembled response, once the
    stream ends (leaving the ``async with`` early reads the rest first, so the record is whole). Served
    from the record, the same chunks come back; ``pace=True`` waits out the recorded offsets.
    """

    def __init__(self, engine: RunEngine, call: LLMCall, pace: bool) -> None:
        self._engine = engine
        self._call = call
        self._pace = pace
        self._iterator: AsyncIterator[StreamChunk] | None = None
        self._response: LLMResponse | None = None

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

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is None:
            await self.finish()

    async def finish(self) -> LLMResponse:
        """Read what is left of the stream and return the assembled response."""
        async for _ in self:
            pass
        return self.response

    async def _chunks(self) -> AsyncIterator[StreamChunk]:
        if self._call.record is not None:
            async for chunk in self._replayed():
                yield chunk
            return
        async for chunk in self._live():
            yield chunk

    async def _replayed(self) -> AsyncIterator[StreamChunk]:
        rec = self._call.record
        assert rec is not None
        response = _served(self._call)  # raises the recorded failure
        output = json.loads(rec.output or "{}")
        previous = 0.0
        for index, (raw, offset) in enumerate(zip(output.get("chunks", []), output.get("offsets", []), strict=True)):
            if self._pace and offset > previous:
                await self._engine.clock.sleep(offset - previous)
            previous = offset
            yield StreamChunk.from_raw(index, raw, offset)
        self._response = response

    async def _live(self) -> AsyncIterator[StreamChunk]:
        engine, call = self._engine, self._call
        opened, started, attempts = await _ask_provider(engine, call)
        t0 = time.monotonic()
        live: list[Any] = []
        raws: list[dict[str, Any]] = []
        offsets: list[float] = []
        try:
            async for chunk in opened:
                raw = _dump(chunk)
                offset = round(time.monotonic() - t0, 6)
                live.append(chunk)
                raws.append(raw)
                offsets.append(offset)
                yield StreamChunk.from_raw(len(raws) - 1, raw, offset)
        except Exception as exc:
            raise _failed(engine, call, started, exc, attempts) from exc
        built = import_litellm().stream_chunk_builder(live, messages=call.messages)
        raw_response = _dump(built)
        response = LLMResponse.from_raw(raw_response, _cost(built), replayed=False)
        _record(engine, call, started, attempts,
                output=_json({"response": raw_response, "chunks": raws, "offsets": offsets}),
                prompt_tokens=response.prompt_tokens, completion_tokens=response.completion_tokens,
                cost=response.cost)  # fmt: skip
        self._response = _parse(call, response)
