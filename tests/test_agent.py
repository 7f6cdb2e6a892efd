"""The agent loop: recorded turns and tool calls, errors fed back, limits, checkpoints, resume."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from agentflow import (
    Agent,
    AgentFlow,
    AgentFlowError,
    AgentResult,
    Budget,
    Context,
    IdempotencyKey,
    RunStatus,
    tool,
)
from agentflow.testing import FakeProvider, reply, tool_call, tool_calls

MODEL = "gpt-4o-mini"
PARAMS = {"api_key": "sk-fake"}


class Crash(BaseException):
    """Stands for the process dying mid-run."""


@tool
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look up an order by its id."""
    if not order_id.startswith("A-"):
        raise ValueError(f"no order {order_id}")
    return {"order_id": order_id, "status": "shipped"}


def support_agent(**options: Any) -> Agent:
    settings: dict[str, Any] = {
        "name": "support",
        "model": MODEL,
        "instructions": "You help shoppers.",
        "tools": [lookup_order],
        "params": PARAMS,
    }
    settings.update(options)
    return Agent(**settings)


def test_a_tool_call_round_trip_records_each_turn_tool_call_and_checkpoint(app: AgentFlow) -> None:
    agent = support_agent()
    with FakeProvider() as fake:
        fake.script(tool_call("lookup_order", {"order_id": "A-1"}, id="call_1"), reply("A-1 has shipped."))
        run = app.run(agent, "Where is A-1?")

    assert run.status == RunStatus.COMPLETED, run.error
    result = run.output
    assert isinstance(result, AgentResult)
    assert (result.output, result.turns, result.tool_calls) == ("A-1 has shipped.", 2, 1)
    assert run.workflow == "support"
    assert [(s.key, str(s.kind)) for s in run.steps] == [
        ("llm#0", "llm"),
        ("lookup_order#0", "tool"),
        ("support.state#0", "checkpoint"),
        ("llm#1", "llm"),
        ("support.state#1", "checkpoint"),
    ]
    sent = fake.calls[1]["messages"]
    assert sent[0] == {"role": "system", "content": "You help shoppers."}
    assert sent[-1]["role"] == "tool" and sent[-1]["tool_call_id"] == "call_1"
    assert json.loads(sent[-1]["content"]) == {"order_id": "A-1", "status": "shipped"}
    assert result.prompt_tokens > 0 and result.prompt_tokens == run.usage.prompt_tokens


def test_tool_errors_go_back_to_the_model_as_messages_it_can_act_on(app: AgentFlow) -> None:
    agent = support_agent()
    with FakeProvider() as fake:
        fake.script(
            tool_calls(
                [
                    ("lookup_order", {"order_id": "B-9"}, "c1"),  # the tool raises
                    ("lookup_order", {"order": "A-1"}, "c2"),  # wrong argument name
                    ("refund_everything", {}, "c3"),  # no such tool
                    ("lookup_order", "{not json", "c4"),  # arguments that are not JSON
                ]
            ),
            reply("Sorry, I could not find it."),
        )
        run = app.run(agent, "Where is B-9?")

    assert run.status == RunStatus.COMPLETED, run.error
    tool_messages = {m["tool_call_id"]: m["content"] for m in fake.calls[1]["messages"] if m["role"] == "tool"}
    assert tool_messages["c1"].startswith("error: ValueError: no order B-9")
    assert tool_messages["c2"].startswith("error:") and "order_id" in tool_messages["c2"]
    assert "no tool named 'refund_everything'" in tool_messages["c3"] and "lookup_order" in tool_messages["c3"]
    assert "not a JSON object" in tool_messages["c4"]
    assert run.output.output == "Sorry, I could not find it."


def test_parallel_tool_calls_of_one_turn_run_concurrently(app: AgentFlow) -> None:
    started: list[str] = []
    both = asyncio.Event()

    @tool
    async def fetch(source: str) -> str:
        """Fetch a source."""
        started.append(source)
        if len(started) == 2:
            both.set()
        # Each call waits until the other one has started: run one after the other, this would time out.
        await asyncio.wait_for(both.wait(), timeout=10)
        return f"{source}: ok"

    agent = Agent(name="fetcher", model=MODEL, tools=[fetch], params=PARAMS)
    with FakeProvider() as fake:
        fake.script(tool_calls([("fetch", {"source": "a"}, "c1"), ("fetch", {"source": "b"}, "c2")]), reply("done"))
        run = app.run(agent, "fetch a and b")

    assert run.status == RunStatus.COMPLETED, run.error
    assert sorted(started) == ["a", "b"]
    # Keys follow the order of the model's tool calls, not the order they finished in.
    keys = [s.key for s in run.steps if str(s.kind) == "tool"]
    assert keys == ["fetch#0", "fetch#1"]
    assert [s.output for s in run.steps if str(s.kind) == "tool"] == ["a: ok", "b: ok"]


def test_max_turns_stops_an_agent_that_keeps_calling_tools(app: AgentFlow) -> None:
    agent = support_agent(max_turns=3)
    with FakeProvider() as fake:
        fake.default = tool_call("lookup_order", {"order_id": "A-1"})
        run = app.run(agent, "loop forever")

    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error.type == "MaxTurnsExceeded"
    assert "max_turns=3" in run.error.message and "lookup_order" in run.error.message
    assert fake.call_count == 3


def test_a_budget_stops_the_agent_before_the_call_that_would_pass_it(app: AgentFlow) -> None:
    agent = support_agent(budget=Budget(max_tokens=130))
    with FakeProvider() as fake:
        fake.script(tool_call("lookup_order", {"order_id": "A-1"}, usage=(100, 20)), reply("never sent"))
        run = app.run(agent, "Where is A-1?")

    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error.type == "BudgetExceeded"
    assert "agent 'support'" in run.error.message and "120 of its 130 tokens" in run.error.message
    assert fake.call_count == 1  # the second turn was never sent


def test_the_state_rebuilt_from_checkpoints_equals_the_live_state_at_every_step(app: AgentFlow) -> None:
    live: dict[str, Any] = {}

    class Watched(Agent):
        def _checkpoint(self, ctx: Context, result: AgentResult) -> None:
            super()._checkpoint(ctx, result)
            live[f"{self.name}.state#{result.turns - 1}"] = copy.deepcopy(self.state(result))

    agent = Watched(name="support", model=MODEL, tools=[lookup_order], params=PARAMS, snapshot_every=3)
    script: list[Any] = [tool_call("lookup_order", {"order_id": f"A-{i}"}) for i in range(7)]
    script.append(reply("all found"))
    with FakeProvider() as fake:
        fake.script(*script)
        run = app.run(agent, "Find A-0 to A-6")

    assert run.status == RunStatus.COMPLETED, run.error
    checkpoints = [s for s in run.steps if str(s.kind) == "checkpoint"]
    assert len(checkpoints) == 8
    kinds = ["snapshot" if "snapshot" in s.output else "patch" for s in checkpoints]
    assert kinds == ["snapshot", "patch", "patch", "snapshot", "patch", "patch", "snapshot", "patch"]
    expected = None
    for step in run.steps:
        if str(step.kind) == "checkpoint":
            expected = live[step.key]
        assert run.state_at(step) == expected, step.key
    assert run.state_at(run.steps[-1].key)["messages"] == run.output.messages
    assert run.state_at(0) is None


def test_a_crashed_agent_resumes_without_repeating_model_calls_or_checkpoints(app: AgentFlow) -> None:
    crash = {"on": "A-2"}

    @tool
    def lookup(order_id: str) -> str:
        """Look up an order."""
        if crash["on"] == order_id:
            raise Crash
        return f"{order_id}: shipped"

    agent = Agent(name="support", model=MODEL, tools=[lookup], params=PARAMS)
    with FakeProvider() as fake:
        fake.script(tool_call("lookup", {"order_id": "A-1"}), tool_call("lookup", {"order_id": "A-2"}))
        with pytest.raises(Crash):
            app.run(agent, "Find A-1 and A-2", run_id="r")
        assert fake.call_count == 2
    crash["on"] = ""
    with FakeProvider() as fake:
        fake.script(reply("Both shipped."))
        run = app.resume("r")
        assert fake.call_count == 1  # only the turn after the crash

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output.output == "Both shipped."
    keys = [s.key for s in run.steps]
    assert keys == ["llm#0", "lookup#0", "support.state#0", "llm#1", "lookup#1", "support.state#1", "llm#2",
                    "support.state#2"]  # fmt: skip
    assert run.state_at("support.state#2")["messages"] == run.output.messages


def test_an_agent_inside_a_workflow_with_a_memory_that_trims_what_is_sent(app: AgentFlow) -> None:
    class LastTwo:
        async def fit(
            self, ctx: Context, model: str, messages: list[dict[str, Any]], *, tools: Any = None
        ) -> list[dict[str, Any]]:
            return messages[:1] + messages[-2:]

    agent = support_agent(memory=LastTwo())

    @app.workflow()
    async def handle(ctx: Context, ticket: str) -> str:
        result = await agent.run(ctx, [{"role": "user", "content": "earlier"}, {"role": "user", "content": ticket}])
        return f"{result.output} ({len(result.messages)} messages)"

    with FakeProvider() as fake:
        fake.script(tool_call("lookup_order", {"order_id": "A-1"}), reply("shipped"))
        run = app.run(handle, "Where is A-1?")

    assert run.output == "shipped (6 messages)"
    assert len(fake.calls[0]["messages"]) == 3 and len(fake.calls[1]["messages"]) == 3


def test_bad_agent_settings_are_clear_errors() -> None:
    with pytest.raises(AgentFlowError, match="max_turns"):
        Agent(model=MODEL, max_turns=0)
    with pytest.raises(AgentFlowError, match="name"):
        Agent(model=MODEL, name="has space")
    with pytest.raises(AgentFlowError, match="two tools named 'lookup_order'"):
        Agent(model=MODEL, tools=[lookup_order, lookup_order])


def test_an_agent_with_a_conversation_memory_sends_a_window_within_its_token_budget(app: AgentFlow) -> None:
    from agentflow._tokens import count_prompt_tokens
    from agentflow.memory import ConversationMemory

    agent = support_agent(memory=ConversationMemory(max_tokens=260, keep_last=3))
    history = [{"role": "user", "content": f"Earlier question {i}: " + "words " * 20} for i in range(6)]
    with FakeProvider() as fake:
        fake.script(tool_call("lookup_order", {"order_id": "A-1"}), reply("shipped"))
        run = app.run(agent, [*history, {"role": "user", "content": "Where is A-1?"}])

    assert run.status == RunStatus.COMPLETED, run.error
    tools = [lookup_order.schema()]
    for sent in fake.calls:
        assert count_prompt_tokens(MODEL, sent["messages"], tools) <= 260
        assert sent["messages"][0]["role"] == "system"  # the instructions are always kept
    assert fake.calls[0]["messages"][-1]["content"] == "Where is A-1?"
    assert len(fake.calls[0]["messages"]) < 8 and len(run.output.messages) == 11  # the state keeps it all


def test_a_turn_whose_first_call_waits_for_approval_resumes_with_each_call_made_once_in_model_order(
    app: AgentFlow,
) -> None:
    refunded: list[tuple[str, int, str]] = []

    @tool(idempotent=False, needs_approval=lambda arguments: arguments["amount"] > 100)
    def refund(order_id: str, amount: int, key: IdempotencyKey) -> str:
        """Refund an order; above 100 a person approves first."""
        refunded.append((order_id, amount, key))
        return f"refunded {amount} on {order_id}"

    agent = Agent(name="support", model=MODEL, tools=[refund], params=PARAMS)
    with FakeProvider() as fake:
        fake.script(
            tool_calls(
                [
                    ("refund", {"order_id": "A-1", "amount": 500}, "c1"),
                    ("refund", {"order_id": "B-2", "amount": 50}, "c2"),
                ]
            ),
            reply("Both refunded."),
        )
        run = app.run(agent, "Refund A-1 and B-2", run_id="r")
        assert run.status == RunStatus.WAITING and run.waiting_for == "approval"
        assert refunded == []  # no call of the turn is made before its approvals are settled
        app.send_event("r", "approval", {"approved": True, "by": "supervisor"})
        run = app.resume("r")

    assert run.status == RunStatus.COMPLETED, run.error  # not a ReplayDivergence at refund#0
    assert run.output.output == "Both refunded."
    assert refunded == [("A-1", 500, "r:refund#0"), ("B-2", 50, "r:refund#1")]
    tool_steps = [(s.key, s.output) for s in run.steps if str(s.kind) == "tool"]
    assert tool_steps == [("refund#0", "refunded 500 on A-1"), ("refund#1", "refunded 50 on B-2")]
    tool_messages = {m["tool_call_id"]: m["content"] for m in fake.calls[-1]["messages"] if m["role"] == "tool"}
    assert tool_messages == {"c1": "refunded 500 on A-1", "c2": "refunded 50 on B-2"}
    assert fake.call_count == 2  # the first turn was served from the record on resume
