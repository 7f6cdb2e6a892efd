"""Runs derived from others (a restart, a fork, a live replay, a counterfactual) crash and resume like any
run: what their source made is still served after the process died, and a restart keeps what it
superseded.

A "process restart" is a second AgentFlow on the same database with the workflow registered again. A
crash is a BaseException raised inside a step, which leaves the run ``running`` with its records.
"""

from __future__ import annotations

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
