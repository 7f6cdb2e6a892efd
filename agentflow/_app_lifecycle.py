"""A run's life beyond one call: started in the background, paused, cancelled, restarted, sent events,
woken when due (``serve``): the part of ``AgentFlow`` that steers runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ._app_core import RESUMABLE, SUSPENDED, AppCore
from ._derived import enclosed
from ._lifecycle import BackgroundLoop, RunHandle
from ._loop import run_sync
from ._models import Run, RunStatus, Step, SupersededStep, _utc
from ._store import RunRecord
from .errors import (
    AgentFlowError,
    ReplayDivergence,
    RunConflict,
)

__all__ = ["LifecyclePart"]

log = logging.getLogger("agentflow")


class LifecyclePart(AppCore):
    """``start``, ``pause``, ``cancel``, ``restart``, ``send_event``, ``wake_due`` and ``serve`` of ``AgentFlow``."""

    def recover(self) -> list[Run]:
        """Resume every run left ``pending`` or ``running`` by a process that died, and every waiting run
        that is due (its sleep is over, its event came, its wait timed out).

        A run left ``running`` holds no lease: let one process recover (queues' workers coordinate through
        leases). Runs of workflows this process has not registered, and runs that diverge, are logged and
        left as they are.
        """
        return run_sync(self.recover_async)

    async def recover_async(self) -> list[Run]:
        """``recover`` for async callers."""
        recovered = await self._resume_each(self._store.list_runs(statuses=RESUMABLE), "recover")
        return recovered + await self.wake_due_async()

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

    def pause(self, run_id: str) -> Run:
        """Pause a run at its next step boundary (status ``paused``); ``resume`` continues it.

        A waiting run is paused at once: it will not wake until resumed. Works across processes (the
        request is stored; a run executing elsewhere sees it within a fraction of a second).
        """
        record = self._require(run_id)
        if RunStatus(record.status).is_terminal:
            raise AgentFlowError(f"run {run_id!r} is {record.status}: there is nothing to pause")
        self._requests[run_id] = "pause"
        self._store.update_run(run_id, {"control": "pause", "updated_at": self._clock.time()})
        # A waiting run is paused at once, unless it was woken meanwhile: then it sees the request.
        self._store.update_run(run_id, {"status": RunStatus.PAUSED.value}, if_status=[RunStatus.WAITING.value])
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
        for child in self._store.list_runs(statuses=[*RESUMABLE, *SUSPENDED]):
            if child.parent_id == run_id:
                await self.cancel_async(child.id)
        task = self._inflight.get(run_id)
        if task is not None:  # executing in this process: interrupt it where it is
            task.get_loop().call_soon_threadsafe(task.cancel)
            return self.get_run(run_id)
        if record.queue is not None:  # a worker holds it, or will: it sees the request at its next step
            # Due now, so that a worker wakes it to roll it back; unless a worker claimed it meanwhile (made
            # waiting again under that worker, it would be claimed by a second one).
            due = {"status": RunStatus.WAITING.value, "wake_at": self._clock.time()}
            self._store.update_run(run_id, due, if_status=SUSPENDED)
            return self.get_run(run_id)
        wf = self._workflows.get(record.workflow)
        if wf is not None and record.status in (*SUSPENDED, *RESUMABLE):
            return await self._execute(wf, replace(record, control="cancel"), fresh=False)
        return self.get_run(run_id)

    def restart(self, run_id: str, from_key: str | None = None) -> Run:
        """Run a run again from the step ``from_key`` on (from the start when None): the records from
        that step on are taken out of the run, the ones before it are served, and the rest runs live.
        What is taken out is kept (``superseded_steps``). A non-idempotent tool call that a superseded
        part made with the same request is served from its old record, not made again, also when the
        restarted run is resumed after a crash; made with another request, it gets an idempotency key of
        its own.

        A run of a queue is handed back to its workers (it becomes ``pending``) and returned as it is
        then; one a worker holds now is refused (cancel or pause it first)."""
        return run_sync(lambda: self.restart_async(run_id, from_key))

    def superseded_steps(self, run_id: str) -> list[SupersededStep]:
        """The step records the run's restarts took out of it, restart by restart, each in the order it
        was recorded: the run's history before each restart, for the audit trail."""
        self._require(run_id)
        return [
            SupersededStep(kept.restart, _utc(kept.superseded_at), Step.from_record(kept.record))
            for kept in self._store.load_superseded(run_id)
        ]

    async def restart_async(self, run_id: str, from_key: str | None = None) -> Run:
        """``restart`` for async callers."""
        record = self._require(run_id)
        if record.id in self._inflight:
            raise AgentFlowError(f"run {run_id!r} is executing; cancel or pause it before restarting it")
        seq = 0
        steps = self._store.load_steps(run_id)
        if from_key is not None:
            found = [r.seq for r in steps if r.key == from_key]
            if not found:
                raise AgentFlowError(f"run {run_id!r} has no step {from_key!r}; its steps: "
                                     f"{', '.join(r.key for r in steps[:12])}")  # fmt: skip
            seq = found[0]
        before = [r for r in steps if r.seq < seq]
        in_flight = {r.key for r in before} - {r.key for r in enclosed(before)}  # inside a step not done by then
        wf = self._lookup(record.workflow)
        if record.queue is not None:
            self._hold_for_restart(record)
        # What is taken out is kept (``superseded_steps``): the audit trail keeps it, and the run inherits
        # it (``_derived.inherit``), on every resume too: a non-idempotent tool call made again with the
        # same request is served from it (a payment is not made twice), one with another request gets a
        # key of its own.
        self._store.supersede_steps_from(run_id, seq, self._clock.time(), also=sorted(in_flight))
        self._requests.pop(run_id, None)
        status = RunStatus.RUNNING if record.queue is None else RunStatus.PENDING  # a queue's: for its workers
        fresh = replace(record, status=status.value, output=None, error=None, control=None, rollback=None)
        self._store.update_run(
            run_id,
            {"status": fresh.status, "output": None, "error": None, "control": None, "rollback": None,
             "wake_at": None, "waiting_for": None, "updated_at": self._clock.time()},
        )  # fmt: skip
        if record.queue is not None:
            return self.get_run(run_id)
        return await self._execute(wf, fresh, fresh=False)

    def _hold_for_restart(self, record: RunRecord) -> None:
        """Before a queued run's records are taken out: refuse one a worker holds, and make the run
        ``paused`` (no worker claims it) if it is still as read. A process dying after this leaves it
        paused: ``resume`` or ``restart`` it."""
        now = self._clock.time()
        expired = record.lease_expires_at is not None and record.lease_expires_at <= now
        if record.status == RunStatus.RUNNING.value and not expired:
            raise AgentFlowError(
                f"run {record.id!r} is executing (worker {record.lease_owner or 'holding its parent'}); cancel "
                "or pause it before restarting it"
            )
        paused = {"status": RunStatus.PAUSED.value, "updated_at": now}
        if not self._store.update_run(record.id, paused, lease_token=record.lease_token, if_status=[record.status]):
            raise AgentFlowError(
                f"run {record.id!r} changed while it was being restarted (a worker took it?): try again"
            )

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
        """Resume every waiting run that is due now: its sleep is over, its event came, its timeout passed.
        One another process takes meanwhile is left to it (and returned as it is then)."""
        return run_sync(self.wake_due_async)

    async def wake_due_async(self, limit: int | None = None) -> list[Run]:
        """``wake_due`` for async callers."""
        return await self._resume_each(self._store.due_runs(self._clock.time(), limit), "wake")

    async def _resume_each(self, records: list[RunRecord], why: str) -> list[Run]:
        """Execute each run of ``records`` from its record, one after the other; skip runs executing here
        and queued runs (a queue's workers take those), and log, not raise, what cannot go on."""
        resumed: list[Run] = []
        for record in records:
            if record.id in self._inflight or record.queue is not None:
                continue
            wf = self._workflows.get(record.workflow)
            if wf is None:
                log.warning(
                    "%s: run %s is of workflow %r, which is not registered here", why, record.id, record.workflow
                )
                continue
            try:
                resumed.append(await self._execute(wf, record, fresh=False))
            except ReplayDivergence as exc:
                log.error("%s: run %s was left as it was: %s", why, record.id, exc)
        return resumed

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
