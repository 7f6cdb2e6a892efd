"""Streamed model calls and the provider answers a gateway must not take at face value: ``stream=True``,
sync streams left early, failures before the first chunk, ``response.usage``, answers without choices or
JSON, and interleaved choices (``n=2``). Offline, against the fake provider (respx)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from agentflow import (
    AgentFlow,
    Context,
    FakeClock,
    LLMResponse,
    LLMStream,
    RetryPolicy,
    RunStatus,
    StepFailed,
    StructuredOutputError,
    SyncContext,
    SyncLLMStream,
    Usage,
)
from agentflow.testing import FakeProvider, malformed, reply, stream

MODEL = "gpt-4o-mini"
KEY = "sk-fake"
URL = "https://api.openai.com/v1/chat/completions"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def event(text: str | None, *, choice: int = 0, finish: str | None = None) -> dict[str, Any]:
    delta = {} if text is None else {"role": "assistant", "content": text}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": choice, "delta": delta, "finish_reason": finish}],
    }


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


def streamed(content: bytes | httpx.AsyncByteStream) -> httpx.Response:
    headers = {"content-type": "text/event-stream"}
    if isinstance(content, bytes):
        return httpx.Response(200, content=content + b"data: [DONE]\n\n", headers=headers)
    return httpx.Response(200, stream=content, headers=headers)


class ResetAfter(httpx.AsyncByteStream):
    """A response body that sends ``sent`` and then loses its connection."""

    def __init__(self, sent: bytes = b"") -> None:
        self.sent = sent

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.sent:
            yield self.sent
        raise httpx.ReadError("connection reset by peer")


def answer_with(fake: FakeProvider, *responses: httpx.Response) -> list[dict[str, Any]]:
    """Route the fake's chat completions to ``responses``, in order; returns the request bodies seen."""
    seen: list[dict[str, Any]] = []
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return queue.pop(0)

    fake.router.routes.clear()
    fake.router.post(URL).mock(side_effect=handle)
    return seen


# -- ctx.llm(..., stream=True) ------------------------------------------------------------------------------


def test_llm_with_stream_true_returns_the_stream_llm_stream_returns(db_url: str) -> None:
    seen: list[tuple[str, list[str | None], str | None]] = []

    def define(app: AgentFlow, *, via_llm: bool) -> None:
        @app.workflow(name="streamer")
        async def streamer(ctx: Context) -> str:
            if via_llm:
                s = await ctx.llm(model=MODEL, messages=[user("hi")], api_key=KEY, stream=True)
            else:
                s = ctx.llm_stream(model=MODEL, messages=[user("hi")], api_key=KEY)
            async with s:
                texts = [chunk.text async for chunk in s]
            seen.append((type(s).__name__, texts, s.response.text))
            plain = await ctx.llm(model=MODEL, messages=[user("again")], api_key=KEY, stream=False)
            return f"{s.response.text}|{plain.text}"

    with AgentFlow(db_url, clock=FakeClock()) as app, FakeProvider() as fake:
        define(app, via_llm=True)
        fake.script(stream(["Hel", "lo"]), reply("plain"))
        run = app.run("streamer", run_id="s")
        assert fake.calls[0]["stream"] is True and "stream" not in fake.calls[1]
    assert run.status == RunStatus.COMPLETED and run.output == "Hello|plain"
    assert len(run.steps[0].output["chunks"]) == len(seen[0][1])
    assert (run.steps[0].key, run.steps[1].key) == ("llm#0", "llm#1")

    # The same record as llm_stream: code that calls llm_stream replays it strictly, chunk for chunk.
    with AgentFlow(db_url, clock=FakeClock()) as app, FakeProvider() as fake:
        define(app, via_llm=False)
        replayed = app.replay("s")
        assert fake.call_count == 0
    assert replayed.matched and replayed.output == "Hello|plain"
    live, served = seen
    assert live[0] == served[0] == "LLMStream" and live[1:] == served[1:]


def test_sync_llm_with_stream_true_returns_the_sync_stream(app: AgentFlow) -> None:
    @app.workflow()
    def streamer(ctx: SyncContext) -> list[Any]:
        s = ctx.llm(model=MODEL, messages=[user("hi")], api_key=KEY, stream=True)
        texts = [chunk.text for chunk in s if chunk.text]
        plain = ctx.llm(model=MODEL, messages=[user("hi")], api_key=KEY, stream=False)
        return [type(s).__name__, texts, s.response.text, type(plain).__name__, plain.text]

    with FakeProvider() as fake:
        fake.script(stream(["a", "b"]), reply("c"))
        run = app.run(streamer)

    assert run.output == ["SyncLLMStream", ["a", "b"], "ab", "LLMResponse", "c"]


def test_llm_stream_overloads_give_the_stream_types() -> None:
    # What mypy --strict users rely on: the overloads pick the return type from the stream literal.
    import typing

    hints = [typing.get_type_hints(f) for f in typing.get_overloads(Context.llm)]
    assert [h["return"] for h in hints][:2] == [LLMResponse, LLMStream]
    sync_hints = [typing.get_type_hints(f) for f in typing.get_overloads(SyncContext.llm)]
    assert [h["return"] for h in sync_hints][:2] == [LLMResponse, SyncLLMStream]


# -- sync streams left early --------------------------------------------------------------------------------


def test_a_sync_stream_left_early_is_recorded_whole_and_later_keys_stay_in_place(app: AgentFlow) -> None:
    @app.workflow()
    def reader(ctx: SyncContext) -> list[Any]:
        s = ctx.llm_stream(model=MODEL, messages=[user("one")], api_key=KEY)
        for chunk in s:
            if chunk.text:
                break  # left after the first word
        with ctx.llm_stream(model=MODEL, messages=[user("two")], api_key=KEY) as unread:
            pass  # never iterated: leaving the block reads it
        closed = ctx.llm_stream(model=MODEL, messages=[user("three")], api_key=KEY)
        next(iter(closed))
        closed.close()
        last = ctx.llm(model=MODEL, messages=[user("four")], api_key=KEY)
        return [s.response.text, unread.response.text, closed.response.text, last.text]

    with FakeProvider() as fake:
        fake.script(stream(["a ", "b ", "c"]), stream(["d"]), stream(["e ", "f"]), reply("g"))
        run = app.run(reader, run_id="r")
    assert run.output == ["a b c", "d", "e f", "g"]
    assert [s.key for s in run.steps] == ["llm#0", "llm#1", "llm#2", "llm#3"]
    texts = [(c.get("choices") or [{}])[0].get("delta", {}).get("content") for c in run.steps[0].output["chunks"]]
    assert [t for t in texts if t] == ["a ", "b ", "c"]

    with FakeProvider() as fake:  # nothing scripted: every call must be served from the record
        replayed = app.replay("r")
        assert fake.call_count == 0
    assert replayed.matched and replayed.output == run.output


def test_an_async_stream_left_early_or_never_read_is_recorded_whole_before_the_run_waits(app: AgentFlow) -> None:
    # A loop left with ``break``, an error inside ``async with``, a stream never iterated: each call was made
    # (or asked for), so each is recorded whole, before the run waits; the resume and a replay serve them.
    @app.workflow()
    async def reader(ctx: Context) -> list[Any]:
        broken = await ctx.llm(model=MODEL, messages=[user("one")], api_key=KEY, stream=True)
        async for chunk in broken:
            if chunk.text:
                first = chunk.text
                break  # left after the first word, no ``async with``
        failed_in_block = None
        try:
            async with ctx.llm_stream(model=MODEL, messages=[user("two")], api_key=KEY) as erred:
                async for chunk in erred:
                    if chunk.text:
                        raise ValueError(chunk.text)
        except ValueError as exc:
            failed_in_block = str(exc)
        ctx.llm_stream(model=MODEL, messages=[user("three")], api_key=KEY)  # never read
        await ctx.sleep("nap", 60)
        last = await ctx.llm(model=MODEL, messages=[user("four")], api_key=KEY)
        return [first, failed_in_block, last.text]

    with FakeProvider() as fake:
        fake.script(stream(["a ", "b ", "c"]), stream(["d ", "e"]), stream(["f"]), reply("g"))
        run = app.run(reader, run_id="r")
        assert run.status == RunStatus.WAITING and fake.call_count == 3
        recorded = {s.key: s for s in run.steps}
        assert {k: recorded[k].status for k in ("llm#0", "llm#1", "llm#2")} == dict.fromkeys(
            ("llm#0", "llm#1", "llm#2"), "completed"
        )
        assert [recorded[f"llm#{n}"].output["response"]["choices"][0]["message"]["content"] for n in range(3)] == [
            "a b c", "d e", "f"
        ]  # fmt: skip
        app._clock.advance(60)  # type: ignore[attr-defined]
        [woken] = app.wake_due()
        assert fake.call_count == 4  # the streams were served on resume, not made again
    assert woken.output == ["a ", "d ", "g"]

    with FakeProvider() as fake:  # nothing scripted: every call must be served from the record
        replayed = app.replay("r")
        assert fake.call_count == 0
    assert replayed.matched and replayed.output == woken.output


def test_a_streamed_call_given_another_answer_at_a_fork_streams_that_answer(app: AgentFlow) -> None:
    @app.workflow()
    async def reader(ctx: Context) -> list[str]:
        async with ctx.llm_stream(model=MODEL, messages=[user("hi")], api_key=KEY) as s:
            streamed = "".join([c.text or "" async for c in s])
        return [streamed, s.response.text or ""]

    with FakeProvider() as fake:
        fake.script(stream(["Hel", "lo"]))
        assert app.run(reader, run_id="r").output == ["Hello", "Hello"]
        forked = app.fork("r", at="llm#0", override="Goodbye")  # recorded without chunks: streamed from it
        assert fake.call_count == 1
    assert forked.status == RunStatus.COMPLETED and forked.output == ["Goodbye", "Goodbye"]


def test_a_structured_stream_that_does_not_parse_fails_after_its_chunks_when_served_too(app: AgentFlow) -> None:
    class Invoice(BaseModel):
        total: float

    @app.workflow()
    async def reader(ctx: Context) -> dict[str, Any]:
        got: list[str] = []
        try:
            async with ctx.llm_stream(model=MODEL, messages=[user("?")], api_key=KEY, response_format=Invoice) as s:
                async for chunk in s:
                    got.append(chunk.text or "")
        except StructuredOutputError:
            return {"fallback": "".join(got)}  # keeps what streamed: the same chunks must come when served
        return {"total": s.response.parsed.total}

    with FakeProvider() as fake:
        fake.script(stream(["sorry, ", "no invoice"]))
        run = app.run(reader, run_id="r")
        replayed = app.replay("r")
        assert fake.call_count == 1
    assert run.output == {"fallback": "sorry, no invoice"}
    assert replayed.matched and replayed.output == run.output


# -- failures before the first chunk ------------------------------------------------------------------------


def test_a_stream_failing_before_its_first_chunk_is_retried_by_the_policy(app: AgentFlow, clock: FakeClock) -> None:
    @app.workflow()
    async def reader(ctx: Context) -> list[Any]:
        policy = RetryPolicy(max_attempts=3, delay=2.0, backoff="constant")
        async with ctx.llm_stream(model=MODEL, messages=[user("hi")], api_key=KEY, retry=policy) as s:
            texts = [c.text async for c in s if c.text]
        return [texts, s.response.text]

    ok = sse(event("Hello"), event(" there"), event(None, finish="stop"))
    with FakeProvider() as fake:
        seen = answer_with(fake, streamed(ResetAfter()), streamed(b"data: {not json\n\n"), streamed(ok))
        run = app.run(reader)

    assert run.status == RunStatus.COMPLETED and run.output == [["Hello", " there"], "Hello there"]
    assert len(seen) == 3 and clock.sleeps == [2.0, 2.0]
    assert run.steps[0].attempt == 3 and run.steps[0].status == "completed"


def test_a_stream_failing_after_a_chunk_was_handed_out_fails_for_good(app: AgentFlow, clock: FakeClock) -> None:
    got: list[str | None] = []

    @app.workflow()
    async def reader(ctx: Context) -> list[Any]:
        policy = RetryPolicy(max_attempts=3, delay=2.0)
        try:
            async with ctx.llm_stream(model=MODEL, messages=[user("hi")], api_key=KEY, retry=policy) as s:
                async for c in s:
                    got.append(c.text)
        except StepFailed as exc:
            return [exc.key, exc.attempts, "".join(t or "" for t in got)]  # what streamed before it failed
        return ["answered"]

    with FakeProvider() as fake:
        seen = answer_with(fake, streamed(ResetAfter(sse(event("Hel")))), streamed(sse(event("never"))))
        run = app.run(reader, run_id="r")

    assert run.output == ["llm#0", 1, "Hel"]
    assert got == ["Hel"] and len(seen) == 1 and clock.sleeps == []
    assert run.steps[0].status == "failed"

    got.clear()  # served: the same chunks, then the same failure
    with FakeProvider() as fake:
        replayed = app.replay("r")
        assert fake.call_count == 0
    assert replayed.matched and replayed.output == run.output and got == ["Hel"]


# -- usage --------------------------------------------------------------------------------------------------


def test_a_response_says_its_usage(app: AgentFlow) -> None:
    seen: list[Usage] = []

    @app.workflow()
    async def ask(ctx: Context) -> None:
        plain = await ctx.llm(model=MODEL, messages=[user("hi")], api_key=KEY)
        async with ctx.llm_stream(model=MODEL, messages=[user("hi")], api_key=KEY) as s:
            async for _ in s:
                pass
        seen.extend([plain.usage, s.response.usage])

    with FakeProvider() as fake:
        fake.script(reply("a", usage=(12, 3)), stream(["b", "c"], usage=(4, 2)))
        run = app.run(ask)

    assert run.status == RunStatus.COMPLETED
    assert seen == [Usage(prompt_tokens=12, completion_tokens=3), Usage(prompt_tokens=4, completion_tokens=2)]
    assert seen[1].total_tokens == 6


# -- answers that are no chat completion --------------------------------------------------------------------


def test_an_answer_without_any_choice_is_the_steps_failure(app: AgentFlow) -> None:
    @app.workflow()
    async def ask(ctx: Context) -> list[Any]:
        try:
            await ctx.llm(model=MODEL, messages=[user("hi")], api_key=KEY, retry=RetryPolicy(max_attempts=2))
        except StepFailed as exc:
            return [exc.error_type, exc.error_message, exc.attempts]
        return ["answered"]

    with FakeProvider() as fake:
        fake.script(malformed(b'{"choices": []}'), malformed(b'{"choices": []}'))
        run = app.run(ask)

    error_type, message, attempts = run.output
    assert error_type == "ProviderAnswerError" and attempts == 2
    assert "the provider answered without any choice" in message
    step_error = run.steps[0].error
    assert run.steps[0].status == "failed" and step_error is not None
    assert step_error.type == "ProviderAnswerError" and "without any choice" in step_error.message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"<html>502 Bad Gateway</html>", "it began '<html>502 Bad Gateway</html>'"),
        (b"", "the provider's answer was empty"),
    ],
)
def test_an_answer_that_is_not_json_says_so_with_the_start_of_the_body(app: AgentFlow, body: bytes, says: str) -> None:
    @app.workflow()
    async def ask(ctx: Context) -> str:
        await ctx.llm(model=MODEL, messages=[user("hi")], api_key=KEY, retry=RetryPolicy(max_attempts=1))
        return "answered"

    with FakeProvider() as fake:
        fake.script(malformed(body))
        run = app.run(ask)

    assert run.status == RunStatus.FAILED and run.error is not None
    step_error = run.steps[0].error
    assert step_error is not None and step_error.type == "InternalServerError"  # litellm's type, kept
    assert "not valid JSON" in step_error.message and says in step_error.message
    assert says in run.error.message


def test_a_long_body_that_is_not_json_is_cut_at_200_characters(app: AgentFlow) -> None:
    @app.workflow()
    async def ask(ctx: Context) -> str:
        await ctx.llm(model=MODEL, messages=[user("hi")], api_key=KEY, retry=RetryPolicy(max_attempts=1))
        return "answered"

    with FakeProvider() as fake:
        fake.script(malformed(b"<" + b"x" * 500))
        run = app.run(ask)

    step_error = run.steps[0].error
    assert step_error is not None
    assert "<" + "x" * 199 + "..." in step_error.message and "x" * 200 not in step_error.message


# -- n=2: interleaved choices -------------------------------------------------------------------------------


def test_streamed_chunks_say_which_choice_they_belong_to(app: AgentFlow) -> None:
    seen: list[list[tuple[int, str | None]]] = []

    @app.workflow()
    async def two(ctx: Context) -> list[str]:
        async with ctx.llm_stream(model=MODEL, messages=[user("hi")], api_key=KEY, n=2) as s:
            seen.append([(c.choice_index, c.text) async for c in s])
        return [c["message"]["content"] for c in s.response.raw["choices"]]

    body = sse(
        event("A1 ", choice=0),
        event("B1 ", choice=1),
        event("A2", choice=0),
        event("B2", choice=1),
        event(None, choice=0, finish="stop"),
        event(None, choice=1, finish="stop"),
    )
    with FakeProvider() as fake:
        answer_with(fake, streamed(body))
        run = app.run(two, run_id="n2")
    with FakeProvider() as fake:
        replayed = app.replay("n2")
        assert fake.call_count == 0

    assert run.output == replayed.output == ["A1 A2", "B1 B2"]
    live, served = seen
    assert [text for choice, text in live if choice == 0 and text] == ["A1 ", "A2"]
    assert [text for choice, text in live if choice == 1 and text] == ["B1 ", "B2"]
    assert served == live
