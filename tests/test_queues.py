"""Queues in one process: enqueue, deduplication, priorities, concurrency limits, rate limits on the app's
clock, waking waiting runs, and the fencing token that stops a stalled worker's late writes.

Workers here run in the test's process (``app.work`` / ``work_async``); test_workers.py runs them as
processes. Time is a FakeClock: a worker with nothing to do until a known time (a rate bucket's refill,
a waiting run's wake-up) moves it there at once, so nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from agentflow import AgentFlow, AgentFlowError, Context, FakeClock, LeaseLost, RateLimit, RunConflict, RunStatus
from agentflow._journal import Journal
from agentflow._store._queues import QueueStore
from agentflow._store._records import RunRecord
from agentflow._tokens import count_prompt_tokens
from agentflow.testing import FakeProvider, reply

MODEL = "gpt-4o-mini"


async def echo(value: int) -> int:
    return value


def register_job(app: AgentFlow) -> None:
    async def job(ctx: Context, n: int) -> int:
        return await ctx.step("echo", echo, n) * 2

    app.register(job, name="job")


# -- enqueue and deduplication ------------------------------------------------------------------------


def test_an_enqueued_run_is_pending_on_its_queue_until_a_worker_runs_it(app: AgentFlow) -> None:
    register_job(app)
    handle = app.enqueue("job", 21, queue="q", run_id="j1")
    run = handle.run()
    assert (run.status, run.queue, run.worker, run.lease_token) == (RunStatus.PENDING, "q", None, 0)
    assert app.recover() == [] and app.get_run("j1").status == RunStatus.PENDING  # a queue's runs are its workers'

    report = app.work("q", drain=True, poll=0.01)

    done = handle.result(timeout=5)
    assert (done.status, done.output, done.lease_token, done.lease_expires_at) == (RunStatus.COMPLETED, 42, 1, None)
    assert done.worker == report.worker_id and (report.claimed, report.finished) == (1, 1)
    [lease] = app.leases("j1")
    assert (lease.token, lease.worker, lease.outcome) == (1, report.worker_id, "completed")


def test_a_second_enqueue_with_the_same_dedup_id_returns_the_first_run_while_it_is_unfinished(app: AgentFlow) -> None:
    register_job(app)
    first = app.enqueue("job", 1, queue="q", dedup_id="order-7")
    again = app.enqueue("job", 2, queue="q", dedup_id="order-7")  # other input: still the same order
    elsewhere = app.enqueue("job", 3, queue="other", dedup_id="order-7")  # ids are per queue
    assert not first.deduplicated and again.deduplicated and again.run_id == first.run_id
    assert not elsewhere.deduplicated and elsewhere.run_id != first.run_id

    app.work("q", drain=True, poll=0.01)
    assert first.run().output == 2

    later = app.enqueue("job", 4, queue="q", dedup_id="order-7")  # the first has ended: a new run
    assert not later.deduplicated and later.run_id != first.run_id and later.status() == RunStatus.PENDING


def test_enqueue_with_a_taken_run_id_returns_that_run_or_refuses_other_input(app: AgentFlow) -> None:
    register_job(app)
    app.enqueue("job", 1, queue="q", run_id="same")
    assert app.enqueue("job", 1, queue="q", run_id="same").deduplicated
    with pytest.raises(RunConflict):
        app.enqueue("job", 2, queue="q", run_id="same")
    with pytest.raises(RunConflict, match="a worker runs it"):  # never executed here, beside a worker
        app.run("job", 1, run_id="same")
    assert app.get_run("same").status == RunStatus.PENDING


def test_on_postgres_an_enqueue_wakes_an_idle_worker_at_once_without_polling(postgres_schema_url: str) -> None:
    app = AgentFlow(postgres_schema_url, clock=FakeClock())
    register_job(app)
    looked = asyncio.Event()

    def stop() -> bool:  # called before each claim: once it has been, the worker sits idle until woken
        looked.set()
        return app.list_runs(status="completed") != []

    async def scenario() -> None:
        worker = asyncio.create_task(app.work_async("q", poll=600, handle_signals=False, stop=stop))
        await looked.wait()
        await asyncio.sleep(0)  # the worker made its (empty) claim and waits: for a NOTIFY, or 600 s
        app.enqueue("job", 4, queue="q", run_id="notified")
        report = await asyncio.wait_for(worker, timeout=60)  # a guard: without the NOTIFY it waits 600 s
        assert report.finished == 1

    asyncio.run(scenario())
    assert app.get_run("notified").output == 8
    app.close()


# -- priorities and concurrency -------------------------------------------------------------------------


def test_higher_priority_runs_are_claimed_first_then_the_oldest(app: AgentFlow, clock: FakeClock) -> None:
    order: list[str] = []

    async def note(name: str) -> None:
        order.append(name)

    @app.workflow(name="noted")
    async def noted(ctx: Context, name: str) -> None:
        await ctx.step("note", note, name)

    for name, priority in [("low", 0), ("urgent-1", 5), ("normal", 1), ("urgent-2", 5), ("lowest", -1)]:
        app.enqueue(noted, name, queue="q", priority=priority)
        clock.advance(1)  # each enqueued a second after the one before

    app.work("q", concurrency=1, drain=True, poll=0.01)
    assert order == ["urgent-1", "urgent-2", "normal", "low", "lowest"]


def _overlap_workflow(app: AgentFlow, peaks: dict[str, int], enough: asyncio.Event, limit: int) -> None:
    """A workflow whose runs count how many of each label are inside their step at once (``peaks``). The
    first ``limit`` runs wait for each other there, so any worker that ran more at once is caught."""
    inside_now: dict[str, int] = {}

    async def inside(label: str) -> None:
        inside_now[label] = inside_now.get(label, 0) + 1
        peaks[label] = max(peaks.get(label, 0), inside_now[label])
        if sum(inside_now.values()) >= limit:
            enough.set()
        await enough.wait()
        await asyncio.sleep(0)  # let any other started run get in too
        inside_now[label] -= 1

    async def overlap(ctx: Context, label: str, n: int) -> int:
        await ctx.step("inside", inside, label)
        return n

    app.register(overlap, name="overlap")


def test_a_queue_s_concurrency_limits_its_runs_at_once_across_workers(db_url: str, clock: FakeClock) -> None:
    peaks: dict[str, int] = {}
    enough = asyncio.Event()
    apps = [AgentFlow(db_url, clock=clock) for _ in range(2)]  # two workers, as two processes would be
    for app in apps:
        _overlap_workflow(app, peaks, enough, limit=2)
        app.queue("q", concurrency=2)
    handles = [apps[0].enqueue("overlap", "q", n, queue="q") for n in range(6)]

    async def both() -> None:
        await asyncio.gather(
            *(app.work_async("q", concurrency=3, drain=True, poll=0.01, handle_signals=False) for app in apps)
        )

    asyncio.run(both())
    assert peaks == {"q": 2}  # each worker could have taken 3
    assert {h.run().status for h in handles} == {RunStatus.COMPLETED}
    for app in apps:
        app.close()


def test_worker_concurrency_limits_a_queue_within_one_worker(app: AgentFlow) -> None:
    peaks: dict[str, int] = {}
    enough = asyncio.Event()
    _overlap_workflow(app, peaks, enough, limit=4)
    app.queue("q", worker_concurrency=1)
    for n in range(3):
        app.enqueue("overlap", "q", n, queue="q")
        app.enqueue("overlap", "free", n, queue="free")

    app.work(["q", "free"], concurrency=4, drain=True, poll=0.01)
    assert peaks == {"q": 1, "free": 3}  # the worker's 4 slots: 1 for "q", the rest for "free"
    assert {r.status for r in app.list_runs()} == {RunStatus.COMPLETED}


# -- rate limits ----------------------------------------------------------------------------------------


def _asking_workflow(app: AgentFlow, max_tokens: int | None = None) -> None:
    async def ask(ctx: Context, question: str) -> str:
        params = {} if max_tokens is None else {"max_tokens": max_tokens}
        answer = await ctx.llm(model=MODEL, messages=[{"role": "user", "content": question}], api_key="sk-test",
                               **params)  # fmt: skip
        return answer.text or ""

    app.register(ask, name="ask")


def _call_times(app: AgentFlow) -> list[float]:
    return sorted(s.started_at.timestamp() for r in app.list_runs() for s in r.steps if str(s.kind) == "llm")


def test_a_requests_per_minute_limit_spaces_model_calls_on_the_app_clock(app: AgentFlow, clock: FakeClock) -> None:
    _asking_workflow(app)
    app.queue("llm", rate_limit=RateLimit(requests_per_minute=2))
    for n in range(5):
        app.enqueue("ask", f"question {n}", queue="llm")
    start = clock.now

    with FakeProvider() as fake:
        fake.script(*(reply(f"answer {n}") for n in range(5)))
        app.work("llm", concurrency=1, drain=True, poll=0.01)

    # A full bucket holds a minute's worth (2 requests); then one request every 30 s.
    assert [t - start for t in _call_times(app)] == pytest.approx([0, 0, 30, 60, 90])
    assert {r.status for r in app.list_runs()} == {RunStatus.COMPLETED}


def test_a_tokens_per_minute_limit_charges_what_calls_really_used(app: AgentFlow, clock: FakeClock) -> None:
    tpm, max_tokens = 1000, 100
    _asking_workflow(app, max_tokens=max_tokens)
    app.queue("llm", rate_limit=RateLimit(tokens_per_minute=tpm))
    questions = [f"question {n}" for n in range(5)]
    for question in questions:
        app.enqueue("ask", question, queue="llm")
    start = clock.now
    estimate = count_prompt_tokens(MODEL, [{"role": "user", "content": questions[0]}]) + max_tokens
    used = 2 * estimate  # each call uses twice what could be known before it: the rest is debt

    with FakeProvider() as fake:
        fake.script(*(reply("answer", usage=(used - 50, 50)) for _ in questions))
        app.work("llm", concurrency=1, drain=True, poll=0.01)

    times = [t - start for t in _call_times(app)]
    assert len(times) == 5
    for index, at in enumerate(times):  # never more than the bucket (a minute's worth) plus its refill
        assert index * used <= tpm + at * tpm / 60 + 1e-6
    assert times[-1] >= (5 * used - tpm - estimate) * 60 / tpm - 1e-6  # the debt was paid: not only estimates
    assert {r.usage.total_tokens for r in app.list_runs()} == {used}


# -- waiting runs and cancellation ------------------------------------------------------------------------


def test_a_worker_wakes_the_due_waiting_runs_of_its_queue(app: AgentFlow, clock: FakeClock) -> None:
    @app.workflow(name="napper")
    async def napper(ctx: Context) -> str:
        await ctx.sleep("nap", timedelta(hours=1))
        return "rested"

    handle = app.enqueue(napper, queue="q")
    start = clock.now
    app.work("q", drain=True, poll=0.01)

    assert handle.run().output == "rested"
    assert clock.now - start == pytest.approx(3600)  # the idle worker moved the clock to the wake-up
    assert [lease.outcome for lease in app.leases(handle.run_id)] == ["waiting", "completed"]
    assert app.wake_due() == []  # serve/wake_due leave a queue's runs to its workers


def test_a_worker_wakes_a_queued_run_s_child_that_sleeps_and_then_its_parent(app: AgentFlow, clock: FakeClock) -> None:
    # Before, a child run had no queue: no worker ever woke it, and its parent waited for ever.
    steps: list[str] = []

    @app.workflow(name="nap")
    async def nap(ctx: Context, hours: int) -> str:
        await ctx.sleep("nap", timedelta(hours=hours))
        return str(await ctx.step("after_nap", lambda: steps.append("child") or "rested"))

    @app.workflow(name="parent")
    async def parent(ctx: Context) -> str:
        rested = await ctx.child(nap, 1)
        await ctx.step("after_child", lambda: steps.append("parent"))
        return f"parent: {rested}"

    handle = app.enqueue(parent, queue="q")
    start = clock.now
    report = app.work("q", drain=True, poll=0.01)

    assert handle.run().output == "parent: rested" and steps == ["child", "parent"]
    assert clock.now - start == pytest.approx(3600)
    [child] = [r for r in app.list_runs() if r.parent_id == handle.run_id]
    assert (child.status, child.queue) == (RunStatus.COMPLETED, "q")
    # the parent waited for its child; the child, once it slept, was claimed by the worker on its own
    assert [lease.outcome for lease in app.leases(handle.run_id)] == ["waiting", "completed"]
    assert [lease.outcome for lease in app.leases(child.id)] == ["completed"]
    assert (report.claimed, report.finished) == (3, 3)


def test_a_child_that_waits_for_an_event_is_woken_by_a_worker_when_the_event_comes(app: AgentFlow) -> None:
    @app.workflow(name="approve")
    async def approve(ctx: Context) -> str:
        return str(await ctx.wait_for_event("decision", type="decision"))

    @app.workflow(name="refund")
    async def refund(ctx: Context) -> str:
        return "refund " + await ctx.child(approve)

    handle = app.enqueue(refund, queue="q")
    app.work("q", drain=True, poll=0.01)  # both wait: nothing is due, drain ends
    [child] = [r for r in app.list_runs() if r.parent_id == handle.run_id]
    assert (handle.status(), child.status) == (RunStatus.WAITING, RunStatus.WAITING)
    app.send_event(child.id, "decision", "approved")
    assert app.wake_due() == []  # a queue's runs, its children too, are its workers'
    app.work("q", drain=True, poll=0.01)
    assert handle.run().output == "refund approved"


def test_a_child_run_executing_inside_its_parent_is_not_claimed_and_one_a_worker_held_is_once_its_lease_ran_out(
    app: AgentFlow, clock: FakeClock
) -> None:
    register_job(app)
    queues = QueueStore(app._store)  # type: ignore[arg-type]

    def child(run_id: str, **fields: Any) -> None:
        app._store.insert_run(RunRecord(id=run_id, workflow="job", status="running", input="[1]",
                                        created_at=clock.now, updated_at=clock.now, parent_id="p", queue="q",
                                        **fields))  # fmt: skip

    child("p/inside#0")  # executing inside its parent, under the root's lease: its parent resumes it
    child("p/held#0", lease_owner="w", lease_expires_at=clock.now + 10, lease_token=1)  # a worker holds it
    assert queues.claim("q", worker="b", limit=5, workflows=["job"], now=clock.now, lease=30) == []
    [taken] = queues.claim("q", worker="b", limit=5, workflows=["job"], now=clock.now + 11, lease=30)
    assert (taken.id, taken.lease_token) == ("p/held#0", 2)  # its worker died: another one takes it over


def test_cancelling_a_queued_run_whose_child_waits_rolls_both_back_in_a_worker(app: AgentFlow) -> None:
    undone: list[str] = []

    @app.workflow(name="hold")
    async def hold(ctx: Context) -> None:
        await ctx.step("reserve", lambda: "R-1", compensate=lambda r: undone.append(r))
        await ctx.wait_for_event("confirm", type="confirm")

    @app.workflow(name="trip")
    async def trip(ctx: Context) -> None:
        await ctx.step("book", lambda: "B-1", compensate=lambda b: undone.append(b))
        await ctx.child(hold)

    handle = app.enqueue(trip, queue="q")
    app.work("q", drain=True, poll=0.01)
    assert app.cancel(handle.run_id).status == RunStatus.WAITING  # not rolled back here: a worker does it
    app.work("q", drain=True, poll=0.01)
    [child] = [r for r in app.list_runs() if r.parent_id == handle.run_id]
    assert (handle.status(), child.status) == (RunStatus.CANCELLED, RunStatus.CANCELLED)
    assert sorted(undone) == ["B-1", "R-1"]


def test_cancelling_a_waiting_queued_run_is_done_by_a_worker(app: AgentFlow) -> None:
    undone: list[str] = []

    @app.workflow(name="booking")
    async def booking(ctx: Context) -> None:
        await ctx.step("book", lambda: "B-1", compensate=lambda b: undone.append(b))
        await ctx.wait_for_event("confirm", type="confirm")

    handle = app.enqueue(booking, queue="q")
    app.work("q", poll=0.01, stop=lambda: handle.status() == RunStatus.WAITING)
    assert app.cancel(handle.run_id).status == RunStatus.WAITING  # not rolled back here: a worker does it
    app.work("q", drain=True, poll=0.01)
    assert handle.status() == RunStatus.CANCELLED and undone == ["B-1"]


class _ClaimedBeforeCancel:
    """The store, with a worker's claim of the run landing between cancel's read of it and its writes."""

    def __init__(self, store: Any, claim: Any) -> None:
        self._store, self._claim = store, claim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def update_run(self, run_id: str, fields: dict[str, object], **kwargs: Any) -> Any:
        if fields.get("control") == "cancel" and self._claim is not None:
            self._claim, claim = None, self._claim
            claim()
        return self._store.update_run(run_id, fields, **kwargs)


def test_cancelling_a_waiting_queued_run_that_a_worker_claims_meanwhile_leaves_it_to_that_worker(
    app: AgentFlow, clock: FakeClock
) -> None:
    # cancel read the run waiting, a worker claimed it (its event had come), and cancel made it waiting and
    # due again: a second worker could claim it while the first one executed it.
    @app.workflow(name="approval")
    async def approval(ctx: Context) -> Any:
        return await ctx.wait_for_event("ok", type="ok")

    handle = app.enqueue(approval, queue="q")
    app.work("q", poll=0.01, stop=lambda: handle.status() == RunStatus.WAITING)
    app.send_event(handle.run_id, "ok", 1)  # due: a worker may claim it now
    queues = QueueStore(app._store)  # type: ignore[arg-type]
    claimed: list[RunRecord] = []
    store = app._store
    app._store = _ClaimedBeforeCancel(store, lambda: claimed.extend(  # type: ignore[assignment]
        queues.claim("q", worker="a", limit=1, workflows=["approval"], now=clock.now, lease=30)))  # fmt: skip
    app.cancel(handle.run_id)
    app._store = store
    assert [r.id for r in claimed] == [handle.run_id]
    run = app.get_run(handle.run_id)
    assert (run.status, run.worker) == (RunStatus.RUNNING, "a")  # still the claiming worker's, to roll back
    assert queues.claim("q", worker="b", limit=1, workflows=["approval"], now=clock.now, lease=30) == []


def test_a_paused_queued_run_is_resumed_by_handing_it_back_to_the_queue(app: AgentFlow) -> None:
    done: list[str] = []

    @app.workflow(name="pausable")
    async def pausable(ctx: Context) -> int:
        await ctx.step("pause_me", lambda: str(app.pause(ctx.run_id).status))  # as if asked from outside
        await ctx.step("after", lambda: done.append("after"))
        return len(done)

    handle = app.enqueue(pausable, queue="q")
    app.work("q", drain=True, poll=0.01)  # a paused run is not the workers' to wake: drain ends
    assert handle.status() == RunStatus.PAUSED and done == []
    assert app.resume(handle.run_id).status == RunStatus.PENDING  # not executed here, without a lease
    app.work("q", drain=True, poll=0.01)
    assert handle.run().output == 1 and done == ["after"]
    assert [lease.outcome for lease in app.leases(handle.run_id)] == ["paused", "completed"]


def test_restarting_a_queued_run_hands_it_back_to_its_workers_and_one_a_worker_holds_is_refused(
    app: AgentFlow, clock: FakeClock
) -> None:
    done: list[str] = []

    @app.workflow(name="twice")
    async def twice(ctx: Context) -> int:
        await ctx.step("first", lambda: done.append("first"))
        await ctx.step("second", lambda: done.append("second"))
        return len(done)

    handle = app.enqueue(twice, queue="q")
    app.work("q", drain=True, poll=0.01)
    assert handle.run().output == 2
    restarted = app.restart(handle.run_id, from_key="second#0")
    assert restarted.status == RunStatus.PENDING and done == ["first", "second"]  # not executed here
    app.work("q", drain=True, poll=0.01)
    run = handle.run()
    assert (run.status, run.output, done) == (RunStatus.COMPLETED, 3, ["first", "second", "second"])
    assert [lease.outcome for lease in app.leases(handle.run_id)] == ["completed", "completed"]
    assert [(kept.restart, kept.step.key) for kept in app.superseded_steps(handle.run_id)] == [(1, "second#0")]

    queues = QueueStore(app._store)  # type: ignore[arg-type]
    app.restart(handle.run_id)
    [held] = queues.claim("q", worker="w", limit=1, workflows=["twice"], now=clock.now, lease=30)
    with pytest.raises(AgentFlowError, match=r"executing \(worker w\); cancel or pause it before restarting it"):
        app.restart(handle.run_id)
    assert app.get_run(handle.run_id).status == RunStatus.RUNNING and len(app.superseded_steps(held.id)) == 3


# -- leases and fencing ----------------------------------------------------------------------------------


class Stall:
    """A step function ``slow`` whose first call stalls (a GC pause, a lost network...) until ``resume`` is
    set; ``entered`` is set when it stalls. ``calls`` counts the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.entered, self.resume = asyncio.Event(), asyncio.Event()

    async def slow(self, n: int) -> int:
        self.calls.append("slow")
        if len(self.calls) == 1:
            self.entered.set()
            await self.resume.wait()
        return n


def test_a_stalled_worker_s_late_step_write_is_rejected_and_the_record_is_unchanged(db_url: str) -> None:
    clock = FakeClock()
    stalled, other = AgentFlow(db_url, clock=clock), AgentFlow(db_url, clock=clock)
    stall = Stall()
    entered, resume, slow = stall.entered, stall.resume, stall.slow

    async def stalls(ctx: Context, n: int) -> int:
        return await ctx.step("slow", slow, n) + await ctx.step("after", echo, n)

    for app in (stalled, other):
        app.register(stalls, name="stalls")
    run_id = stalled.enqueue("stalls", 5, queue="q").run_id

    async def scenario() -> None:
        first = asyncio.create_task(
            stalled.work_async("q", lease=30, poll=0.01, handle_signals=False, stop=lambda: resume.is_set())
        )
        await entered.wait()
        clock.advance(31)  # its lease (30 s) runs out without a heartbeat
        report = await other.work_async("q", poll=0.01, drain=True, handle_signals=False)
        assert (report.claimed, report.finished) == (1, 1)
        taken_over = other.get_run(run_id)
        steps_before = [(s.key, s.output) for s in taken_over.steps]
        resume.set()  # the stalled worker wakes up and records its step: refused by the token
        stalled_report = await first
        assert (stalled_report.lost, stalled_report.finished) == (1, 0)
        after = other.get_run(run_id)
        assert [(s.key, s.output) for s in after.steps] == steps_before
        assert after == taken_over

    asyncio.run(scenario())
    done = other.get_run(run_id)
    assert (done.status, done.output, done.lease_token) == (RunStatus.COMPLETED, 10, 2)
    assert [(lease.token, lease.outcome) for lease in other.leases(run_id)] == [(1, None), (2, "completed")]
    assert other.verify(run_id) is None
    stalled.close()
    other.close()


def test_a_child_run_is_fenced_by_its_root_s_lease_a_stalled_worker_writes_nothing_to_it(db_url: str) -> None:
    clock = FakeClock()
    stalled, other = AgentFlow(db_url, clock=clock), AgentFlow(db_url, clock=clock)
    stall = Stall()  # the first worker stalls inside the child run
    calls, entered, resume, slow = stall.calls, stall.entered, stall.resume, stall.slow

    async def child(ctx: Context, n: int) -> int:
        return await ctx.step("slow", slow, n) + 1

    async def parent(ctx: Context, n: int) -> int:
        return await ctx.child(child, n) * 2

    for app in (stalled, other):
        app.register(child, name="child")
        app.register(parent, name="parent")
    run_id = stalled.enqueue("parent", 5, queue="q").run_id

    async def scenario() -> None:
        first = asyncio.create_task(
            stalled.work_async("q", lease=30, poll=0.01, handle_signals=False, stop=lambda: resume.is_set())
        )
        await entered.wait()
        clock.advance(31)  # the lease on the parent runs out; another worker claims the parent
        queues = QueueStore(other._store)  # type: ignore[arg-type]
        [claim] = queues.claim("q", worker="b", limit=1, workflows=["parent"], now=clock.time(), lease=30)
        assert claim.lease_token == 2
        [kid] = [r for r in other.list_runs() if r.parent_id == run_id]
        before = other.get_run(kid.id)
        assert (before.status, before.steps) == (RunStatus.RUNNING, [])
        resume.set()  # the stalled worker's step in the child ends: its record is refused by the root's token
        report = await first
        assert (report.lost, report.finished, report.errors) == (1, 0, 0)
        assert other.get_run(kid.id) == before  # no step, no status: the child is the new holder's to run
        clock.advance(31)  # b never ran it: its lease runs out too, and a worker finishes the run
        done = await other.work_async("q", poll=0.01, drain=True, handle_signals=False)
        assert (done.claimed, done.finished) == (1, 1)

    asyncio.run(scenario())
    run = other.get_run(run_id)
    assert (run.status, run.output, run.lease_token) == (RunStatus.COMPLETED, 12, 3)
    [kid] = [r for r in other.list_runs() if r.parent_id == run_id]
    assert [(s.key, s.output) for s in other.get_run(kid.id).steps] == [("slow#0", 5)]
    assert calls == ["slow", "slow"]  # the stalled attempt, then the holder's: each lease holder's once
    assert other.verify(run_id) is None and other.verify(kid.id) is None
    stalled.close()
    other.close()


def test_a_run_s_end_closes_its_lease_in_the_same_write_and_the_release_after_it_keeps_that(
    app: AgentFlow, clock: FakeClock
) -> None:
    # A worker that dies between the run's end and its release leaves the lease closed all the same.
    register_job(app)
    run_id = app.enqueue("job", 1, queue="q").run_id
    queues = QueueStore(app._store)  # type: ignore[arg-type]
    [held] = queues.claim("q", worker="a", limit=1, workflows=["job"], now=clock.now, lease=30)
    app._store.end_run(run_id, {"status": "completed", "output": "2"}, at=clock.now + 1, lease_token=held.lease_token)
    [lease] = app.leases(run_id)
    assert (lease.outcome, lease.released_at.timestamp()) == ("completed", clock.now + 1)  # type: ignore[union-attr]
    assert queues.release(run_id, held.lease_token, now=clock.now + 2, outcome="completed")
    assert app.leases(run_id) == [lease]  # the release after it changes nothing there
    run = app.get_run(run_id)
    assert (run.status, run.output, run.lease_expires_at) == (RunStatus.COMPLETED, 2, None)


def test_writes_fenced_by_another_run_s_lease_go_in_only_while_it_is_held(app: AgentFlow, clock: FakeClock) -> None:
    register_job(app)
    root = app.enqueue("job", 1, queue="q").run_id
    kid = app.enqueue("job", 2, queue="other").run_id  # stands for a child run: written under root's lease
    queues = QueueStore(app._store)  # type: ignore[arg-type]
    [mine] = queues.claim("q", worker="a", limit=1, workflows=["job"], now=clock.now, lease=30)
    [theirs] = queues.claim("q", worker="b", limit=1, workflows=["job"], now=clock.now + 31, lease=30)
    before = app.get_run(kid)

    journal = Journal(kid, app._store, [])
    journal.lease_of, journal.lease_token = root, mine.lease_token
    assert journal.lease == (root, 1)
    with pytest.raises(LeaseLost, match=f"step 'echo#0' of run '{kid}' was refused: .* lease on run '{root}'"):
        journal.append(key="echo#0", kind="step", name="echo", fingerprint="f", request=None, status="completed",
                       attempt=1, output="1", error=None, started_at=clock.now, finished_at=clock.now)  # fmt: skip
    with pytest.raises(LeaseLost, match=f"an update of run '{kid}'"):
        app._store.update_run(kid, {"status": "completed"}, lease_token=mine.lease_token, lease_of=root)
    with pytest.raises(LeaseLost, match=f"suspending run '{kid}'"):
        app._store.suspend_run(kid, status="waiting", wake_at=None, waiting_for=None, updated_at=clock.now,
                               usage=(0, 0, 0.0), lease_token=mine.lease_token, lease_of=root)  # fmt: skip
    assert app.get_run(kid) == before and before.steps == []

    journal.lease_token = theirs.lease_token  # the holder's writes go in, whatever the child's own token
    journal.append(key="echo#0", kind="step", name="echo", fingerprint="f", request=None, status="completed",
                   attempt=1, output="1", error=None, started_at=clock.now, finished_at=clock.now)  # fmt: skip
    app._store.suspend_run(kid, status="waiting", wake_at=None, waiting_for="e", updated_at=clock.now,
                           usage=(0, 0, 0.0), lease_token=theirs.lease_token, lease_of=root)  # fmt: skip
    app._store.update_run(kid, {"output": "2"}, lease_token=theirs.lease_token, lease_of=root)
    after = app.get_run(kid)
    assert ([s.key for s in after.steps], after.status, after.output) == (["echo#0"], RunStatus.WAITING, 2)


def test_every_write_of_a_worker_whose_lease_was_taken_over_raises_lease_lost(app: AgentFlow, clock: FakeClock) -> None:
    register_job(app)
    run_id = app.enqueue("job", 1, queue="q").run_id
    queues = QueueStore(app._store)  # type: ignore[arg-type]
    [mine] = queues.claim("q", worker="a", limit=1, workflows=["job"], now=clock.now, lease=30)
    assert queues.claim("q", worker="b", limit=1, workflows=["job"], now=clock.now + 29, lease=30) == []  # held
    [theirs] = queues.claim("q", worker="b", limit=1, workflows=["job"], now=clock.now + 31, lease=30)
    assert (mine.lease_token, theirs.lease_token, theirs.lease_owner) == (1, 2, "b")
    before = app.get_run(run_id)

    journal = Journal(run_id, app._store, [])
    journal.lease_token = mine.lease_token
    with pytest.raises(LeaseLost, match="token 1"):
        journal.append(key="echo#0", kind="step", name="echo", fingerprint="f", request=None, status="completed",
                       attempt=1, output="1", error=None, started_at=clock.now, finished_at=clock.now)  # fmt: skip
    with pytest.raises(LeaseLost):
        app._store.update_run(run_id, {"status": "completed", "output": "2"}, lease_token=mine.lease_token)
    with pytest.raises(LeaseLost):
        app._store.suspend_run(run_id, status="waiting", wake_at=None, waiting_for=None, updated_at=clock.now,
                               usage=(0, 0, 0.0), lease_token=mine.lease_token)  # fmt: skip
    app._store.reserve_keys(run_id, [("echo#1", "f" * 64, clock.now)])
    with pytest.raises(LeaseLost, match="the end of run"):
        app._store.end_run(run_id, {"status": "completed"}, at=clock.now, parent_id="p", lease_token=mine.lease_token)
    assert app.get_run(run_id) == before and before.steps == []
    assert app._store.load_reservations(run_id) == {"echo#1": "f" * 64}  # none of the end's writes went in
    assert app._store.load_events("p") == [] and [lease.outcome for lease in app.leases(run_id)] == [None, None]
    assert queues.renew("a", {run_id: mine.lease_token}, clock.now + 60) == set()  # its heartbeat finds it gone
    assert queues.renew("b", {run_id: theirs.lease_token}, clock.now + 60) == {run_id}

    journal.lease_token = theirs.lease_token  # the holder's writes go in
    journal.append(key="echo#0", kind="step", name="echo", fingerprint="f", request=None, status="completed",
                   attempt=1, output="1", error=None, started_at=clock.now, finished_at=clock.now)  # fmt: skip
    assert [s.key for s in app.get_run(run_id).steps] == ["echo#0"]
