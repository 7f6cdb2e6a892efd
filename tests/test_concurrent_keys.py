"""Keys of calls made concurrently (asyncio.gather) in one scope: a replay or a resume serves each call
its own record, whatever order the calls reach the engine in.

Live, calls take their keys in the order they reach the engine, which depends on when the calls before
them came back. Served from the record, calls come back at once: the order can differ, and a call can
find a sibling's record in its slot. It is then served its own record (same request), or, on resume,
run live in a free slot when it has none. A call that was in flight when the process died (no record)
reserved its key before it ran, and takes that key again: a payment made again keeps its idempotency key,
a nested step its scope.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentflow import AgentFlow, Context, IdempotencyKey, ReplayDivergence, RunStatus, tool
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


# -- calls in flight when the process died ---------------------------------------------------------------


class Gates:
    """Named asyncio events, made anew for each run (each runs on an event loop of its own)."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def __call__(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    def clear(self) -> None:
        self._events.clear()


def define_flipped_branches(app: AgentFlow, gates: Gates, crashing: dict[str, bool], inner: Any) -> Any:
    """Two coroutines under gather, A and B, each one step ("check" / "prepare") and then ``inner(ctx,
    who)``. Live, A's check waits until B's inner call has started (it sets ``gates("B started")``), so B
    takes the inner call's first key and A the second. Resumed, both steps are served at once and A
    reaches its inner call first."""

    async def check(who: str) -> str:
        if crashing["on"]:
            await gates("B started").wait()
        return who

    def prepare(who: str) -> str:
        return who

    @app.workflow(name="flipped")
    async def flipped(ctx: Context) -> list[Any]:
        gates.clear()

        async def branch(who: str) -> Any:
            await ctx.step("check" if who == "A" else "prepare", check if who == "A" else prepare, who)
            return await inner(ctx, who)

        return list(await asyncio.gather(branch("A"), branch("B")))

    return flipped


async def die_in_flight(gates: Gates, who: str) -> None:
    """While crashing: B's call stays in flight; A's, started once B's is, dies with the process."""
    if who == "B":
        gates("B started").set()
        await gates("never").wait()
    raise Crash


def test_gathered_payments_in_flight_at_a_crash_keep_their_idempotency_keys_on_resume(app: AgentFlow) -> None:
    ledger: list[tuple[str, int]] = []  # the payment service: what it was asked, under which key
    gates, crashing = Gates(), {"on": True}

    @tool(idempotent=False)
    async def pay(who: str, amount: int, key: IdempotencyKey) -> str:
        ledger.append((str(key), amount))  # the payment goes through...
        if crashing["on"]:
            await die_in_flight(gates, who)  # ...and the process dies before it is recorded
        return f"{who} paid {amount}"

    async def inner(ctx: Context, who: str) -> Any:
        return (await ctx.tool(pay, {"who": who, "amount": {"A": 10, "B": 20}[who]})).value

    workflow = define_flipped_branches(app, gates, crashing, inner)
    with pytest.raises(Crash):
        app.run(workflow, run_id="payments")
    made = dict(ledger)
    assert sorted(made.values()) == [10, 20]  # both made, neither recorded
    # Each payment reserved its key before it ran. The gathered steps' reservations went along with the
    # run's next record (check#0's with prepare#0's); prepare#0 was recorded before any other write.
    assert set(app._store.load_reservations("payments")) == {"check#0", "pay#0", "pay#1"}
    crashing["on"] = False
    run = app.resume("payments")
    assert run.status == RunStatus.COMPLETED
    assert app._store.load_reservations("payments") == {}  # dropped when the run ended
    assert run.output == ["A paid 10", "B paid 20"]
    # Each payment was made again under the key it was made with: the service deduplicates both.
    # Before, A reached the engine first on resume and took B's key for its 10.
    assert len(ledger) == 4
    assert all(made[key] == amount for key, amount in ledger), ledger


def test_a_gathered_step_in_flight_at_a_crash_keeps_its_scope_on_resume(app: AgentFlow) -> None:
    reserved: list[str] = []  # the stock service's calls: each recorded inside a step that was in flight
    gates, crashing = Gates(), {"on": True}

    @tool
    def reserve_stock(item: str) -> str:
        reserved.append(item)
        return f"{item} reserved"

    async def inner(ctx: Context, who: str) -> Any:
        async def order(item: str) -> str:
            stock = await ctx.tool(reserve_stock, {"item": item})
            if crashing["on"]:
                await die_in_flight(gates, who)
            return f"{stock.value}, ordered"

        return await ctx.step("order", order, who.lower())

    workflow = define_flipped_branches(app, gates, crashing, inner)
    with pytest.raises(Crash):
        app.run(workflow, run_id="orders")
    assert sorted(reserved) == ["a", "b"]
    crashing["on"] = False
    # Resumed, A asks for "order" first. Before, it took B's scope (order#0), whose reserve_stock record
    # is B's: a ReplayDivergence, and the run could not be resumed.
    run = app.resume("orders")
    assert run.status == RunStatus.COMPLETED
    assert run.output == ["a reserved, ordered", "b reserved, ordered"]
    assert sorted(reserved) == ["a", "b"]  # served inside each step's own scope, not made again


@pytest.mark.parametrize("where", ["gathered", "inside a gathered step"])
def test_a_child_run_in_flight_at_a_crash_is_resumed_by_its_own_parent_call(app: AgentFlow, where: str) -> None:
    stocked: list[str] = []
    gates, crashing = Gates(), {"on": True}

    def reserve_stock(item: str) -> str:
        stocked.append(item)
        return item

    reserved_at_start: dict[str, set[str]] = {}

    @app.workflow(name="sub")
    async def sub(ctx: Context, who: str) -> str:
        reserved_at_start.setdefault(who, set(app._store.load_reservations("parent")))
        item = await ctx.step("stock", reserve_stock, who.lower())
        if crashing["on"]:
            await die_in_flight(gates, who)
        return f"{who} got {item}"

    async def inner(ctx: Context, who: str) -> Any:
        if where == "gathered":
            return await ctx.child(sub, who)

        async def order(customer: str) -> Any:  # the argument tells A's step from B's (the fingerprint)
            return await ctx.child(sub, customer)

        return await ctx.step("order", order, who)

    workflow = define_flipped_branches(app, gates, crashing, inner)
    with pytest.raises(Crash):
        app.run(workflow, run_id="parent")
    assert sorted(stocked) == ["a", "b"]
    # Each child started only once its parent call's key was kept (B's call took the first key).
    parent_key = "child" if where == "gathered" else "order"
    assert f"{parent_key}#0" in reserved_at_start["B"]
    assert f"{parent_key}#1" in reserved_at_start["A"]
    crashing["on"] = False
    # Resumed, A asks first. Before, it took B's key, so its child run's id was B's: A resumed B's child
    # and got "B got b" back.
    run = app.resume("parent")
    assert run.status == RunStatus.COMPLETED
    assert run.output == ["A got a", "B got b"]
    assert sorted(stocked) == ["a", "b"]  # each child resumed, its step served
