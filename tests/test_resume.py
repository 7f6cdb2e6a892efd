"""Resuming runs: recorded steps are served, keys are stable, divergence is caught, dead runs recovered."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from pydantic import BaseModel

from agentflow import AgentFlow, Context, ReplayDivergence, RunNotFound, RunStatus, WorkflowNotRegistered


class Before(BaseModel):
    total: float


class After(BaseModel):
    total: float
    currency: str  # a new required field: the recorded output lacks it


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so the run is left as a killed process leaves it."""


def test_resume_serves_completed_steps_and_runs_only_the_rest(db_url: str) -> None:
    calls: list[int] = []
    crash_at = {"i": 3}

    async def work(i: int) -> int:
        if i == crash_at["i"]:
            raise Crash
        calls.append(i)
        return i * i

    def define(app: AgentFlow) -> None:
        @app.workflow(name="squares")
        async def squares(ctx: Context, n: int) -> list[int]:
            return [await ctx.step("work", work, i) for i in range(n)]

    with AgentFlow(db_url) as app:
        define(app)
        with pytest.raises(Crash):
            app.run("squares", 6, run_id="r")
        assert app.get_run("r").status == RunStatus.RUNNING
    crash_at["i"] = -1
    with AgentFlow(db_url) as app:
        define(app)
        run = app.resume("r")

    assert run.status == RunStatus.COMPLETED and run.output == [0, 1, 4, 9, 16, 25]
    assert calls == [0, 1, 2, 3, 4, 5]  # 0..2 ran once, before the crash; 3..5 after
    assert [s.key for s in run.steps] == [f"work#{i}" for i in range(6)]
    assert [s.seq for s in run.steps] == list(range(6))


def test_resume_after_a_code_change_raises_divergence_naming_the_key(app: AgentFlow) -> None:
    version = {"arg": "v1", "crash": True}

    def fetch(x: str) -> str:
        return x.upper()

    def maybe_crash() -> None:
        if version["crash"]:
            raise Crash

    @app.workflow()
    async def wf(ctx: Context) -> str:
        a = await ctx.step("fetch", fetch, "order-1")
        b = await ctx.step("fetch", fetch, version["arg"])
        await ctx.step("crash", maybe_crash)
        return a + b

    with pytest.raises(Crash):
        app.run(wf, run_id="r")
    before = [(s.key, s.output) for s in app.get_run("r").steps]
    version.update(arg="v2", crash=False)  # the code now calls fetch#1 with another argument

    with pytest.raises(ReplayDivergence) as info:
        app.resume("r")

    err = info.value
    assert err.key == "fetch#1" and "fetch#1" in str(err)
    assert err.recorded["args"] == ["v1"] and err.current["args"] == ["v2"]
    assert "Restore the code" in str(err)
    after = app.get_run("r")
    assert after.status == RunStatus.RUNNING  # left as it was: resumable once the code is restored
    assert [(s.key, s.output) for s in after.steps] == before
    version["arg"] = "v1"
    assert app.resume("r").output == "ORDER-1V1"


def test_keys_of_concurrent_steps_follow_call_order_not_completion_order(app: AgentFlow) -> None:
    async def slow_then_fast(i: int) -> int:
        for _ in range(5 - i):  # later calls finish first
            await asyncio.sleep(0)
        return i

    @app.workflow()
    async def wf(ctx: Context) -> list[int]:
        return list(await asyncio.gather(*(ctx.step("branch", slow_then_fast, i) for i in range(5))))

    run = app.run(wf)

    assert run.output == [0, 1, 2, 3, 4]
    by_key = {s.key: s.output for s in run.steps}
    assert by_key == {f"branch#{i}": i for i in range(5)}
    assert next(s.key for s in run.steps) == "branch#4"  # recorded in completion order


def test_steps_taken_inside_a_step_are_scoped_under_its_key(app: AgentFlow) -> None:
    @app.workflow()
    async def wf(ctx: Context) -> int:
        async def inner(i: int) -> int:
            return i + 1

        async def outer() -> int:
            a = await ctx.step("inner", inner, 1)
            b = await ctx.step("inner", inner, 2)
            return a + b

        x = await ctx.step("outer", outer)
        y = await ctx.step("outer", outer)
        return x + y

    run = app.run(wf)

    assert run.output == 10
    assert [s.key for s in run.steps] == [
        "outer#0/inner#0",
        "outer#0/inner#1",
        "outer#0",
        "outer#1/inner#0",
        "outer#1/inner#1",
        "outer#1",
    ]


def test_recover_resumes_runs_left_running_by_a_dead_process(db_url: str) -> None:
    crash = {"on": True}
    done: list[str] = []

    def maybe_crash(tag: str) -> str:
        if crash["on"]:
            raise Crash
        done.append(tag)
        return tag

    def define(app: AgentFlow) -> None:
        @app.workflow(name="job")
        async def job(ctx: Context, tag: str) -> str:
            return await ctx.step("work", maybe_crash, tag)

        @app.workflow(name="finished")
        async def finished(ctx: Context) -> int:
            return 1

    with AgentFlow(db_url) as app:
        define(app)
        app.run("finished", run_id="f")
        for tag in ("a", "b"):
            with pytest.raises(Crash):
                app.run("job", tag, run_id=tag)
    crash["on"] = False
    with AgentFlow(db_url) as app:
        define(app)
        recovered = app.recover()
        assert sorted(r.id for r in recovered) == ["a", "b"]
        assert all(r.status == RunStatus.COMPLETED for r in recovered)
        assert app.recover() == []
    assert sorted(done) == ["a", "b"]


def test_recover_skips_runs_of_unregistered_workflows(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    def crash() -> None:
        raise Crash

    with AgentFlow(db_url) as app:

        @app.workflow(name="elsewhere")
        async def elsewhere(ctx: Context) -> None:
            await ctx.step("crash", crash)

        with pytest.raises(Crash):
            app.run(elsewhere, run_id="x")
    with AgentFlow(db_url) as app:
        assert app.recover() == []
        assert "not registered" in caplog.text
        assert app.get_run("x").status == RunStatus.RUNNING
        with pytest.raises(WorkflowNotRegistered, match="'elsewhere' is not registered"):
            app.resume("x")


def test_resume_of_a_finished_run_returns_it_unchanged(app: AgentFlow) -> None:
    calls: list[int] = []

    async def once() -> int:
        calls.append(1)
        return 5

    @app.workflow()
    async def wf(ctx: Context) -> int:
        return await ctx.step("once", once)

    run = app.run(wf, run_id="r")
    again = app.resume("r")

    assert again.output == run.output == 5 and calls == [1]
    assert again.updated_at == run.updated_at


def test_resume_of_an_unknown_run_says_so(app: AgentFlow) -> None:
    with pytest.raises(RunNotFound, match="'ghost'"):
        app.resume("ghost")


def test_step_names_with_key_separators_are_refused(app: AgentFlow) -> None:
    async def f() -> None:
        return None

    results: dict[str, Any] = {}

    @app.workflow()
    async def wf(ctx: Context) -> None:
        for bad in ("a/b", "a#1", ""):
            try:
                await ctx.step(bad, f)
            except Exception as exc:
                results[bad] = exc

    app.run(wf)
    assert set(results) == {"a/b", "a#1", ""}
    assert all("without '/' or '#'" in str(e) for e in results.values())


def test_a_recorded_output_that_no_longer_fits_the_declared_type_is_a_divergence(app: AgentFlow) -> None:
    state: dict[str, Any] = {"crash": True}

    def price_v1() -> Before:
        return Before(total=3.0)

    def price_v2() -> After:
        return After(total=3.0, currency="EUR")

    price_v2.__qualname__ = price_v1.__qualname__  # the same function, edited in place

    def maybe_crash() -> None:
        if state["crash"]:
            raise Crash

    @app.workflow()
    async def wf(ctx: Context) -> float:
        priced = await ctx.step("price", state.get("fn", price_v1))
        await ctx.step("crash", maybe_crash)
        return float(priced.total)

    with pytest.raises(Crash):
        app.run(wf, run_id="r")
    state.update(crash=False, fn=price_v2)

    with pytest.raises(ReplayDivergence, match="does not fit the step's declared return type") as info:
        app.resume("r")

    assert info.value.key == "price#0"
    assert app.get_run("r").status == RunStatus.RUNNING  # resumable once the code is fixed


def test_a_workflow_that_swallows_a_divergence_still_does_not_complete(app: AgentFlow) -> None:
    state = {"arg": "v1", "crash": True}
    later: list[str] = []

    def fetch(x: str) -> str:
        return x

    def maybe_crash() -> None:
        if state["crash"]:
            raise Crash

    def after() -> str:
        later.append("ran")
        return "after"

    @app.workflow()
    async def wf(ctx: Context) -> str:
        with contextlib.suppress(Exception):  # a broad handler, as real code has
            await ctx.step("fetch", fetch, state["arg"])
        await ctx.step("crash", maybe_crash)
        try:
            return await ctx.step("after", after)
        except Exception:
            return "fallback"

    with pytest.raises(Crash):
        app.run(wf, run_id="r")
    state.update(arg="v2", crash=False)

    with pytest.raises(ReplayDivergence, match="fetch#0"):
        app.resume("r")

    assert app.get_run("r").status == RunStatus.RUNNING
    assert later == []  # no step ran after the divergence, though the workflow caught it


def test_a_store_failure_the_workflow_swallows_stops_the_run_unfinished(app: AgentFlow) -> None:
    from agentflow import StoreError

    real_write = app._store.write_step
    calls = {"n": 0}

    def failing_write(step: Any, blobs: Any = None) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise StoreError("disk full")
        real_write(step, blobs)

    app._store.write_step = failing_write  # type: ignore[method-assign]

    async def one(i: int) -> int:
        return i

    @app.workflow()
    async def wf(ctx: Context) -> int:
        total = 0
        for i in range(4):
            with contextlib.suppress(Exception):
                total += await ctx.step("one", one, i)
        return total

    with pytest.raises(StoreError, match="disk full"):
        app.run(wf, run_id="r")

    run = app.get_run("r")
    assert run.status == RunStatus.RUNNING  # resumable, not "completed" with a hole in its record
    assert [s.key for s in run.steps] == ["one#0"]
