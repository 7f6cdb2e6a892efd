"""Step graphs: declared nodes with dependencies, run durably and concurrently under a limit."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from agentflow import (
    AgentFlow,
    ConfigurationError,
    Context,
    FakeClock,
    GraphFailed,
    NonRetryableError,
    ReplayDivergence,
    RetryPolicy,
    RunStatus,
    StepFailed,
    SyncContext,
)

GUARD = 10.0  # seconds: only a guard against a deadlock, never reached when the code is right


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so the run is left as a killed process leaves it."""


class TickingClock(FakeClock):
    """Every reading is one second after the previous one, so recorded times show the order of events."""

    def time(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return TickingClock()


def test_independent_nodes_run_at_the_same_time_as_the_record_shows(app: AgentFlow) -> None:
    @app.workflow()
    async def wf(ctx: Context) -> dict[str, Any]:
        started = {"a": asyncio.Event(), "b": asyncio.Event()}

        async def meet(me: str, other: str) -> str:
            started[me].set()
            # Returns only once the other node has started: one after the other, this would time out.
            await asyncio.wait_for(started[other].wait(), GUARD)
            return me.upper()

        g = ctx.graph("pair")
        g.add("a", meet, "a", "b")
        g.add("b", meet, "b", "a")
        return await g.run()

    run = app.run(wf, run_id="r")

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"a": "A", "b": "B"}
    steps = {s.key: s for s in run.steps}
    a, b = steps["pair.a#0"], steps["pair.b#0"]
    assert b.started_at < a.finished_at
    assert a.started_at < b.finished_at


@pytest.mark.parametrize(("limit", "peak"), [(2, 2), (None, 5)])
def test_no_more_nodes_run_at_once_than_the_concurrency_limit(app: AgentFlow, limit: int | None, peak: int) -> None:
    seen = {"in_flight": 0, "peak": 0, "unfinished": 5}
    parked: list[asyncio.Event] = []

    async def work(i: int) -> int:
        seen["in_flight"] += 1
        seen["peak"] = max(seen["peak"], seen["in_flight"])
        me = asyncio.Event()
        parked.append(me)
        # Release everyone parked once as many nodes run as the limit allows (or as are left): a node
        # never waits for a start that cannot come, and none finishes before the others could start.
        if seen["in_flight"] >= min(2, seen["unfinished"]):
            for event in parked:
                event.set()
            parked.clear()
        await asyncio.wait_for(me.wait(), GUARD)
        seen["in_flight"] -= 1
        seen["unfinished"] -= 1
        return i

    @app.workflow()
    async def wf(ctx: Context) -> dict[str, Any]:
        g = ctx.graph("fan", concurrency=limit)
        for i in range(5):
            g.add(f"n{i}", work, i)
        return await g.run()

    run = app.run(wf)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {f"n{i}": i for i in range(5)}
    assert seen["peak"] == peak


def test_outputs_flow_into_dependents_and_keys_do_not_depend_on_completion_order(app: AgentFlow) -> None:
    calls: list[str] = []

    @app.workflow()
    async def wf(ctx: Context) -> dict[str, Any]:
        b_done = asyncio.Event()

        async def search_a(topic: str) -> dict[str, Any]:
            await asyncio.wait_for(b_done.wait(), GUARD)  # declared first, finishes last
            calls.append("search_a")
            return {"items": [f"{topic}: one"]}

        async def search_b(topic: str) -> dict[str, Any]:
            calls.append("search_b")
            b_done.set()
            return {"items": [f"{topic}: first", f"{topic}: second"]}

        def extra() -> int:
            calls.append("extra")
            return 3

        async def summarize(found: dict[str, Any], more: dict[str, str], n: int) -> str:
            calls.append("summarize")
            return f"{found['items'][0]} | {more['other']} | {n}"

        g = ctx.graph("research", concurrency=4)
        a = g.add("search_a", search_a, "topic A")
        b = g.add("search_b", search_b, "topic B")
        c = g.add("summarize", summarize, a, {"other": b.path("items", 1)}, n=3, deps=["extra"])
        g.add("extra", extra)
        assert c.deps == ("search_a", "search_b", "extra")
        return await g.run()

    run = app.run(wf, run_id="r")

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output["summarize"] == "topic A: one | topic B: second | 3"
    assert list(run.output) == ["search_a", "search_b", "summarize", "extra"]  # the order they were added
    assert calls[-1] == "summarize" and calls.index("search_b") < calls.index("search_a")
    keys = [s.key for s in run.steps]  # in the order they were recorded
    assert keys.index("research.search_b#0") < keys.index("research.search_a#0")
    assert set(keys) == {"research.search_a#0", "research.search_b#0", "research.extra#0", "research.summarize#0"}
    summarize_step = next(s for s in run.steps if s.key == "research.summarize#0")
    assert all(s.finished_at < summarize_step.started_at for s in run.steps if s is not summarize_step)


def test_a_failed_node_skips_its_dependents_and_the_others_complete(app: AgentFlow) -> None:
    calls: list[str] = []

    @app.workflow()
    async def wf(ctx: Context) -> dict[str, Any]:
        bad_started = asyncio.Event()

        async def slow_ok() -> str:
            await asyncio.wait_for(bad_started.wait(), GUARD)  # still running when `bad` fails
            calls.append("slow_ok")
            return "ok"

        async def bad() -> str:
            calls.append("bad")
            bad_started.set()
            raise ValueError("no results")

        def after(x: Any) -> Any:
            calls.append("after")
            return x

        g = ctx.graph("g")
        ok = g.add("slow_ok", slow_ok)
        failing = g.add("bad", bad, retry=RetryPolicy(max_attempts=2, delay=0))
        child = g.add("child", after, failing)
        g.add("grandchild", after, child)
        g.add("ok_child", after, ok)
        try:
            await g.run()
        except GraphFailed as exc:
            assert isinstance(exc.errors["bad"], StepFailed)
            return {
                "graph": exc.graph,
                "outputs": exc.outputs,
                "errors": {nid: e.key for nid, e in exc.errors.items()},
                "skipped": exc.skipped,
                "message": str(exc),
            }
        raise AssertionError("the graph did not fail")

    run = app.run(wf, run_id="r")

    assert run.status == RunStatus.COMPLETED, run.error
    out = run.output
    assert out["graph"] == "g"
    assert out["outputs"] == {"slow_ok": "ok", "ok_child": "ok"}
    assert out["errors"] == {"bad": "g.bad#0"}
    assert out["skipped"] == ["child", "grandchild"]
    assert "'bad' (ValueError: no results) failed" in out["message"]
    assert "'child', 'grandchild'" in out["message"]
    assert sorted(calls) == ["after", "bad", "bad", "slow_ok"]  # two attempts at bad; children never ran
    steps = {s.key: s for s in run.steps}
    assert set(steps) == {"g.slow_ok#0", "g.bad#0", "g.ok_child#0"}
    assert steps["g.bad#0"].status == "failed" and steps["g.bad#0"].attempt == 2


def test_an_uncaught_graph_failure_fails_the_run_naming_the_node(app: AgentFlow) -> None:
    def boom() -> None:
        raise NonRetryableError("bad input")

    @app.workflow()
    async def wf(ctx: Context) -> None:
        g = ctx.graph("g")
        g.add("boom", boom)
        g.add("after", boom, deps=["boom"])
        await g.run()

    run = app.run(wf)

    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error.type == "GraphFailed"
    assert "'boom' (NonRetryableError: bad input)" in run.error.message and "'after'" in run.error.message


def test_resume_after_a_crash_inside_a_graph_does_not_rerun_completed_nodes(app: AgentFlow) -> None:
    calls: dict[str, int] = {}
    crash = {"on": True}

    @app.workflow()
    async def wf(ctx: Context) -> dict[str, Any]:
        a_done = asyncio.Event()

        async def a() -> int:
            calls["a"] = calls.get("a", 0) + 1
            a_done.set()
            return 1

        async def b() -> int:
            calls["b"] = calls.get("b", 0) + 1
            if crash["on"]:
                await asyncio.wait_for(a_done.wait(), GUARD)  # crash once `a` is recorded
                raise Crash
            return 2

        async def c(x: int, y: int) -> int:
            calls["c"] = calls.get("c", 0) + 1
            return x + y

        g = ctx.graph("g", concurrency=2)
        na, nb = g.add("a", a), g.add("b", b)
        g.add("c", c, na, nb)
        return await g.run()

    with pytest.raises(Crash):
        app.run(wf, run_id="r")
    assert app.get_run("r").status == RunStatus.RUNNING
    assert [s.key for s in app.get_run("r").steps] == ["g.a#0"]
    crash["on"] = False

    run = app.resume("r")

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"a": 1, "b": 2, "c": 3}
    assert calls == {"a": 1, "b": 2, "c": 1}  # a served from the record; b crashed once, then ran
    assert [s.key for s in run.steps] == ["g.a#0", "g.b#0", "g.c#0"]


def test_a_recorded_node_failure_is_served_on_resume_without_running_anything(app: AgentFlow) -> None:
    calls: list[str] = []
    crash = {"on": True}

    def good() -> str:
        calls.append("good")
        return "fine"

    def flaky() -> str:
        calls.append("flaky")
        raise NonRetryableError("upstream down")

    def maybe_crash() -> None:
        if crash["on"]:
            raise Crash

    @app.workflow()
    async def wf(ctx: Context) -> Any:
        g = ctx.graph("g")
        g.add("good", good)
        g.add("flaky", flaky)
        try:
            outputs = await g.run()
        except GraphFailed as exc:
            outputs = {"partial": exc.outputs, "failed": sorted(exc.errors)}
        await ctx.step("crash", maybe_crash)
        return outputs

    with pytest.raises(Crash):
        app.run(wf, run_id="r")
    crash["on"] = False

    run = app.resume("r")

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"partial": {"good": "fine"}, "failed": ["flaky"]}
    assert calls == ["good", "flaky"]  # the same failure, served: a resumed run does not retry it


def test_a_divergence_in_a_node_stops_the_graph_and_cancels_the_nodes_in_flight(app: AgentFlow) -> None:
    state = {"arg": "v1", "crash": True, "hang": True}
    cancelled: list[str] = []
    cancelled_when_raised: list[list[str]] = []

    @app.workflow()
    async def wf(ctx: Context) -> dict[str, Any]:
        never = asyncio.Event()

        async def waiting() -> str:
            try:
                if state["hang"]:
                    await asyncio.wait_for(never.wait(), GUARD)
            except asyncio.CancelledError:
                cancelled.append("waiting")
                raise
            return "waited"

        async def fetch(x: str) -> str:
            return x

        async def crash() -> str:
            if state["crash"]:
                raise Crash
            return "ok"

        g = ctx.graph("g")
        g.add("waiting", waiting)
        f = g.add("fetch", fetch, state["arg"])
        g.add("crash", crash, deps=[f])
        try:
            return await g.run()
        except (ReplayDivergence, Crash):
            cancelled_when_raised.append(list(cancelled))
            raise

    with pytest.raises(Crash):
        app.run(wf, run_id="r")
    assert [s.key for s in app.get_run("r").steps] == ["g.fetch#0"]
    state.update(arg="v2", crash=False)  # the code now asks fetch for something else

    with pytest.raises(ReplayDivergence) as info:
        app.resume("r")

    assert info.value.key == "g.fetch#0"
    # Both times the node in flight was cancelled and awaited before the error left the graph.
    assert cancelled_when_raised == [["waiting"], ["waiting", "waiting"]]
    assert app.get_run("r").status == RunStatus.RUNNING  # resumable once the code is restored
    state.update(arg="v1", hang=False)
    assert app.resume("r").output == {"waiting": "waited", "fetch": "v1", "crash": "ok"}


def test_steps_inside_a_node_are_scoped_under_its_key_and_retried_by_its_policy(app: AgentFlow) -> None:
    attempts: list[int] = []

    @app.workflow()
    async def wf(ctx: Context) -> dict[str, Any]:
        async def inner(i: int) -> int:
            return i * 10

        async def outer() -> int:
            return await ctx.step("inner", inner, 1) + await ctx.step("inner", inner, 2)

        def flaky() -> str:
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("flaky")
            return "second time lucky"

        g = ctx.graph("g")
        g.add("outer", outer)
        g.add("flaky", flaky, retry=RetryPolicy(max_attempts=3, delay=0))
        return await g.run()

    run = app.run(wf)

    assert run.output == {"outer": 30, "flaky": "second time lucky"}
    steps = {s.key: s for s in run.steps}
    assert set(steps) == {"g.outer#0/inner#0", "g.outer#0/inner#1", "g.outer#0", "g.flaky#0"}
    assert steps["g.flaky#0"].attempt == 2 and len(attempts) == 2


def test_a_second_graph_of_the_same_name_takes_the_next_keys(app: AgentFlow) -> None:
    def ident(x: int) -> int:
        if x < 0:
            raise NonRetryableError("negative")
        return x

    @app.workflow()
    async def wf(ctx: Context) -> list[Any]:
        results: list[Any] = []
        for sign in (-1, 1):
            g = ctx.graph("batch")
            first = g.add("first", ident, sign)
            g.add("second", ident, first)
            try:
                results.append(await g.run())
            except GraphFailed as exc:
                results.append(exc.skipped)
        return results

    run = app.run(wf)

    assert run.output == [["second"], {"first": 1, "second": 1}]
    # The skipped node of the first graph took its key all the same: the second graph is all at #1.
    assert [s.key for s in run.steps] == ["batch.first#0", "batch.first#1", "batch.second#1"]


def test_two_graphs_of_one_name_running_at_once_are_refused(app: AgentFlow) -> None:
    async def ident(x: int) -> int:
        return x

    @app.workflow()
    async def wf(ctx: Context) -> list[str]:
        graphs = [ctx.graph("same") for _ in range(2)]
        for i, g in enumerate(graphs):
            g.add("x", ident, i)
        results = await asyncio.gather(*(g.run() for g in graphs), return_exceptions=True)
        return [type(r).__name__ if isinstance(r, BaseException) else str(r) for r in results]

    run = app.run(wf)

    assert run.output == ["{'x': 0}", "ConfigurationError"]


def test_bad_graphs_are_refused_before_anything_runs(app: AgentFlow) -> None:
    calls: list[str] = []

    def work(*args: Any) -> str:
        calls.append("work")
        return "done"

    errors: list[str] = []

    @app.workflow()
    async def wf(ctx: Context) -> None:
        def expect(build: Any) -> None:
            try:
                build()
            except ConfigurationError as exc:
                errors.append(str(exc))
            else:
                errors.append("NOT RAISED")

        async def expect_run(g: Any) -> None:
            try:
                await g.run()
            except ConfigurationError as exc:
                errors.append(str(exc))
            else:
                errors.append("NOT RAISED")

        for bad_name in ("", "a/b", "a#1"):
            expect(lambda: ctx.graph(bad_name))  # noqa: B023 - called at once
        expect(lambda: ctx.graph("g", concurrency=0))

        g = ctx.graph("g")
        g.add("a", work)
        for bad_id in ("", "x.y", "x/y", "x#1"):
            expect(lambda: g.add(bad_id, work))  # noqa: B023 - called at once
        expect(lambda: g.add("a", work))
        expect(lambda: g.add("self", work, deps=["self"]))
        other = ctx.graph("other").add("o", work)
        expect(lambda: g.add("cross", work, other))
        expect(lambda: g.add("not_callable", 42))

        unknown = ctx.graph("unknown")
        unknown.add("a", work, deps=["ghost"])
        await expect_run(unknown)

        cyclic = ctx.graph("cyclic")
        cyclic.add("start", work)
        cyclic.add("a", work, deps=["c"])
        cyclic.add("b", work, deps=["a", "start"])
        cyclic.add("c", work, deps=["b"])
        await expect_run(cyclic)

    run = app.run(wf)

    assert run.status == RunStatus.COMPLETED, run.error
    assert "NOT RAISED" not in errors
    names, concurrency, ids = errors[:3], errors[3], errors[4:8]
    assert all("graph name must be a non-empty string without '/' or '#'" in e for e in names)
    assert "concurrency must be a positive int" in concurrency
    assert all("node id must be a non-empty string without '/', '#' or '.'" in e for e in ids)
    duplicate, self_dep, cross, not_callable, unknown_dep, cycle = errors[8:]
    assert "has a node 'a' already" in duplicate
    assert "'self' depends on itself" in self_dep
    assert "node 'o' of graph 'other'" in cross
    assert "needs a function" in not_callable
    assert "depends on 'ghost', which is not a node of this graph" in unknown_dep
    assert "graph 'cyclic' has a cycle: a -> c -> b -> a" in cycle
    assert calls == []
    assert run.steps == []


def test_a_path_the_output_does_not_have_is_a_clear_error(app: AgentFlow) -> None:
    def source() -> dict[str, Any]:
        return {"items": []}

    def use(x: Any) -> Any:
        return x

    @app.workflow()
    async def wf(ctx: Context) -> None:
        g = ctx.graph("g")
        s = g.add("source", source)
        g.add("use", use, s.path("items", 0))
        await g.run()

    run = app.run(wf)

    assert run.status == RunStatus.FAILED and run.error is not None
    assert run.error.type == "ConfigurationError"
    assert "source.path('items', 0)" in run.error.message and "has no part 0" in run.error.message


def test_a_sync_workflow_runs_a_graph_with_sync_nodes_side_by_side(app: AgentFlow) -> None:
    barrier = threading.Barrier(2, timeout=GUARD)  # both sync nodes must be in their threads at once

    def meet(tag: str) -> str:
        barrier.wait()
        return tag.upper()

    def join(a: str, b: str) -> str:
        return a + b

    @app.workflow()
    def wf(ctx: SyncContext) -> dict[str, Any]:
        g = ctx.graph("sync", concurrency=2)
        a = g.add("a", meet, "x")
        b = g.add("b", meet, "y")
        g.add("both", join, a, b)
        return g.run()

    run = app.run(wf)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"a": "X", "b": "Y", "both": "XY"}
    steps = {s.key: s for s in run.steps}
    assert steps["sync.b#0"].started_at < steps["sync.a#0"].finished_at
    assert steps["sync.a#0"].started_at < steps["sync.b#0"].finished_at
    assert steps["sync.both#0"].started_at > max(steps["sync.a#0"].finished_at, steps["sync.b#0"].finished_at)
