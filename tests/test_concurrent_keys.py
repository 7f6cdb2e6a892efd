"""Keys of calls made concurrently (asyncio.gather) in one scope: a replay or a resume serves each call
its own record, whatever order the calls reach the engine in.

Live, calls take their keys in the order they reach the engine, which depends on when the calls before
them came back. Served from the record, calls come back at once: the order can differ, and a call can
find a sibling's record in its slot. It is then served its own record (same request), or, on resume,
run live in a free slot when it has none.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentflow import AgentFlow, Context, ReplayDivergence, RunStatus
from agentflow.testing import FakeProvider, reply


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so the run is left as a killed process leaves it."""


def define_two_sequences(app: AgentFlow, executed: list[str], crash_on: set[str]) -> Any:
    """Two coroutines under gather, each taking steps A1, A2 / B1, B2. Live, B runs ahead: A1 comes back
    only once B2 has started, so the keys are A1 #0, B1 #1, B2 #2, A2 #3. Replayed, A asks for A2 before
    B asks for B2 (A1 comes back at once)."""
    gates: dict[str, asyncio.Event] = {}

    async def work(who: str, n: int) -> str:
        gate = gates.setdefault("b2 started", asyncio.Event())
        if (who, n) == ("B", 2):
            gate.set()
        if (who, n) == ("A", 1):
            await gate.wait()
        name = f"{who}{n}"
        if name in crash_on:
            raise Crash
        executed.append(name)
        return name

    @app.workflow(name="two_sequences")
    async def two_sequences(ctx: Context) -> list[list[str]]:
        async def sequence(who: str) -> list[str]:
            return [await ctx.step("work", work, who, 1), await ctx.step("work", work, who, 2)]

        return list(await asyncio.gather(sequence("A"), sequence("B")))

    return two_sequences


def test_a_replay_serves_concurrent_sequences_recorded_in_another_order(app: AgentFlow) -> None:
    executed: list[str] = []
    workflow = define_two_sequences(app, executed, set())
    run = app.run(workflow, run_id="seq")
    assert run.output == [["A1", "A2"], ["B1", "B2"]]
    assert [(s.key, s.request["args"]) for s in run.steps] == [
        ("work#1", ["B", 1]),
        ("work#2", ["B", 2]),
        ("work#0", ["A", 1]),
        ("work#3", ["A", 2]),
    ]
    replay = app.replay("seq")  # strict: before, A2 met B2's record in slot #2 and diverged
    assert replay.output == run.output
    assert replay.served == 4
    assert sorted(executed) == ["A1", "A2", "B1", "B2"]  # the replay executed nothing


def test_a_resume_runs_a_call_with_no_record_in_a_free_slot_not_in_a_siblings(app: AgentFlow) -> None:
    executed: list[str] = []
    crash_on = {"A2"}
    workflow = define_two_sequences(app, executed, crash_on)
    with pytest.raises(Crash):
        app.run(workflow, run_id="crashed")
    assert sorted(executed) == ["A1", "B1", "B2"]  # A2 died with the process, unrecorded
    crash_on.clear()
    # Resumed, A asks for A2 first, in slot #2, which holds B2's record: A2 runs live in slot #3 and
    # B2 is served from #2. Before, the resume stopped with a ReplayDivergence.
    run = app.resume("crashed")
    assert run.status == RunStatus.COMPLETED
    assert run.output == [["A1", "A2"], ["B1", "B2"]]
    assert sorted(executed) == ["A1", "A2", "B1", "B2"]  # each step executed once over both executions
    assert {s.key: s.request["args"] for s in run.steps}["work#3"] == ["A", 2]


def test_sequential_code_that_changed_still_diverges_on_resume(app: AgentFlow) -> None:
    version = {"arg": 1}

    async def work(n: int) -> int:
        return n

    @app.workflow(name="sequential")
    async def sequential(ctx: Context) -> int:
        first = await ctx.step("work", work, 1)
        second = await ctx.step("work", work, version["arg"] + 1)
        return first + second

    app.run(sequential, run_id="seq-change")
    app._store.update_run("seq-change", {"status": "running"})  # as a crash after its last step leaves it
    version["arg"] = 10
    with pytest.raises(ReplayDivergence, match="work#1"):
        app.resume("seq-change")


def test_concurrent_model_conversations_replay_and_resume_without_calling_the_provider(app: AgentFlow) -> None:
    @app.workflow(name="two_conversations")
    async def two_conversations(ctx: Context) -> list[str]:
        async def conversation(name: str) -> str:
            messages: list[dict[str, Any]] = [{"role": "user", "content": f"I am {name}"}]
            first = await ctx.llm(model="gpt-4o-mini", messages=messages, api_key="sk-test")
            messages += [first.message(), {"role": "user", "content": "and then?"}]
            second = await ctx.llm(model="gpt-4o-mini", messages=messages, api_key="sk-test")
            return f"{first.text} / {second.text}"

        return list(await asyncio.gather(conversation("A"), conversation("B")))

    with FakeProvider() as fake:
        fake.default = lambda body: reply(f"{body['messages'][0]['content']}, turn {len(body['messages'])}")
        run = app.run(two_conversations, run_id="convs")
        assert run.output == ["I am A, turn 1 / I am A, turn 3", "I am B, turn 1 / I am B, turn 3"]
        calls = fake.call_count
        assert app.replay("convs").output == run.output
        app._store.update_run("convs", {"status": "running"})
        assert app.resume("convs").output == run.output
        assert fake.call_count == calls


def stored_messages(app: AgentFlow) -> list[Any]:
    """Every message held by the message blobs of the database, once per blob that holds it."""
    import json

    from sqlalchemy import text

    from agentflow._store._blob_packing import unpack_blob
    from agentflow._store._sql import SQLStore

    assert isinstance(app._store, SQLStore)
    with app._store.engine.connect() as conn:
        blobs = [unpack_blob(data) for (data,) in conn.execute(text("SELECT data FROM blobs"))]
    return [message for data in blobs for message in json.loads(data)[1]]


def test_interleaved_conversations_in_one_scope_store_each_message_once(app: AgentFlow) -> None:
    @app.workflow(name="interleaved")
    async def interleaved(ctx: Context, turns: int) -> int:
        conversations: dict[str, list[dict[str, Any]]] = {
            name: [{"role": "system", "content": "You help."}] for name in ("A", "B")
        }
        for turn in range(turns):  # A, B, A, B...: each call shares no more than the system prompt with the last
            for name, messages in conversations.items():
                messages.append({"role": "user", "content": f"{name} asks question {turn}"})
                answer = await ctx.llm(model="gpt-4o-mini", messages=messages, api_key="sk-test")
                messages.append(answer.message())
        return sum(len(m) for m in conversations.values())

    with FakeProvider() as fake:
        fake.default = reply("noted")
        run = app.run(interleaved, 6, run_id="interleaved")
    assert run.output == 2 * (1 + 2 * 6)
    stored = stored_messages(app)
    # Sent: the system prompt, 6 questions and 5 answers a conversation (the last answers were never sent
    # back), each stored once, but for the system prompt: in A's first node, and in the node B branched
    # off there. With one chain a scope, each call re-stored its whole conversation: 156 messages.
    assert len(stored) == 2 + 2 * (6 + 5)
    assert app.replay("interleaved").output == run.output
