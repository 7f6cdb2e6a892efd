"""Strict replay: a finished run re-executed against its record, offline, must end the same way."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from agentflow import (
    Agent,
    AgentFlow,
    AgentFlowError,
    Context,
    IdempotencyKey,
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


# -- reports, modes and forks ------------------------------------------------------------------------------


def two_question_workflow(app: AgentFlow, second: dict[str, str]) -> Any:
    @app.workflow(name="two_questions")
    async def ask(ctx: Context, topic: str) -> str:
        first = await ctx.llm(model=MODEL, messages=[{"role": "user", "content": f"About {topic}?"}], **PARAMS)
        follow = [{"role": "user", "content": second["text"]}]
        answer = await ctx.llm(model=MODEL, messages=follow, **PARAMS)
        return f"{first.text} / {answer.text}"

    return ask


def test_a_divergence_report_names_the_key_its_path_and_the_json_patch(app: AgentFlow) -> None:
    agent = Agent(name="support", model=MODEL, instructions="Be brief.", params=PARAMS)
    with FakeProvider() as fake:
        fake.script(reply("Hi."))
        app.run(agent, "Hello", run_id="r")

    agent.instructions = "Be verbose."
    with pytest.raises(ReplayDivergence) as caught:
        app.replay("r")
    report = caught.value
    assert report.key == "llm#0" and report.path == ["llm#0"]
    assert {"op": "replace", "path": "/messages/0/content", "value": "Be verbose."} in report.diff
    assert report.recorded["messages"][0]["content"] == "Be brief."  # messages spelled out, not blob hashes
    text = str(report)
    assert "replace /messages/0/content 'Be verbose.'" in text
    assert "recorded under code version" in text  # the agent's instructions are part of its code version


def test_relaxed_replay_serves_by_key_and_ignores_fingerprints(app: AgentFlow) -> None:
    second = {"text": "And tomorrow?"}
    workflow = two_question_workflow(app, second)
    with FakeProvider() as fake:
        fake.script(reply("Sunny."), reply("Rain."))
        app.run(workflow, "weather", run_id="r")

    second["text"] = "And the day after?"
    with pytest.raises(ReplayDivergence):
        app.replay("r")
    replay = app.replay("r", mode="relaxed")
    assert replay.matched and replay.output == "Sunny. / Rain."


def test_live_replay_goes_on_live_from_the_divergence_in_a_new_run(app: AgentFlow) -> None:
    second = {"text": "And tomorrow?"}
    workflow = two_question_workflow(app, second)
    with FakeProvider() as fake:
        fake.script(reply("Sunny."), reply("Rain."))
        source = app.run(workflow, "weather", run_id="r")

    second["text"] = "And the day after?"
    with FakeProvider() as fake:
        fake.script(reply("Snow."))  # only the divergent call reaches the model
        replay = app.replay("r", mode="live")
        assert fake.call_count == 1 and fake.calls[0]["messages"][0]["content"] == "And the day after?"

    assert not replay.matched and replay.diverged is not None and replay.diverged.key == "llm#1"
    assert replay.output == "Sunny. / Snow." and replay.status == RunStatus.COMPLETED
    live = app.get_run(replay.live_run_id)
    assert (live.forked_from, live.forked_at, live.status) == ("r", "llm#1", RunStatus.COMPLETED)
    assert [s.key for s in live.steps] == ["llm#0", "llm#1"]
    assert app.verify(live.id) is None  # the copied record is chained anew under the new run
    assert app.get_run("r").steps == source.steps and app.get_run("r").output == "Sunny. / Rain."


def test_a_fork_with_an_overridden_model_answer_changes_what_follows(app: AgentFlow) -> None:
    agent = Agent(name="support", model=MODEL, tools=[issue_refund], params=PARAMS)
    calls.clear()
    with FakeProvider() as fake:
        fake.script(tool_call("issue_refund", {"order_id": "A-1", "amount": 5}), reply("Refunded."))
        source = app.run(agent, "Refund A-1", run_id="r")

    with FakeProvider() as fake:  # the overridden answer has no tool call: the agent stops there
        fork = app.fork("r", at="llm#0", override="Sorry, no refund for this order.")
        assert fake.call_count == 0

    assert fork.status == RunStatus.COMPLETED and fork.output.output == "Sorry, no refund for this order."
    assert [s.key for s in fork.steps] == ["llm#0", "support.state#0"]
    assert (fork.forked_from, fork.forked_at) == ("r", "llm#0")
    assert calls == ["A-1"]  # nothing was refunded again
    after = app.get_run("r")
    assert after.steps == source.steps and after.output == source.output and app.verify("r") is None


def test_a_fork_that_reaches_a_payment_again_is_served_the_source_runs_record(app: AgentFlow) -> None:
    agent = Agent(name="support", model=MODEL, tools=[issue_refund], params=PARAMS)
    calls.clear()
    with FakeProvider() as fake:
        fake.script(tool_call("issue_refund", {"order_id": "A-1", "amount": 5}), reply("Refunded."))
        app.run(agent, "Refund A-1", run_id="r")

    with FakeProvider() as fake:  # llm#0 runs live again and asks for the same refund
        fake.script(tool_call("issue_refund", {"order_id": "A-1", "amount": 5}), reply("Refunded again?"))
        fork = app.fork("r", at="llm#0")

    assert fork.output.output == "Refunded again?"
    assert calls == ["A-1"]  # the non-idempotent tool was not called a second time
    refund = next(s for s in fork.steps if s.key == "issue_refund#0")
    assert refund.output == "refunded 5.0 on A-1"


def test_a_fork_can_edit_the_agents_state_at_a_checkpoint(app: AgentFlow) -> None:
    agent = Agent(name="support", model=MODEL, tools=[issue_refund], params=PARAMS)
    with FakeProvider() as fake:
        fake.script(tool_call("issue_refund", {"order_id": "A-1", "amount": 5}), reply("Refunded."))
        source = app.run(agent, "Refund A-1", run_id="r")

    state = source.state_at("support.state#0")
    state["messages"][-1]["content"] = "error: the payments service is down"
    with FakeProvider() as fake:
        fake.script(reply("Sorry, payments are down."))
        fork = app.fork("r", at="support.state#0", override=state)
        assert fake.calls[0]["messages"][-1]["content"] == "error: the payments service is down"
    assert fork.output.output == "Sorry, payments are down."


def test_fork_and_replay_refuse_bad_arguments(app: AgentFlow) -> None:
    with FakeProvider() as fake:
        fake.script(reply("Hi."))
        app.run(Agent(name="support", model=MODEL, params=PARAMS), "Hello", run_id="r")
    with pytest.raises(AgentFlowError, match="no step 'llm#9'"):
        app.fork("r", at="llm#9")
    with pytest.raises(AgentFlowError, match="replay mode"):
        app.replay("r", mode="sideways")  # type: ignore[arg-type]


def test_a_counterfactual_run_serves_tools_from_the_recorded_world_and_calls_the_model_live(app: AgentFlow) -> None:
    lookups: list[str] = []

    @tool
    def lookup(order_id: str) -> str:
        """Look an order up."""
        lookups.append(order_id)
        return f"{order_id}: shipped"

    old = Agent(name="support", model=MODEL, instructions="v1", tools=[lookup, issue_refund], params=PARAMS)
    calls.clear()
    with FakeProvider() as fake:
        fake.script(
            tool_call("lookup", {"order_id": "A-1"}),
            tool_call("issue_refund", {"order_id": "A-1", "amount": 5}),
            reply("Refunded."),
        )
        app.run(old, "Refund A-1", run_id="r")
    assert lookups == ["A-1"] and calls == ["A-1"]

    new = Agent(name="support", model=MODEL, instructions="v2: look up twice", tools=[lookup, issue_refund],
                params=PARAMS)  # fmt: skip
    with FakeProvider() as fake:  # the new version asks for a lookup the record has, one it has not, a refund
        fake.script(
            tool_call("lookup", {"order_id": "A-1"}),
            tool_call("lookup", {"order_id": "B-2"}),
            tool_call("issue_refund", {"order_id": "A-1", "amount": 5}),
            reply("Done differently."),
        )
        cf = app.counterfactual(new, "r", missing="missing")
        assert fake.calls[0]["messages"][0]["content"] == "v2: look up twice"  # the model was asked live

    assert cf.status == RunStatus.COMPLETED and cf.output.output == "Done differently."
    assert cf.forked_from == "r"
    results = {s.key: (s.output, s.error) for s in cf.steps if str(s.kind) == "tool"}
    assert results["lookup#0"][0] == "A-1: shipped"  # served from the world
    assert "no result for lookup" in str(results["lookup#1"][1])  # not in the world: marked missing
    assert results["issue_refund#0"][0] == "refunded 5.0 on A-1"  # served: never paid twice
    assert lookups == ["A-1"] and calls == ["A-1"]  # no tool ran


def test_a_replay_under_another_code_version_that_still_matches_says_so(app: AgentFlow) -> None:
    async def stable(ctx: Context) -> int:
        return await ctx.step("one", lambda: 1)

    app.workflow(name="stable", code_version="v1")(stable)
    assert app.run(stable, run_id="r").code_version == "v1"
    assert app.replay("r").note is None
    app.workflow(name="stable", code_version="v2")(stable)
    replay = app.replay("r")
    assert replay.matched and replay.note == "recorded under code version v1, replayed under v2"


# -- derived runs and what their source paid -----------------------------------------------------------------


def define_order_with_billing_child(app: AgentFlow, charges: list[str], prepare: Any = str.upper) -> Any:
    @tool(idempotent=False)
    def charge(amount: int, key: IdempotencyKey) -> str:
        """Charge the customer."""
        charges.append(str(key))
        return f"charged {amount}"

    @app.workflow(name="billing")
    async def billing(ctx: Context, amount: int) -> str:
        return (await ctx.tool(charge, amount=amount)).content

    @app.workflow(name="order")
    async def order(ctx: Context, amount: int) -> str:
        await ctx.step("prepare", prepare, "prepared")
        return str(await ctx.child(billing, amount))

    return order


def test_a_fork_before_a_child_run_does_not_pay_again_what_the_source_child_paid(app: AgentFlow) -> None:
    charges: list[str] = []
    order = define_order_with_billing_child(app, charges)
    app.run(order, 10, run_id="o1")
    fork = app.fork("o1", at="prepare#0")
    assert fork.status == RunStatus.COMPLETED, fork.error
    assert fork.output == "charged 10"
    assert charges == ["o1/child#0:charge#0"]  # before: charged again, by the fork's child


def test_a_counterfactual_serves_the_tool_calls_of_the_source_child_runs(app: AgentFlow) -> None:
    charges: list[str] = []
    define_order_with_billing_child(app, charges)
    app.run("order", 10, run_id="o2")

    async def order_v2(ctx: Context, amount: int) -> str:
        await ctx.step("prepare", str.lower, "prepared")
        return str(await ctx.child("billing", amount))

    counterfactual = app.counterfactual(order_v2, "o2")
    assert counterfactual.status == RunStatus.COMPLETED, counterfactual.error
    assert charges == ["o2/child#0:charge#0"]  # before: charged again, from the counterfactual's child


def test_a_live_replay_that_reaches_a_child_run_goes_on_without_paying_again(app: AgentFlow, db_url: str) -> None:
    charges: list[str] = []
    define_order_with_billing_child(app, charges)
    app.run("order", 10, run_id="o3")
    changed = AgentFlow(db_url)
    try:
        define_order_with_billing_child(changed, charges, prepare=str.lower)  # diverges at prepare: live on
        replay = changed.replay("o3", mode="live")
    finally:
        changed.close()
    assert replay.status == RunStatus.COMPLETED  # before: "child runs need an AgentFlow to run them"
    assert replay.output == "charged 10"
    assert charges == ["o3/child#0:charge#0"]


def test_a_run_left_running_is_not_forked(app: AgentFlow) -> None:
    charges: list[str] = []
    order = define_order_with_billing_child(app, charges)
    app.run(order, 10, run_id="o4")
    app._store.update_run("o4", {"status": "running"})  # as a process that died mid-step leaves it
    with pytest.raises(AgentFlowError, match="resume it"):
        app.fork("o4", at="prepare#0")


def test_a_fork_can_override_what_a_person_answered_to_an_approval(app: AgentFlow) -> None:
    @app.workflow(name="approval")
    async def approval(ctx: Context) -> str:
        decision = await ctx.wait_for_event("approve", type="approval")
        return "approved" if isinstance(decision, dict) and decision.get("approved") else "declined"

    app.run(approval, run_id="a1")
    app.send_event("a1", "approval", {"approved": False})
    assert app.resume("a1").output == "declined"
    fork = app.fork("a1", at="approve#0", override={"approved": True})
    assert fork.output == "approved"  # before: the override was recorded where the wait did not read it


def test_a_replay_keeps_no_object_per_recorded_step_for_the_collector_to_walk(app: AgentFlow) -> None:
    """Loaded for a replay (or a resume), a run's records are plain tuples the garbage collector stops
    tracking, and nothing is indexed per record until a divergence asks: replaying 600 steps leaves no
    more objects for a full collection to walk than replaying 100 (a StepRecord and two lists a step did)."""
    tracked: dict[int, int] = {}
    replaying = False

    def add(total: int, i: int) -> int:
        return total + i

    @app.workflow(name="counted")
    async def counted(ctx: Context, n: int) -> int:
        if replaying:  # the record is loaded, no step is served yet
            gc.collect()
            tracked[n] = len(gc.get_objects())
        total = 0
        for i in range(n):
            total = await ctx.step("add", add, total, i)
        return total

    for n in (100, 600):
        app.run(counted, n, run_id=f"counted-{n}")
    replaying = True
    for n in (100, 600, 100):  # 100 twice: what the first replay leaves behind (caches) is not counted
        replay = app.replay(f"counted-{n}")
        assert replay.matched and replay.served == n
    assert tracked[600] - tracked[100] < 100, tracked  # 500 more records: 1,500 more objects before
