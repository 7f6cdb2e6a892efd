"""Runs derived from others (a restart, a fork, a live replay, a counterfactual) crash and resume like any
run: what their source made is still served after the process died, and a restart keeps what it
superseded.

A "process restart" is a second AgentFlow on the same database with the workflow registered again. A
crash is a BaseException raised inside a step, which leaves the run ``running`` with its records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agentflow import AgentFlow, Context, FakeClock, IdempotencyKey, RunStatus, tool


class Crash(BaseException):
    """Stands for the process dying."""


class Shop:
    """A payment provider that records every charge it is asked for, by idempotency key, and a switch that
    makes the step before the payment kill the process."""

    def __init__(self) -> None:
        self.charges: list[tuple[str, int]] = []
        self.amount = 10
        self.note = "first"  # what the step before the payment is asked: another note, another request
        self.dying = False

    def register(self, app: AgentFlow) -> Any:
        shop = self

        @tool(idempotent=False)
        def charge(value: int, key: IdempotencyKey) -> str:
            shop.charges.append((str(key), value))
            return f"charged {value}"

        def quote(value: int) -> int:
            return value

        def check(note: str) -> str:
            if shop.dying:
                raise Crash
            return note

        @app.workflow(name="pay")
        async def pay(ctx: Context) -> str:
            value = int(await ctx.step("quote", quote, shop.amount))
            await ctx.step("check", check, shop.note)
            return (await ctx.tool(charge, value=value)).content

        return pay


@pytest.fixture
def reopen(db_url: str, clock: FakeClock) -> Iterator[Any]:
    """``reopen(shop)``: a new AgentFlow on the test's database (a new process), with the shop's workflow."""
    opened: list[AgentFlow] = []

    def new(shop: Shop) -> AgentFlow:
        flow = AgentFlow(db_url, clock=clock)
        shop.register(flow)
        opened.append(flow)
        return flow

    yield new
    for flow in opened:
        flow.close()


def crash_then_resume(app: AgentFlow, shop: Shop, reopen: Any, start: Any) -> tuple[AgentFlow, Any]:
    """Start a derived run with ``start(app)``, which dies before its payment; resume it in a new process."""
    shop.dying = True
    with pytest.raises(Crash):
        start(app)
    [left] = [r for r in app.list_runs() if r.status == RunStatus.RUNNING]
    shop.dying = False
    again = reopen(shop)
    return again, again.resume(left.id)


# -- restart ------------------------------------------------------------------------------------------------


def test_a_restarted_run_that_crashes_does_not_pay_again_on_resume(app: AgentFlow, reopen: Any) -> None:
    shop = Shop()
    pay = shop.register(app)
    assert app.run(pay, run_id="p").output == "charged 10"
    _, run = crash_then_resume(app, shop, reopen, lambda a: a.restart("p", from_key="quote#0"))
    assert run.status == RunStatus.COMPLETED and run.output == "charged 10"
    assert shop.charges == [("p:charge#0", 10)]  # before: charged twice under the same key


def test_a_restarted_run_that_crashes_keeps_a_changed_payment_off_the_old_key(app: AgentFlow, reopen: Any) -> None:
    shop = Shop()
    pay = shop.register(app)
    app.run(pay, run_id="p")
    shop.amount = 20
    _, run = crash_then_resume(app, shop, reopen, lambda a: a.restart("p", from_key="quote#0"))
    assert run.output == "charged 20"
    # Not "p:charge#0": a provider would answer this other payment with the first one's result.
    assert shop.charges[0] == ("p:charge#0", 10)
    assert shop.charges[1][0].startswith("p:charge#0:") and shop.charges[1][1] == 20


def test_a_payment_superseded_twice_is_still_served_by_a_later_restart(app: AgentFlow) -> None:
    shop = Shop()
    pay = shop.register(app)
    app.run(pay, run_id="p")
    shop.amount = 20
    assert app.restart("p", from_key="quote#0").output == "charged 20"
    shop.amount = 10  # the first payment's request again, two restarts later
    assert app.restart("p", from_key="quote#0").output == "charged 10"
    assert [value for _, value in shop.charges] == [10, 20]  # before: 10 was charged a second time


def test_a_restart_keeps_the_records_it_supersedes(app: AgentFlow) -> None:
    shop = Shop()
    pay = shop.register(app)
    app.run(pay, run_id="p")
    first = [(s.key, s.output) for s in app.get_run("p").steps]
    app.restart("p", from_key="check#0")
    shop.amount = 30
    app.restart("p", from_key="quote#0")
    superseded = app.superseded_steps("p")
    assert [(s.restart, s.step.key) for s in superseded] == [
        (1, "check#0"), (1, "charge#0"), (2, "quote#0"), (2, "check#0"), (2, "charge#0"),
    ]  # fmt: skip
    assert [(s.step.key, s.step.output) for s in superseded if s.restart == 1] == first[1:]
    assert [s.step.output for s in superseded if s.step.key == "quote#0"] == [10]
    assert app.get_run("p").output == "charged 30"
    assert [value for _, value in shop.charges] == [10, 30]  # the first restart served the payment
    assert app.verify("p") is None  # the run's own chain still holds


# -- fork, live replay, counterfactual ------------------------------------------------------------------------


def test_a_fork_that_crashes_does_not_make_its_sources_payment_on_resume(app: AgentFlow, reopen: Any) -> None:
    shop = Shop()
    pay = shop.register(app)
    app.run(pay, run_id="p")
    _, run = crash_then_resume(app, shop, reopen, lambda a: a.fork("p", at="check#0", new_run_id="f"))
    assert run.id == "f" and run.output == "charged 10"
    assert shop.charges == [("p:charge#0", 10)]  # served from the source run's record, as without the crash


def test_a_live_replay_that_crashes_does_not_make_its_sources_payment_on_resume(app: AgentFlow, reopen: Any) -> None:
    shop = Shop()
    pay = shop.register(app)
    app.run(pay, run_id="p")
    shop.note = "second"  # the replay diverges at check#0 and goes on live in a new run, which dies there
    _, run = crash_then_resume(app, shop, reopen, lambda a: a.replay("p", mode="live"))
    assert run.id.startswith("p-live-") and run.output == "charged 10"
    assert shop.charges == [("p:charge#0", 10)]


def test_a_forks_child_run_resumed_on_its_own_does_not_make_its_sources_payment(db_url: str, clock: FakeClock) -> None:
    charges: list[str] = []
    dying = {"on": False}

    @tool(idempotent=False)
    def charge(value: int, key: IdempotencyKey) -> str:
        charges.append(str(key))
        return f"charged {value}"

    def check(note: str) -> str:
        if dying["on"]:
            raise Crash
        return note

    def register(flow: AgentFlow, note: str) -> Any:
        @flow.workflow(name="payment")
        async def payment(ctx: Context, value: int) -> str:
            await ctx.step("check", check, note)
            return (await ctx.tool(charge, value=value)).content

        @flow.workflow(name="order")
        async def order(ctx: Context) -> str:
            await ctx.step("quote", int, 10)
            return str(await ctx.child(payment, 10))

        return order

    with AgentFlow(db_url, clock=clock) as app:
        order = register(app, "first")
        assert app.run(order, run_id="o").output == "charged 10"
        dying["on"] = True
        with pytest.raises(Crash):  # the fork's child run dies before its payment
            app.fork("o", at="quote#0", new_run_id="f")
    dying["on"] = False
    with AgentFlow(db_url, clock=clock) as again:
        register(again, "first")
        again.recover()  # resumes the child on its own, then its parent
        assert again.get_run("f").output == "charged 10"
    assert charges == ["o/child#0:charge#0"]  # served from the source's child run, as without the crash


def test_a_counterfactual_that_crashes_serves_its_recorded_world_on_resume(app: AgentFlow, reopen: Any) -> None:
    shop = Shop()
    pay = shop.register(app)
    app.run(pay, run_id="p")
    _, run = crash_then_resume(app, shop, reopen, lambda a: a.counterfactual(pay, "p", run_id="cf"))
    assert run.id == "cf" and run.output == "charged 10"
    assert shop.charges == [("p:charge#0", 10)]  # a counterfactual never makes a payment


def test_a_counterfactual_resumed_after_a_crash_serves_each_recorded_answer_once(
    app: AgentFlow, db_url: str, clock: FakeClock
) -> None:
    looked_up: list[str] = []
    dying = {"on": False}

    @tool
    def lookup(sku: str) -> str:
        looked_up.append(sku)
        return f"{sku}: in stock ({len(looked_up)})"

    def check() -> str:
        if dying["on"]:
            raise Crash
        return "ok"

    def register(flow: AgentFlow) -> Any:
        @flow.workflow(name="stock")
        async def stock(ctx: Context) -> list[str]:
            first = (await ctx.tool(lookup, sku="A")).content
            await ctx.step("check", check)
            second = (await ctx.tool(lookup, sku="A")).content
            return [first, second]

        return stock

    stock = register(app)
    assert app.run(stock, run_id="s").output == ["A: in stock (1)", "A: in stock (2)"]
    dying["on"] = True
    with pytest.raises(Crash):
        app.counterfactual(stock, "s", run_id="cf", missing="missing")
    dying["on"] = False
    again = AgentFlow(db_url, clock=clock)
    try:
        register(again)
        run = again.resume("cf")
    finally:
        again.close()
    # The second call gets the second recorded answer, not the first one again, nor a live call.
    assert run.output == ["A: in stock (1)", "A: in stock (2)"]
    assert looked_up == ["A", "A"]


def test_a_counterfactuals_child_run_resumed_on_its_own_serves_the_shared_world(db_url: str, clock: FakeClock) -> None:
    looked_up: list[str] = []
    charges: list[str] = []
    dying = {"on": False}

    @tool
    def lookup(sku: str) -> str:
        looked_up.append(sku)
        return f"{sku}: in stock ({len(looked_up)})"

    @tool(idempotent=False)
    def charge(value: int, key: IdempotencyKey) -> str:
        charges.append(str(key))
        return f"charged {value}"

    def check() -> str:
        if dying["on"]:
            raise Crash
        return "ok"

    def register(flow: AgentFlow) -> Any:
        @flow.workflow(name="buy")
        async def buy(ctx: Context) -> list[str]:
            second = (await ctx.tool(lookup, sku="A")).content
            await ctx.step("check", check)
            paid = (await ctx.tool(charge, value=5)).content
            return [second, paid]

        @flow.workflow(name="shop")
        async def shop(ctx: Context) -> list[str]:
            first = (await ctx.tool(lookup, sku="A")).content
            return [first, *await ctx.child(buy)]

        return shop

    expected = ["A: in stock (1)", "A: in stock (2)", "charged 5"]
    with AgentFlow(db_url, clock=clock) as app:
        shop = register(app)
        assert app.run(shop, run_id="s").output == expected
        dying["on"] = True
        with pytest.raises(Crash):  # its child run dies after its lookup, before its payment
            app.counterfactual(shop, "s", run_id="cf", missing="missing")
    dying["on"] = False
    with AgentFlow(db_url, clock=clock) as again:
        register(again)
        # The child on its own first (as recover may): it must serve the answers its parent did not use.
        assert again.resume("cf/child#0").output == expected[1:]
        assert again.resume("cf").output == expected
    assert looked_up == ["A", "A"] and charges == ["s/child#0:charge#0"]  # nothing live in the counterfactual


# -- concurrent calls in another order, steps in flight, child runs ----------------------------------------


def test_a_fork_serves_its_sources_payments_when_concurrent_calls_come_in_another_order(app: AgentFlow) -> None:
    first = {"item": "a"}
    charges: list[tuple[str, str]] = []

    @tool(idempotent=False)
    async def charge(item: str, key: IdempotencyKey) -> str:
        charges.append((str(key), item))
        return f"charged {item}"

    @app.workflow(name="two")
    async def two(ctx: Context) -> list[str]:
        await ctx.step("start", int, 1)

        async def buy(item: str) -> str:
            if first["item"] != item:  # the other one reaches the engine first
                for _ in range(3):
                    await asyncio.sleep(0)

            async def pay() -> str:
                return (await ctx.tool(charge, item=item)).content

            return str(await ctx.step("buy", pay))

        return list(await asyncio.gather(buy("a"), buy("b")))

    assert app.run(two, run_id="p").output == ["charged a", "charged b"]
    first["item"] = "b"  # only the order of the two concurrent purchases changes, not their requests
    fork = app.fork("p", at="start#0", new_run_id="f")
    assert fork.output == ["charged a", "charged b"]
    # Both served, though each now runs in the other's step, under the other's keys (before: paid again).
    assert charges == [("p:buy#0/charge#0", "a"), ("p:buy#1/charge#0", "b")]
    assert app.restart("p", from_key="start#0").output == ["charged a", "charged b"]
    assert len(charges) == 2


def test_a_fork_where_a_concurrent_step_was_in_flight_runs_that_step_again_whole(app: AgentFlow) -> None:
    first = {"item": "a"}
    looked: list[str] = []

    async def look(item: str) -> str:  # async: no worker thread, the same order every time
        looked.append(item)
        return item

    @app.workflow(name="steps")
    async def steps(ctx: Context) -> list[str]:
        async def work(item: str) -> str:
            if first["item"] != item:
                await asyncio.sleep(0)

            async def body() -> str:
                seen = str(await ctx.step("look", look, item))
                for _ in range(20):  # both nested records come before either step's own
                    await asyncio.sleep(0)
                return seen

            return str(await ctx.step("work", body))

        return list(await asyncio.gather(work("a"), work("b")))

    app.run(steps, run_id="p")
    assert [s.key for s in app.get_run("p").steps] == ["work#0/look#0", "work#1/look#0", "work#0", "work#1"]
    first["item"] = "b"
    # Forked at work#0, both nested records were made inside steps still in flight there: not kept, the
    # steps run again whole (before: b's step took work#0 first and found a's nested record there, a
    # ReplayDivergence).
    assert app.fork("p", at="work#0", new_run_id="f").output == ["a", "b"]
    assert looked == ["a", "b", "b", "a"]
    assert app.restart("p", from_key="work#0").output == ["a", "b"]
    assert [s.step.key for s in app.superseded_steps("p")] == ["work#0/look#0", "work#1/look#0", "work#0", "work#1"]


def test_a_restart_starts_a_new_child_run_for_a_changed_request_and_reuses_the_old_one_for_the_same(
    app: AgentFlow,
) -> None:
    arg = {"v": "a"}
    started: list[str] = []

    @app.workflow(name="sub")
    async def sub(ctx: Context, v: str) -> str:
        started.append(v)
        return f"child of {v}"

    @app.workflow(name="top")
    async def top(ctx: Context) -> str:
        return str(await ctx.child(sub, arg["v"]))

    assert app.run(top, run_id="p").output == "child of a"
    arg["v"] = "b"
    assert app.restart("p").output == "child of b"  # before: "child of a", the old child run for another input
    arg["v"] = "a"
    assert app.restart("p").output == "child of a"
    assert started == ["a", "b"]  # the first child run is the same request's: served, not run again
    assert [r.id for r in app.list_runs() if r.parent_id == "p"] != []
