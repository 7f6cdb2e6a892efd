"""A run's token and cost budget: calls in flight count, answers without usage are estimated, images are
priced by OpenAI's rule (not as base64 text), and a 429's Retry-After is read in all its forms."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import zlib
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import httpx
import litellm
import pytest
import tiktoken

from agentflow import AgentFlow, Budget, Context, FakeClock, RetryPolicy, RunStatus, StepFailed
from agentflow._llm import retry_after
from agentflow._llm_calls import release_budget
from agentflow._tokens import count_completion_tokens, count_prompt_tokens
from agentflow.testing import FakeProvider, error, reply, tool_call

MODEL = "gpt-4o-mini"
KEY = "sk-fake"
HELLO = [{"role": "user", "content": "hello world"}]  # 9 prompt tokens by tiktoken


def in_flight(ctx: Context) -> dict[str, Any]:
    return ctx._engine.extras.llm_in_flight


# -- calls in flight ----------------------------------------------------------------------------------------


def test_concurrent_calls_count_the_calls_in_flight_and_stop_before_the_budget_is_passed(app: AgentFlow) -> None:
    @app.workflow(name="fan_out", budget=Budget(max_tokens=30))
    async def fan_out(ctx: Context) -> list[str]:
        calls = [ctx.llm(model=MODEL, messages=HELLO, api_key=KEY) for _ in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert in_flight(ctx) == {}
        return [type(r).__name__ if isinstance(r, BaseException) else str(r.text) for r in results]

    with FakeProvider() as fake:
        fake.default = reply("ok", usage=(9, 1))
        run = app.run(fan_out, run_id="fan-out")

    assert fake.call_count == 3  # 3 x 9 prompt tokens held, so the 4th (9 more) would pass 30
    assert run.output == ["ok", "ok", "ok", "BudgetExceeded", "BudgetExceeded"]
    assert run.usage.total_tokens == 30


def test_the_budget_error_of_a_concurrent_call_names_what_the_calls_in_flight_hold(app: AgentFlow) -> None:
    @app.workflow(name="pair", budget=Budget(max_tokens=15))
    async def pair(ctx: Context) -> None:
        await asyncio.gather(*[ctx.llm(model=MODEL, messages=HELLO, api_key=KEY) for _ in range(2)])

    with FakeProvider() as fake:
        fake.default = reply("ok", usage=(9, 1))
        run = app.run(pair, run_id="pair")

    assert run.status == RunStatus.FAILED and run.error is not None
    assert run.error.type == "BudgetExceeded"
    assert "llm#1" in run.error.message and "has used 0 of its 15 tokens" in run.error.message
    assert "calls in flight hold 9 more" in run.error.message and "the call was not made" in run.error.message


def test_a_run_stopped_by_its_budget_replays_to_the_same_refusal(app: AgentFlow) -> None:
    @app.workflow(name="fan_out", budget=Budget(max_tokens=30))
    async def fan_out(ctx: Context) -> list[str]:
        calls = [ctx.llm(model=MODEL, messages=HELLO, api_key=KEY) for _ in range(4)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await ctx.llm(model=MODEL, messages=HELLO, api_key=KEY)  # refused: the run fails with it
        return [type(r).__name__ if isinstance(r, BaseException) else str(r.text) for r in results]

    with FakeProvider() as fake:
        fake.default = reply("ok", usage=(9, 1))
        run = app.run(fan_out, run_id="fan-out")
        assert fake.call_count == 3
    assert run.status == RunStatus.FAILED and run.error is not None and run.error.type == "BudgetExceeded"
    refused = [s for s in run.steps if s.status == "failed"]
    assert [s.key for s in refused] == ["llm#3", "llm#4"] and {s.attempt for s in refused} == {0}

    with FakeProvider() as fake:  # offline: the refusals are served as they were made
        replayed = app.replay("fan-out")
        assert fake.call_count == 0
    assert replayed.matched and replayed.status == RunStatus.FAILED


def test_a_live_replay_counts_what_its_own_run_used_against_the_budget(app: AgentFlow) -> None:
    second = {"ask": "B"}

    @app.workflow(name="two", budget=Budget(max_tokens=25))
    async def two(ctx: Context) -> list[str | None]:
        a = await ctx.llm(model=MODEL, messages=HELLO, api_key=KEY)
        b = await ctx.llm(model=MODEL, messages=[{"role": "user", "content": second["ask"]}], api_key=KEY)
        return [a.text, b.text]

    with FakeProvider() as fake:
        fake.default = reply("ok", usage=(9, 1))
        assert app.run(two, run_id="src").usage.total_tokens == 20
        second["ask"] = "C, changed"  # llm#1 diverges: the rest runs live in a new run
        replayed = app.replay("src", mode="live")
    assert replayed.live_run_id is not None
    live = app.get_run(replayed.live_run_id)
    # It kept llm#0 (10 tokens) and made llm#1 anew (10): 20 of 25, not the source's 20 plus those.
    assert live.status == RunStatus.COMPLETED and live.usage.total_tokens == 20


def test_a_cost_budget_refuses_a_model_without_a_price_unless_the_call_gives_its_price(app: AgentFlow) -> None:
    unpriced = "openai/our-own-finetune"  # not in litellm's cost map

    @app.workflow(name="priced", budget=Budget(max_cost=0.001))
    async def priced(ctx: Context, given: bool) -> list[str | None]:
        prices = {"input_cost_per_token": 0.00002, "output_cost_per_token": 0.00004} if given else {}
        return [(await ctx.llm(model=unpriced, messages=HELLO, api_key=KEY, **prices)).text for _ in range(5)]

    with FakeProvider() as fake:
        fake.default = reply("ok", usage=(9, 1))
        refused = app.run(priced, False, run_id="unpriced")
        assert fake.call_count == 0  # what it would cost cannot be known: not made, rather than not counted
        assert refused.error is not None and refused.error.type == "BudgetExceeded"
        assert "no price for model 'openai/our-own-finetune'" in refused.error.message
        assert "input_cost_per_token" in refused.error.message
        given = app.run(priced, True, run_id="given")
    # 9 x 0.00002 + 1 x 0.00004 = 0.00022 a call: four fit in 0.001, the fifth is refused
    assert fake.call_count == 4 and given.error is not None and given.error.type == "BudgetExceeded"
    assert given.cost == pytest.approx(4 * 0.00022)


def test_a_failed_call_lets_go_of_the_budget_it_held(app: AgentFlow) -> None:
    # Budget 10: a call of 9 prompt tokens fits once. Were the failed call's 9 still held, the second
    # (9 more) would not.
    @app.workflow(name="after_failure", budget=Budget(max_tokens=10))
    async def after_failure(ctx: Context) -> str | None:
        with pytest.raises(StepFailed):
            await ctx.llm(model=MODEL, messages=HELLO, api_key=KEY, retry=RetryPolicy(max_attempts=1))
        assert in_flight(ctx) == {}
        return (await ctx.llm(model=MODEL, messages=HELLO, api_key=KEY)).text

    with FakeProvider() as fake:
        fake.script(error(400), reply("second", usage=(9, 1)))
        run = app.run(after_failure, run_id="after-failure")

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "second" and fake.call_count == 2


# litellm's inner coroutine, cancelled before it started, is never awaited: litellm's affair, not ours.
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_a_cancelled_call_lets_go_of_the_budget_it_held(app: AgentFlow) -> None:
    @app.workflow(name="cancelled", budget=Budget(max_tokens=10))
    async def cancelled(ctx: Context) -> str | None:
        task = asyncio.ensure_future(ctx.llm(model=MODEL, messages=HELLO, api_key=KEY))
        await asyncio.sleep(0)  # one turn of the loop (no time passes): the call is asked, not answered
        assert not task.done() and list(in_flight(ctx)) == ["llm#0"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert in_flight(ctx) == {}
        return (await ctx.llm(model=MODEL, messages=HELLO, api_key=KEY)).text

    with FakeProvider() as fake:
        fake.default = reply("answered", usage=(9, 1))
        run = app.run(cancelled, run_id="cancelled")

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "answered"


def test_a_recorded_stream_no_longer_holds_budget_at_the_next_check(app: AgentFlow) -> None:
    @app.workflow(name="streamed", budget=Budget(max_tokens=20))
    async def streamed(ctx: Context) -> list[str | None]:
        async with ctx.llm_stream(model=MODEL, messages=HELLO, api_key=KEY) as stream:
            async for _ in stream:
                pass
        second = await ctx.llm(model=MODEL, messages=HELLO, api_key=KEY)
        return [stream.response.text, second.text]

    with FakeProvider() as fake:
        fake.script(reply("one", usage=(9, 1)), reply("two", usage=(9, 1)))
        run = app.run(streamed, run_id="streamed")

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["one", "two"] and run.usage.total_tokens == 20


def test_release_budget_of_a_call_that_holds_none_is_a_no_op(app: AgentFlow) -> None:
    @app.workflow(name="noop")
    def noop(ctx: Context) -> bool:
        release_budget(ctx._engine, "llm#7")
        return True

    assert app.run(noop).output is True


# -- answers without usage ----------------------------------------------------------------------------------


def test_an_answer_without_usage_is_counted_with_tiktoken_priced_and_marked_estimated(app: AgentFlow) -> None:
    @app.workflow(name="no_usage")
    async def no_usage(ctx: Context) -> dict[str, Any]:
        answer = await ctx.llm(model=MODEL, messages=HELLO, api_key=KEY)
        return {
            "tokens": [answer.prompt_tokens, answer.completion_tokens],
            "cost": answer.cost,
            "usage": answer.raw["usage"],
        }

    with FakeProvider(usage=False) as fake:
        fake.script(reply("one two three four five"))
        run = app.run(no_usage, run_id="no-usage")

    prompt = count_prompt_tokens(MODEL, HELLO)
    completion = count_completion_tokens(MODEL, "one two three four five")
    priced = sum(litellm.cost_per_token(model=MODEL, prompt_tokens=prompt, completion_tokens=completion))
    assert (prompt, completion) == (9, 5)
    assert run.output["tokens"] == [prompt, completion]
    assert run.output["cost"] == pytest.approx(priced) and priced > 0
    assert run.output["usage"] == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14, "estimated": True}
    assert (run.usage.prompt_tokens, run.usage.completion_tokens) == (9, 5)
    assert run.cost == pytest.approx(priced)
    assert (run.steps[0].usage.prompt_tokens, run.steps[0].usage.completion_tokens) == (9, 5)
    replayed = app.replay("no-usage")
    assert replayed.matched and replayed.output == run.output  # the record serves the same estimates


def test_an_answer_with_usage_is_taken_as_the_provider_reported_it(app: AgentFlow) -> None:
    @app.workflow(name="with_usage")
    async def with_usage(ctx: Context) -> dict[str, Any]:
        return dict((await ctx.llm(model=MODEL, messages=HELLO, api_key=KEY)).raw["usage"])

    with FakeProvider() as fake:
        fake.script(reply("one two three four five", usage=(40, 7)))
        run = app.run(with_usage)

    assert run.output["prompt_tokens"] == 40 and run.output["completion_tokens"] == 7
    assert "estimated" not in run.output


def test_the_tool_calls_of_an_answer_without_usage_count_as_completion_tokens(app: AgentFlow) -> None:
    @app.workflow(name="tool_no_usage")
    async def tool_no_usage(ctx: Context) -> list[Any]:
        answer = await ctx.llm(model=MODEL, messages=HELLO, api_key=KEY)
        return [answer.completion_tokens, answer.tool_calls[0].arguments]

    with FakeProvider(usage=False) as fake:
        fake.script(tool_call("lookup_order", {"order_id": "A-12345"}))
        run = app.run(tool_no_usage)

    tokens, arguments = run.output
    enc = tiktoken.get_encoding("o200k_base")  # gpt-4o-mini's encoding
    assert tokens == len(enc.encode("lookup_order")) + len(enc.encode(arguments)) and tokens > 5


def test_a_budget_runs_out_when_the_provider_reports_no_usage(app: AgentFlow) -> None:
    @app.workflow(name="thrifty", budget=Budget(max_tokens=36))
    async def thrifty(ctx: Context) -> None:
        for _ in range(10):
            await ctx.llm(model=MODEL, messages=HELLO, api_key=KEY)

    with FakeProvider(usage=False) as fake:
        fake.default = reply("one two three four five")  # 9 + 5 estimated tokens a call
        run = app.run(thrifty, run_id="thrifty")

    assert run.status == RunStatus.FAILED and run.error is not None
    assert run.error.type == "BudgetExceeded" and "llm#2" in run.error.message
    assert fake.call_count == 2 and run.usage.total_tokens == 28


# -- images, audio and files --------------------------------------------------------------------------------


def png(width: int, height: int, payload: int = 0) -> str:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    data = b"\x89PNG\r\n\x1a\n" + chunk + os.urandom(payload)
    return "data:image/png;base64," + base64.b64encode(data).decode()


def jpeg(width: int, height: int) -> str:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 3000) + os.urandom(3000)  # a segment to walk past
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    data = b"\xff\xd8" + app0 + exif + sof0 + b"\xff\xda" + os.urandom(64)
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def part_tokens(part: dict[str, Any], model: str = "gpt-4o") -> int:
    """What a content part adds to a prompt of one text part."""
    text = {"type": "text", "text": "What is in this picture?"}
    with_part = count_prompt_tokens(model, [{"role": "user", "content": [text, part]}])
    return with_part - count_prompt_tokens(model, [{"role": "user", "content": [text]}])


def image(url: str, detail: str | None = None) -> dict[str, Any]:
    image_url = {"url": url} if detail is None else {"url": url, "detail": detail}
    return {"type": "image_url", "image_url": image_url}


@pytest.mark.parametrize(
    ("url", "detail", "tokens"),
    [
        (png(1024, 1024), None, 765),  # scaled to 768 x 768: 4 tiles
        (png(512, 512), "high", 255),  # 1 tile, never scaled up
        (png(2048, 4096), "auto", 1105),  # 1024 x 2048, then 768 x 1536: 2 x 3 tiles
        (png(4000, 3000), "low", 85),
        (jpeg(1500, 300), None, 595),  # 3 x 1 tiles
        (jpeg(3000, 3000), None, 765),
        ("https://example.com/cat.png", None, 765),  # size unknown without fetching it
        ("data:image/gif;base64," + base64.b64encode(b"GIF89a" + bytes(64)).decode(), None, 765),
        ("data:image/png;base64,not base64 at all", None, 765),
    ],
)
def test_an_image_is_counted_by_openais_tile_rule(url: str, detail: str | None, tokens: int) -> None:
    assert part_tokens(image(url, detail)) == tokens


@pytest.mark.parametrize(
    ("url", "detail", "tokens"),
    [
        (png(1024, 1024), None, 2_833 + 4 * 5_667),
        (png(4000, 3000), "low", 2_833),
        ("https://example.com/cat.png", None, 2_833 + 4 * 5_667),
    ],
)
def test_gpt_4o_mini_counts_an_image_at_its_own_rates(url: str, detail: str | None, tokens: int) -> None:
    # Its tokens cost a 33rd of gpt-4o's, and OpenAI bills an image the same money: 33 times the tokens.
    assert part_tokens(image(url, detail), "gpt-4o-mini") == tokens
    assert part_tokens(image(url, detail), "openai/gpt-4o-mini-2024-07-18") == tokens


def test_an_image_url_given_as_a_plain_string_is_counted_as_an_image() -> None:
    assert part_tokens({"type": "image_url", "image_url": png(512, 512)}) == 255


def test_the_base64_of_a_large_image_is_not_counted_as_text() -> None:
    assert part_tokens(image(png(1024, 1024, payload=150_000))) == 765


def test_audio_and_file_parts_are_fixed_estimates_and_text_parts_count_their_text() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(os.urandom(90_000)).decode()}}
    file = {"type": "file", "file": {"file_data": "data:application/pdf;base64," + "QUJD" * 50_000}}
    assert part_tokens(audio) == 1_000 and part_tokens(file) == 1_000
    assert part_tokens({"type": "text", "text": "hello world"}) == 2


def test_a_run_with_a_large_image_fits_a_budget_its_base64_text_would_not(app: AgentFlow) -> None:
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is in this picture?"}, image(png(1024, 1024, 150_000))],
        }
    ]

    @app.workflow(name="look", budget=Budget(max_tokens=30_000))  # the image: 25,501 tokens on gpt-4o-mini
    async def look(ctx: Context) -> str | None:
        return (await ctx.llm(model=MODEL, messages=messages, api_key=KEY)).text

    with FakeProvider() as fake:
        fake.script(reply("a cat", usage=(1200, 3)))
        run = app.run(look)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "a cat" and fake.call_count == 1


# -- Retry-After ----------------------------------------------------------------------------------------------


class RateLimited(Exception):
    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("429")
        self.response = httpx.Response(429, headers=headers)


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after": formatdate(NOW + 30, usegmt=True)}, 30.0),  # an HTTP date, from now
        ({"retry-after": formatdate(NOW - 30, usegmt=True)}, 0.0),  # a date already past: no wait
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),  # the precise one wins
        ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),
        ({"retry-after": "whenever"}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "inf"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_seconds_http_dates_and_milliseconds(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after(RateLimited(headers), now=NOW) == seconds


def test_retry_after_measures_an_http_date_from_wall_time_when_not_told_now() -> None:
    assert retry_after(RateLimited({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0


def test_retry_after_of_an_error_without_a_response_is_none() -> None:
    assert retry_after(ValueError("no response")) is None


@pytest.mark.parametrize(
    ("headers", "waited"),
    [
        (lambda now: {"retry-after-ms": "30000"}, 30.0),
        (lambda now: {"retry-after": formatdate(now + 45, usegmt=True)}, 45.0),  # a date, by the run's clock
    ],
)
def test_a_429_waits_what_its_headers_ask(
    app: AgentFlow, clock: FakeClock, headers: Callable[[float], dict[str, str]], waited: float
) -> None:
    @app.workflow(name="patient")
    async def patient(ctx: Context) -> str | None:
        policy = RetryPolicy(max_attempts=2, delay=1.0)
        return (await ctx.llm(model=MODEL, messages=HELLO, api_key=KEY, retry=policy)).text

    with FakeProvider() as fake:
        fake.script(error(429, headers=headers(clock.time())), reply("ok"))
        run = app.run(patient)

    assert run.output == "ok"
    assert clock.sleeps == [waited]
