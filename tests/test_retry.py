"""Retry policies: backoff shapes, limits, non-retryable errors and per-attempt timeouts.

Backoff runs on a FakeClock: no test sleeps for real.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from agentflow import (
    AgentFlow,
    ConfigurationError,
    Context,
    FakeClock,
    IdempotencyKey,
    NonRetryableError,
    RetryPolicy,
    RunStatus,
    StepFailed,
    tool,
)
from agentflow.testing import FakeProvider, reply


def flaky(failures: int, exc: type[Exception] = ConnectionError) -> tuple[list[int], object]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= failures:
            raise exc(f"attempt {len(calls)} failed")
        return "ok"

    return calls, fn


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        ("constant", [2.0, 2.0, 2.0, 2.0]),
        ("linear", [2.0, 4.0, 6.0, 8.0]),
        ("exponential", [2.0, 6.0, 18.0, 30.0]),  # multiplier 3, capped by max_delay=30
    ],
)
def test_backoff_waits_follow_the_policy(app: AgentFlow, clock: FakeClock, backoff: str, expected: list[float]) -> None:
    calls, fn = flaky(4)
    policy = RetryPolicy(max_attempts=5, delay=2.0, backoff=backoff, multiplier=3.0, max_delay=30.0)  # type: ignore[arg-type]

    @app.workflow()
    async def wf(ctx: Context) -> str:
        return await ctx.step("flaky", fn, retry=policy)  # type: ignore[arg-type]

    run = app.run(wf)

    assert run.output == "ok"
    assert clock.sleeps == expected
    assert len(calls) == 5
    (step,) = run.steps
    assert step.attempt == 5 and step.status == "completed"


def test_retries_stop_at_the_limit_and_the_step_fails(app: AgentFlow, clock: FakeClock) -> None:
    calls, fn = flaky(10)

    @app.workflow()
    async def wf(ctx: Context) -> str:
        return await ctx.step("flaky", fn, retry=RetryPolicy(max_attempts=3, delay=1.0, backoff="constant"))  # type: ignore[arg-type]

    run = app.run(wf)

    assert run.status == RunStatus.FAILED
    assert len(calls) == 3 and clock.sleeps == [1.0, 1.0]
    assert run.steps[0].attempt == 3 and run.steps[0].status == "failed"
    assert run.error is not None and "after 3 attempts" in run.error.message


def test_non_retryable_error_fails_the_step_at_once(app: AgentFlow, clock: FakeClock) -> None:
    calls, fn = flaky(10, exc=NonRetryableError)

    @app.workflow()
    async def wf(ctx: Context) -> str:
        return await ctx.step("charge", fn, retry=RetryPolicy(max_attempts=5))  # type: ignore[arg-type]

    run = app.run(wf)

    assert run.status == RunStatus.FAILED
    assert calls == [1] and clock.sleeps == []
    assert run.steps[0].error is not None and run.steps[0].error.type == "NonRetryableError"


def test_exception_types_listed_as_non_retryable_are_not_retried(app: AgentFlow, clock: FakeClock) -> None:
    calls, fn = flaky(10, exc=PermissionError)
    policy = RetryPolicy(max_attempts=5, non_retryable=(PermissionError,))

    @app.workflow()
    async def wf(ctx: Context) -> str:
        return await ctx.step("call", fn, retry=policy)  # type: ignore[arg-type]

    assert app.run(wf).status == RunStatus.FAILED
    assert calls == [1]


def test_app_default_policy_applies_to_steps_that_name_none(db_url: str) -> None:
    clock = FakeClock()
    calls, fn = flaky(2)
    with AgentFlow(db_url, clock=clock, retry=RetryPolicy(max_attempts=3, delay=0.5, backoff="constant")) as app:

        @app.workflow()
        async def wf(ctx: Context) -> str:
            return await ctx.step("flaky", fn)  # type: ignore[arg-type]

        assert app.run(wf).output == "ok"
    assert clock.sleeps == [0.5, 0.5]
    assert len(calls) == 3


def test_an_attempt_past_its_timeout_is_cut_off_and_retried(app: AgentFlow, clock: FakeClock) -> None:
    attempts: list[int] = []

    async def hangs_once() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            await asyncio.Event().wait()  # never set: only the timeout ends this attempt
        return "second attempt"

    policy = RetryPolicy(max_attempts=2, delay=1.0, timeout=0.01)

    @app.workflow()
    async def wf(ctx: Context) -> str:
        return await ctx.step("slow", hangs_once, retry=policy)

    run = app.run(wf)

    assert run.output == "second attempt"
    assert len(attempts) == 2 and run.steps[0].attempt == 2


def test_a_step_that_always_times_out_fails_with_step_timeout(app: AgentFlow) -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    @app.workflow()
    async def wf(ctx: Context) -> str:
        try:
            await ctx.step("hang", hangs, retry=RetryPolicy(timeout=0.01))
        except StepFailed as exc:
            return exc.error_type
        return "no timeout"

    run = app.run(wf)

    assert run.output == "StepTimeout"
    assert run.steps[0].error is not None and "timed out after 0.01 s" in run.steps[0].error.message


def test_sync_step_functions_honour_the_timeout(app: AgentFlow) -> None:
    import threading

    release = threading.Event()

    def blocks() -> str:
        release.wait(5)  # released as soon as the timeout has been observed
        return "late"

    @app.workflow()
    async def wf(ctx: Context) -> str:
        try:
            return await ctx.step("blocks", blocks, retry=RetryPolicy(timeout=0.01))
        except StepFailed as exc:
            return exc.error_type
        finally:
            release.set()

    assert app.run(wf).output == "StepTimeout"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"delay": -1}, "delay must not be negative"),
        ({"backoff": "fibonacci"}, "backoff must be"),
        ({"timeout": 0}, "timeout must be positive"),
    ],
)
def test_bad_retry_policies_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# -- a step tried again: what it did inside ----------------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so the run is left as a killed process leaves it."""


def define_checkout(app: AgentFlow, fail: dict[str, int], crash: dict[str, bool]) -> tuple[Any, dict[str, Any]]:
    """A step that charges (a non-idempotent tool taking an IdempotencyKey), then notifies (a nested step),
    then may fail: ``fail["after"]`` times after notifying, ``fail["notify"]`` times inside notify."""
    seen: dict[str, Any] = {"charges": [], "notified": 0}

    @tool(idempotent=False)
    def charge(amount: int, key: IdempotencyKey) -> str:
        seen["charges"].append((str(key), amount))
        return f"charged {amount}"

    def notify() -> str:
        if fail["notify"]:
            fail["notify"] -= 1
            raise ConnectionError("mail server down")
        if crash["notify"]:
            crash["notify"] = False
            raise Crash
        seen["notified"] += 1
        return "sent"

    @app.workflow(name="checkout")
    async def checkout(ctx: Context, amount: int) -> str:
        async def pay_and_notify() -> str:
            charged = await ctx.tool(charge, amount=amount)
            await ctx.step("notify", notify, retry=RetryPolicy(max_attempts=1))
            if fail["after"]:
                fail["after"] -= 1
                raise ConnectionError("the receipt printer is down")
            return charged.content

        return str(await ctx.step("pay_and_notify", pay_and_notify, retry=RetryPolicy(max_attempts=4)))

    return checkout, seen


def test_a_step_tried_again_serves_what_its_first_attempt_completed_inside(app: AgentFlow) -> None:
    checkout, seen = define_checkout(app, {"after": 2, "notify": 0}, {"notify": False})
    run = app.run(checkout, 10, run_id="order-1")
    assert run.status == RunStatus.COMPLETED, run.error
    # Three attempts; the charge and the mail were made once (before: charge#0, #1, #2 under three keys).
    assert seen["charges"] == [("order-1:pay_and_notify#0/charge#0", 10)]
    assert seen["notified"] == 1
    assert sorted(s.key for s in run.steps) == [
        "pay_and_notify#0",
        "pay_and_notify#0/charge#0",
        "pay_and_notify#0/notify#0",
    ]


def test_a_step_tried_again_makes_again_what_failed_inside_with_the_same_idempotency_key(app: AgentFlow) -> None:
    checkout, seen = define_checkout(app, {"after": 0, "notify": 1}, {"notify": False})
    run = app.run(checkout, 10, run_id="order-2")
    assert run.status == RunStatus.COMPLETED, run.error
    assert seen["charges"] == [("order-2:pay_and_notify#0/charge#0", 10)]
    assert seen["notified"] == 1  # the failed notify was taken again, in a slot of its own
    statuses = {s.key: s.status for s in run.steps}
    assert statuses["pay_and_notify#0/notify#0"] == "failed"
    assert statuses["pay_and_notify#0/notify#1"] == "completed"
    assert app.replay("order-2").output == run.output


def test_a_run_killed_in_a_steps_second_attempt_resumes_without_doing_anything_twice(app: AgentFlow) -> None:
    # notify fails in the step's first attempt, and the process dies in it in the second.
    checkout, seen = define_checkout(app, {"after": 0, "notify": 1}, {"notify": True})
    with pytest.raises(Crash):
        app.run(checkout, 10, run_id="order-3")
    assert seen["charges"] == [("order-3:pay_and_notify#0/charge#0", 10)] and seen["notified"] == 0
    # Resumed: the first attempt is served as it went (the charge, the failed notify), the second
    # serves the charge and makes notify again.
    run = app.resume("order-3")
    assert run.status == RunStatus.COMPLETED, run.error
    assert seen["charges"] == [("order-3:pay_and_notify#0/charge#0", 10)]
    assert seen["notified"] == 1
    assert app.replay("order-3").output == run.output


def test_a_model_call_inside_a_step_tried_again_is_served_not_asked_again(app: AgentFlow) -> None:
    failures = {"left": 1}

    @app.workflow(name="summary")
    async def summary(ctx: Context) -> str:
        async def summarize() -> str:
            messages = [{"role": "user", "content": "sum up"}]
            answer = await ctx.llm(model="gpt-4o-mini", messages=messages, api_key="sk-t")
            if failures["left"]:
                failures["left"] -= 1
                raise ConnectionError("the store for the summary is down")
            return answer.text or ""

        return str(await ctx.step("summarize", summarize, retry=RetryPolicy(max_attempts=2)))

    with FakeProvider() as fake:
        fake.script(reply("short"), reply("other"))
        run = app.run(summary)
    assert run.output == "short"
    assert fake.call_count == 1


def test_a_payment_that_failed_inside_a_gather_is_made_again_with_its_own_key_whatever_the_order(
    app: AgentFlow,
) -> None:
    made: list[tuple[str, str, str]] = []
    fail_once = {"A"}

    @tool(idempotent=False)
    def pay(ref: str, key: IdempotencyKey) -> str:
        if ref in fail_once:
            fail_once.discard(ref)
            made.append((ref, str(key), "failed"))
            raise ConnectionError("the bank timed out")
        made.append((ref, str(key), "paid"))
        return "paid"

    async def wait(turns: int) -> int:
        for _ in range(turns):
            await asyncio.sleep(0)
        return turns

    @app.workflow(name="gathered")
    async def gathered(ctx: Context) -> list[bool]:
        async def body() -> list[bool]:
            async def branch(ref: str, turns: int) -> bool:
                await ctx.step("wait", wait, turns)  # live, A's payment comes second; served, first
                return (await ctx.tool(pay, ref=ref, retry=RetryPolicy(max_attempts=1))).ok

            results = list(await asyncio.gather(branch("A", 5), branch("B", 0)))
            if not all(results):
                raise ConnectionError("a payment failed: try the step again")
            return results

        return list(await ctx.step("charge", body, retry=RetryPolicy(max_attempts=2, delay=0)))

    run = app.run(gathered, run_id="g1")
    assert run.status == RunStatus.COMPLETED, run.error
    # A failed in slot #1; taken again (it reached the engine first, its slot held B's record) it keeps
    # that slot's key. Before: a new key, which a bank could not tell from a new payment.
    assert made == [("B", "g1:charge#0/pay#0", "paid"), ("A", "g1:charge#0/pay#1", "failed"),
                    ("A", "g1:charge#0/pay#1", "paid")]  # fmt: skip
    assert app.replay("g1").matched


def test_a_step_that_failed_for_good_inside_a_retried_step_keeps_what_it_did_inside(app: AgentFlow) -> None:
    paid: list[str] = []
    outer_failures = {"left": 1}

    @tool(idempotent=False)
    def pay(ref: str, key: IdempotencyKey) -> str:
        paid.append(str(key))
        return "paid"

    @app.workflow(name="nested")
    async def nested(ctx: Context) -> str:
        async def inner() -> str:
            await ctx.tool(pay, ref="P")
            raise ValueError("the inner step fails for good")

        async def outer() -> str:
            with contextlib.suppress(StepFailed):
                await ctx.step("inner", inner)
            if outer_failures["left"]:
                outer_failures["left"] -= 1
                raise ConnectionError("transient")
            return "done"

        return str(await ctx.step("outer", outer, retry=RetryPolicy(max_attempts=2, delay=0)))

    run = app.run(nested, run_id="n1")
    assert run.status == RunStatus.COMPLETED, run.error
    # inner is made again (slot inner#1) in inner#0's scope: its payment is served. Before: paid again
    # under outer#0/inner#1/pay#0.
    assert paid == ["n1:outer#0/inner#0/pay#0"]
    assert app.replay("n1").matched


def test_a_resumed_retry_serves_the_failures_its_attempts_recorded_before_the_crash(app: AgentFlow) -> None:
    runs_of_check: list[int] = []
    attempts_of_order: list[int] = []
    crash_on = {3}

    def check() -> str:
        runs_of_check.append(len(runs_of_check) + 1)
        if len(runs_of_check) in crash_on:
            crash_on.clear()
            raise Crash
        if len(runs_of_check) < 3:
            raise ValueError("the stock service is down")
        return "in stock"

    @app.workflow(name="ordered")
    async def ordered(ctx: Context) -> str:
        async def order() -> str:
            attempts_of_order.append(1)
            try:
                return str(await ctx.step("check", check))
            except StepFailed:
                raise ConnectionError("try the order again") from None

        return str(await ctx.step("order", order, retry=RetryPolicy(max_attempts=4, delay=0)))

    with pytest.raises(Crash):
        app.run(ordered, run_id="o1")
    assert runs_of_check == [1, 2, 3] and len(attempts_of_order) == 3
    run = app.resume("o1")
    assert run.status == RunStatus.COMPLETED and run.output == "in stock"
    # The resumed order goes through the same three attempts: check's two recorded failures are served
    # (before: the second was run again, and the order ended one attempt early, unlike the first time).
    assert len(attempts_of_order) == 6
    assert runs_of_check == [1, 2, 3, 4]
    assert app.replay("o1").matched


def test_a_payment_in_flight_inside_a_retried_step_is_made_again_under_the_key_it_had(app: AgentFlow) -> None:
    ledger: list[tuple[str, str]] = []  # the payment service: (idempotency key, payment)
    state = {"declined": False, "crashing": True}

    @tool(idempotent=False)
    def pay(who: str, key: IdempotencyKey) -> str:
        if who == "P1" and not state["declined"]:
            state["declined"] = True
            raise RuntimeError("card declined, try again")
        ledger.append((str(key), who))
        if who == "P2" and state["crashing"]:
            raise Crash  # paid; the process dies before the payment is recorded
        return f"{who} paid"

    @app.workflow(name="two_payments")
    async def two_payments(ctx: Context) -> list[str]:
        async def order() -> list[str]:
            paid = []
            for who in ("P1", "P2"):
                result = await ctx.tool(pay, who=who)
                if not result.ok:
                    raise ConnectionError(result.error)  # the order is tried again
                paid.append(str(result.value))
            return paid

        return list(await ctx.step("order", order, retry=RetryPolicy(max_attempts=2, delay=0)))

    with pytest.raises(Crash):
        app.run(two_payments, run_id="p1")
    state["crashing"] = False
    run = app.resume("p1")
    assert run.status == RunStatus.COMPLETED and run.output == ["P1 paid", "P2 paid"]
    # P2 took order#0/pay#2 in the second attempt and reserved it: resumed, it takes it again (before
    # reservations were looked for there, a free slot: pay#3, another idempotency key).
    assert [key for key, who in ledger if who == "P2"] == ["p1:order#0/pay#2", "p1:order#0/pay#2"]


@pytest.mark.parametrize("declines", [1, 2])
def test_a_crash_inside_a_retried_step_does_not_use_up_one_of_its_attempts(app: AgentFlow, declines: int) -> None:
    state = {"calls": 0, "crashing": True}

    @tool(idempotent=False)
    def pay(who: str, key: IdempotencyKey) -> str:
        state["calls"] += 1
        if state["calls"] <= declines:
            raise RuntimeError("declined, try again")
        if state["crashing"]:
            raise Crash  # the payment of the second attempt is in flight when the process dies
        return f"{who} paid"

    @app.workflow(name="nested_payment")
    async def nested_payment(ctx: Context) -> str:
        async def inner(who: str) -> str:
            result = await ctx.tool(pay, who=who)
            if not result.ok:
                raise ConnectionError(result.error)
            return str(result.value)

        async def outer(who: str) -> str:
            return str(await ctx.step("inner", inner, who, retry=RetryPolicy(max_attempts=1)))

        return str(await ctx.step("outer", outer, "A", retry=RetryPolicy(max_attempts=declines + 1, delay=0)))

    with pytest.raises(Crash):
        app.run(nested_payment, run_id="n2")
    state["crashing"] = False
    run = app.resume("n2")
    # Resumed, the earlier attempts are served as inner's failures (the second one's inner worked in the
    # first one's scope, a failed slot taken again). The failed payments recorded inside them belong to
    # those attempts: the last attempt makes its payment again. Before, it was served one of those
    # failures as its own, and the run failed where a run without the crash completes.
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "A paid"
    assert app.replay("n2").matched
