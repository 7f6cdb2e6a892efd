"""Recorded model calls through litellm's real code path, against the fake provider (respx), offline."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import BaseModel

from agentflow import (
    AgentFlow,
    Context,
    FakeClock,
    IdempotencyKey,
    LLMResponse,
    ReplayDivergence,
    RetryPolicy,
    RunStatus,
    StepFailed,
    StructuredOutputError,
    SyncContext,
    tool,
)
from agentflow._llm import read_messages
from agentflow.testing import FakeProvider, error, malformed, reply, stream, tool_call

MODEL = "gpt-4o-mini"
KEY = "sk-fake"


class Crash(BaseException):
    """Stands for the process dying mid-run."""


class Invoice(BaseModel):
    total: float
    currency: str


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


@tool
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look up an order by its id."""
    return {"order_id": order_id, "status": "shipped", "total": 42.0}


def test_a_plain_completion_is_recorded_and_served_on_resume_without_calling_the_provider(app: AgentFlow) -> None:
    state = {"crash": True}

    def maybe_crash() -> None:
        if state["crash"]:
            raise Crash

    @app.workflow()
    async def ask(ctx: Context, question: str) -> str:
        answer = await ctx.llm(model=MODEL, messages=[user(question)], api_key=KEY, temperature=0)
        await ctx.step("crash", maybe_crash)
        return answer.text or ""

    with FakeProvider() as fake:
        fake.script(reply("Paris", usage=(12, 3)))
        with pytest.raises(Crash):
            app.run(ask, "Capital of France?", run_id="r")
        assert fake.call_count == 1
        assert fake.calls[0]["messages"] == [user("Capital of France?")]
        assert fake.calls[0]["temperature"] == 0
    state["crash"] = False
    with FakeProvider() as fake:  # nothing scripted: a call would get a 500
        run = app.resume("r")
        assert fake.call_count == 0

    assert run.status == RunStatus.COMPLETED and run.output == "Paris"
    llm = run.steps[0]
    assert (llm.key, llm.kind, llm.status) == ("llm#0", "llm", "completed")
    assert (llm.usage.prompt_tokens, llm.usage.completion_tokens) == (12, 3)
    assert llm.cost > 0
    assert (run.usage.prompt_tokens, run.usage.completion_tokens) == (12, 3)
    assert run.cost == pytest.approx(llm.cost)


def test_a_tool_call_round_trip_feeds_the_tool_result_back_to_the_model(app: AgentFlow) -> None:
    @app.workflow()
    async def support(ctx: Context, question: str) -> str:
        messages: list[dict[str, Any]] = [user(question)]
        first = await ctx.llm(model=MODEL, messages=messages, tools=[lookup_order], api_key=KEY)
        messages.append(first.message())
        for call in first.tool_calls:
            result = await ctx.tool(lookup_order, **call.args())
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result.content})
        final = await ctx.llm(model=MODEL, messages=messages, tools=[lookup_order], api_key=KEY)
        return final.text or ""

    with FakeProvider() as fake:
        fake.script(tool_call("lookup_order", {"order_id": "A-1"}), reply("Your order A-1 has shipped."))
        run = app.run(support, "Where is my order A-1?")

    assert run.output == "Your order A-1 has shipped."
    assert fake.calls[0]["tools"][0]["function"]["name"] == "lookup_order"
    tool_message = fake.calls[1]["messages"][-1]
    assert tool_message["role"] == "tool" and json.loads(tool_message["content"])["status"] == "shipped"
    assert [(s.key, s.kind) for s in run.steps] == [("llm#0", "llm"), ("lookup_order#0", "tool"), ("llm#1", "llm")]


def test_structured_output_is_parsed_into_the_pydantic_model(app: AgentFlow) -> None:
    seen: list[Any] = []

    @app.workflow()
    async def extract(ctx: Context) -> float:
        answer = await ctx.llm(model=MODEL, messages=[user("total?")], response_format=Invoice, api_key=KEY)
        seen.append(answer.parsed)
        return float(answer.parsed.total)

    with FakeProvider() as fake:
        fake.script(reply('{"total": 3.5, "currency": "EUR"}'))
        run = app.run(extract)

    assert run.output == 3.5
    assert seen == [Invoice(total=3.5, currency="EUR")]
    assert fake.calls[0]["response_format"]["type"] == "json_schema"


def test_an_answer_that_does_not_fit_the_response_format_is_a_clear_error_live_and_on_resume(app: AgentFlow) -> None:
    @app.workflow()
    async def extract(ctx: Context) -> str:
        try:
            await ctx.llm(model=MODEL, messages=[user("total?")], response_format=Invoice, api_key=KEY)
        except StructuredOutputError as exc:
            return str(exc)
        return "parsed"

    with FakeProvider() as fake:
        fake.script(reply('{"total": "lots"}'))
        live = app.run(extract, run_id="r")

    assert "llm#0" in str(live.output) and "does not parse as Invoice" in str(live.output)
    assert live.steps[0].status == "completed"  # the call itself succeeded and is recorded


def test_streamed_chunks_are_recorded_and_replayed_identically(db_url: str) -> None:
    clock = FakeClock()
    seen: list[list[tuple[str | None, dict[str, Any]]]] = []
    state = {"crash": True}

    def maybe_crash() -> None:
        if state["crash"]:
            raise Crash

    def define(app: AgentFlow, pace: bool) -> None:
        @app.workflow(name="streamer")
        async def streamer(ctx: Context) -> str:
            chunks = []
            async with ctx.llm_stream(model=MODEL, messages=[user("hi")], api_key=KEY, pace=pace) as s:
                async for chunk in s:
                    chunks.append((chunk.text, chunk.raw))
            seen.append(chunks)
            await ctx.step("crash", maybe_crash)
            return f"{s.response.text}|{s.response.total_tokens}"

    with AgentFlow(db_url, clock=clock) as app, FakeProvider() as fake:
        define(app, pace=False)
        fake.script(stream(["Hel", "lo ", "there"], usage=(4, 3)))
        with pytest.raises(Crash):
            app.run("streamer", run_id="s")
    state["crash"] = False
    with AgentFlow(db_url, clock=clock) as app, FakeProvider() as fake:
        define(app, pace=True)
        run = app.resume("s")
        assert fake.call_count == 0

    live, replayed = seen
    assert [t for t, _ in live if t] == ["Hel", "lo ", "there"]
    assert replayed == live  # same text and same raw chunks, in the same order
    assert run.output == "Hello there|7"
    recorded = json.loads(run.steps[0].output and json.dumps(run.steps[0].output))
    assert len(recorded["chunks"]) == len(live) == len(recorded["offsets"])
    assert len(clock.sleeps) <= len(live)  # paced by the recorded offsets (real offsets may round to 0)


def test_a_stream_left_early_is_still_recorded_whole(app: AgentFlow) -> None:
    @app.workflow()
    async def first_word(ctx: Context) -> str:
        async with ctx.llm_stream(model=MODEL, messages=[user("hi")], api_key=KEY) as s:
            async for chunk in s:
                if chunk.text:
                    break
        return s.response.text or ""

    with FakeProvider() as fake:
        fake.script(stream(["one ", "two ", "three"]))
        run = app.run(first_word)

    assert run.output == "one two three"
    assert len(run.steps[0].output["chunks"]) >= 3


def test_a_provider_error_is_retried_by_the_policy(app: AgentFlow, clock: FakeClock) -> None:
    @app.workflow()
    async def ask(ctx: Context) -> str:
        policy = RetryPolicy(max_attempts=3, delay=2.0, backoff="constant")
        return (await ctx.llm(model=MODEL, messages=[user("hi")], api_key=KEY, retry=policy)).text or ""

    with FakeProvider() as fake:
        fake.script(error(500), reply("recovered"))
        run = app.run(ask)

    assert run.output == "recovered"
    assert fake.call_count == 2 and clock.sleeps == [2.0]
    assert run.steps[0].attempt == 2


def test_a_429_waits_at_least_its_retry_after(app: AgentFlow, clock: FakeClock) -> None:
    @app.workflow()
    async def ask(ctx: Context) -> str:
        policy = RetryPolicy(max_attempts=3, delay=1.0)
        return (await ctx.llm(model=MODEL, messages=[user("hi")], api_key=KEY, retry=policy)).text or ""

    with FakeProvider() as fake:
        fake.script(error(429, retry_after=7), error(429), reply("ok"))
        run = app.run(ask)

    assert run.output == "ok"
    assert clock.sleeps == [7.0, 2.0]  # Retry-After first, then the policy's own exponential delay


def test_a_client_error_is_not_retried(app: AgentFlow, clock: FakeClock) -> None:
    @app.workflow()
    async def ask(ctx: Context) -> str:
        try:
            await ctx.llm(model=MODEL, messages=[user("hi")], api_key=KEY, retry=RetryPolicy(max_attempts=5))
        except StepFailed as exc:
            return exc.error_type
        return "answered"

    with FakeProvider() as fake:
        fake.script(error(400, message="bad request: unknown parameter"))
        run = app.run(ask)

    assert run.output == "BadRequestError"
    assert fake.call_count == 1 and clock.sleeps == []


def test_a_malformed_response_gives_a_clear_error_after_its_retries(app: AgentFlow) -> None:
    @app.workflow()
    async def ask(ctx: Context) -> str:
        await ctx.llm(model=MODEL, messages=[user("hi")], api_key=KEY, retry=RetryPolicy(max_attempts=2))
        return "answered"

    with FakeProvider() as fake:
        fake.script(malformed(), malformed())
        run = app.run(ask)

    assert run.status == RunStatus.FAILED and fake.call_count == 2
    assert run.error is not None
    assert "llm#0" in run.error.message and "after 2 attempts" in run.error.message
    step_error = run.steps[0].error
    assert step_error is not None and step_error.type == "InternalServerError"


def test_a_conversation_stores_each_message_once(app: AgentFlow) -> None:
    @app.workflow()
    async def chat(ctx: Context, turns: int) -> int:
        messages: list[dict[str, Any]] = []
        for i in range(turns):
            messages.append(user(f"message {i}"))
            answer = await ctx.llm(model=MODEL, messages=messages, api_key=KEY)
            messages.append(answer.message())
        return len(messages)

    with FakeProvider() as fake:
        fake.default = reply("ok")
        run = app.run(chat, 6)

    assert run.output == 12
    blobs: dict[str, bytes] = {}
    requests = [json.loads(r.request or "{}") for r in app._store.load_steps(run.id)]
    heads = [r["messages"] for r in requests]
    assert [r["n_messages"] for r in requests] == [1, 3, 5, 7, 9, 11]
    # 11 distinct messages were sent (the last answer was never sent back): stored once each, not 36 times.
    from agentflow._store._blob_packing import unpack_blob, unpack_blob_hash
    from agentflow._store._sql import SQLStore

    assert isinstance(app._store, SQLStore)
    with app._store.engine.connect() as conn:
        from sqlalchemy import text

        for h, data in conn.execute(text("SELECT hash, data FROM blobs")):
            blobs[unpack_blob_hash(h)] = unpack_blob(data)
    stored = [message for data in blobs.values() for message in json.loads(data)[1]]
    assert len(stored) == 11 and len(blobs) == 6  # each message once, in one node a call
    last = read_messages(heads[-1], lambda hashes: {h: blobs[h] for h in hashes})
    assert last == fake.calls[-1]["messages"]


def test_messages_changed_in_place_between_calls_are_recorded_as_sent(app: AgentFlow) -> None:
    # The chain compares each call's messages with copies of the last call's: a change made in place, at
    # any depth, must show, so that the record holds what was sent.
    @app.workflow()
    async def edit(ctx: Context) -> int:
        parts: list[dict[str, Any]] = [{"type": "text", "text": "first draft"}]
        messages: list[dict[str, Any]] = [{"role": "user", "content": parts}, user("and then?")]
        await ctx.llm(model=MODEL, messages=messages, api_key=KEY)
        parts[0]["text"] = "second draft"  # nested, in place
        await ctx.llm(model=MODEL, messages=messages, api_key=KEY)
        messages[1]["content"] = "and after that?"  # a value replaced in place
        await ctx.llm(model=MODEL, messages=messages, api_key=KEY)
        messages.append({"role": "user", "content": ("a", "tuple")})  # not JSON's own list: still exact
        await ctx.llm(model=MODEL, messages=messages, api_key=KEY)
        return len(messages)

    with FakeProvider() as fake:
        fake.default = reply("ok")
        run = app.run(edit)

    assert run.status == RunStatus.COMPLETED
    requests = [json.loads(r.request or "{}") for r in app._store.load_steps(run.id)]
    for request, sent in zip(requests, fake.calls, strict=True):
        assert read_messages(request["messages"], app._store.get_blobs) == sent["messages"]
    assert fake.calls[1]["messages"][0]["content"][0]["text"] == "second draft"
    assert fake.calls[2]["messages"][1]["content"] == "and after that?"


def test_sync_workflows_call_models_and_tools(app: AgentFlow) -> None:
    @app.workflow()
    def ask(ctx: SyncContext) -> str:
        answer: LLMResponse = ctx.llm(model=MODEL, messages=[user("order?")], api_key=KEY)
        result = ctx.tool(lookup_order, order_id="B-2")
        streamed = ctx.llm_stream(model=MODEL, messages=[user("more?")], api_key=KEY)
        pieces = [c.text for c in streamed if c.text]
        return f"{answer.text}|{result.value['status']}|{''.join(pieces)}"

    with FakeProvider() as fake:
        fake.script(reply("checking"), stream(["al", "l good"]))
        run = app.run(ask)

    assert run.output == "checking|shipped|all good"


def test_a_changed_prompt_is_a_divergence_at_the_model_call(app: AgentFlow) -> None:
    state = {"prompt": "v1", "crash": True}

    def maybe_crash() -> None:
        if state["crash"]:
            raise Crash

    @app.workflow()
    async def ask(ctx: Context) -> str:
        answer = await ctx.llm(model=MODEL, messages=[user(state["prompt"])], api_key=KEY)
        await ctx.step("crash", maybe_crash)
        return answer.text or ""

    with FakeProvider() as fake:
        fake.script(reply("one"))
        with pytest.raises(Crash):
            app.run(ask, run_id="r")
    state.update(prompt="v2", crash=False)
    with FakeProvider() as fake, pytest.raises(ReplayDivergence, match="llm#0"):
        app.resume("r")
    assert fake.call_count == 0


def test_a_divergence_on_a_changed_tool_or_response_format_spells_them_out_not_their_blob_hash(
    app: AgentFlow,
) -> None:
    version = {"doc": "Look up an order.", "field": "total"}

    def lookup(order_id: str) -> str:
        return order_id

    class Total(BaseModel):
        total: float

    class Amount(BaseModel):
        amount: float

    @app.workflow(name="described")
    async def described(ctx: Context) -> str:
        lookup.__doc__ = version["doc"]
        fmt = Total if version["field"] == "total" else Amount
        answer = await ctx.llm(model=MODEL, messages=[user("hi")], tools=[tool(lookup)], response_format=fmt,
                               api_key=KEY)  # fmt: skip
        return answer.text or ""

    with FakeProvider() as fake:
        fake.script(reply('{"total": 1}'))
        app.run(described, run_id="described")
    version["doc"] = "Look up an order by its id."
    with pytest.raises(ReplayDivergence) as changed_tool:
        app.replay("described")
    assert changed_tool.value.diff == [
        {"op": "replace", "path": "/tools/0/function/description", "value": "Look up an order by its id."}
    ]
    version.update(doc="Look up an order.", field="amount")
    with pytest.raises(ReplayDivergence) as changed_format:
        app.replay("described")
    paths = {op["path"] for op in changed_format.value.diff}
    assert "/response_format/name" in paths and not any(p == "/response_format" for p in paths)


# -- tools --------------------------------------------------------------------------------------------------


def test_invalid_tool_arguments_come_back_as_an_error_result_not_a_crash(app: AgentFlow) -> None:
    @app.workflow()
    async def wf(ctx: Context) -> dict[str, Any]:
        result = await ctx.tool(lookup_order, order_id=12, extra="x")
        return {"ok": result.ok, "content": result.content}

    run = app.run(wf)

    assert run.status == RunStatus.COMPLETED and run.output["ok"] is False
    assert "order_id: Input should be a valid string" in run.output["content"]
    assert "extra: Extra inputs are not permitted" in run.output["content"]
    assert run.steps[0].status == "failed" and run.steps[0].kind == "tool"


def test_a_failing_tool_is_retried_then_reported_as_an_error_result(app: AgentFlow, clock: FakeClock) -> None:
    calls: list[int] = []

    @tool
    def flaky(n: int) -> int:
        """Fails twice."""
        calls.append(n)
        if len(calls) < 3:
            raise ConnectionError("upstream down")
        return n * 2

    @tool
    def broken() -> None:
        """Always fails."""
        raise ValueError("no such account")

    @app.workflow()
    async def wf(ctx: Context) -> list[Any]:
        ok = await ctx.tool(flaky, n=4, retry=RetryPolicy(max_attempts=3, delay=1.0, backoff="constant"))
        bad = await ctx.tool(broken)
        return [ok.value, bad.ok, bad.error]

    run = app.run(wf)

    assert run.output == [8, False, "ValueError: no such account"]
    assert clock.sleeps == [1.0, 1.0]


def test_a_tool_receives_a_stable_idempotency_key_across_resume(app: AgentFlow) -> None:
    keys: list[str] = []
    state = {"crash": True}

    @tool(idempotent=False)
    def charge(amount: float, key: IdempotencyKey) -> str:
        """Charge a card once per key."""
        keys.append(key)
        if state["crash"]:
            raise Crash  # the process dies after the payment provider saw the key
        return f"charged {amount}"

    @app.workflow()
    async def pay(ctx: Context) -> str:
        return str((await ctx.tool(charge, amount=9.5)).value)

    with pytest.raises(Crash):
        app.run(pay, run_id="p")
    state["crash"] = False
    run = app.resume("p")

    assert run.output == "charged 9.5"
    assert keys == ["p:charge#0", "p:charge#0"]  # the same key both times: the provider can deduplicate
    assert "key" not in charge.parameters["properties"]
    assert json.loads(app._store.load_steps("p")[0].request or "{}")["idempotent"] is False


def test_a_plain_typed_function_can_be_called_as_a_tool(app: AgentFlow) -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    @app.workflow()
    async def wf(ctx: Context) -> list[Any]:
        good = await ctx.tool(add, a=1, b=2)
        bad = await ctx.tool(add, a="one", b=2)
        return [good.value, bad.ok]

    assert app.run(wf).output == [3, False]


def test_concurrent_tool_calls_keep_keys_in_call_order(app: AgentFlow) -> None:
    @tool
    async def echo(i: int) -> int:
        """Echo after yielding a few times (later calls finish first)."""
        for _ in range(5 - i):
            await asyncio.sleep(0)
        return i

    @app.workflow()
    async def wf(ctx: Context) -> list[Any]:
        results = await asyncio.gather(*(ctx.tool(echo, i=i) for i in range(5)))
        return [(r.key, r.value) for r in results]

    assert app.run(wf).output == [[f"echo#{i}", i] for i in range(5)]


def test_tool_arguments_named_like_secrets_reach_the_tool_but_not_the_record(app: AgentFlow) -> None:
    received: list[str] = []

    @tool
    def fetch_invoice(invoice_id: str, api_key: str) -> str:
        """Fetch an invoice from a billing API."""
        received.append(api_key)
        return f"invoice {invoice_id}"

    @app.workflow()
    async def wf(ctx: Context) -> str:
        return str((await ctx.tool(fetch_invoice, invoice_id="I-1", api_key="sk-SECRET-4")).value)

    run = app.run(wf, run_id="t")

    assert run.output == "invoice I-1" and received == ["sk-SECRET-4"]
    request = app._store.load_steps("t")[0].request or ""
    assert "sk-SECRET-4" not in request and "I-1" in request


def test_a_call_that_was_never_made_leaves_no_gap_in_the_stored_conversation(app: AgentFlow) -> None:
    @app.workflow()
    async def chat(ctx: Context) -> list[str]:
        messages: list[dict[str, Any]] = [user("first question")]
        ctx.llm_stream(model=MODEL, messages=messages, api_key=KEY)  # prepared, not read: made at the run's end
        messages.append(user("second question"))
        answer = await ctx.llm(model=MODEL, messages=messages, api_key=KEY)
        return [answer.text or ""]

    with FakeProvider() as fake:
        fake.script(reply("answer"), reply("late"))
        run = app.run(chat, run_id="c")

    assert run.output == ["answer"]
    from agentflow._store._sql import SQLStore

    assert isinstance(app._store, SQLStore)
    step, unread = app._store.load_steps("c")  # the second call was recorded first
    assert (step.key, unread.key) == ("llm#1", "llm#0")
    head = json.loads(step.request or "{}")["messages"]
    rebuilt = read_messages(head, app._store.get_blobs)  # every node on the chain was stored
    assert rebuilt == [user("first question"), user("second question")]


def test_reasoning_and_usage_survive_a_streamed_round_trip_and_its_replay(app: AgentFlow) -> None:
    seen: list[tuple[list[str], str | None, int]] = []
    state = {"crash": True}

    def maybe_crash() -> None:
        if state["crash"]:
            raise Crash

    @app.workflow()
    async def think(ctx: Context) -> None:
        async with ctx.llm_stream(model=MODEL, messages=[user("why?")], api_key=KEY) as s:
            reasoning = [c.reasoning async for c in s if c.reasoning]
        seen.append((reasoning, s.response.reasoning, s.response.completion_tokens))
        await ctx.step("crash", maybe_crash)

    with FakeProvider() as fake:
        fake.script(reply("Because.", reasoning="First, consider the question.", usage=(6, 9)))
        with pytest.raises(Crash):
            app.run(think, run_id="t")
    state["crash"] = False
    with FakeProvider() as fake:
        app.resume("t")
        assert fake.call_count == 0

    live, replayed = seen
    assert "".join(live[0]) == "First, consider the question."
    assert live[1] == "First, consider the question." and live[2] == 9
    assert replayed == live


def test_responses_are_read_as_model_dump_and_the_constructors_would() -> None:
    # The hot path dumps a response through its pydantic serializer, reads litellm's price from pydantic's
    # private attributes and builds LLMResponse without its __init__: each the same as the plain way.
    import dataclasses

    import litellm

    from agentflow._llm import ToolCall
    from agentflow._llm_calls import _cost, _dump

    litellm.disable_aiohttp_transport = True
    call = {"model": MODEL, "messages": [user("hi")], "api_key": KEY, "max_retries": 0}
    with FakeProvider() as fake:
        fake.script(tool_call("lookup_order", {"order_id": "A-1"}, usage=(9, 4)), stream(["Hel", "lo"]))
        answer = asyncio.run(litellm.acompletion(**call))

        async def chunks() -> list[Any]:
            return [chunk async for chunk in await litellm.acompletion(**call, stream=True)]

        streamed = asyncio.run(chunks())
    for model in (answer, *streamed):
        assert _dump(model) == model.model_dump(mode="json", exclude_none=True)
    assert _cost(answer) == answer._hidden_params["response_cost"] > 0

    raw = _dump(answer)
    fast = LLMResponse.from_raw(raw, 0.5, replayed=True)
    calls = [ToolCall(fast.tool_calls[0].id, "lookup_order", '{"order_id": "A-1"}')]
    plain = LLMResponse(
        model=raw["model"], text=None, tool_calls=calls, finish_reason="tool_calls", prompt_tokens=9,
        completion_tokens=4, cost=0.5, raw=raw, replayed=True,
    )  # fmt: skip
    assert fast == plain and vars(fast) == vars(plain)
    assert dataclasses.replace(fast, cost=1.0).cost == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.cost = 2.0  # type: ignore[misc]


def test_an_answer_that_says_not_to_retry_is_not_retried(app: AgentFlow) -> None:
    @app.workflow(name="unscripted")
    async def unscripted(ctx: Context) -> str | None:
        return (await ctx.llm(model=MODEL, messages=[user("hi")], api_key=KEY, retry=RetryPolicy(max_attempts=4))).text

    with FakeProvider() as fake:  # nothing scripted: a 500 with x-should-retry: false, as OpenAI can send
        run = app.run(unscripted)
    assert run.status == RunStatus.FAILED
    assert fake.call_count == 1  # before: 4 attempts, each meeting the same empty script
    assert "no scripted response left" in str(run.error)


def test_a_sync_context_used_from_async_code_on_the_runs_loop_is_an_error_not_a_hang(app: AgentFlow) -> None:
    @app.workflow(name="mixed")
    def mixed(ctx: SyncContext) -> str:
        async def helper() -> str:  # runs on the run's loop: the SyncContext cannot wait there
            return str(ctx.step("inner", str.upper, "x"))

        return str(ctx.step("helper", helper, retry=RetryPolicy(max_attempts=1)))

    run = app.run(mixed)
    assert run.status == RunStatus.FAILED
    assert "use await with a Context" in str(run.error)
