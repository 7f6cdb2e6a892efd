"""A tool's schema and arguments: what the signature says reaches the model and the call, as it says it.

Arguments given as one mapping (whatever their names, ``retry`` included), the ``IdempotencyKey``
parameter however it is typed, ``Annotated`` constraints, annotations that do not resolve, the
parameters a model cannot be asked for, and ``ToolResult.content`` the same live and served.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Annotated, Any, Optional

import pytest
from pydantic import BaseModel, Field

from agentflow import (
    Agent,
    AgentFlow,
    AgentFlowError,
    ConfigurationError,
    Context,
    IdempotencyKey,
    RetryPolicy,
    RunStatus,
    Tool,
    ToolArgumentsError,
    tool,
)
from agentflow.testing import FakeProvider, reply, tool_call
from agentflow.tools import calculator

if TYPE_CHECKING:
    from decimal import Decimal  # only for the type checker: a tool naming it cannot resolve its hints

MODEL = "gpt-4o-mini"
PARAMS = {"api_key": "sk-fake"}


class Crash(BaseException):
    """Stands for the process dying mid-run."""


# -- arguments as a mapping ---------------------------------------------------------------------------


@tool
def schedule(job: str, retry: int = 0) -> str:
    """Schedule a job; ``retry`` is how many times it is re-run on failure."""
    return f"scheduled {job} retry={retry}"


def test_a_model_argument_named_retry_reaches_the_tool_not_the_retry_policy(app: AgentFlow) -> None:
    agent = Agent(name="ops", model=MODEL, tools=[calculator, schedule], params=PARAMS)
    with FakeProvider() as fake:
        fake.script(tool_call("schedule", {"job": "backup", "retry": 3}, id="c1"), reply("scheduled"))
        run = app.run(agent, "schedule the backup")
        fake.script(tool_call("calculator", {"expression": "1+1", "retry": 3}, id="c2"), reply("sorry"))
        bad = app.run(agent, "add")

    assert run.status == RunStatus.COMPLETED, run.error
    tool_messages = [m["content"] for m in run.output.messages if m["role"] == "tool"]
    assert tool_messages == ["scheduled backup retry=3"]
    # An argument the tool does not take is an error the model reads, not a crash of the run.
    assert bad.status == RunStatus.COMPLETED, bad.error
    (message,) = [m["content"] for m in bad.output.messages if m["role"] == "tool"]
    assert message.startswith("error: invalid arguments for tool 'calculator'") and "retry" in message


def test_ctx_tool_takes_arguments_as_a_mapping_and_refuses_retry_as_an_argument_keyword(app: AgentFlow) -> None:
    refused: list[str] = []

    @app.workflow()
    async def jobs(ctx: Context) -> list[Any]:
        for call in (
            lambda: ctx.tool(schedule, job="backup", retry=3),  # type: ignore[arg-type]  # retry= is the call's policy
            lambda: ctx.tool(schedule, {"job": "backup"}, retry=True),  # type: ignore[arg-type]
            lambda: ctx.tool(schedule, {"job": "backup"}, retry=3),  # type: ignore[arg-type]
            lambda: ctx.tool(schedule, {"job": "backup"}, job="other"),  # a mapping and keywords
            lambda: ctx.tool(schedule, ["job", "backup"]),  # type: ignore[arg-type]
        ):
            with pytest.raises(AgentFlowError) as caught:
                await call()
            refused.append(str(caught.value))
        results = [
            await ctx.tool(schedule, {"job": "backup", "retry": 3}),
            await ctx.tool(schedule, {"job": "report", "retry": 1}, retry=RetryPolicy(max_attempts=2, delay=0)),
            await ctx.tool(schedule, job="cleanup"),
        ]
        return [r.value for r in results]

    run = app.run(jobs)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["scheduled backup retry=3", "scheduled report retry=1", "scheduled cleanup retry=0"]
    assert [s.key for s in run.steps] == ["schedule#0", "schedule#1", "schedule#2"]  # refusals take no key
    assert "RetryPolicy" in refused[0] and "{'retry': ...}" in refused[0] and "got 3" in refused[0]
    assert "got True" in refused[1] and "got 3" in refused[2]
    assert "not both" in refused[3] and "['job']" in refused[3]
    assert "must be a mapping" in refused[4] and "list" in refused[4]


# -- the IdempotencyKey parameter ---------------------------------------------------------------------


def pay_optional(amount: int, key: IdempotencyKey | None = None) -> str:
    """Pay; called directly, it needs no key."""
    return f"paid {amount} with {key}"


def pay_typing_optional(amount: int, key: Optional[IdempotencyKey] = None) -> str:  # noqa: UP045
    """Pay; called directly, it needs no key."""
    return f"paid {amount} with {key}"


def pay_annotated(amount: int, key: Annotated[IdempotencyKey, "the payment provider's dedup key"]) -> str:
    """Pay."""
    return f"paid {amount} with {key}"


@pytest.mark.parametrize("fn", [pay_optional, pay_typing_optional, pay_annotated])
def test_an_optional_or_annotated_idempotency_key_is_filled_and_kept_out_of_the_schema(app: AgentFlow, fn: Any) -> None:
    pay = tool(name="pay", idempotent=False)(fn)
    assert pay.key_parameter == "key"
    assert pay.parameters == {
        "additionalProperties": False,
        "properties": {"amount": {"type": "integer"}},
        "required": ["amount"],
        "type": "object",
    }
    assert pay.validate({"amount": "5"}) == {"amount": 5}

    @app.workflow()
    async def checkout(ctx: Context) -> list[Any]:
        first = await ctx.tool(pay, amount=5)
        chosen = await ctx.tool(pay, {"amount": 6, "key": "chosen-by-the-model"})
        return [first.value, chosen.ok, chosen.error]

    run = app.run(checkout, run_id="r")
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output[0] == "paid 5 with r:pay#0"
    assert run.output[1] is False and "key" in run.output[2]  # the key is not the model's to choose


@tool(idempotent=False)
def ship(parcel: Parcel, key: IdempotencyKey) -> str:
    """Ship a parcel; ``Parcel`` is defined below this tool."""
    return f"shipped {parcel.weight} kg with {key}"


class Parcel(BaseModel):
    weight: int


def test_a_forward_reference_defined_later_in_the_module_resolves_at_first_use(app: AgentFlow) -> None:
    assert ship.key_parameter == "key"
    assert ship.parameters["required"] == ["parcel"]
    assert "key" not in ship.parameters["properties"]

    @app.workflow()
    async def send(ctx: Context) -> Any:
        return (await ctx.tool(ship, parcel={"weight": 3})).value

    run = app.run(send, run_id="r")
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "shipped 3 kg with r:ship#0"


def unresolvable() -> Tool:
    def pay(amount: int, key: IdempotencyKey, memo: Decimal | None = None) -> str:
        """Pay."""
        return f"paid {amount} with {key}"

    return tool(idempotent=False)(pay)  # made without complaint: the hints are tried again at first use


def test_a_tool_whose_annotations_do_not_resolve_is_a_configuration_error_at_first_use(app: AgentFlow) -> None:
    with pytest.raises(ConfigurationError, match=r"tool 'pay': its type annotations do not resolve") as caught:
        unresolvable().schema()
    assert "Decimal" in str(caught.value) and "TYPE_CHECKING" in str(caught.value)
    with pytest.raises(ConfigurationError, match="do not resolve"):
        unresolvable().validate({"amount": 5})

    pay = unresolvable()

    @app.workflow()
    async def checkout(ctx: Context) -> Any:
        return (await ctx.tool(pay, amount=5)).value

    run = app.run(checkout)
    assert run.status == RunStatus.FAILED
    assert run.error is not None and "'Decimal' is not defined" in run.error.message


# -- Annotated constraints ----------------------------------------------------------------------------


def test_annotated_field_constraints_reach_the_schema_and_the_validation(app: AgentFlow) -> None:
    charged: list[int] = []

    @tool
    def charge(
        amount: Annotated[int, Field(ge=1, description="cents to charge")],
        note: Annotated[str, Field(max_length=5)] = "",
    ) -> str:
        """Charge a card."""
        charged.append(amount)
        return "charged"

    assert charge.parameters["properties"] == {
        "amount": {"description": "cents to charge", "minimum": 1, "type": "integer"},
        "note": {"default": "", "maxLength": 5, "type": "string"},
    }

    @app.workflow()
    async def pay(ctx: Context) -> list[Any]:
        results = [
            await ctx.tool(charge, amount=-5),
            await ctx.tool(charge, amount=5, note="far too long"),
            await ctx.tool(charge, amount=5),
        ]
        return [[r.ok, r.error] for r in results]

    run = app.run(pay)
    assert run.status == RunStatus.COMPLETED, run.error
    (ok0, error0), (ok1, error1), (ok2, _) = run.output
    assert not ok0 and "amount: Input should be greater than or equal to 1" in error0
    assert not ok1 and "note: String should have at most 5 characters" in error1
    assert ok2 and charged == [5]  # the refused calls never ran


# -- ToolResult.content, live and served --------------------------------------------------------------


@tool
def last_login(user: str):  # type: ignore[no-untyped-def]  # no return annotation, on purpose
    """When the user last logged in."""
    return datetime.datetime(2024, 1, 2, 3, 4, 5)


@tool
def bounds(user: str):  # type: ignore[no-untyped-def]
    """The user's limits."""
    return (1, "a", 2.5)


@tool
def counts(user: str):  # type: ignore[no-untyped-def]
    """Orders per year."""
    return {2023: 4, 2024: 7}


def test_tool_result_content_is_the_same_live_on_resume_and_on_replay(app: AgentFlow) -> None:
    seen: list[list[str]] = []
    crash = {"after_tools": True}

    @app.workflow()
    async def profile(ctx: Context, user: str) -> list[str]:
        contents = [(await ctx.tool(t, user=user)).content for t in (last_login, bounds, counts)]
        seen.append(contents)
        if crash["after_tools"]:
            raise Crash
        return contents

    with pytest.raises(Crash):
        app.run(profile, "bob", run_id="r")
    crash["after_tools"] = False
    run = app.resume("r")  # the three results are served from the record
    assert run.status == RunStatus.COMPLETED, run.error
    app.replay("r")
    live, resumed, replayed = seen
    assert live == resumed == replayed
    assert live[0] == "2024-01-02T03:04:05"  # a JSON string's text, as a tool returning a str gives


def test_a_hand_written_loop_with_an_unannotated_tool_replays_without_divergence(app: AgentFlow) -> None:
    @app.workflow()
    async def support(ctx: Context, question: str) -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
        answer = await ctx.llm(model=MODEL, messages=messages, tools=[last_login], api_key="sk-fake")
        messages.append(answer.message())
        for call in answer.tool_calls:
            result = await ctx.tool(last_login, call.args())
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result.content})
        final = await ctx.llm(model=MODEL, messages=messages, tools=[last_login], api_key="sk-fake")
        return final.text or ""

    with FakeProvider() as fake:
        fake.script(tool_call("last_login", {"user": "bob"}, id="c1"), reply("Bob logged in on Jan 2."))
        run = app.run(support, "When did Bob last log in?", run_id="r")
    assert run.status == RunStatus.COMPLETED, run.error
    assert fake.calls[1]["messages"][-1]["content"] == "2024-01-02T03:04:05"

    replay = app.replay("r")  # strict: raises ReplayDivergence if the second request differs
    assert (replay.status, replay.output) == (RunStatus.COMPLETED, "Bob logged in on Jan 2.")


# -- parameters a model cannot be asked for -----------------------------------------------------------


def test_a_positional_only_parameter_is_a_configuration_error_when_the_schema_is_built() -> None:
    def add(a: int, /, b: int = 0) -> int:
        return a + b

    with pytest.raises(ConfigurationError, match=r"tool 'add': parameter 'a' is positional-only"):
        tool(add).schema()


def test_an_underscore_parameter_needs_a_default_and_is_then_left_out_of_the_schema(app: AgentFlow) -> None:
    def lookup(order_id: str, _cache: int) -> str:
        return order_id

    with pytest.raises(ConfigurationError, match=r"tool 'lookup': parameter '_cache' starts with '_'"):
        tool(lookup).schema()

    @tool
    def find(order_id: str, _cache_size: int = 8) -> str:
        """Find an order."""
        return f"{order_id} (cache {_cache_size})"

    assert find.parameters["properties"] == {"order_id": {"type": "string"}}
    assert find.validate({"order_id": "A-1"}) == {"order_id": "A-1"}

    @app.workflow()
    async def orders(ctx: Context) -> list[Any]:
        results = [await ctx.tool(find, order_id="A-1"), await ctx.tool(find, order_id="A-1", _cache_size=1)]
        return [[r.ok, r.value if r.ok else r.error] for r in results]

    run = app.run(orders)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output[0] == [True, "A-1 (cache 8)"]
    assert run.output[1][0] is False and "_cache_size" in run.output[1][1]


# -- parameters named like pydantic's own members -----------------------------------------------------


@tool
def deploy(model_config: str, model_dump: bool = False, json: str = "{}") -> str:
    """Deploy a model with the named config."""
    return f"{model_config} dump={model_dump} json={json}"


def test_parameters_named_like_pydantic_members_reach_the_schema_and_the_call(app: AgentFlow) -> None:
    assert deploy.parameters["properties"] == {
        "model_config": {"type": "string"},
        "model_dump": {"type": "boolean", "default": False},
        "json": {"type": "string", "default": "{}"},
    }
    assert deploy.parameters["required"] == ["model_config"]
    assert deploy.validate({"model_config": "prod"}) == {"model_config": "prod", "model_dump": False, "json": "{}"}
    with pytest.raises(ToolArgumentsError, match="model_config: Field required"):
        deploy.validate({})
    with pytest.raises(ToolArgumentsError, match="Extra inputs"):
        deploy.validate({"model_config": "prod", "arg_model_config": "other"})  # the field's own name is not one

    @app.workflow()
    async def ship(ctx: Context) -> Any:
        return (await ctx.tool(deploy, {"model_config": "prod", "model_dump": True})).value

    run = app.run(ship)
    assert (run.status, run.output) == (RunStatus.COMPLETED, "prod dump=True json={}")


# -- secret parameters --------------------------------------------------------------------------------


class Credentials(BaseModel):
    user: str
    pin: int


class Region(BaseModel):
    name: str


@tool(secret=["signing"])
def web_search(
    query: str,
    region: Region | None = None,
    api_key: str = "sk-default-search-key",
    signing: Credentials | None = None,
    session_token: str | None = None,
) -> str:
    """Search the web."""
    return f"{query} with {api_key[:6]} signed={signing is not None}"


def test_secret_parameters_and_their_defaults_are_left_out_of_the_schema_given_to_the_model(app: AgentFlow) -> None:
    schema = web_search.schema()["function"]["parameters"]
    assert set(schema["properties"]) == {"query", "region"}  # not api_key, session_token nor the marked one
    assert schema["required"] == ["query"]
    assert set(schema["$defs"]) == {"Region"}  # the secret parameter's type went with it
    assert "sk-default-search-key" not in str(schema)

    @app.workflow()
    async def search(ctx: Context) -> list[Any]:
        reply_ = await ctx.llm(model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=[web_search], **PARAMS)
        given = await ctx.tool(web_search, query="q", api_key="sk-callers-own-key")  # the caller still gives it
        default = await ctx.tool(web_search, query="q")
        return [reply_.text, given.value, default.value]

    with FakeProvider() as fake:
        fake.default = reply("ok")
        run = app.run(search)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["ok", "q with sk-cal signed=False", "q with sk-def signed=False"]
    assert "sk-default-search-key" not in str(fake.calls[0]["tools"])


# -- text that is not text ----------------------------------------------------------------------------


@tool
def note(text: str, tags: dict[str, str] | None = None) -> str:
    """Take a note."""
    return f"noted {text}"


def test_a_lone_surrogate_in_a_model_s_arguments_is_an_error_the_model_reads_and_the_run_goes_on(
    app: AgentFlow,
) -> None:
    agent = Agent(name="notes", model=MODEL, tools=[note], params=PARAMS)
    with FakeProvider() as fake:
        # Valid JSON, as a model cut at a token boundary writes half an emoji: "\ud83d" alone.
        fake.script(tool_call("note", '{"text": "done \\ud83d"}', id="c1"), reply("sorry"))
        run = app.run(agent, "note it", run_id="r")
    assert run.status == RunStatus.COMPLETED, run.error
    (message,) = [m["content"] for m in run.output.messages if m["role"] == "tool"]
    assert message.startswith("error: invalid arguments for tool 'note': text: holds half of a character")
    assert "\\ud83d" in fake.calls[1]["messages"][1]["tool_calls"][0]["function"]["arguments"]  # as it came
    assert app.replay("r").status == RunStatus.COMPLETED  # the same request, fingerprinted the same way

    @app.workflow()
    async def direct(ctx: Context) -> list[Any]:
        results = [
            await ctx.tool(note, {"text": "ok", "tags": {"mood\udce9": "x"}}),
            await ctx.tool(note, {"text": "ok", "tags": {"mood": "\ud83d"}}),
            await ctx.tool(note, {"text": "fine"}),
        ]
        return [r.ok if r.ok else r.error for r in results]

    hand = app.run(direct)
    assert hand.status == RunStatus.COMPLETED, hand.error
    assert hand.output[0].endswith("the name tags.mood\\udce9: holds half of a character (a lone UTF-16 surrogate), "
                                   "which is not text; send the call again with whole characters")  # fmt: skip
    assert "tags.mood: holds half of a character" in hand.output[1]
    assert hand.output[2] is True
