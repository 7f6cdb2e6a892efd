"""Strict replay: a finished run re-executed against its record, offline, must end the same way."""

from __future__ import annotations

import pytest

from agentflow import (
    Agent,
    AgentFlow,
    AgentFlowError,
    Context,
    NonRetryableError,
    ReplayDivergence,
    RunStatus,
    SyncContext,
    tool,
)
from agentflow.testing import FakeProvider, reply, tool_call

MODEL = "gpt-4o-mini"
PARAMS = {"api_key": "sk-fake"}
calls: list[str] = []


@tool(idempotent=False)
def issue_refund(order_id: str, amount: float) -> str:
    """Refund an order."""
    calls.append(order_id)
    return f"refunded {amount} on {order_id}"


def test_a_replayed_agent_run_is_served_everything_and_calls_nothing(app: AgentFlow) -> None:
    agent = Agent(name="support", model=MODEL, tools=[issue_refund], params=PARAMS)
    calls.clear()
    with FakeProvider() as fake:
        fake.script(tool_call("issue_refund", {"order_id": "A-1", "amount": 5}), reply("Refunded."))
        run = app.run(agent, "Refund A-1", run_id="r")
    assert run.status == RunStatus.COMPLETED and calls == ["A-1"]

    with FakeProvider() as fake:  # nothing scripted: any model call would get a 500
        replay = app.replay("r")
        assert fake.call_count == 0
    assert calls == ["A-1"]  # the non-idempotent tool did not run again
    assert replay.status == RunStatus.COMPLETED
    assert replay.output.output == "Refunded."
    assert replay.served == len(run.steps)
    assert app.get_run("r").steps == run.steps  # nothing was written


def test_a_changed_prompt_diverges_at_the_first_model_call(app: AgentFlow) -> None:
    agent = Agent(name="support", model=MODEL, instructions="Be brief.", params=PARAMS)
    with FakeProvider() as fake:
        fake.script(reply("Hi."))
        app.run(agent, "Hello", run_id="r")

    agent.instructions = "Be verbose."
    with pytest.raises(ReplayDivergence) as caught:
        app.replay("r")
    assert caught.value.key == "llm#0"


def test_a_replay_that_takes_fewer_or_more_steps_diverges(app: AgentFlow) -> None:
    plan = {"steps": 2}

    @app.workflow()
    async def count(ctx: Context) -> int:
        for i in range(plan["steps"]):
            await ctx.step("tick", lambda i=i: i)
        return plan["steps"]

    app.run(count, run_id="r")
    plan["steps"] = 1
    with pytest.raises(ReplayDivergence, match="without asking for 1 recorded step"):
        app.replay("r")
    plan["steps"] = 3
    with pytest.raises(ReplayDivergence, match="never took") as caught:
        app.replay("r")
    assert caught.value.key == "tick#2"


def test_a_failed_run_replays_to_the_same_failure(app: AgentFlow) -> None:
    @app.workflow()
    def fails(ctx: SyncContext) -> None:
        ctx.step("ok", lambda: 1)

        def boom() -> None:
            raise NonRetryableError("card declined")

        ctx.step("charge", boom)

    run = app.run(fails, run_id="r")
    assert run.status == RunStatus.FAILED
    replay = app.replay("r")
    assert replay.status == RunStatus.FAILED and replay.output is None


def test_an_unfinished_run_is_not_replayed(app: AgentFlow) -> None:
    class Crash(BaseException):
        pass

    @app.workflow()
    async def crashes(ctx: Context) -> None:
        def die() -> None:
            raise Crash

        await ctx.step("die", die)

    with pytest.raises(Crash):
        app.run(crashes, run_id="r")
    with pytest.raises(AgentFlowError, match="resume it"):
        app.replay("r")
