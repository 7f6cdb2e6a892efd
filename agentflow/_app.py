"""``AgentFlow``: registers workflows, starts and resumes runs, and reads them back.

One async core (``run_async`` and friends); the sync methods are a thin facade over it that also works
inside a running event loop such as Jupyter's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ._clock import Clock, SystemClock
from ._codec import Codec
from ._context import Context, SyncContext
from ._engine import CancelRequested, RunEngine, Suspend
from ._journal import Journal, first_broken_link
from ._lifecycle import BackgroundLoop, RunHandle
from ._llm import Budget
from ._loop import run_sync
from ._models import ErrorInfo, Replay, ReplayMode, Run, RunStatus, Step
from ._overrides import NO_OVERRIDE, override_output
from ._refs import ref_of_object
from ._retry import RetryPolicy
from ._store import RunRecord, StepRecord, Store
from ._workflow import Workflow
from .errors import (
    AgentFlowError,
    ConfigurationError,
    DeadlineExceeded,
    ReplayDivergence,
    RunCancelled,
    RunConflict,
    RunNotFound,
    StoreError,
    WorkflowNotRegistered,
)

if TYPE_CHECKING:
    from ._queue import Lease, Queue, QueuedRun, RateLimit, WorkerReport
    from ._store._sql import Durability

__all__ = ["AgentFlow"]

log = logging.getLogger("agentflow")
F = TypeVar("F", bound=Callable[..., Any])
_RESUMABLE = (RunStatus.PENDING.value, RunStatus.RUNNING.value)
_FINISHED = (RunStatus.COMPLETED.value, RunStatus.FAILED.value)
_SUSPENDED = (RunStatus.WAITING.value, RunStatus.PAUSED.value)


class AgentFlow:
    """A store of durable runs and the workflows that make them.

    ``url`` is a SQLite path, ``:memory:``, or a SQLAlchemy URL (``postgresql+psycopg://...``); by default
    ``$AGENTFLOW_DATABASE_URL``, else ``./.agentflow/agentflow.db``. A new database is created and migrated;
    an existing one has its schema version checked. ``durability="full"`` makes SQLite sync every commit
    (power-loss safe); the default survives a killed process. ``clock`` is where time and sleeping come
    from (``FakeClock`` in tests); ``retry`` is the policy of steps and tools that do not name one,
    ``llm_retry`` that of model calls (default: 4 attempts, exponential backoff from 1 s).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        durability: Durability = "normal",
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        llm_retry: RetryPolicy | None = None,
        create: bool = True,
    ) -> None:
        from ._store._sql import default_sqlite_path, open_store

        self.url = url or os.environ.get("AGENTFLOW_DATABASE_URL") or default_sqlite_path()
        self._store: Store = open_store(self.url, durability=durability, create=create)
        self._clock: Clock = clock or SystemClock()
        self._default_retry = retry or RetryPolicy()
        self._llm_retry = llm_retry or RetryPolicy(max_attempts=4, delay=1.0, backoff="exponential", max_delay=60.0)
        self._codec = Codec()
        self._workflows: dict[str, Workflow] = {}
        self._by_function: dict[Callable[..., Any], Workflow] = {}
        self._inflight: dict[str, asyncio.Task[Run]] = {}
        self._step_listeners: list[Callable[[str, Step], None]] = []
        self._requests: dict[str, str] = {}  # run id -> "pause" or "cancel", asked in this process
        self._loop_thread: BackgroundLoop | None = None  # runs started with start()
        self._wakeup: asyncio.Event | None = None  # set by send_event while serve() runs here
        self._queues: dict[str, Queue] = {}  # declared with queue(): their limits, for workers

    def __repr__(self) -> str:
        return f"AgentFlow({self._store.url!r})"

    # -- registration -----------------------------------------------------------------------------------

    def workflow(
        self,
        name: str | None = None,
        *,
        budget: Budget | None = None,
        code_version: str | None = None,
        deadline: float | timedelta | None = None,
    ) -> Callable[[F], F]:
        """Register a workflow (``async def`` or ``def``) whose first parameter is the ``Context``.

        ``name`` (default: the function's qualified name) is what runs record, and what ``resume`` and
        ``recover`` look up in another process, so keep it stable. ``code_version`` is recorded with each
        run (default: a hash of the function's source); a replay under another version says so.
        ``budget`` limits each run's tokens and cost: a model call that could pass it raises
        ``BudgetExceeded`` before it is made. ``deadline`` (seconds) bounds each run's whole life: past it
        the run stops at its next step with ``DeadlineExceeded`` (a waiting run is woken for it).
        """

        def register(fn: F) -> F:
            wf = self._register(fn, name)
            wf.budget = budget
            wf.deadline = deadline.total_seconds() if isinstance(deadline, timedelta) else deadline
            if code_version is not None:
                wf.code_version = code_version
            return fn

        return register

    def register(self, workflow: Any, /, name: str | None = None) -> None:
        """Register a workflow function, or an ``Agent`` (under its name), without running it.

        What ``resume``, ``replay`` and ``recover`` need in a process that did not start the run:
        they look the run's workflow up by the name it was recorded under.
        """
        if getattr(workflow, "__agentflow_workflow__", None) is not None:
            self._lookup(workflow)
        else:
            self._register(workflow, name)

    def _register(self, fn: Callable[..., Any], name: str | None) -> Workflow:
        wf_name = name or fn.__qualname__
        known = self._workflows.get(wf_name)
        if known is not None and known.fn is not fn:
            raise ConfigurationError(
                f"two workflows are named {wf_name!r}; give one another name: @app.workflow(name=...)"
            )
        wf = known or Workflow(wf_name, fn, self._codec)
        self._workflows[wf_name] = wf
        self._by_function[fn] = wf
        return wf

    def _lookup(self, workflow: Callable[..., Any] | str) -> Workflow:
        if isinstance(workflow, str):
            try:
                return self._workflows[workflow]
            except KeyError:
                raise WorkflowNotRegistered(workflow, list(self._workflows)) from None
        as_workflow = getattr(workflow, "__agentflow_workflow__", None)
        if as_workflow is not None:  # an Agent: runs as a workflow of its own, named after it
            name, fn = as_workflow()
            known = self._by_function.get(fn)
            if known is not None:
                return known
            wf = self._register(fn, name)
            wf.ref = ref_of_object(workflow, getattr(workflow, "defined_in", None))
            wf.version_source = getattr(workflow, "code_version", None)
            return wf
        return self._by_function.get(workflow) or self._register(workflow, None)

    def _unregistered(self, workflow: Any) -> Workflow:
        """The workflow for ``workflow`` without registering it: a new version of an agent may share the
        name of the registered one (a counterfactual run of it must not replace it)."""
        as_workflow = getattr(workflow, "__agentflow_workflow__", None)
        if as_workflow is None:
            return self._by_function.get(workflow) or Workflow(workflow.__qualname__, workflow, self._codec)
        name, fn = as_workflow()
        known = self._by_function.get(fn)
        if known is not None:
            return known
        wf = Workflow(name, fn, self._codec)
        wf.ref = ref_of_object(workflow, getattr(workflow, "defined_in", None))
        wf.version_source = getattr(workflow, "code_version", None)
        return wf

    def adopt_workflow(self, other: AgentFlow, name: str) -> None:
        """Register here the workflow ``other`` has under ``name`` (tools that open another database)."""
        wf = other._workflows.get(name)
        if wf is None:
            raise WorkflowNotRegistered(name, list(other._workflows))
        self._workflows[name] = wf
        self._by_function[wf.fn] = wf

    def on_step(self, listener: Callable[[str, Step], None]) -> Callable[[], None]:
        """Call ``listener(run_id, step)`` each time a run of this app records a step (live, not served).

        For progress displays and logs: it runs on the run's event loop, so keep it quick; an exception
        in it is logged and does not stop the run. Returns a function that removes the listener.
        """
        self._step_listeners.append(listener)

        def remove() -> None:
            if listener in self._step_listeners:
                self._step_listeners.remove(listener)

        return remove

    def _tell_listeners(self, run_id: str, rec: StepRecord) -> None:
        step = Step.from_record(rec)
        for listener in list(self._step_listeners):
            try:
                listener(run_id, step)
            except Exception:
                log.exception("step listener %r failed on %s of run %s", listener, step.key, run_id)

    # -- running ----------------------------------------------------------------------------------------

    def run(self, workflow: Callable[..., Any] | str, /, *args: Any, run_id: str | None = None, **kwargs: Any) -> Run:
        """Run ``workflow(ctx, *args, **kwargs)`` durably to its end and return the ``Run``.

        A ``run_id`` names the run and is an idempotency key: a finished run with that id is returned as
        recorded, an unfinished one is resumed, and nothing that was recorded runs twice. A failing
        workflow gives a ``Run`` with status ``failed`` and its ``error``; it does not raise.
        """
        return run_sync(lambda: self.run_async(workflow, *args, run_id=run_id, **kwargs))

    async def run_async(
        self, workflow: Callable[..., Any] | str, /, *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> Run:
        """``run`` for async callers."""
        wf = self._lookup(workflow)
        run_id = run_id or uuid.uuid4().hex
        input_json = wf.encode_input(args, kwargs)
        now = self._clock.time()
        record = RunRecord(
            id=run_id,
            workflow=wf.name,
            status=RunStatus.RUNNING.value,
            input=input_json,
            created_at=now,
            updated_at=now,
            code_version=wf.current_version(),
            workflow_ref=wf.ref,
            deadline_at=None if wf.deadline is None else now + wf.deadline,
        )
        if self._store.insert_run(record):
            return await self._execute(wf, record, fresh=True)
        existing = self._store.get_run(run_id)
        if existing is None:  # pragma: no cover - deleted between the two statements
            raise RunNotFound(run_id)
        if existing.workflow != wf.name:
            raise RunConflict(run_id, f"workflow {existing.workflow!r}, not {wf.name!r}")
        if json.loads(existing.input) != json.loads(input_json):
            raise RunConflict(run_id, f"other input ({existing.input[:200]})")
        if existing.status in _RESUMABLE and existing.queue is not None:
            raise RunConflict(run_id, f"queue {existing.queue!r}, where a worker runs it (its handle's result() "
                              "waits for it)")  # fmt: skip
        if existing.status in _RESUMABLE:
            return await self._execute(wf, existing, fresh=False)
        return self._to_run(existing)

    def resume(self, run_id: str) -> Run:
        """Continue a run that stopped before its end; recorded steps are served, the rest run live.

        A finished run is returned as it is. Raises ``RunNotFound``, ``WorkflowNotRegistered`` (import the
        module that defines the workflow first), or ``ReplayDivergence`` when the code no longer asks for
        what the record holds (the run is left unchanged). A run of a queue is handed back to its workers
        instead (a paused one becomes ``pending``, a waiting one due now) and returned as it is then.
        """
        return run_sync(lambda: self.resume_async(run_id))

    async def resume_async(self, run_id: str) -> Run:
        """``resume`` for async callers."""
        record = self._store.get_run(run_id)
        if record is None:
            raise RunNotFound(run_id)
        if record.status == RunStatus.PAUSED.value or record.control == "pause":
            self._requests.pop(run_id, None)
            self._store.update_run(run_id, {"control": None})
            record = replace(record, control=None)
        if record.status not in _RESUMABLE and record.status not in _SUSPENDED:
            return self._to_run(record)
        if record.queue is not None:  # a queue's runs are executed by its workers, under their leases
            if record.status == RunStatus.PAUSED.value:
                self._store.update_run(run_id, {"status": RunStatus.PENDING.value, "updated_at": self._clock.time()})
            elif record.status == RunStatus.WAITING.value:
                self._store.update_run(run_id, {"wake_at": self._clock.time()})
            return self.get_run(run_id)
        return await self._execute(self._lookup(record.workflow), record, fresh=False)

    def recover(self) -> list[Run]:
        """Resume every run left ``pending`` or ``running`` by a process that died, and every waiting run
        that is due (its sleep is over, its event came, its wait timed out).

        For one process on SQLite; many workers on Postgres will coordinate through leases. Runs of
        workflows this process has not registered, and runs that diverge, are logged and left as they are.
        """
        return run_sync(self.recover_async)

    async def recover_async(self) -> list[Run]:
        """``recover`` for async callers."""
        recovered: list[Run] = []
        for record in self._store.list_runs(statuses=_RESUMABLE):
            if record.id in self._inflight or record.queue is not None:  # a queue's runs are its workers'
                continue
            wf = self._workflows.get(record.workflow)
            if wf is None:
                log.warning("recover: run %s is of workflow %r, which is not registered", record.id, record.workflow)
                continue
            try:
                recovered.append(await self._execute(wf, record, fresh=False))
            except ReplayDivergence as exc:
                log.error("recover: run %s was left as it was: %s", record.id, exc)
        recovered += await self.wake_due_async()
        return recovered

    async def _execute(
        self, wf: Workflow, record: RunRecord, *, fresh: bool, setup: Callable[[RunEngine], None] | None = None
    ) -> Run:
        running = self._inflight.get(record.id)
        if running is not None and running.get_loop() is asyncio.get_running_loop():
            return await asyncio.shield(running)  # the same run is executing here already
        task = asyncio.ensure_future(self._execute_once(wf, record, fresh, setup))
        self._inflight[record.id] = task
        task.add_done_callback(lambda _: self._inflight.pop(record.id, None))
        # Shielded: a caller that is cancelled stops waiting; the run itself goes on to its end.
        return await asyncio.shield(task)

    async def _execute_once(
        self, wf: Workflow, record: RunRecord, fresh: bool, setup: Callable[[RunEngine], None] | None = None
    ) -> Run:
        run_id = record.id
        journal = Journal(run_id, self._store, [] if fresh else self._store.load_steps(run_id))
        engine = RunEngine(run_id, journal, self._codec, self._clock, self._default_retry)
        if setup is not None:  # a fork's source record, a counterfactual's world
            setup(engine)
        engine.extras.update(llm_retry=self._llm_retry, budget=wf.budget)
        if self._step_listeners:
            engine.listeners.append(lambda rec: self._tell_listeners(run_id, rec))
        engine.control = self._control_for(run_id, record.deadline_at)
        engine.children = self
        engine.extras["parent_id"] = record.parent_id
        # A worker's claim has set the run running already, in the same write that gave it the lease.
        if journal.lease_token is None and (not fresh or record.status != RunStatus.RUNNING.value):
            self._store.update_run(
                run_id,
                {"status": RunStatus.RUNNING.value, "updated_at": self._clock.time(), "wake_at": None,
                 "waiting_for": None},
            )  # fmt: skip
        try:
            output_json = await self._invoke(wf, engine, record)
        except Suspend as suspended:  # a sleep, an event wait, a pause: the run waits holding nothing
            engine.raise_if_halted()
            deadline = record.deadline_at
            if deadline is not None and not suspended.paused and self._clock.time() >= deadline:
                engine.control = None  # woken at its deadline: it ends here, rolled back
                rollback = await engine.compensate_all()
                error = ErrorInfo.encode(DeadlineExceeded(run_id, deadline))
                self._finish(engine, RunStatus.FAILED, error=error, rollback=rollback)
            else:
                self._suspend(run_id, engine, suspended, deadline)
        except (CancelRequested, asyncio.CancelledError) as stop:
            if isinstance(stop, asyncio.CancelledError) and self._requests.get(run_id) != "cancel":
                raise  # the loop is shutting down, not a cancel of this run: it stays resumable
            engine.raise_if_halted()
            rollback = await engine.compensate_all()
            self._finish(engine, RunStatus.CANCELLED, error=ErrorInfo.encode(RunCancelled(run_id)), rollback=rollback)
        except (ReplayDivergence, StoreError):
            raise  # the record is fine; the code or the database is not: leave the run resumable
        except Exception as exc:
            engine.raise_if_halted()
            rollback = await engine.compensate_all()
            self._finish(engine, RunStatus.FAILED, error=ErrorInfo.encode(exc), rollback=rollback)
        else:
            engine.raise_if_halted()  # the workflow caught it, but the run must not end as if all was well
            self._finish(engine, RunStatus.COMPLETED, output=output_json)
        finally:
            self._requests.pop(run_id, None)
        return self.get_run(run_id)

    async def _invoke(self, wf: Workflow, engine: RunEngine, record: RunRecord) -> str:
        """Call the workflow on the run's input; its output as JSON."""
        args, kwargs = wf.decode_input(record.input)
        if wf.is_async:
            output = await wf.fn(Context(engine), *args, **kwargs)
        else:
            ctx = SyncContext(engine, asyncio.get_running_loop())
            output = await asyncio.to_thread(wf.fn, ctx, *args, **kwargs)
        return self._codec.encode(output, f"output of run {record.id!r}")

    # -- replay -------------------------------------------------------------------------------------------

    def replay(self, run_id: str, mode: ReplayMode = "strict") -> Replay:
        """Run a finished run's workflow again against its record, offline, and check it ends the same.

        ``strict``: every step, tool call and model call is served from the record (nothing runs, nothing
        is called, nothing is written, no API key is needed); the replay must ask for exactly the recorded
        steps and end with the recorded output or error, or ``ReplayDivergence`` names the first key where
        code and record part, with the recorded and the new request and the JSON patch between them.
        ``relaxed``: the same, serving by key without checking fingerprints. ``live``: serves until the
        first divergence, then goes on live in a new run (linked to this one by ``forked_from``), and the
        ``Replay`` says where it diverged. No replay makes a non-idempotent tool call the run made.
        """
        return run_sync(lambda: self.replay_async(run_id, mode))

    async def replay_async(self, run_id: str, mode: ReplayMode = "strict") -> Replay:
        """``replay`` for async callers."""
        if mode not in ("strict", "relaxed", "live"):
            raise ConfigurationError(f"replay mode {mode!r}: use 'strict', 'relaxed' or 'live'")
        record = self._store.get_run(run_id)
        if record is None:
            raise RunNotFound(run_id)
        if record.status not in _FINISHED:
            raise AgentFlowError(
                f"run {run_id!r} is {record.status}, not finished: resume it (app.resume) before replaying it"
            )
        wf = self._lookup(record.workflow)
        steps = self._store.load_steps(run_id)
        engine = RunEngine(
            run_id, Journal(run_id, self._store, steps), self._codec, self._clock, self._default_retry, mode=mode
        )
        engine.extras.update(llm_retry=self._llm_retry, budget=wf.budget)
        engine.source = {r.key: r for r in steps}
        engine.code_versions = (record.code_version, wf.current_version())
        diverged: list[ReplayDivergence] = []
        if mode == "live":

            def go_live(report: ReplayDivergence) -> None:
                new_id = f"{run_id}-live-{uuid.uuid4().hex[:8]}"
                self._insert_derived(record, wf, new_id, report.key)
                engine.journal.rebase(new_id, [r for r in steps if r.key in engine.served])
                engine.run_id = new_id
                diverged.append(report)

            engine.on_diverge = go_live
        output_json: str | None = None
        error: Exception | None = None
        try:
            output_json = await self._invoke(wf, engine, record)
        except (ReplayDivergence, StoreError):
            raise
        except Exception as exc:
            engine.raise_if_halted()
            error = exc
        engine.raise_if_halted()
        if diverged:  # the rest ran live, in a run of its own
            if error is None:
                self._finish(engine, RunStatus.COMPLETED, output=output_json)
            else:
                self._finish(engine, RunStatus.FAILED, error=ErrorInfo.encode(error))
            status = RunStatus.COMPLETED if error is None else RunStatus.FAILED
            output = None if output_json is None else self._codec.decode(output_json, wf.return_type)
            return Replay(run_id, status, output, len(engine.served), mode, diverged[0], engine.run_id)
        self._check_ending(record, steps, engine, output_json, error)
        output = None if output_json is None else self._codec.decode(output_json, wf.return_type)
        recorded_version, current_version = engine.code_versions
        note = None
        if recorded_version != current_version:
            note = f"recorded under code version {recorded_version}, replayed under {current_version}"
        return Replay(run_id, RunStatus(record.status), output, len(engine.served), mode, note=note)

    def _check_ending(
        self,
        record: RunRecord,
        steps: list[StepRecord],
        engine: RunEngine,
        output_json: str | None,
        error: Exception | None,
    ) -> None:
        """A replay that took every recorded step must also end as the run did."""
        run_id = record.id

        def taken(key: str) -> bool:  # a step served from the record is served whole, the steps inside it too
            parts = key.split("/")
            return any("/".join(parts[:i]) in engine.served for i in range(1, len(parts) + 1))

        missed = [r.key for r in steps if not taken(r.key)]
        if missed:
            raise ReplayDivergence(
                run_id, missed[0], "recorded", "never asked for",
                f"the replay ended without asking for {len(missed)} recorded step(s): {', '.join(missed[:5])}",
            )  # fmt: skip
        if record.status == RunStatus.COMPLETED.value:
            if error is not None or json.loads(output_json or "null") != json.loads(record.output or "null"):
                now = output_json if error is None else ErrorInfo.from_json(ErrorInfo.encode(error))
                raise ReplayDivergence(run_id, "<output>", record.output, now, "the replay ended another way")
        else:
            recorded = ErrorInfo.from_json(record.error)
            got = None if error is None else ErrorInfo.from_json(ErrorInfo.encode(error))
            if recorded is None or got is None or (got.type, got.message) != (recorded.type, recorded.message):
                raise ReplayDivergence(run_id, "<error>", str(recorded), str(got), "the replay ended another way")

    def _insert_derived(self, source: RunRecord, wf: Workflow, new_id: str, at: str) -> RunRecord:
        """Insert a run made from ``source`` (a fork, or the live part of a replay), linked to it."""
        now = self._clock.time()
        derived = RunRecord(
            id=new_id,
            workflow=wf.name,
            status=RunStatus.RUNNING.value,
            input=source.input,
            created_at=now,
            updated_at=now,
            code_version=wf.current_version(),
            workflow_ref=wf.ref,
            forked_from=source.id,
            forked_at=at,
        )
        if not self._store.insert_run(derived):
            raise RunConflict(new_id, "a run with this id exists already")
        return derived

    # -- fork ---------------------------------------------------------------------------------------------

    def fork(self, run_id: str, at: str, override: Any = NO_OVERRIDE, *, new_run_id: str | None = None) -> Run:
        """A new run that reuses ``run_id``'s record before the step ``at`` and runs the rest live.

        ``override`` is what the step ``at`` gives in the fork instead of what it gave: the text (or a
        message dict, or a whole response) of a model call, the result of a tool, the value of a step,
        or an agent's state for a checkpoint. Without it, ``at`` runs live too. The new run records
        ``forked_from`` and ``forked_at``; the source run is never changed. A non-idempotent tool call
        the source run made is served from its record, not made again.
        """
        return run_sync(lambda: self.fork_async(run_id, at, override, new_run_id=new_run_id))

    async def fork_async(
        self, run_id: str, at: str, override: Any = NO_OVERRIDE, *, new_run_id: str | None = None
    ) -> Run:
        """``fork`` for async callers."""
        record = self._store.get_run(run_id)
        if record is None:
            raise RunNotFound(run_id)
        wf = self._lookup(record.workflow)
        steps = self._store.load_steps(run_id)
        by_key = {r.key: r for r in steps}
        target = by_key.get(at)
        if target is None:
            keys = ", ".join(r.key for r in steps[:12])
            raise AgentFlowError(f"run {run_id!r} has no step {at!r} to fork at; its steps: {keys}")
        keep = [r for r in steps if r.seq < target.seq]
        if override is not NO_OVERRIDE:
            keep.append(replace(target, status="completed", error=None, output=override_output(target, override)))
        derived = self._insert_derived(record, wf, new_run_id or f"{run_id}-fork-{uuid.uuid4().hex[:8]}", at)
        Journal(derived.id, self._store, []).rebase(derived.id, keep)
        return await self._execute(wf, derived, fresh=False, setup=lambda engine: setattr(engine, "source", by_key))

    # -- counterfactual runs ------------------------------------------------------------------------------

    def counterfactual(
        self,
        workflow: Any,
        source_run_id: str,
        /,
        *,
        missing: Literal["live", "missing"] = "live",
        run_id: str | None = None,
    ) -> Run:
        """Run ``workflow`` (a new version of an agent: another prompt, model or code) on the input of a
        recorded run, against that run's recorded world.

        Model calls are made live; tool calls are served from the source run's record where a recorded
        call has the same tool and arguments (each recorded result used once, in order). A call the
        record has no answer for runs live (``missing="live"``; a non-idempotent tool never does) or
        gets an error result (``missing="missing"``). The new run links to its source (``forked_from``);
        a served tool step keeps the source's times, so ``agentflow show --step`` tells it from a live one.
        """
        return run_sync(lambda: self.counterfactual_async(workflow, source_run_id, missing=missing, run_id=run_id))

    async def counterfactual_async(
        self,
        workflow: Any,
        source_run_id: str,
        /,
        *,
        missing: Literal["live", "missing"] = "live",
        run_id: str | None = None,
    ) -> Run:
        """``counterfactual`` for async callers."""
        if missing not in ("live", "missing"):
            raise ConfigurationError(f"missing={missing!r}: use 'live' or 'missing'")
        source = self._store.get_run(source_run_id)
        if source is None:
            raise RunNotFound(source_run_id)
        wf = self._unregistered(workflow)
        world: dict[str, list[StepRecord]] = {}
        for rec in self._store.load_steps(source_run_id):
            if rec.kind == "tool":
                world.setdefault(rec.fingerprint, []).append(rec)
        now = self._clock.time()
        record = RunRecord(
            id=run_id or f"{source_run_id}-cf-{uuid.uuid4().hex[:8]}",
            workflow=wf.name,
            status=RunStatus.RUNNING.value,
            input=source.input,
            created_at=now,
            updated_at=now,
            code_version=wf.current_version(),
            workflow_ref=wf.ref,
            forked_from=source_run_id,
        )
        if not self._store.insert_run(record):
            raise RunConflict(record.id, "a run with this id exists already")

        def setup(engine: RunEngine) -> None:
            engine.world = world
            engine.world_missing = missing

        return await self._execute(wf, record, fresh=True, setup=setup)

    def _finish(
        self,
        engine: RunEngine,
        status: RunStatus,
        *,
        output: str | None = None,
        error: str | None = None,
        rollback: str | None = None,
    ) -> None:
        now = self._clock.time()
        self._store.update_run(
            engine.run_id,
            {
                "status": status.value,
                "output": output,
                "error": error,
                "updated_at": now,
                "prompt_tokens": engine.prompt_tokens,
                "completion_tokens": engine.completion_tokens,
                "cost": engine.cost,
                "wake_at": None,
                "waiting_for": None,
                "control": None,
                "rollback": rollback,
            },
            lease_token=engine.journal.lease_token,
        )
        parent = engine.extras.get("parent_id")
        if parent:  # a child run: wake its parent if it waits for this child
            self._store.send_event(parent, f"child:{engine.run_id}", "null", now)

    def _suspend(self, run_id: str, engine: RunEngine, suspended: Suspend, deadline_at: float | None) -> None:
        status = RunStatus.PAUSED if suspended.paused else RunStatus.WAITING
        wake_at = suspended.wake_at
        if deadline_at is not None and not suspended.paused:  # woken at its deadline to stop
            wake_at = deadline_at if wake_at is None else min(wake_at, deadline_at)
        self._store.suspend_run(
            run_id,
            status=status.value,
            wake_at=wake_at,
            waiting_for=suspended.waiting_for,
            updated_at=self._clock.time(),
            usage=(engine.prompt_tokens, engine.completion_tokens, engine.cost),
            lease_token=engine.journal.lease_token,
        )

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(
        self, workflow: Any, /, *args: Any, run_id: str | None = None, deadline: float | None = None, **kwargs: Any
    ) -> RunHandle:
        """Start a run in the background and return its handle at once (status ``pending`` until it runs).

        The run executes on this app's background event loop. ``deadline`` (seconds from now) bounds
        its whole life; it overrides the workflow's. ``handle.status()``, ``handle.result(timeout)``.
        """
        wf = self._lookup(workflow)
        record = self._pending_record(wf, args, kwargs, run_id, deadline)
        if not self._store.insert_run(record):
            existing = self._store.get_run(record.id)
            if existing is None or existing.workflow != wf.name:
                raise RunConflict(record.id, "a run with this id exists already, of another workflow")
            record = existing
        if self._loop_thread is None:
            self._loop_thread = BackgroundLoop()
        future = self._loop_thread.submit(self._execute(wf, record, fresh=record.status == RunStatus.PENDING.value))
        return RunHandle(self, record.id, future)

    def _pending_record(
        self,
        wf: Workflow,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run_id: str | None,
        deadline: float | None,
    ) -> RunRecord:
        """A new run of ``wf``, ``pending``: started in the background or queued, not yet executing."""
        now = self._clock.time()
        limit = deadline if deadline is not None else wf.deadline
        return RunRecord(
            id=run_id or uuid.uuid4().hex,
            workflow=wf.name,
            status=RunStatus.PENDING.value,
            input=wf.encode_input(args, kwargs),
            created_at=now,
            updated_at=now,
            code_version=wf.current_version(),
            workflow_ref=wf.ref,
            deadline_at=None if limit is None else now + limit,
        )

    def pause(self, run_id: str) -> Run:
        """Pause a run at its next step boundary (status ``paused``); ``resume`` continues it.

        A waiting run is paused at once: it will not wake until resumed. Works across processes (the
        request is stored; a run executing elsewhere sees it within a fraction of a second).
        """
        record = self._require(run_id)
        if RunStatus(record.status).is_terminal:
            raise AgentFlowError(f"run {run_id!r} is {record.status}: there is nothing to pause")
        self._requests[run_id] = "pause"
        fields: dict[str, object] = {"control": "pause", "updated_at": self._clock.time()}
        if record.status == RunStatus.WAITING.value:
            fields["status"] = RunStatus.PAUSED.value
        self._store.update_run(run_id, fields)
        return self.get_run(run_id)

    def cancel(self, run_id: str) -> Run:
        """Cancel a run: it stops at its next step boundary (an async step running in this process is
        interrupted), its compensations run newest first, and it ends ``cancelled``. Its child runs are
        cancelled too. A waiting or paused run is executed here to roll back (its workflow must be
        registered); otherwise the request is stored for the process that resumes it."""
        return run_sync(lambda: self.cancel_async(run_id))

    async def cancel_async(self, run_id: str) -> Run:
        """``cancel`` for async callers."""
        record = self._require(run_id)
        if RunStatus(record.status).is_terminal:
            return self._to_run(record)
        self._requests[run_id] = "cancel"
        self._store.update_run(run_id, {"control": "cancel", "updated_at": self._clock.time()})
        for child in self._store.list_runs(statuses=[*_RESUMABLE, *_SUSPENDED]):
            if child.parent_id == run_id:
                await self.cancel_async(child.id)
        task = self._inflight.get(run_id)
        if task is not None:  # executing in this process: interrupt it where it is
            task.get_loop().call_soon_threadsafe(task.cancel)
            return self.get_run(run_id)
        if record.queue is not None:  # a worker holds it, or will: it sees the request at its next step
            if record.status in _SUSPENDED:  # due now, so that a worker wakes it to roll it back
                self._store.update_run(run_id, {"status": RunStatus.WAITING.value, "wake_at": self._clock.time()})
            return self.get_run(run_id)
        wf = self._workflows.get(record.workflow)
        if wf is not None and record.status in (*_SUSPENDED, *_RESUMABLE):
            return await self._execute(wf, replace(record, control="cancel"), fresh=False)
        return self.get_run(run_id)

    def restart(self, run_id: str, from_key: str | None = None) -> Run:
        """Run a run again from the step ``from_key`` on (from the start when None): the records from
        that step on are removed, the ones before it are served, and the rest runs live."""
        return run_sync(lambda: self.restart_async(run_id, from_key))

    async def restart_async(self, run_id: str, from_key: str | None = None) -> Run:
        """``restart`` for async callers."""
        record = self._require(run_id)
        if record.id in self._inflight:
            raise AgentFlowError(f"run {run_id!r} is executing; cancel or pause it before restarting it")
        seq = 0
        if from_key is not None:
            steps = self._store.load_steps(run_id)
            found = [r.seq for r in steps if r.key == from_key]
            if not found:
                raise AgentFlowError(f"run {run_id!r} has no step {from_key!r}; its steps: "
                                     f"{', '.join(r.key for r in steps[:12])}")  # fmt: skip
            seq = found[0]
        wf = self._lookup(record.workflow)
        self._store.delete_steps_from(run_id, seq)
        self._requests.pop(run_id, None)
        fresh = replace(record, status=RunStatus.RUNNING.value, output=None, error=None, control=None, rollback=None)
        self._store.update_run(
            run_id,
            {"status": fresh.status, "output": None, "error": None, "control": None, "rollback": None,
             "wake_at": None, "waiting_for": None, "updated_at": self._clock.time()},
        )  # fmt: skip
        return await self._execute(wf, fresh, fresh=False)

    def send_event(self, run_id: str, type: str, payload: Any = None) -> int:
        """Send an event to a run: kept in its inbox until a ``wait_for_event(type=...)`` takes it, each
        event delivered once. A run waiting for ``type`` becomes due; ``serve`` (or ``recover``, or
        ``wake_due``) resumes it. Returns the event's id."""
        self._require(run_id)
        payload_json = self._codec.encode(payload, f"payload of event {type!r} for run {run_id!r}")
        event_id = self._store.send_event(run_id, type, payload_json, self._clock.time())
        wakeup = self._wakeup
        if wakeup is not None and self._loop_thread is not None:
            self._loop_thread.loop.call_soon_threadsafe(wakeup.set)
        return event_id

    def wake_due(self) -> list[Run]:
        """Resume every waiting run that is due now: its sleep is over, its event came, its timeout passed."""
        return run_sync(self.wake_due_async)

    async def wake_due_async(self, limit: int | None = None) -> list[Run]:
        """``wake_due`` for async callers."""
        woken: list[Run] = []
        for record in self._store.due_runs(self._clock.time(), limit):
            if record.id in self._inflight or record.queue is not None:  # a queue's workers wake its runs
                continue
            wf = self._workflows.get(record.workflow)
            if wf is None:
                log.warning("run %s is due but its workflow %r is not registered here", record.id, record.workflow)
                continue
            try:
                woken.append(await self._execute(wf, record, fresh=False))
            except ReplayDivergence as exc:
                log.error("run %s was left waiting: %s", record.id, exc)
        return woken

    def serve(self, *, poll: float = 1.0, stop: Callable[[], bool] | None = None) -> None:
        """Serve this app's waiting runs: wake each when it is due, until ``stop()`` returns true (or
        forever). Events sent in this process wake runs at once; others are seen within ``poll``."""
        if self._loop_thread is None:
            self._loop_thread = BackgroundLoop()
        self._loop_thread.submit(self.serve_async(poll=poll, stop=stop)).result()

    async def serve_async(self, *, poll: float = 1.0, stop: Callable[[], bool] | None = None) -> None:
        """``serve`` for async callers (on this app's background loop, when events come from threads)."""
        self._wakeup = asyncio.Event()
        try:
            while stop is None or not stop():
                self._wakeup.clear()
                await self.wake_due_async()
                if stop is not None and stop():
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), poll)
        finally:
            self._wakeup = None

    def _require(self, run_id: str) -> RunRecord:
        record = self._store.get_run(run_id)
        if record is None:
            raise RunNotFound(run_id)
        return record

    def _control_for(self, run_id: str, deadline_at: float | None) -> Callable[[], None]:
        """The check a run makes before each live step: pause or cancel asked (here, or in the database
        by another process: read at most every 0.2 s), or its deadline passed."""
        last_read = [0.0]

        def check() -> None:
            request = self._requests.get(run_id)
            if request is None and time.monotonic() - last_read[0] >= 0.2:
                last_read[0] = time.monotonic()
                stored = self._store.get_run(run_id)
                if stored is not None and stored.control:
                    request = self._requests[run_id] = stored.control
            if request == "pause":
                raise Suspend(wake_at=None, waiting_for=None, why=f"run {run_id} was paused", paused=True)
            if request == "cancel":
                raise CancelRequested(run_id)
            if deadline_at is not None and self._clock.time() >= deadline_at:
                raise DeadlineExceeded(run_id, deadline_at)

        return check

    # -- queues and workers (many processes and machines; see _worker) ----------------------------------

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        worker_concurrency: int | None = None,
        rate_limit: RateLimit | None = None,
    ) -> Queue:
        """Declare the queue ``name`` and its limits (for the workers of this app: declare it in the code
        every worker runs). ``concurrency``: runs of the queue running at once across all workers;
        ``worker_concurrency``: at once in one worker; ``rate_limit``: model requests and tokens per
        minute (a ``RateLimit``). Returns the ``Queue``; declaring it again replaces its limits."""
        from ._queue import Queue

        declared = Queue(name, concurrency, worker_concurrency, rate_limit)
        self._queues[name] = declared
        return declared

    def enqueue(
        self,
        workflow: Callable[..., Any] | str,
        /,
        *args: Any,
        queue: str = "default",
        run_id: str | None = None,
        priority: int = 0,
        dedup_id: str | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> QueuedRun:
        """Put a run of ``workflow(ctx, *args, **kwargs)`` on ``queue`` for a worker (``app.work`` or
        ``agentflow worker``) and return its handle at once; the run is ``pending`` until claimed.

        Higher ``priority`` runs are claimed first (then the oldest). A ``dedup_id`` makes the enqueue
        idempotent while the first run is unfinished: a second enqueue with the same id on the queue
        returns that run (``handle.deduplicated``); once it has ended, the id may be used again. A
        ``run_id`` already taken by the same workflow and input returns that run too (another workflow or
        input raises ``RunConflict``). ``deadline`` (seconds from now) bounds the run's whole life.
        """
        from ._queue import QueuedRun
        from ._store._queues import QueueStore

        wf = self._lookup(workflow)
        record = replace(
            self._pending_record(wf, args, kwargs, run_id, deadline), queue=queue, priority=priority, dedup_id=dedup_id
        )
        found, inserted = QueueStore(self._store).enqueue(record)  # type: ignore[arg-type]
        return QueuedRun(self, found.id, deduplicated=not inserted)

    def work(
        self,
        queue: str | Sequence[str] = "default",
        *,
        concurrency: int = 1,
        stop: Callable[[], bool] | None = None,
        drain: bool = False,
        lease: float = 30.0,
        poll: float = 1.0,
        grace: float = 30.0,
        worker_id: str | None = None,
        handle_signals: bool = True,
    ) -> WorkerReport:
        """Be a worker: claim and execute runs of ``queue`` (a name or several), up to ``concurrency`` at a
        time, until ``stop()`` returns true, or (``drain``) the queues have no pending, running or due-to-
        wake run left, or SIGTERM / SIGINT comes (in the main thread). Returns what it did.

        Runs are held under a lease of ``lease`` seconds, renewed every ``lease / 3`` (heartbeat); a run
        whose worker died is taken over by another worker once its lease has expired and resumes from
        its record. Due waiting runs of the queue are woken here. On Postgres, enqueues wake workers at
        once (LISTEN/NOTIFY); otherwise they are seen within ``poll`` seconds. At a shutdown, runs in flight
        get ``grace`` seconds to end, then are released to the queue (a second signal releases at once).
        """
        return run_sync(
            lambda: self.work_async(
                queue, concurrency=concurrency, stop=stop, drain=drain, lease=lease, poll=poll, grace=grace,
                worker_id=worker_id, handle_signals=handle_signals,
            )
        )  # fmt: skip

    async def work_async(
        self,
        queue: str | Sequence[str] = "default",
        *,
        concurrency: int = 1,
        stop: Callable[[], bool] | None = None,
        drain: bool = False,
        lease: float = 30.0,
        poll: float = 1.0,
        grace: float = 30.0,
        worker_id: str | None = None,
        handle_signals: bool = True,
    ) -> WorkerReport:
        """``work`` for async callers."""
        from ._worker import Worker

        names = [queue] if isinstance(queue, str) else list(queue)
        worker = Worker(
            self, names, concurrency=concurrency, lease=lease, poll=poll, grace=grace, worker_id=worker_id,
            stop=stop, drain=drain, handle_signals=handle_signals,
        )  # fmt: skip
        return await worker.run()

    def leases(self, run_id: str) -> list[Lease]:
        """The lease history of a queued run: each claim by a worker (its fencing token, the worker, when)
        and how it ended, oldest first."""
        from ._queue import Lease
        from ._store._queues import QueueStore

        self._require(run_id)
        rows = QueueStore(self._store).leases(run_id)  # type: ignore[arg-type]
        return [Lease.from_row(r.token, r.worker, r.claimed_at, r.released_at, r.outcome) for r in rows]

    # -- child runs (the engine's ChildRunner) ----------------------------------------------------------

    def name_of(self, workflow: Any) -> str:
        return self._lookup(workflow).name

    async def run_child(
        self, workflow: Any, child_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], parent_id: str
    ) -> tuple[str, str | None, str | None]:
        """Run, resume or look up the child run ``child_id``; its ``(status, output JSON, error)``."""
        wf = self._lookup(workflow)
        record = self._store.get_run(child_id)
        if record is None:
            now = self._clock.time()
            record = RunRecord(
                id=child_id,
                workflow=wf.name,
                status=RunStatus.RUNNING.value,
                input=wf.encode_input(args, kwargs),
                created_at=now,
                updated_at=now,
                code_version=wf.current_version(),
                workflow_ref=wf.ref,
                parent_id=parent_id,
            )
            if self._store.insert_run(record):
                await self._execute(wf, record, fresh=True)
        else:
            due = record.wake_at is not None and record.wake_at <= self._clock.time()
            if record.status in _RESUMABLE or (record.status == RunStatus.WAITING.value and due):
                await self._execute(wf, record, fresh=False)
        final = self._require(child_id)
        return final.status, final.output, final.error

    # -- reading ----------------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        """The run with this id; ``RunNotFound`` if there is none."""
        record = self._store.get_run(run_id)
        if record is None:
            raise RunNotFound(run_id)
        return self._to_run(record)

    def list_runs(
        self,
        *,
        status: RunStatus | str | Sequence[RunStatus | str] | None = None,
        workflow: Callable[..., Any] | str | None = None,
        limit: int | None = 100,
    ) -> list[Run]:
        """Runs, newest first, optionally of some statuses and one workflow."""
        statuses = _statuses(status)
        name = workflow if isinstance(workflow, str) or workflow is None else self._lookup(workflow).name
        return [self._to_run(r) for r in self._store.list_runs(statuses=statuses, workflow=name, limit=limit)]

    def readable_request(self, step: Step) -> Any:
        """A step's recorded request with a model call's messages spelled out (they are stored as a chain
        of content-addressed blobs): what was asked, for people and diffs."""
        request = step.request
        if isinstance(request, dict) and isinstance(request.get("messages"), str):
            from ._llm import read_messages

            return {**request, "messages": read_messages(request["messages"], self._store.get_blobs)}
        return request

    def verify(self, run_id: str) -> str | None:
        """Check a run's hash chain: the key of the first step record that was altered, or None if intact."""
        if self._store.get_run(run_id) is None:
            raise RunNotFound(run_id)
        return first_broken_link(run_id, self._store.load_steps(run_id))

    def _to_run(self, record: RunRecord) -> Run:
        output: Any = None
        if record.output is not None:
            wf = self._workflows.get(record.workflow)
            try:
                output = self._codec.decode(record.output, wf.return_type) if wf else json.loads(record.output)
            except ValueError:  # the declared type changed since: give the JSON as it is
                output = json.loads(record.output)
        return Run.from_record(record, output, self._store)

    # -- lifetime ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database connections."""
        self._store.close()

    def __enter__(self) -> AgentFlow:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False

    # -- bundles ------------------------------------------------------------------------------------------

    def export_run(self, run_id: str, path: str | os.PathLike[str] | None = None) -> bytes:
        """The run, its steps, the blobs they refer to and its child runs as a portable JSON bundle.

        Written to ``path`` too when given. ``import_runs`` loads it into another database (a laptop, CI),
        where ``replay`` runs it offline. The same run exports the same bytes.
        """
        from ._bundle import export_bundle

        data = export_bundle(self._store, run_id)
        if path is not None:
            with open(path, "wb") as file:
                file.write(data)
        return data

    def import_runs(self, bundle: str | os.PathLike[str] | bytes) -> list[str]:
        """Import a bundle made by ``export_run`` (a path, or its bytes): the ids of its runs, the exported
        one first. Everything is checked before anything is written, and written in one transaction; a
        bundle imported before is a no-op. Raises ``BundleError`` for a file that is not a bundle, was
        changed, or holds a run whose id names another run here."""
        from ._bundle import import_bundle

        if isinstance(bundle, bytes):
            return import_bundle(self._store, bundle)
        with open(bundle, "rb") as file:
            return import_bundle(self._store, file.read(), f"bundle {os.fspath(bundle)}")


def _statuses(status: RunStatus | str | Sequence[RunStatus | str] | None) -> list[str] | None:
    if status is None:
        return None
    items = [status] if isinstance(status, (str, RunStatus)) else list(status)
    out = []
    for item in items:
        try:
            out.append(RunStatus(item).value)
        except ValueError:
            valid = ", ".join(s.value for s in RunStatus)
            raise ConfigurationError(f"unknown run status {item!r}; use one of {valid}") from None
    return out
