"""The core of ``AgentFlow``: its state, registering workflows, executing runs, getting a run.

``AgentFlow`` (in ``_app``) is this core and four parts, each a class of its own module that derives from
``AppCore`` and adds methods, never state: replay, fork and counterfactual runs (``_app_replay``); a
run's lifecycle in the background: start, pause, cancel, restart, events, serve (``_app_lifecycle``);
queues and workers (``_app_queues``); and reading records: listing runs, verifying their hash chains,
bundles (``_app_records``). One async core (``run_async`` and friends); the sync methods are a thin
facade over it that also works inside a running event loop such as Jupyter's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ._clock import Clock, SystemClock
from ._codec import Codec
from ._context import Context, SyncContext
from ._derived import FORK, counterfactual_kind, inherit
from ._engine import RunEngine
from ._engine_types import CancelRequested, ChildOrigin, Suspend
from ._journal import Journal
from ._lifecycle import BackgroundLoop
from ._llm import Budget
from ._llm_calls import finish_open_streams
from ._loop import run_sync
from ._models import ErrorInfo, Run, RunStatus, Step
from ._refs import holder_of, ref_of_object
from ._retry import RetryPolicy
from ._scope import top_level
from ._store import RunRecord, StepRecord, Store
from ._workflow import Workflow
from .errors import (
    AgentFlowError,
    ConfigurationError,
    DeadlineExceeded,
    LeaseLost,
    ReplayDivergence,
    RunCancelled,
    RunConflict,
    RunNotFound,
    StoreError,
    WorkflowNotRegistered,
)

if TYPE_CHECKING:
    from ._queue import Queue
    from ._store._open import Durability

__all__ = ["AppCore"]

log = logging.getLogger("agentflow")
F = TypeVar("F", bound=Callable[..., Any])
_App = TypeVar("_App", bound="AppCore")
RESUMABLE = (RunStatus.PENDING.value, RunStatus.RUNNING.value)
FINISHED = (RunStatus.COMPLETED.value, RunStatus.FAILED.value)
SUSPENDED = (RunStatus.WAITING.value, RunStatus.PAUSED.value)


class AppCore:
    """The state of an ``AgentFlow`` and what every part of it uses (see the module docstring)."""

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
        from ._store._open import default_sqlite_path, open_store

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

    # -- registration ------------------------------------------------------------------------------------

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
            wf = self._register(fn, name, _origin(fn))
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
            self._register(workflow, name, _origin(workflow))

    def _register(
        self, fn: Callable[..., Any], name: str | None, origin: str | None, *, agent: bool = False
    ) -> Workflow:
        """Register ``fn`` under ``name``. ``origin`` is where it was defined (``_origin``: module and
        qualname of a function; module and variable of an Agent): a definition run again from the same
        place (a notebook cell run again) replaces the registration; two from different places, or from
        unknown ones, under one name are refused (a resume could not tell which one made a run)."""
        wf_name = name or fn.__qualname__
        known = self._workflows.get(wf_name)
        if known is not None and known.fn is fn:
            wf = known
        elif known is not None and (origin is None or origin != known.origin):
            raise ConfigurationError(
                f"two {'agents' if agent else 'workflows'} are named {wf_name!r}; give one another name: "
                + ("Agent(name=...)" if agent else "@app.workflow(name=...)")
            )
        else:
            wf = Workflow(wf_name, fn, self._codec)
            wf.origin = origin
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
            wf = self._register(fn, name, holder_of(workflow, getattr(workflow, "defined_in", None)), agent=True)
            wf.ref = ref_of_object(workflow, getattr(workflow, "defined_in", None))
            wf.version_source = getattr(workflow, "code_version", None)
            return wf
        return self._by_function.get(workflow) or self._register(workflow, None, _origin(workflow))

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

    def adopt_workflow(self, other: AppCore, name: str) -> None:
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

    # -- running -----------------------------------------------------------------------------------------

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
        record = self._new_record(wf, run_id, RunStatus.RUNNING, input_json, deadline=wf.deadline)
        if self._store.insert_run(record):
            return await self._execute(wf, record, fresh=True)
        existing = self._store.get_run(run_id)
        if existing is None:  # pragma: no cover - deleted between the two statements
            raise RunNotFound(run_id)
        if existing.workflow != wf.name:
            raise RunConflict(run_id, f"workflow {existing.workflow!r}, not {wf.name!r}")
        if json.loads(existing.input) != json.loads(input_json):
            raise RunConflict(run_id, f"other input ({existing.input[:200]})")
        if existing.status in RESUMABLE and existing.queue is not None:
            raise RunConflict(run_id, f"queue {existing.queue!r}, where a worker runs it (its handle's result() "
                              "waits for it)")  # fmt: skip
        if existing.status in RESUMABLE:
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
        if record.status not in RESUMABLE and record.status not in SUSPENDED:
            return self._to_run(record)
        if record.queue is not None:  # a queue's runs are executed by its workers, under their leases
            # Each only if the run is still as read: one a worker took meanwhile is that worker's.
            if record.status == RunStatus.PAUSED.value:
                fields: dict[str, object] = {"status": RunStatus.PENDING.value, "updated_at": self._clock.time()}
                self._store.update_run(run_id, fields, if_status=[RunStatus.PAUSED.value])
            elif record.status == RunStatus.WAITING.value:
                self._store.update_run(run_id, {"wake_at": self._clock.time()}, if_status=[RunStatus.WAITING.value])
            return self.get_run(run_id)
        return await self._execute(self._lookup(record.workflow), record, fresh=False)

    async def _execute(
        self, wf: Workflow, record: RunRecord, *, fresh: bool, setup: Callable[[RunEngine], None] | None = None
    ) -> Run:
        running = self._inflight.get(record.id)
        if running is not None and running.get_loop() is asyncio.get_running_loop():
            return await asyncio.shield(running)  # the same run is executing here already
        task = asyncio.ensure_future(self._execute_once(wf, record, fresh, setup))
        self._inflight[record.id] = task
        task.add_done_callback(lambda done: self._ended(record.id, done))
        # Shielded: a caller that is cancelled stops waiting; the run itself goes on to its end.
        return await asyncio.shield(task)

    def _ended(self, run_id: str, task: asyncio.Future[Run]) -> None:
        self._inflight.pop(run_id, None)
        # A child run goes on after its parent's worker stopped waiting for it (the worker found its lease
        # taken over); its next write then ends it with LeaseLost, which nobody awaits any more: expected.
        if not task.cancelled() and isinstance(task.exception(), LeaseLost):
            log.debug("run %s stopped at a write: %s", run_id, task.exception())

    async def _execute_once(
        self, wf: Workflow, record: RunRecord, fresh: bool, setup: Callable[[RunEngine], None] | None = None
    ) -> Run:
        run_id = record.id
        taken = record.queue is None and record.status != RunStatus.RUNNING.value
        # No lease coordinates a run off the queues: it is taken here from the status it was read in, before
        # its record is read, so that of two processes waking it (two ``serve`` loops, a cron ``wake``
        # beside one) only one executes it; the other leaves it as it finds it then.
        if taken and not self._store.update_run(run_id, self._running(), if_status=[record.status]):
            log.info("run %s was taken by another process meanwhile: left to it", run_id)
            return self.get_run(run_id)
        steps = [] if fresh else self._store.load_step_rows(run_id)
        if fresh:
            journal = Journal(run_id, self._store, steps)
        else:  # resumed: what it recorded, and the keys its calls in flight at a crash had reserved
            journal = Journal(run_id, self._store, steps, self._store.load_reservations(run_id))
        engine = RunEngine(run_id, journal, self._codec, self._clock, self._default_retry)
        if setup is not None:  # a child's lease, and the world it shares with its parent
            setup(engine)
        if not fresh or record.derived_as is not None:  # a fork's source records, a counterfactual's world...
            inherited = inherit(self._store, record, steps, world=engine.world is None)
            engine.source = inherited.source
            if inherited.world is not None:
                engine.world, engine.world_missing = inherited.world, inherited.world_missing
            engine.world_source = record.forked_from if engine.world is not None else None
        engine.extras.llm_retry, engine.extras.budget = self._llm_retry, wf.budget
        if self._step_listeners:
            engine.listeners.append(lambda rec: self._tell_listeners(run_id, rec))
        engine.control = self._control_for(run_id, record.deadline_at)
        engine.children = self
        engine.extras.parent_id, engine.extras.queue = record.parent_id, record.queue
        # A worker's claim has set the run running already, in the same write that gave it the lease (a
        # child run under its root's lease is not claimed: it is set running here, fenced by that lease).
        claimed = journal.lease_token is not None and journal.lease_of is None
        if not claimed and not taken and (not fresh or record.status != RunStatus.RUNNING.value):
            self._store.update_run(run_id, self._running(), lease_token=journal.lease_token, lease_of=journal.lease_of)
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

    def _running(self) -> dict[str, object]:
        """The fields of a run that starts executing."""
        now = self._clock.time()
        return {"status": RunStatus.RUNNING.value, "updated_at": now, "wake_at": None, "waiting_for": None}

    async def _invoke(self, wf: Workflow, engine: RunEngine, record: RunRecord) -> str:
        """Call the workflow on the run's input; its output as JSON."""
        args, kwargs = wf.decode_input(record.input)
        with top_level():
            try:
                if wf.is_async:
                    output = await wf.fn(Context(engine), *args, **kwargs)
                else:
                    ctx = SyncContext(engine, asyncio.get_running_loop())
                    output = await asyncio.to_thread(wf.fn, ctx, *args, **kwargs)
            except (Suspend, Exception) as stopped:
                # It ends (failed) or waits: the streams it left are recorded whole first; not when its
                # record or the database is in question, nor when it is cancelled (nothing more is made).
                if engine.halted is None and not isinstance(stopped, StoreError):
                    await finish_open_streams(engine)
                raise
            await finish_open_streams(engine)
        return self._codec.encode(output, f"output of run {record.id!r}")

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
        self._store.end_run(
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
            at=now,
            parent_id=engine.extras.parent_id or None,  # a child run wakes its parent if it waits for it
            lease_token=engine.journal.lease_token,
            lease_of=engine.journal.lease_of,
        )

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
            lease_of=engine.journal.lease_of,
        )

    def _pending_record(
        self,
        wf: Workflow,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run_id: str | None,
        deadline: float | None,
    ) -> RunRecord:
        """A new run of ``wf``, ``pending``: started in the background or queued, not yet executing."""
        limit = deadline if deadline is not None else wf.deadline
        input_json = wf.encode_input(args, kwargs)
        return self._new_record(wf, run_id or uuid.uuid4().hex, RunStatus.PENDING, input_json, deadline=limit)

    def _new_record(
        self,
        wf: Workflow,
        run_id: str,
        status: RunStatus,
        input_json: str,
        *,
        deadline: float | None = None,
        parent_id: str | None = None,
        forked_from: str | None = None,
        forked_at: str | None = None,
        derived_as: str | None = None,
        queue: str | None = None,
    ) -> RunRecord:
        """A new run of ``wf`` made now, under the workflow's current code version and ref; ``deadline`` in
        seconds from now. Not stored yet."""
        now = self._clock.time()
        return RunRecord(
            id=run_id,
            workflow=wf.name,
            status=status.value,
            input=input_json,
            created_at=now,
            updated_at=now,
            code_version=wf.current_version(),
            workflow_ref=wf.ref,
            deadline_at=None if deadline is None else now + deadline,
            parent_id=parent_id,
            forked_from=forked_from,
            forked_at=forked_at,
            derived_as=derived_as,
            queue=queue,
        )

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
                stored = self._store.run_control(run_id)
                if stored:
                    request = self._requests[run_id] = stored
            if request == "pause":
                raise Suspend(wake_at=None, waiting_for=None, why=f"run {run_id} was paused", paused=True)
            if request == "cancel":
                raise CancelRequested(run_id)
            if deadline_at is not None and self._clock.time() >= deadline_at:
                raise DeadlineExceeded(run_id, deadline_at)

        return check

    # -- child runs (the engine's ChildRunner) -----------------------------------------------------------

    def name_of(self, workflow: Any) -> str:
        return self._lookup(workflow).name

    async def run_child(
        self,
        workflow: Any,
        child_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent_id: str,
        lease: tuple[str, int] | None = None,
        origin: ChildOrigin | None = None,
        queue: str | None = None,
    ) -> tuple[str, str | None, str | None]:
        """Run, resume or look up the child run ``child_id``; its ``(status, output JSON, error)``.

        Under a worker's ``lease`` on the parent (its root run), every write of the child is fenced by that
        lease: a worker that lost it stops at the child's next write too, as it does in the parent. The
        child of a fork, a live replay or a counterfactual gets its ``origin``: the source's child run or
        the recorded world, so that it makes no non-idempotent call its source made. A new child run is put
        on its parent's ``queue``: executed here, inside its parent, but when it waits (a sleep, an event),
        a worker of that queue wakes it when it is due, as it would its parent (see ``QueueStore.claim``).
        """
        wf = self._lookup(workflow)

        def setup(engine: RunEngine) -> None:
            if lease is not None:
                engine.journal.lease_of, engine.journal.lease_token = lease
            if origin is not None and origin.world is not None:  # the one its parent serves from, as it is
                engine.world, engine.world_missing = origin.world, origin.world_missing

        record = self._store.get_run(child_id)
        if record is None:
            input_json = wf.encode_input(args, kwargs)
            # What it inherits, kept in its row: resumed on its own (``recover``), it inherits the same.
            derived_from, derived_as = None, None
            if origin is not None and origin.world is not None:
                derived_from, derived_as = origin.world_source, counterfactual_kind(origin.world_missing)
            elif origin is not None and origin.source_run is not None:
                derived_from, derived_as = origin.source_run, FORK
            record = self._new_record(
                wf, child_id, RunStatus.RUNNING, input_json, parent_id=parent_id, forked_from=derived_from,
                derived_as=derived_as, queue=queue,
            )  # fmt: skip
            if self._store.insert_run(record):
                await self._execute(wf, record, fresh=True, setup=setup)
        else:
            asked = wf.encode_input(args, kwargs)
            if record.workflow != wf.name or record.input != asked:  # never another call's child run
                raise AgentFlowError(
                    f"child run {child_id!r} was started as {record.workflow} with {record.input}, not as "
                    f"{wf.name} with {asked}: the parent's record and its child runs disagree"
                )
            due = record.wake_at is not None and record.wake_at <= self._clock.time()
            # A child on a queue that waits, or that a worker claimed once (it waited and was woken there),
            # is its workers' to execute: the parent only waits for it (``child:<id>``), so that one process
            # at a time writes it. One that was executing here when its parent's process died goes on here.
            workers = record.queue is not None and (record.lease_token > 0 or record.status not in RESUMABLE)
            if not workers and (record.status in RESUMABLE or (record.status == RunStatus.WAITING.value and due)):
                await self._execute(wf, record, fresh=False, setup=setup)
        final = self._require(child_id)
        return final.status, final.output, final.error

    # -- reading -----------------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        """The run with this id; ``RunNotFound`` if there is none."""
        record = self._store.get_run(run_id)
        if record is None:
            raise RunNotFound(run_id)
        return self._to_run(record)

    def _to_run(self, record: RunRecord) -> Run:
        output: Any = None
        if record.output is not None:
            wf = self._workflows.get(record.workflow)
            try:
                output = self._codec.decode(record.output, wf.return_type) if wf else json.loads(record.output)
            except ValueError:  # the declared type changed since: give the JSON as it is
                output = json.loads(record.output)
        return Run.from_record(record, output, self._store)

    # -- lifetime ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database connections."""
        self._store.close()

    def __enter__(self: _App) -> _App:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False


def _origin(fn: Callable[..., Any]) -> str | None:
    """``module:qualname`` of a function: where it was defined."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else None
