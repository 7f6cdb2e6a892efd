"""The fake OpenAI-compatible provider: scripted answers at the HTTP level, seen through litellm's real code."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import litellm
import pytest
import respx

from agentflow.testing import FakeProvider, error, malformed, reply, stream, tool_call, tool_calls

MESSAGES = [{"role": "user", "content": "Where is my order A-1?"}]
OPTIONS: dict[str, Any] = {"api_key": "sk-fake", "max_retries": 0}
LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
    },
}


def complete(**kwargs: Any) -> Any:
    return litellm.completion(model="gpt-4o-mini", **{"messages": MESSAGES, **OPTIONS, **kwargs})


async def acomplete(**kwargs: Any) -> Any:
    return await litellm.acompletion(model="gpt-4o-mini", **{"messages": MESSAGES, **OPTIONS, **kwargs})


def test_a_plain_reply_comes_back_with_its_text_usage_and_fixed_ids() -> None:
    with FakeProvider() as fake:
        fake.script(reply("Hello!", usage=(12, 3)), reply("Again."))
        first = complete()
        second = asyncio.run(acomplete())

    assert first.choices[0].message.content == "Hello!"
    assert first.choices[0].finish_reason == "stop"
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (12, 3, 15)
    assert (first.id, first.created, first.model) == ("chatcmpl-fake-1", 1_700_000_000, "gpt-4o-mini")
    assert second.choices[0].message.content == "Again."
    assert second.id == "chatcmpl-fake-2"
    assert fake.call_count == 2
    assert fake.calls[0]["model"] == "gpt-4o-mini"
    assert fake.calls[0]["messages"] == MESSAGES
    assert fake.remaining == 0


def test_usage_left_out_of_a_reply_is_counted_from_words_and_never_zero() -> None:
    with FakeProvider() as fake:
        fake.script(reply("Three words here"), reply(""))
        counted = complete()
        empty = complete()

    assert (counted.usage.prompt_tokens, counted.usage.completion_tokens) == (6, 3)  # "user" + 5 words; 3 words
    assert empty.usage.completion_tokens == 1
    assert litellm.completion_cost(completion_response=counted) > 0


def test_a_provider_without_usage_sends_none() -> None:
    with FakeProvider(usage=False) as fake:
        fake.script(reply("Hi"))
        httpx_body = httpx.post("https://api.openai.com/v1/chat/completions", json={"model": "m", "messages": []})

    assert "usage" not in httpx_body.json()


def test_a_tool_call_round_trip_sends_the_tool_result_back() -> None:
    with FakeProvider() as fake:
        fake.script(tool_call("lookup_order", {"order_id": "A-1"}), reply("Your order ships tomorrow."))
        asked = complete(tools=[LOOKUP_TOOL])
        call = asked.choices[0].message.tool_calls[0]
        assert asked.choices[0].finish_reason == "tool_calls"
        assert (call.id, call.function.name) == ("call_fake_1_0", "lookup_order")
        assert json.loads(call.function.arguments) == {"order_id": "A-1"}

        tool_message = {"role": "tool", "tool_call_id": call.id, "content": '{"status": "shipped"}'}
        history = [*MESSAGES, asked.choices[0].message.model_dump(), tool_message]
        final = complete(messages=history, tools=[LOOKUP_TOOL])

    assert final.choices[0].message.content == "Your order ships tomorrow."
    assert fake.calls[0]["tools"] == [LOOKUP_TOOL]
    assert tool_message in fake.calls[1]["messages"]
    assert fake.calls[1]["messages"][1]["tool_calls"][0]["id"] == "call_fake_1_0"


def test_several_tool_calls_in_one_turn_keep_their_order_and_given_ids() -> None:
    with FakeProvider() as fake:
        fake.script(tool_calls([("lookup_order", {"order_id": "A-1"}), ("lookup_order", {"order_id": "B-2"}, "c9")]))
        calls = complete(tools=[LOOKUP_TOOL]).choices[0].message.tool_calls

    assert [(c.id, json.loads(c.function.arguments)) for c in calls] == [
        ("call_fake_1_0", {"order_id": "A-1"}),
        ("c9", {"order_id": "B-2"}),
    ]


def test_streaming_yields_the_scripted_chunks_in_order_and_assembles_with_usage() -> None:
    with FakeProvider() as fake:
        fake.script(stream(["Hel", "lo, ", "world"], usage=(9, 4)))
        chunks = list(complete(stream=True, stream_options={"include_usage": True}))

    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["Hel", "lo, ", "world"]
    assert {c.id for c in chunks} == {"chatcmpl-fake-1"}
    assert fake.calls[0]["stream"] is True
    built = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
    assert built.choices[0].message.content == "Hello, world"
    assert built.choices[0].finish_reason == "stop"
    assert (built.usage.prompt_tokens, built.usage.completion_tokens) == (9, 4)


def test_a_streamed_reply_is_split_into_words_by_default_asynchronously() -> None:
    async def collect() -> list[str]:
        async with FakeProvider() as fake:
            fake.script(reply("one two  three"))
            response = await acomplete(stream=True)
            return [c.choices[0].delta.content async for c in response if c.choices and c.choices[0].delta.content]

    assert asyncio.run(collect()) == ["one ", "two  ", "three"]


def test_streamed_tool_call_arguments_assemble_to_the_scripted_json() -> None:
    arguments = {"order_id": "A-1", "note": "a long enough note to need several fragments"}
    with FakeProvider() as fake:
        fake.script(tool_call("lookup_order", arguments))
        chunks = list(complete(stream=True, tools=[LOOKUP_TOOL]))

    fragments = [
        c.choices[0].delta.tool_calls[0].function.arguments
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    ]
    assert len(fragments) > 3
    built = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
    call = built.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name) == ("call_fake_1_0", "lookup_order")
    assert json.loads(call.function.arguments) == arguments
    assert built.choices[0].finish_reason == "tool_calls"


def test_reasoning_content_comes_back_plain_and_streamed() -> None:
    with FakeProvider("https://api.deepseek.com/beta") as fake:
        fake.default = reply("42", reasoning="six times seven")
        options = {**OPTIONS, "model": "deepseek/deepseek-reasoner", "messages": MESSAGES}
        plain = litellm.completion(**options)
        built = litellm.stream_chunk_builder(list(litellm.completion(**options, stream=True)), messages=MESSAGES)

    assert plain.choices[0].message.reasoning_content == "six times seven"
    assert plain.usage.completion_tokens_details.reasoning_tokens == 3
    assert built.choices[0].message.reasoning_content == "six times seven"
    assert built.choices[0].message.content == "42"


def test_a_429_raises_rate_limit_error_with_the_retry_after_header() -> None:
    with FakeProvider() as fake:
        fake.script(error(429, retry_after=7))
        with pytest.raises(litellm.RateLimitError) as raised:
            complete()

    assert raised.value.response.headers["retry-after"] == "7"
    assert fake.call_count == 1


def test_a_500_raises_internal_server_error_with_the_scripted_message() -> None:
    with FakeProvider() as fake:
        fake.script(error(500, message="the model is on fire"))
        with pytest.raises(litellm.InternalServerError, match="the model is on fire"):
            complete()


def test_a_context_window_error_is_mapped_by_its_code() -> None:
    with FakeProvider() as fake:
        fake.script(
            error(400, message="This model's maximum context length is 8 tokens", code="context_length_exceeded")
        )
        with pytest.raises(litellm.ContextWindowExceededError):
            complete()


def test_a_body_that_is_not_json_raises_a_litellm_error() -> None:
    with FakeProvider() as fake:
        fake.script(malformed(), malformed())
        with pytest.raises(litellm.InternalServerError):
            complete()
        with pytest.raises(litellm.ServiceUnavailableError):  # streamed: MidStreamFallbackError, a subclass
            list(complete(stream=True))


def test_an_exhausted_script_answers_500_and_records_the_request() -> None:
    with FakeProvider() as fake:
        fake.script(reply("only one"))
        complete()
        with pytest.raises(litellm.InternalServerError, match=r"no scripted response left for request #2"):
            complete(messages=[{"role": "user", "content": "one more"}])

    assert fake.unexpected == [fake.calls[1]]
    assert fake.unexpected[0]["messages"][0]["content"] == "one more"


def test_the_default_answers_every_request_once_the_script_is_used_up() -> None:
    with FakeProvider() as fake:
        fake.script(reply("scripted"))
        fake.default = lambda request: reply(f"echo {len(request['messages'])}")
        texts = [complete().choices[0].message.content for _ in range(3)]

    assert texts == ["scripted", "echo 1", "echo 1"]
    assert fake.unexpected == []


def test_a_responder_sees_the_parsed_request() -> None:
    seen: list[dict[str, Any]] = []

    def answer(request: dict[str, Any]) -> Any:
        seen.append(request)
        return reply(request["messages"][-1]["content"].upper())

    with FakeProvider() as fake:
        fake.script(answer)
        response = complete(temperature=0.5)

    assert response.choices[0].message.content == "WHERE IS MY ORDER A-1?"
    assert seen == fake.calls
    assert seen[0]["temperature"] == 0.5


def test_a_request_to_another_host_fails_without_reaching_the_network() -> None:
    with FakeProvider() as fake:
        with pytest.raises(respx.models.AllMockedAssertionError):
            httpx.get("https://example.com")
        # Another provider's endpoint: litellm wraps respx's error.
        with pytest.raises(litellm.InternalServerError, match="not mocked"):
            litellm.completion(model="deepseek/deepseek-chat", messages=MESSAGES, **OPTIONS)

    assert fake.call_count == 0


def test_two_providers_answer_their_own_endpoints_and_extra_routes_answer_the_rest() -> None:
    with FakeProvider() as openai_fake, FakeProvider("https://api.deepseek.com/beta") as deepseek_fake:
        openai_fake.script(reply("from openai"))
        deepseek_fake.script(reply("from deepseek"))
        openai_fake.router.get("https://tools.example/weather").respond(json={"sky": "clear"})
        deepseek_text = litellm.completion(model="deepseek/deepseek-chat", messages=MESSAGES, **OPTIONS)
        openai_text = complete()
        weather = httpx.get("https://tools.example/weather").json()

    assert deepseek_text.choices[0].message.content == "from deepseek"
    assert openai_text.choices[0].message.content == "from openai"
    assert weather == {"sky": "clear"}
    assert (openai_fake.call_count, deepseek_fake.call_count) == (1, 1)


def test_exit_restores_litellm_aiohttp_transport_setting() -> None:
    saved = litellm.disable_aiohttp_transport
    try:
        for before in (False, True):
            litellm.disable_aiohttp_transport = before
            with FakeProvider():
                assert litellm.disable_aiohttp_transport is True
            assert litellm.disable_aiohttp_transport is before
    finally:
        litellm.disable_aiohttp_transport = saved


def test_exit_stops_intercepting() -> None:
    with FakeProvider():
        pass
    with respx.mock(assert_all_called=False) as other:  # nothing of the fake is left to answer this
        route = other.get("https://example.com").respond(204)
        assert httpx.get("https://example.com").status_code == 204
    assert route.call_count == 1


def test_chunks_that_do_not_join_to_the_text_are_refused() -> None:
    with pytest.raises(ValueError, match="do not join"):
        reply("Hello", chunks=["Hel", "p"])


def test_entering_drops_the_http_clients_litellm_made_before_the_fake() -> None:
    # A client litellm made before (on aiohttp, which respx does not see) would carry the next request past
    # the fake, to the network, API key and all.
    litellm.in_memory_llm_clients_cache.set_cache("a-client-made-before", object())
    with FakeProvider() as fake:
        assert litellm.in_memory_llm_clients_cache.get_cache("a-client-made-before") is None
        fake.script(reply("ok"))
        assert complete().choices[0].message.content == "ok"


def test_a_responder_that_fails_is_not_retried_and_fails_the_test_when_the_fake_is_left() -> None:
    def insist_on_temperature_zero(request: dict[str, Any]) -> Any:
        assert request.get("temperature") == 0, "the agent must ask for temperature 0"
        return reply("fine")

    with pytest.raises(AssertionError, match="a FakeProvider responder failed") as caught, FakeProvider() as fake:
        fake.script(insist_on_temperature_zero, reply("not to be reached"))
        with pytest.raises(litellm.InternalServerError, match="the responder for request #1 failed"):
            complete(temperature=0.7)
        assert fake.remaining == 1  # the next answer was not used up by a retry
    assert "temperature 0" in str(caught.value.__cause__)


def test_a_responder_returning_something_else_than_an_answer_is_an_error_of_the_test() -> None:
    with pytest.raises(AssertionError, match="must return an answer"), FakeProvider() as fake:
        fake.default = lambda request: "hello"
        with pytest.raises(litellm.InternalServerError):
            complete()


@pytest.mark.parametrize("item", ["hello", 42, {"content": "hi"}])
def test_a_script_item_that_is_not_an_answer_is_refused_at_once(item: Any) -> None:
    fake = FakeProvider()
    with pytest.raises(TypeError, match="is not an answer"):
        fake.script(item)
    with pytest.raises(TypeError, match="is not an answer"):
        fake.default = item


def test_a_second_fake_for_the_same_url_is_refused_while_the_first_is_active() -> None:
    from agentflow import ConfigurationError

    with FakeProvider() as outer:
        with pytest.raises(ConfigurationError, match="active already"), FakeProvider():
            pass
        with FakeProvider("http://localhost:8000/v1") as local:  # another endpoint: fine
            outer.script(reply("openai"))
            local.script(reply("local"))
            assert complete().choices[0].message.content == "openai"
    with FakeProvider() as again:  # the first one left: a new one may come
        again.script(reply("again"))
        assert complete().choices[0].message.content == "again"


@pytest.mark.parametrize("status", [499, 520, 529])
def test_error_takes_statuses_that_http_status_does_not_know(status: int) -> None:
    with FakeProvider() as fake:
        fake.script(error(status))
        with pytest.raises(Exception, match=str(status)):
            complete()
