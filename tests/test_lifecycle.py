"""Durable sleeps, events, pause / resume / cancel, restart, deadlines, compensation and child runs.

Time is a FakeClock: nothing sleeps for real. A "process restart" is a second AgentFlow on the same
database, with the workflow registered again, as a new process would do.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from agentflow import (
    AgentFlow,
    AgentFlowError,
    Context,
    FakeClock,
    IdempotencyKey,
    NonRetryableError,
    ReplayDivergence,
    RunStatus,
    tool,
)

DAY = 24 * 3600.0


class Crash(BaseException):
    """Stands for the process dying."""


def effect_log() -> tuple[list[str], Callable[[str], Callable[[], str]]]:
    done: list[str] = []

    def doing(name: str) -> Callable[[], str]:
        def act() -> str:
            done.append(name)
            return name

        act.__qualname__ = f"act_{name}"
        return act

    return done, doing


# -- sleeping ---------------------------------------------------------------------------------------------


def test_a_run_sleeping_three_days_wakes_when_the_clock_has_moved_across_a_process_restart(
    db_url: str, clock: FakeClock
) -> None:
    done, doing = effect_log()

    def register(app: AgentFlow) -> Any:
        @app.workflow(name="reminder")
        async def reminder(ctx: Context, who: str) -> str:
            await ctx.step("before", doing("before"))
            await ctx.sleep("nap", timedelta(days=3))
            await ctx.step("after", doing("after"))
            return f"reminded {who}"

        return reminder

    first = AgentFlow(db_url, clock=clock)
    run = first.run(register(first), "ann", run_id="r")
    assert run.status == RunStatus.WAITING and done == ["before"]
    assert run.wake_at is not None and run.wake_at.timestamp() == pytest.approx(clock.now + 3 * DAY)
    first.close()

    second = AgentFlow(db_url, clock=clock)  # a new process: nothing of the run is in memory
    register(second)
    assert second.recover() == [] and second.get_run("r").status == RunStatus.WAITING  # not due yet
    clock.advance(3 * DAY - 1)
    assert second.wake_due() == []
    clock.advance(1)
    [woken] = second.recover()
    assert woken.status == RunStatus.COMPLETED and woken.output == "reminded ann"
    assert done == ["before", "after"]  # each step once, across the restart
    assert [s.key for s in woken.steps] == ["before#0", "nap.start#0", "nap#0", "after#0"]
    assert str(woken.steps[2].kind) == "sleep"
    assert second.replay("r").matched
    second.close()


class _WokenElsewhereMeanwhile:
    """The store, with another process waking the due runs while this one reads the record of one."""

    def __init__(self, store: Any, other: AgentFlow) -> None:
        self._store, self._other = store, other

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def load_step_rows(self, run_id: str) -> Any:
        rows = self._store.load_step_rows(run_id)
        self._other.wake_due()
        return rows


def test_a_due_run_two_processes_wake_at_once_is_executed_by_one_of_them(db_url: str, clock: FakeClock) -> None:
    # Runs off the queues hold no lease: two ``serve`` loops, or a cron ``wake`` beside one, both read the run
    # due. The one that takes it second must leave it, not execute its steps again.
    done, doing = effect_log()

    def register(app: AgentFlow) -> None:
        @app.workflow(name="reminder")
        async def reminder(ctx: Context) -> int:
            await ctx.sleep("nap", 60)
            await ctx.step("after", doing("after"))
            await ctx.sleep("again", 60)
            return len(done)

    first, second = AgentFlow(db_url, clock=clock), AgentFlow(db_url, clock=clock)
    register(first)
    register(second)
    assert first.run("reminder", run_id="r").status == RunStatus.WAITING
    clock.advance(60)
    store = first._store
    first._store = _WokenElsewhereMeanwhile(store, second)  # type: ignore[assignment]
    first.wake_due()  # both read it due; the second wakes it while the first reads its record
    first._store = store
    assert done == ["after"]  # once: not again by the first process
    assert first.get_run("r").status == RunStatus.WAITING
    clock.advance(60)
    assert first.wake_due()[0].output == 1
    assert [s.key for s in first.get_run("r").steps].count("after#0") == 1
    second.close()
    first.close()


# -- events -----------------------------------------------------------------------------------------------


def test_an_event_sent_before_the_wait_and_one_sent_after_are_each_delivered_once(app: AgentFlow) -> None:
    @app.workflow(name="approvals")
    async def approvals(ctx: Context) -> list[Any]:
        await ctx.step("notify", lambda: app.send_event(ctx.run_id, "approval", {"n": 1}))  # before the wait
        first = await ctx.wait_for_event("first", type="approval")
        second = await ctx.wait_for_event("second", type="approval")
        return [first, second]

    run = app.run(approvals, run_id="r")
    assert run.status == RunStatus.WAITING and run.waiting_for == "approval"
    assert app.wake_due() == []  # nothing came yet
    app.send_event("r", "approval", {"n": 2})
    [woken] = app.wake_due()
    assert woken.status == RunStatus.COMPLETED and woken.output == [{"n": 1}, {"n": 2}]

    app.send_event("r", "approval", {"n": 3})  # nobody waits any more: it stays in the inbox
    assert app.wake_due() == []
    assert app.replay("r").output == [{"n": 1}, {"n": 2}]  # the recorded payloads, not the inbox
    events = [s for s in woken.steps if str(s.kind) == "event"]
    assert [e.output["payload"] for e in events] == [{"n": 1}, {"n": 2}]
    assert events[0].output["event_id"] != events[1].output["event_id"]


def test_an_event_is_delivered_once_even_if_the_run_crashes_right_after_taking_it(app: AgentFlow) -> None:
    crash = {"on": True}

    @app.workflow(name="takes")
    async def takes(ctx: Context) -> Any:
        payload = await ctx.wait_for_event("go", type="go")

        def maybe_crash() -> None:
            if crash["on"]:
                raise Crash

        await ctx.step("after", maybe_crash)
        second = await ctx.wait_for_event("again", type="go", timeout=60)
        return [payload, second]

    assert app.run(takes, run_id="r").status == RunStatus.WAITING
    app.send_event("r", "go", "first")
    with pytest.raises(Crash):
        app.wake_due()
    crash["on"] = False
    run = app.resume("r")  # the first wait is served from the record: "first" is not taken again
    assert run.status == RunStatus.WAITING and run.waiting_for == "go"
    app.send_event("r", "go", "second")
    [woken] = app.wake_due()
    assert woken.output == ["first", "second"]


@pytest.mark.parametrize("sender", ["send_event", "a child's end"])
def test_an_event_sent_while_its_run_suspends_to_wait_for_it_makes_the_run_due(
    postgres_schema_url: str, clock: FakeClock, sender: str
) -> None:
    # Postgres, READ COMMITTED: the event goes in while the run still runs (so the send wakes nobody); the
    # run then suspends to wait for it and looks in its inbox before the send commits. Neither saw the
    # other: the run waited for ever with its event in the inbox. Now the send locks the run's row first,
    # so one of them waits for the other's commit (the run's end locks its parent's row before its own).
    app = AgentFlow(postgres_schema_url, clock=clock)
    store: Any = app._store

    @app.workflow(name="waits")
    async def waits(ctx: Context) -> Any:
        return await ctx.wait_for_event("go", type="go")

    run_id, kind = "r", "go"
    assert app.run(waits, run_id=run_id).status == RunStatus.WAITING
    if sender != "send_event":  # the run waits for a child run "r/child#0", which ends now
        kind = "child:r/child#0"
        store.insert_run(dataclasses.replace(store.get_run(run_id), id="r/child#0", parent_id=run_id, status="running"))
    store.update_run(run_id, {"status": "running", "waiting_for": None})  # resumed, about to wait again
    with store.engine.connect() as sending:
        sending.begin()
        if sender == "send_event":
            store._insert_event(sending, run_id, kind, '"approved"', clock.now)
        else:
            store._end_run(
                sending, "r/child#0", {"status": "completed", "output": '"done"'}, clock.now, run_id, None, None
            )
        suspending = threading.Thread(
            target=store.suspend_run,
            args=(run_id,),
            kwargs={"status": "waiting", "wake_at": None, "waiting_for": kind, "updated_at": clock.now,
                    "usage": (0, 0, 0.0)},
        )  # fmt: skip
        suspending.start()
        while suspending.is_alive() and not _waits_for_a_lock(store.engine):
            pass  # until the suspend is over, or blocked by the send's lock (then it sees the event)
        sending.commit()
    suspending.join()
    assert [r.id for r in store.due_runs(clock.now)] == [run_id]
    app.close()


def _waits_for_a_lock(engine: Any) -> bool:
    with engine.connect() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        return bool(conn.exec_driver_sql(query).scalar())


def test_a_wait_times_out(app: AgentFlow, clock: FakeClock) -> None:
    @app.workflow(name="approval")
    async def approval(ctx: Context) -> str:
        decision = await ctx.wait_for_event("decision", type="approval", timeout=timedelta(hours=1))
        return str(decision)

    run = app.run(approval, run_id="r")
    assert run.status == RunStatus.WAITING
    assert run.wake_at is not None and run.wake_at.timestamp() == pytest.approx(clock.now + 3600)
    clock.advance(3600)
    [woken] = app.wake_due()
    assert woken.status == RunStatus.FAILED
    assert woken.error is not None and woken.error.type == "EventTimeout" and "'approval'" in woken.error.message
    app.send_event("r", "approval", "too late")  # the run is over: nothing wakes
    assert app.wake_due() == [] and app.get_run("r").status == RunStatus.FAILED


# -- pause, resume, cancel, restart ---------------------------------------------------------------------


def test_pause_stops_at_the_next_step_boundary_and_resume_continues(app: AgentFlow) -> None:
    done, doing = effect_log()

    @app.workflow(name="pausable")
    async def pausable(ctx: Context) -> int:
        await ctx.step("one", doing("one"))
        await ctx.step("pause_me", lambda: str(app.pause(ctx.run_id).status))  # as if asked from outside
        await ctx.step("two", doing("two"))
        return len(done)

    run = app.run(pausable, run_id="r")
    assert run.status == RunStatus.PAUSED and done == ["one"]
    assert app.wake_due() == []  # a paused run does not wake by itself
    resumed = app.resume("r")
    assert resumed.status == RunStatus.COMPLETED and done == ["one", "two"]


def test_a_waiting_run_paused_from_another_process_stays_paused_until_resumed(db_url: str, clock: FakeClock) -> None:
    app = AgentFlow(db_url, clock=clock)

    @app.workflow(name="sleeper")
    async def sleeper(ctx: Context) -> str:
        await ctx.sleep("nap", 60)
        return "up"

    assert app.run(sleeper, run_id="r").status == RunStatus.WAITING
    other = AgentFlow(db_url, clock=clock)  # the CLI, say
    assert other.pause("r").status == RunStatus.PAUSED
    clock.advance(120)
    assert app.wake_due() == []
    assert app.resume("r").output == "up"
    other.close()
    app.close()


def test_cancel_runs_the_compensations_and_ends_cancelled(app: AgentFlow) -> None:
    undone: list[str] = []

    @app.workflow(name="booking")
    async def booking(ctx: Context) -> str:
        await ctx.step("hotel", lambda: "H-1", compensate=lambda booked: undone.append(f"cancel {booked}"))
        await ctx.step("flight", lambda: "F-7", compensate=lambda booked: undone.append(f"cancel {booked}"))
        await ctx.wait_for_event("confirm", type="confirm")
        await ctx.step("charge", lambda: "charged")
        return "booked"

    assert app.run(booking, run_id="r").status == RunStatus.WAITING
    cancelled = app.cancel("r")
    assert cancelled.status == RunStatus.CANCELLED
    assert undone == ["cancel F-7", "cancel H-1"]  # newest first
    assert cancelled.rollback is not None and cancelled.rollback.startswith("rolled back: 2 step(s) undone")
    assert cancelled.error is not None and cancelled.error.type == "RunCancelled"
    assert not any(s.key == "charge#0" for s in cancelled.steps)
    with pytest.raises(AgentFlowError, match="nothing to pause"):
        app.pause("r")


def test_compensations_run_in_reverse_order_after_a_failure_and_again_correctly_after_a_crash(
    app: AgentFlow,
) -> None:
    undone: list[str] = []
    crash = {"on": True}

    def undo(name: str) -> Callable[[Any], None]:
        def compensate(_: Any) -> None:
            undone.append(name)
            if name == "b" and crash["on"]:
                raise Crash  # the process dies in the middle of the rollback

        compensate.__qualname__ = f"undo_{name}"
        return compensate

    def fail() -> None:
        raise NonRetryableError("card declined")

    @app.workflow(name="saga")
    async def saga(ctx: Context) -> None:
        for name in ("a", "b", "c"):
            await ctx.step(name, lambda n=name: n, compensate=undo(name))
        await ctx.step("pay", fail)

    with pytest.raises(Crash):
        app.run(saga, run_id="r")
    assert undone == ["c", "b"]
    crash["on"] = False
    run = app.resume("r")
    assert run.status == RunStatus.FAILED and run.error is not None and "card declined" in run.error.message
    # c's undo was recorded before the crash and is not repeated; b's was in flight and runs again.
    assert undone == ["c", "b", "b", "a"]
    assert run.rollback == "rolled back: 3 step(s) undone (c#0, b#0, a#0)"
    keys = [s.key for s in run.steps]
    assert keys[-3:] == ["c#0/compensate#0", "b#0/compensate#0", "a#0/compensate#0"]


def test_restart_from_a_key_runs_that_step_and_the_rest_again(app: AgentFlow) -> None:
    done, doing = effect_log()

    @app.workflow(name="three")
    async def three(ctx: Context) -> int:
        for name in ("a", "b", "c"):
            await ctx.step(name, doing(name))
        return len(done)

    assert app.run(three, run_id="r").output == 3
    again = app.restart("r", from_key="b#0")
    assert again.status == RunStatus.COMPLETED and done == ["a", "b", "c", "b", "c"]
    assert [s.key for s in again.steps] == ["a#0", "b#0", "c#0"]
    assert app.verify("r") is None
    with pytest.raises(AgentFlowError, match="no step 'z#0'"):
        app.restart("r", from_key="z#0")


def test_restart_serves_an_unchanged_payment_and_gives_a_changed_one_a_key_of_its_own(app: AgentFlow) -> None:
    charges: list[tuple[str, int]] = []
    amount = {"value": 10}

    @tool(idempotent=False)
    def charge(value: int, key: IdempotencyKey) -> str:
        charges.append((str(key), value))
        return f"charged {value}"

    @app.workflow(name="pay")
    async def pay(ctx: Context) -> str:
        await ctx.step("quote", str, amount["value"])
        return (await ctx.tool(charge, value=amount["value"])).content

    app.run(pay, run_id="p")
    assert app.restart("p", from_key="quote#0").output == "charged 10"
    assert charges == [("p:charge#0", 10)]  # the same payment: served from its removed record
    amount["value"] = 20
    assert app.restart("p", from_key="quote#0").output == "charged 20"
    # Another payment in the same slot: not the key of the first, which a provider would answer from.
    assert charges[1][0].startswith("p:charge#0:") and charges[1][1] == 20


def test_a_run_past_its_deadline_stops_even_while_it_waits(app: AgentFlow, clock: FakeClock) -> None:
    undone: list[str] = []

    @app.workflow(name="slow", deadline=600)
    async def slow(ctx: Context) -> str:
        await ctx.step("reserve", lambda: "R", compensate=lambda r: undone.append(r))
        await ctx.sleep("nap", DAY)
        return "too late"

    run = app.run(slow, run_id="r")
    assert run.status == RunStatus.WAITING
    assert run.wake_at is not None and run.wake_at.timestamp() == pytest.approx(clock.now + 600)  # the deadline
    clock.advance(600)
    [woken] = app.wake_due()
    assert woken.status == RunStatus.FAILED and woken.error is not None and woken.error.type == "DeadlineExceeded"
    assert undone == ["R"]


# -- background runs and child runs ---------------------------------------------------------------------


def test_start_returns_a_handle_and_result_waits_for_the_end(app: AgentFlow) -> None:
    @app.workflow(name="quick")
    async def quick(ctx: Context, n: int) -> int:
        return await ctx.step("double", lambda: n * 2)

    handle = app.start(quick, 21, run_id="r")
    assert handle.run_id == "r"
    assert handle.result(timeout=60).output == 42
    assert handle.status() == RunStatus.COMPLETED


def test_a_child_run_has_a_deterministic_id_suspends_its_parent_and_wakes_it(app: AgentFlow) -> None:
    @app.workflow(name="approve")
    async def approve(ctx: Context, amount: float) -> str:
        decision = await ctx.wait_for_event("decision", type="decision")
        return f"{decision} {amount}"

    @app.workflow(name="refund")
    async def refund(ctx: Context, amount: float) -> str:
        verdict = await ctx.child(approve, amount)
        return f"refund: {verdict}"

    run = app.run(refund, 80.0, run_id="p")
    child_id = "p/child#0"
    assert run.status == RunStatus.WAITING and run.waiting_for == f"child:{child_id}"
    child = app.get_run(child_id)
    assert child.status == RunStatus.WAITING and child.parent_id == "p"
    app.send_event(child_id, "decision", "approved")
    woken = app.wake_due()  # the child ends, which makes its parent due
    assert [r.id for r in woken] == [child_id]
    [parent] = app.wake_due()
    assert parent.id == "p" and parent.output == "refund: approved 80.0"


class _DiesAfterWrite:
    """The app's store, in a process that dies (``Crash``) right after the first store call that leaves
    ``died()`` true (read by another app on the same database). Once dead, calls go through (``close``)."""

    def __init__(self, store: Any, died: Callable[[], bool]) -> None:
        self._store, self._died, self._dead = store, died, False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if not self._dead and self._died():
                self._dead = True
                raise Crash(f"the process died right after {name}")
            return result

        return call


def test_a_process_that_dies_right_after_a_child_run_ends_leaves_its_parent_due(db_url: str, clock: Any) -> None:
    # Before, the child's end and the event that wakes its parent were two commits: a process dying
    # between them left the parent waiting for a child that had ended, for ever (recover saw nothing).
    def make() -> tuple[AgentFlow, Any]:
        flow = AgentFlow(db_url, clock=clock)

        @flow.workflow(name="approve")
        async def approve(ctx: Context, amount: float) -> str:
            return f"{await ctx.wait_for_event('decision', type='decision')} {amount}"

        @flow.workflow(name="refund")
        async def refund(ctx: Context, amount: float) -> str:
            return "refund: " + await ctx.child(approve, amount)

        return flow, refund

    app, refund = make()
    watcher, _ = make()
    app.run(refund, 80.0, run_id="p")
    app.send_event("p/child#0", "decision", "approved")
    app._store = _DiesAfterWrite(app._store, lambda: watcher.get_run("p/child#0").status.is_terminal)  # type: ignore[assignment]
    with pytest.raises(Crash):
        app.wake_due()
    assert watcher.get_run("p/child#0").status == RunStatus.COMPLETED

    after, _ = make()  # a new process
    after.recover()
    after.wake_due()
    parent = after.get_run("p")
    assert (parent.status, parent.output) == (RunStatus.COMPLETED, "refund: approved 80.0")
    for flow in (app, watcher, after):
        flow.close()


def test_a_child_run_started_inside_a_step_keeps_its_own_keys_and_recover_resumes_it(app: AgentFlow) -> None:
    prepared: list[str] = []
    payments: list[str] = []
    dying = {"on": True}

    def prepare(who: str) -> str:
        prepared.append(who)
        return who

    def pay(who: str) -> str:
        payments.append(who)
        if dying["on"]:
            raise Crash  # in flight in the child when the process dies
        return f"{who} paid"

    @app.workflow(name="sub")
    async def sub(ctx: Context, who: str) -> str:
        await ctx.step("prepare", prepare, who)
        return str(await ctx.step("pay", pay, who))

    @app.workflow(name="orders")
    async def orders(ctx: Context) -> str:
        async def order(who: str) -> str:
            return str(await ctx.child(sub, who))

        return str(await ctx.step("order", order, "A"))

    with pytest.raises(Crash):
        app.run(orders, run_id="o")
    child_id = "o/order#0/child#0"
    # The child's keys are its own, not those of the parent's step it was started from (before:
    # order#0/prepare#0, and a resume of the child on its own found none of its records).
    assert [s.key for s in app.get_run(child_id).steps] == ["prepare#0"]
    dying["on"] = False
    app.recover()  # resumes every run a dead process left running: the child on its own, and its parent
    assert app.get_run("o").output == "A paid"
    assert prepared == ["A"]  # served, not run again
    assert payments == ["A", "A"]  # in flight at the crash: made again, once


def test_cancelling_a_parent_cancels_its_children(app: AgentFlow) -> None:
    @app.workflow(name="approve")
    async def approve(ctx: Context) -> str:
        return str(await ctx.wait_for_event("decision", type="decision"))

    @app.workflow(name="parent")
    async def parent(ctx: Context) -> str:
        return str(await ctx.child(approve))

    assert app.run(parent, run_id="p").status == RunStatus.WAITING
    assert app.cancel("p").status == RunStatus.CANCELLED
    assert app.get_run("p/child#0").status == RunStatus.CANCELLED


def test_a_replay_of_a_run_whose_wait_changed_diverges_at_the_wait(app: AgentFlow) -> None:
    kind = {"type": "approval"}

    @app.workflow(name="waits")
    async def waits(ctx: Context) -> Any:
        return await ctx.wait_for_event("w", type=kind["type"])

    app.run(waits, run_id="r")
    app.send_event("r", "approval", 1)
    assert app.wake_due()[0].output == 1
    kind["type"] = "rejection"
    with pytest.raises(ReplayDivergence) as caught:
        app.replay("r")
    assert caught.value.key == "w#0"


# -- the CLI ----------------------------------------------------------------------------------------------

approvals_app = AgentFlow(":memory:")  # module level: runs record a ref the CLI can import


@approvals_app.workflow(name="cli_approval")
async def cli_approval(ctx: Context, amount: float) -> str:
    await ctx.step("reserve", lambda: "R-1", compensate=lambda r: None)
    decision = await ctx.wait_for_event("decision", type="decision")
    return f"{decision} {amount}"


def test_the_lifecycle_verbs_of_the_cli(db_url: str) -> None:
    from typer.testing import CliRunner

    from agentflow._cli import cli

    def invoke(*words: str) -> str:
        result = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(cli, [*words, "--db", db_url])
        assert result.exit_code == 0, result.output
        return result.output

    assert "run c1: waiting (waiting for decision)" in invoke(
        "start", "test_lifecycle:cli_approval", "--args", "[10.0]", "--run-id", "c1"
    )
    with AgentFlow(db_url) as app:
        app.register(cli_approval, name="cli_approval")
        assert app.run(cli_approval, 20.0, run_id="c2").status == RunStatus.WAITING
    assert "run c1: paused" in invoke("pause", "c1")
    assert "run c1: waiting (waiting for decision)" in invoke("resume", "c1")
    assert "sent to run c1" in invoke("send-event", "c1", "decision", '"approved"')
    assert "run c1: completed" in invoke("wake")
    assert "run c2: cancelled; rolled back: 1 step(s) undone" in invoke("cancel", "c2")
    assert "run c1: completed" in invoke("restart", "c1", "--from", "decision#0")
    with AgentFlow(db_url) as app:
        assert app.get_run("c1").output == "approved 10.0"
    assert "1 record(s) superseded by 1 restart(s)" in invoke("show", "c1")
    listed = invoke("show", "c1", "--superseded")
    assert "superseded by restart 1 at" in listed and listed.count("decision#0") == 2  # the run's, the old one


def test_cancel_interrupts_an_async_step_running_in_this_process(app: AgentFlow) -> None:
    import asyncio
    import threading

    started = threading.Event()
    undone: list[str] = []

    @app.workflow(name="stuck")
    async def stuck(ctx: Context) -> str:
        await ctx.step("reserve", lambda: "R-9", compensate=lambda r: undone.append(r))

        async def forever() -> None:
            started.set()
            await asyncio.Event().wait()  # never set: only a cancel ends this step

        await ctx.step("hang", forever)
        return "unreachable"

    handle = app.start(stuck, run_id="r")
    assert started.wait(timeout=60)  # a bound on a deadlock, not a wait for time to pass
    app.cancel("r")
    run = handle.result(timeout=60)
    assert run.status == RunStatus.CANCELLED and undone == ["R-9"]
    assert [s.key for s in run.steps] == ["reserve#0", "reserve#0/compensate#0"]  # the hung step left no record


def test_serve_wakes_a_run_as_soon_as_its_event_is_sent_in_this_process(app: AgentFlow) -> None:
    import threading

    @app.workflow(name="served")
    async def served(ctx: Context) -> Any:
        return await ctx.wait_for_event("go", type="go")

    assert app.run(served, run_id="r").status == RunStatus.WAITING
    serving = threading.Thread(
        target=app.serve, kwargs={"poll": 3600, "stop": lambda: app.get_run("r").status.is_terminal}
    )
    serving.start()
    app.send_event("r", "go", "now")  # wakes the scheduler at once: it does not wait out its hour-long poll
    serving.join(timeout=60)  # a bound on a deadlock, not a wait for time to pass
    assert not serving.is_alive()
    assert app.get_run("r").output == "now"
