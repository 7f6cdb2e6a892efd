"""What model calls keep out of the record and out of reach: API keys, offline token counts, budgets."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx
import litellm
import pytest
from secret_scan import scan, traces

from agentflow import (
    AgentFlow,
    Budget,
    ConfigurationError,
    Context,
    FakeClock,
    RetryPolicy,
    RunStatus,
    StepFailed,
    tool,
)
from agentflow._secrets import is_secret_name, redact_cut, split_secrets
from agentflow.testing import FakeProvider, error, malformed, reply

MODEL = "gpt-4o-mini"
COMPLETIONS = "https://api.openai.com/v1/chat/completions"
ACCOUNTS = "https://accounts.example.com/v1/accounts/A-17"


@pytest.fixture
def secret() -> str:
    """The random part of an API key: the part whose trace is looked for."""
    return secrets.token_hex(16)


def test_the_scan_finds_a_value_in_any_of_its_forms() -> None:
    needle = secrets.token_hex(16)
    for shift in range(3):
        stored = base64.b64encode(b"x" * shift + needle.encode() + b"tail")
        assert f"base64+{shift}" in traces(b"..." + stored + b"...", needle)
        assert "text" not in traces(b"..." + stored + b"...", needle)
    assert traces(b"\\x" + needle.encode().hex().upper().encode(), needle) == ["hex"]
    assert traces(f"key={needle.upper()}".encode(), needle) == ["text"]
    assert traces(b"nothing here", needle) == []


# -- a. no trace of an API key ---------------------------------------------------------------------------


def test_an_api_key_reaches_the_provider_but_leaves_no_trace_in_the_database(
    db_url: str, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"sk-test-{secret}"
    canary = f"canary-{secrets.token_hex(8)}"  # not secret: the scan must find it, or it scans nothing
    monkeypatch.setenv("OPENAI_API_KEY", key)  # the calls without api_key= take it from here

    async def lookup_account(account: str) -> dict[str, Any]:
        """Look up an account in an API that wants the same key."""
        async with httpx.AsyncClient() as client:
            answer = await client.get(ACCOUNTS, headers={"Authorization": f"Bearer {key}"})
        return {"account": account, "plan": answer.json()["plan"]}

    app = AgentFlow(db_url)

    @app.workflow(name="keyed")
    async def keyed(ctx: Context, question: str) -> list[Any]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
        plain = await ctx.llm(model=MODEL, messages=messages, api_key=key)
        messages.append(plain.message())
        headers = {"Authorization": f"Bearer {key}", "X-Request-Tag": canary}
        headed = await ctx.llm(model=MODEL, messages=messages, api_key=key, extra_headers=headers)
        marked = await ctx.llm(
            model=MODEL, messages=messages, api_key=key, user_secret=key, secret_params=["user_secret"]
        )
        async with ctx.llm_stream(model=MODEL, messages=messages, api_key=key) as streamed:
            chunks = [chunk.text async for chunk in streamed]
        from_env = await ctx.llm(model=MODEL, messages=messages)
        account = await ctx.tool(lookup_account, account="A-17")
        rejected = "not rejected"
        try:
            await ctx.llm(model=MODEL, messages=messages)
        except StepFailed as exc:
            rejected = exc.error_type
        texts = [plain.text, headed.text, marked.text, streamed.response.text, from_env.text]
        return [*texts, "".join(c or "" for c in chunks), account.value, rejected]

    try:
        with FakeProvider() as fake:
            accounts = fake.router.get(ACCOUNTS).mock(return_value=httpx.Response(200, json={"plan": "pro"}))
            fake.script(reply("one"), reply("two"), reply("three"), reply("four five"), reply("six"), error(401))
            run = app.run(keyed, f"Where is my order? {canary}", run_id="keyed-run")
            requests = [call.request for call in fake.router.calls]  # respx forgets them on exit
            account_calls = accounts.call_count
        assert run.status == RunStatus.COMPLETED, run.error
        recorded = [(s.key, str(s.status)) for s in run.steps]
        during = scan(db_url, secret)  # SQLite: while the app is open, the -wal file holds the latest writes
    finally:
        app.close()

    texts = ["one", "two", "three", "four five", "six", "four five"]
    assert run.output == [*texts, {"account": "A-17", "plan": "pro"}, "AuthenticationError"]
    assert recorded == [
        *[(f"llm#{n}", "completed") for n in range(5)],
        ("lookup_account#0", "completed"),
        ("llm#5", "failed"),
    ]
    # The key did reach the provider and the tool's API, on every request.
    assert len(requests) == 7
    assert [str(r.url) for r in requests].count(COMPLETIONS) == 6
    assert all(r.headers["authorization"] == f"Bearer {key}" for r in requests)
    assert requests[1].headers["x-request-tag"] == canary
    assert fake.calls[2]["user_secret"] == key
    assert fake.calls[3]["stream"] is True
    assert account_calls == 1

    assert during == {}
    assert scan(db_url, secret) == {}
    # The scan is not blind: the canary, sent in a message (a blob) and in a header (the request), is found.
    places = scan(db_url, canary.removeprefix("canary-"))
    assert any(place.startswith("blobs[") and place.endswith(".data") for place in places), places
    assert any(place.startswith("steps[") and ".request" in place for place in places), places


@pytest.mark.parametrize("header", ["X-Custom-Token", "X-Api-Key", "Api-Key"])
def test_a_key_sent_in_a_custom_auth_header_leaves_no_trace_in_the_database(
    db_url: str, secret: str, header: str
) -> None:
    key = f"sk-test-{secret}"
    app = AgentFlow(db_url)

    @app.workflow(name="custom_header")
    async def custom_header(ctx: Context) -> str | None:
        messages = [{"role": "user", "content": "hello"}]
        answer = await ctx.llm(model=MODEL, messages=messages, api_key="sk-fake", extra_headers={header: key})
        return answer.text

    try:
        with FakeProvider() as fake:
            fake.script(reply("hi"))
            run = app.run(custom_header, run_id="custom-header-run")
            sent = fake.router.calls[0].request.headers[header]
    finally:
        app.close()

    assert run.status == RunStatus.COMPLETED, run.error
    assert sent == key
    assert scan(db_url, secret) == {}


@pytest.mark.parametrize(
    ("names", "secret_names", "kept_names"),
    [
        (
            "params",
            ["api_key", "apiKey", "X-Api-Key", "x-goog-api-key", "Ocp-Apim-Subscription-Key", "Authorization",
             "Proxy-Authorization", "X-Authentication", "X-AccessToken", "X-Auth-Token", "accessToken",
             "accesstoken", "clientSecret", "sessionToken", "aws_secret_access_key", "langfuse_secret_key",
             "private_key", "password", "Cookie", "key", "token", "signature", "cost_tracker_api_key", "cache_api_key",
             "cost_token"],
            ["max_tokens", "max_completion_tokens", "prompt_tokens", "top_k", "top_p", "temperature", "X-Session-Id",
             "X-Request-Id", "X-Request-Tag", "session_id", "api_base", "base_url", "api_version", "author",
             "keywords", "tokenizer", "turkey", "metadata", "user", "seed", "input_cost_per_token",
             "output_cost_per_token", "cache_read_input_token_cost", "prompt_cache_key", "bos_token", "eos_token"],
        ),
        (
            "tool",
            ["api_key", "apiKey", "password", "new_password", "client_secret", "clientSecret", "access_token",
             "accessToken", "refreshToken", "sessionToken", "private_key", "authorization", "secret",
             "aws_secret_access_key", "credentials"],
            ["key", "token", "auth", "signature", "cache_key", "sort_key", "page_token", "next_token",
             "password_length", "secret_name", "api_key_id", "max_tokens", "author", "keys"],
        ),
    ],
)  # fmt: skip
def test_secret_names_are_found_in_camel_case_and_glued_forms_and_ordinary_names_are_kept(
    names: Literal["params", "tool"], secret_names: list[str], kept_names: list[str]
) -> None:
    assert [n for n in secret_names if not is_secret_name(n, names=names)] == []
    assert [n for n in kept_names if is_secret_name(n, names=names)] == []


def test_a_url_loses_its_credentials_and_secret_query_values_but_keeps_the_rest() -> None:
    url = "https://user:pa%24%24word@proxy.example.com/v1?api-version=2024-06-01&code=c0de-123&key=k3y-456#frag"
    clean, found = split_secrets({"api_base": url, "timeout": 30})
    assert clean == {
        "api_base": "https://proxy.example.com/v1?api-version=2024-06-01&code=[secret]&key=[secret]#frag",
        "timeout": 30,
    }
    assert {"pa$$word", "pa%24%24word", "c0de-123", "k3y-456"} <= set(found)
    assert split_secrets({"api_base": "https://api.openai.com/v1", "temperature": 0.0}) == (
        {"api_base": "https://api.openai.com/v1", "temperature": 0.0},
        [],
    )


# Where a caller may put a secret in a model call's parameters: each one reaches the provider.
_HIDING_PLACES: dict[str, Callable[[str], dict[str, Any]]] = {
    "api_base userinfo": lambda s: {"api_base": f"https://user:{s}@api.openai.com/v1"},
    "extra_body": lambda s: {"extra_body": {"api_key": s, "tags": ["a"]}},
    "extra_query": lambda s: {"extra_query": {"key": s}},
    "metadata": lambda s: {"metadata": {"langfuse_secret_key": s, "trace_name": "t"}},
    "list in extra_body": lambda s: {"extra_body": {"providers": [{"name": "p", "clientSecret": s}]}},
    "X-AccessToken header": lambda s: {"extra_headers": {"X-AccessToken": s}},
    "X-Authentication header": lambda s: {"extra_headers": {"X-Authentication": s}},
    "sessionToken header": lambda s: {"extra_headers": {"sessionToken": s}},
}
# litellm sends neither a URL's user and password (the SDK builds the URL again) nor metadata (it is for
# litellm's callbacks): still, a caller gave them.
_NOT_SENT = {"api_base userinfo", "metadata"}


@pytest.mark.parametrize("place", list(_HIDING_PLACES))
def test_a_secret_in_a_url_or_a_nested_parameter_leaves_no_trace_in_the_database(
    db_url: str, secret: str, place: str
) -> None:
    params = _HIDING_PLACES[place](secret)
    app = AgentFlow(db_url)

    @app.workflow(name="hidden")
    async def hidden(ctx: Context) -> str | None:
        messages = [{"role": "user", "content": "hello"}]
        answer = await ctx.llm(model=MODEL, messages=messages, api_key="sk-fake", **params)
        return answer.text

    try:
        with FakeProvider() as fake:
            fake.script(reply("hi"))
            run = app.run(hidden, run_id="hidden-run")
            sent = fake.router.calls[0].request
    finally:
        app.close()

    assert run.status == RunStatus.COMPLETED, run.error
    if place not in _NOT_SENT:
        assert secret in str(sent.url) + str(sent.headers) + sent.content.decode()
    assert scan(db_url, secret) == {}


_ECHOED: dict[str, Callable[[str], dict[str, Any]]] = {
    "api_key": lambda key: {"api_key": key},
    "Authorization header": lambda key: {"api_key": "sk-fake", "extra_headers": {"Authorization": f"Bearer {key}"}},
    "secret_params": lambda key: {"api_key": "sk-fake", "user_secret": key, "secret_params": ["user_secret"]},
    "api_base password": lambda key: {"api_key": "sk-fake", "api_base": f"https://u:{key}@api.openai.com/v1"},
    "environment": lambda key: {},
}


@pytest.mark.parametrize("given", list(_ECHOED))
def test_a_provider_error_that_echoes_the_key_is_recorded_with_the_key_replaced(
    db_url: str, secret: str, given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"sk-test-{secret}"
    monkeypatch.setenv("OPENAI_API_KEY", key if given == "environment" else "sk-fake-from-env")
    app = AgentFlow(db_url)

    @app.workflow(name="echoed")
    async def echoed(ctx: Context) -> str | None:
        messages = [{"role": "user", "content": "hello"}]
        answer = await ctx.llm(model=MODEL, messages=messages, **_ECHOED[given](key))
        return answer.text

    try:
        with FakeProvider() as fake:
            fake.script(error(401, message=f"Incorrect API key provided: {key}. Find your key elsewhere."))
            run = app.run(echoed, run_id="echoed-run")  # the StepFailed fails the run: recorded twice
    finally:
        app.close()

    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert "Incorrect API key provided: [secret]" in run.error.message
    assert "Incorrect API key provided: [secret]" in run.error.traceback
    [step] = run.steps
    assert step.error is not None
    assert step.error.type == "AuthenticationError"
    assert "Incorrect API key provided: [secret]" in step.error.message
    assert scan(db_url, secret) == {}


def test_an_error_that_names_a_url_with_a_secret_query_value_is_recorded_without_it(db_url: str, secret: str) -> None:
    base_url = f"https://api.openai.com/v1?api-version=1&code={secret}"
    app = AgentFlow(db_url)

    @app.workflow(name="unreachable")
    async def unreachable(ctx: Context) -> str | None:
        messages = [{"role": "user", "content": "hello"}]
        answer = await ctx.llm(
            model=MODEL, messages=messages, api_key="sk-fake", base_url=base_url, retry=RetryPolicy(max_attempts=1)
        )
        return answer.text

    try:
        with FakeProvider():  # the SDK asks for .../v1/?api-version=1&code=...chat/completions: not answered
            run = app.run(unreachable, run_id="unreachable-run")
    finally:
        app.close()

    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert "code=[secret]" in run.error.message  # the error names the URL: its secret is replaced
    [step] = run.steps
    assert step.request["params"]["base_url"] == "https://api.openai.com/v1?api-version=1&code=[secret]"
    assert scan(db_url, secret) == {}


@pytest.mark.parametrize("setting", ["api_key", "openai_key"])
def test_a_key_set_on_litellm_and_echoed_by_the_provider_is_recorded_with_the_key_replaced(
    db_url: str, secret: str, setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"sk-test-{secret}"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(litellm, setting, key)  # the litellm way: neither a parameter nor the environment
    app = AgentFlow(db_url)

    @app.workflow(name="configured")
    async def configured(ctx: Context) -> str | None:
        answer = await ctx.llm(model=MODEL, messages=[{"role": "user", "content": "hello"}])
        return answer.text

    try:
        with FakeProvider() as fake:
            fake.script(error(401, message=f"Incorrect API key provided: {key}."))
            run = app.run(configured, run_id="configured-run")
            sent = fake.router.calls[0].request.headers["authorization"]
    finally:
        app.close()

    assert sent == f"Bearer {key}"
    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert "Incorrect API key provided: [secret]" in run.error.message
    [step] = run.steps
    assert step.error is not None
    assert "Incorrect API key provided: [secret]" in step.error.message
    assert scan(db_url, secret) == {}


# A proxy's page that is no JSON and echoes the key: cut to its first 200 characters in the recorded error.
_PAGES: dict[str, Callable[[str], str]] = {
    "across the cut": lambda key: "<html><body>" + "x" * 154 + " bad key: " + key + "</body></html>",
    "cut short by the proxy": lambda key: "<html><body>bad key: " + key[:24],
}


@pytest.mark.parametrize("page", list(_PAGES))
def test_a_non_json_answer_that_echoes_the_key_is_recorded_without_any_part_of_it(
    db_url: str, secret: str, page: str
) -> None:
    key = f"sk-test-{secret}"
    body = _PAGES[page](key)
    app = AgentFlow(db_url)

    @app.workflow(name="proxied")
    async def proxied(ctx: Context) -> str | None:
        messages = [{"role": "user", "content": "hello"}]
        answer = await ctx.llm(model=MODEL, messages=messages, api_key=key, retry=RetryPolicy(max_attempts=1))
        return answer.text

    try:
        with FakeProvider() as fake:
            fake.script(malformed(body.encode()))
            run = app.run(proxied, run_id="proxied-run")
    finally:
        app.close()

    assert run.status == RunStatus.FAILED
    [step] = run.steps
    assert step.error is not None
    assert "not valid JSON" in step.error.message
    assert "bad key: [secret]" in step.error.message
    assert secret[:8] not in step.error.message + step.error.traceback
    assert run.error is not None
    assert secret[:8] not in run.error.message + run.error.traceback


def test_a_cut_text_keeps_a_replaced_secret_whole_and_ends_in_no_part_of_one() -> None:
    key = "sk-test-0123456789abcdef"
    assert redact_cut("x" * 195 + key + " tail", 200, [key]) == "x" * 195 + "[secret]..."
    assert redact_cut("bad key: " + key[:12], 200, [key]) == "bad key: [secret]"
    assert redact_cut("a" * 300, 200, [key]) == "a" * 200 + "..."
    assert redact_cut("the key sk-te", 200, [key]) == "the key [secret]"
    assert redact_cut("the key sk-", 200, [key]) == "the key sk-"  # too little of a key to tell


# -- tool arguments ---------------------------------------------------------------------------------------


def test_a_tool_argument_named_key_is_recorded_and_tells_calls_apart(app: AgentFlow) -> None:
    store = {"a": "apple", "b": "banana"}

    @tool
    def kv_get(key: str, token: str = "t0") -> str:
        """Read a value from the key-value store (``token``: a pagination cursor)."""
        return store[key]

    @app.workflow(name="reads")
    async def reads(ctx: Context) -> list[Any]:
        return [(await ctx.tool(kv_get, key=k, token="t0")).value for k in ("a", "b")]

    run = app.run(reads, run_id="reads-run")

    assert run.output == ["apple", "banana"]
    assert [s.request["arguments"] for s in run.steps] == [{"key": "a", "token": "t0"}, {"key": "b", "token": "t0"}]
    assert run.steps[0].fingerprint != run.steps[1].fingerprint


def test_secret_tool_arguments_reach_the_tool_but_not_the_record_nor_the_fingerprint(db_url: str, secret: str) -> None:
    seen: list[tuple[str, str, str]] = []

    @tool(secret=["pin"])
    def unlock(door: str, pin: str, api_key: str) -> str:
        """Unlock a door; a wrong pin is an error that says which pin it was."""
        seen.append((door, pin, api_key))
        if pin.endswith("wrong"):
            raise PermissionError(f"pin {pin} rejected for {door}")
        return f"{door} open"

    app = AgentFlow(db_url)

    @app.workflow(name="doors")
    async def doors(ctx: Context) -> list[Any]:
        first = await ctx.tool(unlock, door="front", pin=f"{secret}-1", api_key=f"sk-{secret}")
        second = await ctx.tool(unlock, door="front", pin=f"{secret}-2", api_key=f"sk-{secret}")
        wrong = await ctx.tool(unlock, door="back", pin=f"{secret}-wrong", api_key=f"sk-{secret}")
        return [first.value, second.value, wrong.error]

    try:
        run = app.run(doors, run_id="doors-run")
    finally:
        app.close()

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["front open", "front open", "PermissionError: pin [secret] rejected for back"]
    assert seen[0] == ("front", f"{secret}-1", f"sk-{secret}")
    assert [s.request["arguments"] for s in run.steps] == [{"door": "front"}, {"door": "front"}, {"door": "back"}]
    assert run.steps[0].fingerprint == run.steps[1].fingerprint
    assert scan(db_url, secret) == {}


def test_an_environment_key_echoed_by_a_failing_tool_or_step_is_recorded_and_answered_replaced(
    db_url: str, secret: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"sk-test-{secret}"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("POSTGRES_PASSWORD", "postgres")  # too short to be taken for a key

    def call_api(q: str) -> str:
        """Call an API with the environment's key; it rejects it, saying which one."""
        raise PermissionError(f"postgres says: 401 Incorrect API key provided: {os.environ['OPENAI_API_KEY']}")

    app = AgentFlow(db_url, clock=clock)

    @app.workflow(name="echoing")
    async def echoing(ctx: Context) -> list[Any]:
        result = await ctx.tool(call_api, q="x")
        messages = [{"role": "user", "content": "call it"}, {"role": "user", "content": str(result.error)}]
        await ctx.llm(model=MODEL, messages=messages, api_key="sk-fake")  # the tool's answer goes on to the model
        try:
            await ctx.step("call_api", call_api, "y")
        except StepFailed as exc:
            caught = exc.error_message
        await ctx.step("call_api", call_api, "z")  # uncaught: the run fails with it
        return [result.error, caught]

    try:
        with FakeProvider() as fake:
            fake.script(reply("ok"))
            run = app.run(echoing, run_id="echoing-run")
            sent = fake.router.calls[0].request.content.decode()
    finally:
        app.close()

    echo = "postgres says: 401 Incorrect API key provided: [secret]"
    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert echo in run.error.message
    assert echo in run.error.traceback
    tool_step, _, step, _ = run.steps
    assert tool_step.error is not None and step.error is not None
    assert [tool_step.error.message, step.error.message] == [echo, echo]
    assert f"PermissionError: {echo}" in sent
    assert scan(db_url, secret) == {}


def test_a_step_s_keyword_argument_named_like_a_secret_reaches_the_function_only(
    db_url: str, secret: str, clock: FakeClock
) -> None:
    seen: list[str] = []

    def charge(amount: int, *, api_key: str) -> str:
        seen.append(api_key)
        if amount < 0:
            raise ValueError(f"key {api_key} may not refund")  # echoes it
        return f"charged {amount}"

    app = AgentFlow(db_url, clock=clock)

    @app.workflow(name="billing")
    async def billing(ctx: Context) -> list[str]:
        done = [await ctx.step("charge", charge, 5, api_key=f"sk-{secret}")]
        try:
            await ctx.step("charge", charge, -5, api_key=f"sk-{secret}")
        except StepFailed as exc:
            done.append(exc.error_message)
        return done

    try:
        run = app.run(billing, run_id="b")
        replayed = app.replay("b")
    finally:
        app.close()
    assert run.output == ["charged 5", "key [secret] may not refund"] and seen == [f"sk-{secret}"] * 2
    assert [s.request["kwargs"] for s in run.steps] == [{}, {}]
    assert replayed.matched  # served without the key: it is not part of the fingerprint
    assert scan(db_url, secret) == {}


def test_custom_prices_and_a_prompt_cache_key_are_recorded_and_tell_calls_apart(app: AgentFlow) -> None:
    prices = {"input_cost_per_token": 0.0001, "output_cost_per_token": 0.0002}

    @app.workflow(name="priced")
    async def priced(ctx: Context) -> None:
        for cache_key in ("conversation-1", "conversation-2"):
            messages = [{"role": "user", "content": "hello"}]
            await ctx.llm(model=MODEL, messages=messages, api_key="sk-fake", prompt_cache_key=cache_key, **prices)

    with FakeProvider() as fake:
        fake.default = reply("hi")
        run = app.run(priced, run_id="priced-run")

    assert run.status == RunStatus.COMPLETED, run.error
    assert [s.request["params"] for s in run.steps] == [
        {**prices, "prompt_cache_key": "conversation-1"},
        {**prices, "prompt_cache_key": "conversation-2"},
    ]
    assert run.steps[0].fingerprint != run.steps[1].fingerprint


def test_a_tool_marking_a_secret_it_does_not_have_is_a_configuration_error() -> None:
    def lookup(account: str) -> str:
        return account

    with pytest.raises(ConfigurationError, match=r"secret=\['acount'\] names no parameter"):
        tool(secret=["acount"])(lookup)


# -- b. token counts offline -------------------------------------------------------------------------------

_COUNT_OFFLINE = """
import json, socket, sys

attempts = []

def refuse(name):
    def refused(*args, **kwargs):
        attempts.append(f"{name}{args[1:] if name.startswith('socket.') else args}")
        raise OSError("the network is blocked")
    return refused

socket.socket.connect = refuse("socket.connect")
socket.socket.connect_ex = refuse("socket.connect_ex")
socket.getaddrinfo = refuse("getaddrinfo")
socket.create_connection = refuse("create_connection")

import agentflow
from agentflow._tokens import count_prompt_tokens

litellm_after_import = "litellm" in sys.modules
texts = sys.argv[1:]
counts = {
    model: [count_prompt_tokens(model, [{"role": "user", "content": text}]) for text in texts]
    for model in ("gpt-4o-mini", "gpt-3.5-turbo", "acme/unknown-model-7")
}
import tiktoken

# What tiktoken itself says, from the encodings the models use: content + role + 3 a message + 3 a reply.
expected = {
    name: [len(enc.encode(text)) + len(enc.encode("user")) + 3 + 3 for text in texts]
    for name, enc in ((n, tiktoken.get_encoding(n)) for n in ("o200k_base", "cl100k_base"))
}
print(json.dumps({
    "counts": counts,
    "expected": expected,
    "attempts": attempts,
    "litellm_after_import": litellm_after_import,
    "litellm_after_counting": "litellm" in sys.modules,
}))
"""


def test_tiktoken_counts_prompt_tokens_with_the_network_blocked_and_without_importing_litellm(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")}
    env["TMPDIR"] = str(tmp_path)  # tiktoken's default cache is under the temp dir: make it an empty one
    texts = ["hello world", "Привет, мир! Как дела? 你好, 世界"]
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_OFFLINE, *texts], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert result["attempts"] == []
    assert result["litellm_after_import"] is False
    assert result["litellm_after_counting"] is False
    o200k, cl100k = result["expected"]["o200k_base"], result["expected"]["cl100k_base"]
    assert o200k[0] == cl100k[0] == 9  # "hello world" is 2 tokens, "user" 1, and 3 + 3 of framing
    assert o200k[1] != cl100k[1]  # the second text tells the two encodings apart
    assert result["counts"] == {
        "gpt-4o-mini": o200k,
        "gpt-3.5-turbo": cl100k,
        "acme/unknown-model-7": o200k,  # an unknown model is counted with the newest bundled encoding
    }
    assert list(tmp_path.iterdir()) == []  # nothing was cached under the temp dir


# -- c. budgets ---------------------------------------------------------------------------------------------


def test_a_call_that_would_pass_the_token_budget_is_not_made_and_the_run_fails(app: AgentFlow) -> None:
    # The first call: 9 prompt tokens by tiktoken ("hello world"), 15 by the provider's usage. The second
    # one then needs more than the 5 tokens left of 20.
    @app.workflow(name="thrifty", budget=Budget(max_tokens=20))
    async def thrifty(ctx: Context) -> list[str | None]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "hello world"}]
        first = await ctx.llm(model=MODEL, messages=messages, api_key="sk-fake")
        messages += [first.message(), {"role": "user", "content": "and more"}]
        second = await ctx.llm(model=MODEL, messages=messages, api_key="sk-fake")
        return [first.text, second.text]

    with FakeProvider() as fake:
        fake.script(reply("Hi there.", usage=(10, 5)), reply("never sent"))
        run = app.run(thrifty, run_id="thrifty-run")

    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert run.error.type == "BudgetExceeded"
    assert "the call was not made" in run.error.message
    assert "llm#1" in run.error.message
    assert fake.call_count == 1
    assert [(s.key, s.status, s.attempt) for s in run.steps] == [("llm#0", "completed", 1), ("llm#1", "failed", 0)]
    assert (run.usage.prompt_tokens, run.usage.completion_tokens) == (10, 5)


def test_a_cost_budget_smaller_than_the_first_call_stops_it_before_the_provider_is_asked(app: AgentFlow) -> None:
    @app.workflow(name="penniless", budget=Budget(max_cost=1e-9))
    async def penniless(ctx: Context) -> str | None:
        answer = await ctx.llm(model=MODEL, messages=[{"role": "user", "content": "hello world"}], api_key="sk-fake")
        return answer.text

    with FakeProvider() as fake:
        fake.script(reply("never sent"))
        run = app.run(penniless, run_id="penniless-run")

    assert run.status == RunStatus.FAILED
    assert run.error is not None
    assert run.error.type == "BudgetExceeded"
    assert "the call was not made" in run.error.message
    assert fake.call_count == 0
    assert [(s.key, s.status, s.attempt) for s in run.steps] == [("llm#0", "failed", 0)]  # refused, not made
