"""Starting runs: idempotent run ids, statuses, typed values, sync workflows, notebooks."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
import threading
import types
from typing import Any

import pytest
from pydantic import BaseModel

from agentflow import (
    Agent,
    AgentFlow,
    ConfigurationError,
    Context,
    ReplayDivergence,
    RunConflict,
    RunStatus,
    SerializationError,
    StepFailed,
    SyncContext,
)
from agentflow.testing import FakeProvider, reply


class Order(BaseModel):
    id: int
    total: float


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_same_run_id_returns_the_recorded_run_and_executes_nothing_twice(app: AgentFlow) -> None:
    calls: list[int] = []

    async def effect(i: int) -> int:
        calls.append(i)
        return i * 10

    @app.workflow()
    async def pipeline(ctx: Context, n: int) -> int:
        return sum([await ctx.step("effect", effect, i) for i in range(n)])

    first = app.run(pipeline, 3, run_id="job-1")
    second = app.run(pipeline, 3, run_id="job-1")

    assert first.status == second.status == RunStatus.COMPLETED
    assert first.output == second.output == 30
    assert calls == [0, 1, 2]
    assert [s.key for s in second.steps] == ["effect#0", "effect#1", "effect#2"]


def test_reusing_a_run_id_with_other_input_or_workflow_is_a_conflict(app: AgentFlow) -> None:
    @app.workflow()
    async def one(ctx: Context, n: int) -> int:
        return n

    @app.workflow()
    async def two(ctx: Context, n: int) -> int:
        return n

    app.run(one, 1, run_id="job")
    with pytest.raises(RunConflict, match="other input"):
        app.run(one, 2, run_id="job")
    with pytest.raises(RunConflict, match="workflow 'test_reusing"):
        app.run(two, 1, run_id="job")
    assert app.get_run("job").output == 1


def test_a_failing_workflow_gives_a_failed_run_with_its_error(app: AgentFlow) -> None:
    def explode() -> None:
        raise ValueError("no such account")

    @app.workflow()
    async def wf(ctx: Context) -> None:
        await ctx.step("explode", explode)

    run = app.run(wf)

    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error.type == "StepFailed"
    assert "explode#0" in run.error.message and "no such account" in run.error.message
    assert "ValueError" in run.error.traceback
    (step,) = run.steps
    assert step.status == "failed" and step.error is not None and step.error.type == "ValueError"


def test_a_failed_step_is_raised_again_on_resume_without_running(app: AgentFlow) -> None:
    calls: list[str] = []

    def explode() -> None:
        calls.append("explode")
        raise ValueError("boom")

    class Crash(BaseException):
        pass

    crash = {"on": True}

    def maybe_crash() -> str:
        if crash["on"]:
            raise Crash
        return "done"

    @app.workflow()
    async def wf(ctx: Context) -> str:
        try:
            await ctx.step("explode", explode)
        except StepFailed as exc:
            caught = f"{exc.error_type}: {exc.error_message}"
        await ctx.step("crash", maybe_crash)
        return caught

    with pytest.raises(Crash):
        app.run(wf, run_id="r")
    crash["on"] = False
    run = app.resume("r")

    assert run.output == "ValueError: boom"
    assert calls == ["explode"]


def test_typed_step_outputs_come_back_typed_on_resume(db_url: str) -> None:
    class Crash(BaseException):
        pass

    crash = {"on": True}
    seen: list[Any] = []

    async def order() -> Order:
        return Order(id=7, total=12.5)

    def point() -> Point:
        return Point(1, 2)

    def maybe_crash() -> None:
        if crash["on"]:
            raise Crash

    def define(app: AgentFlow) -> Any:
        @app.workflow(name="typed")
        async def typed(ctx: Context) -> Order:
            o = await ctx.step("order", order)
            p = await ctx.step("point", point)
            await ctx.step("crash", maybe_crash)
            seen.append((o, p))
            return o

        return typed

    with AgentFlow(db_url) as app, pytest.raises(Crash):
        app.run(define(app), run_id="t")
    crash["on"] = False
    with AgentFlow(db_url) as fresh:  # a new AgentFlow, as after a restart
        define(fresh)
        run = fresh.resume("t")

    o, p = seen[-1]
    assert isinstance(o, Order) and o == Order(id=7, total=12.5)
    assert isinstance(p, Point) and p == Point(1, 2)
    assert isinstance(run.output, Order) and run.output.total == 12.5


def test_a_step_output_that_is_not_json_fails_the_run_naming_the_step(app: AgentFlow) -> None:
    def opaque() -> object:
        return object()

    @app.workflow()
    async def wf(ctx: Context) -> None:
        await ctx.step("opaque", opaque)

    run = app.run(wf, run_id="r")

    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error.type == "SerializationError"
    assert "step 'opaque#0'" in run.error.message and "object" in run.error.message
    assert run.steps == []


def test_workflow_input_that_is_not_json_is_refused_before_anything_is_recorded(app: AgentFlow) -> None:
    @app.workflow()
    async def wf(ctx: Context, thing: object) -> None:
        return None

    with pytest.raises(SerializationError, match="input of workflow"):
        app.run(wf, object(), run_id="r")
    assert app.list_runs() == []


def test_wrong_arguments_are_refused_before_anything_is_recorded(app: AgentFlow) -> None:
    @app.workflow()
    async def wf(ctx: Context, a: int) -> int:
        return a

    with pytest.raises(ConfigurationError, match="wf"):
        app.run(wf, 1, 2)
    assert app.list_runs() == []


def test_typed_workflow_input_is_rebuilt_on_resume(app: AgentFlow) -> None:
    class Crash(BaseException):
        pass

    crash = {"on": True}
    seen: list[Any] = []

    def maybe_crash() -> None:
        if crash["on"]:
            raise Crash

    @app.workflow()
    async def wf(ctx: Context, order: Order, *points: Point, **tags: Point) -> float:
        await ctx.step("crash", maybe_crash)
        seen.append((order, points, tags))
        return order.total

    with pytest.raises(Crash):
        app.run(wf, Order(id=1, total=2.0), Point(1, 1), extra=Point(2, 2), run_id="r")
    crash["on"] = False
    run = app.resume("r")

    order, points, tags = seen[-1]
    assert order == Order(id=1, total=2.0)
    assert points == (Point(1, 1),) and tags == {"extra": Point(2, 2)}
    assert run.output == 2.0


def test_sync_workflows_take_steps_and_record_them(app: AgentFlow) -> None:
    def square(i: int) -> int:
        return i * i

    @app.workflow()
    def total(ctx: SyncContext, n: int) -> int:
        stamp = ctx.now()
        assert stamp.tzinfo is not None
        return sum(ctx.step("square", square, i) for i in range(n))

    run = app.run(total, 4)

    assert run.output == 14
    assert [s.key for s in run.steps] == ["now#0", "square#0", "square#1", "square#2", "square#3"]


def test_run_works_inside_a_running_event_loop_like_jupyter(app: AgentFlow) -> None:
    async def one() -> int:
        return 1

    @app.workflow()
    async def wf(ctx: Context) -> int:
        return await ctx.step("one", one)

    async def notebook_cell() -> int:
        run = app.run(wf, run_id="nb")  # the sync API, called with a loop running in this thread
        return int(run.output)

    assert asyncio.run(notebook_cell()) == 1


def test_the_stop_button_in_a_notebook_stops_the_run_and_leaves_it_to_resume(app: AgentFlow) -> None:
    """A cell's KeyboardInterrupt reaches the thread that waits for the run (the run goes on in a helper
    thread, the cell's loop running): it cancels the run there, as Ctrl-C does outside a notebook."""
    main_thread = threading.get_ident()
    stop = {"pressed": False}

    async def slow(x: int) -> int:
        if not stop["pressed"]:
            stop["pressed"] = True
            signal.pthread_kill(main_thread, signal.SIGINT)  # the stop button: ipykernel sends SIGINT
            # A long model call, say; cancelled at once. (Not cancelled, the run would fail here after 60 s
            # rather than hang the test run.)
            await asyncio.wait_for(asyncio.Event().wait(), timeout=60)
        return x + 1

    @app.workflow()
    async def wf(ctx: Context, x: int) -> int:
        return await ctx.step("slow", slow, await ctx.step("first", abs, x))

    async def notebook_cell() -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as ipykernel sets it while a cell runs
        app.run(wf, -1, run_id="nb")

    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(notebook_cell())  # before: waited for the run forever
    finally:
        signal.signal(signal.SIGINT, previous)
    stopped = app.get_run("nb")
    assert stopped.status == RunStatus.RUNNING and [s.key for s in stopped.steps] == ["first#0"]
    assert app.resume("nb").output == 2


CELL = """
@app.workflow()
async def triage(ctx, x):
    return await ctx.step("scale", scale, x)

support = Agent(name="support", model="gpt-4o-mini", instructions=f"v{FACTOR}", params={"api_key": "sk-x"})
"""


def test_a_notebook_cell_run_again_replaces_its_workflow_and_its_agent(
    app: AgentFlow, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = types.ModuleType("notebook_main")  # a notebook's __main__: no file, no importable path
    monkeypatch.setitem(sys.modules, "notebook_main", notebook)
    notebook.__dict__.update(app=app, Agent=Agent)
    for factor in (2, 3):  # the cell, edited and run again
        notebook.__dict__.update(FACTOR=factor, scale=lambda x, f=factor: x * f)
        exec(compile(CELL, "<cell>", "exec"), notebook.__dict__)  # before: "two workflows are named 'triage'"
        assert app.run(notebook.triage, 5, run_id=f"t{factor}").output == 5 * factor
        with FakeProvider() as fake:
            fake.script(reply(f"answer {factor}"))
            assert app.run(notebook.support, "hi", run_id=f"s{factor}").output.output == f"answer {factor}"
    assert app.replay("s3").matched
    with pytest.raises(ReplayDivergence, match="replace /messages/0/content 'v3'"):
        app.replay("s2")  # the agent registered now is the edited one

    async def triage(ctx: Context, x: int) -> int:  # another definition, elsewhere, under the same name
        return x

    with pytest.raises(ConfigurationError, match="two workflows are named 'triage'"):
        app.workflow(name="triage")(triage)
    with pytest.raises(ConfigurationError, match=r"two agents are named 'support'; give one another name: Agent"):
        app.run(Agent(name="support", model="gpt-4o-mini"), "hi")


def test_run_async_and_concurrent_runs_in_one_loop(app: AgentFlow) -> None:
    async def ident(i: int) -> int:
        await asyncio.sleep(0)
        return i

    @app.workflow()
    async def wf(ctx: Context, i: int) -> int:
        return await ctx.step("ident", ident, i)

    async def main() -> list[Any]:
        runs = await asyncio.gather(*(app.run_async(wf, i, run_id=f"r{i}") for i in range(5)))
        return [r.output for r in runs]

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_list_runs_filters_by_status_and_workflow(app: AgentFlow) -> None:
    def fail() -> None:
        raise RuntimeError("x")

    @app.workflow()
    async def good(ctx: Context) -> int:
        return 1

    @app.workflow()
    async def bad(ctx: Context) -> None:
        await ctx.step("fail", fail)

    app.run(good, run_id="g1")
    app.run(good, run_id="g2")
    app.run(bad, run_id="b1")

    assert {r.id for r in app.list_runs()} == {"g1", "g2", "b1"}
    assert {r.id for r in app.list_runs(status="failed")} == {"b1"}
    assert {r.id for r in app.list_runs(workflow=good)} == {"g1", "g2"}
    assert {r.id for r in app.list_runs(status=["completed"], workflow="bad")} == set()
    assert len(app.list_runs(limit=1)) == 1
    with pytest.raises(ConfigurationError, match="unknown run status 'done'"):
        app.list_runs(status="done")


def test_recorded_now_uuid_and_random_are_the_same_on_resume(app: AgentFlow) -> None:
    class Crash(BaseException):
        pass

    crash = {"on": True}
    seen: list[tuple[Any, ...]] = []

    def maybe_crash() -> None:
        if crash["on"]:
            raise Crash

    @app.workflow()
    async def wf(ctx: Context) -> None:
        values = (ctx.now(), ctx.uuid(), ctx.random())
        seen.append(values)
        await ctx.step("crash", maybe_crash)

    with pytest.raises(Crash):
        app.run(wf, run_id="r")
    crash["on"] = False
    app.resume("r")

    assert len(seen) == 2 and seen[0] == seen[1]


def test_two_workflows_with_one_name_are_refused(app: AgentFlow) -> None:
    @app.workflow(name="same")
    async def a(ctx: Context) -> None:
        return None

    with pytest.raises(ConfigurationError, match="two workflows are named 'same'"):

        @app.workflow(name="same")
        async def b(ctx: Context) -> None:
            return None


def test_many_concurrent_runs_in_one_loop_share_the_store_without_exhausting_it(app: AgentFlow) -> None:
    # One connection per running run once exhausted the pool (5 + 10 overflow) and stalled the loop.
    async def hop(i: int) -> int:
        await asyncio.sleep(0)
        return i

    @app.workflow()
    async def wf(ctx: Context, i: int) -> int:
        a = await ctx.step("a", hop, i)
        return await ctx.step("b", hop, a)

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(app.run_async(wf, i, run_id=f"r{i}") for i in range(60))))

    runs = asyncio.run(main())

    assert [r.output for r in runs] == list(range(60))
    assert all(len(r.steps) == 2 for r in runs)
