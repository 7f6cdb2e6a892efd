"""Queues and workers, for many processes and machines (see ``_worker``): the part of ``AgentFlow`` that
puts runs on queues and serves them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ._app_core import AppCore
from ._loop import run_sync

if TYPE_CHECKING:
    from ._queue import Lease, Queue, QueuedRun, RateLimit, WorkerReport

__all__ = ["QueuePart"]


class QueuePart(AppCore):
    """``queue``, ``enqueue``, ``work`` and ``leases`` of ``AgentFlow``."""

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
