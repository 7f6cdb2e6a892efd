"""A worker: claims runs of its queues under leases, executes them, heartbeats, and hands them back.

Many workers, on many machines, share the queues through the database alone (``_store/_queues``):

- claim: runs are claimed in one transaction that sets ``lease_owner``, ``lease_expires_at`` and
  increments ``lease_token`` (the fencing token); the claim respects the queue's global concurrency, the
  worker's own limits and the queue's rate bucket. Pending runs, due waiting runs of the queue and runs
  whose lease expired (their worker died or stalled) are all claimable.
- execute: the run executes as any run does (recorded steps served, the rest live), with every write
  fenced by the token: a worker that lost its lease gets ``LeaseLost`` and stops, writing nothing.
- heartbeat: every ``lease / 3`` seconds the worker extends the leases it holds; one it finds taken over is
  interrupted here.
- wake: on Postgres a ``LISTEN`` connection hears ``NOTIFY`` from enqueues and releases; polling every
  ``poll`` seconds is the fallback, and the only way on SQLite.
- shutdown (SIGTERM, SIGINT, ``stop()``): no more claims; runs in flight get ``grace`` seconds to end,
  then are interrupted and released (back to ``pending`` with a new token, so another worker takes them at
  once). A second signal releases at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._queue import Queue, WorkerReport
from ._rate import RunLimiter
from .errors import ConfigurationError, LeaseLost, StoreError

if TYPE_CHECKING:
    from ._app_core import AppCore
    from ._engine import RunEngine
    from ._store import RunRecord
    from ._store._queues import QueueStore

__all__ = ["Worker", "default_worker_id"]

log = logging.getLogger("agentflow.worker")


def default_worker_id() -> str:
    """``host:pid:random``: unique per process, readable in ``agentflow runs``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class _Held:
    run_id: str
    token: int
    queue: Queue
    task: asyncio.Task[None]
    lost: bool = False


async def _first(waits: Sequence[Awaitable[Any]], timeout: float | None) -> None:
    """Wait until the first of ``waits`` is done (or ``timeout`` real seconds); cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Worker:
    """Executes the runs of some queues of one ``AgentFlow`` (its registered workflows). See the module
    docstring; built by ``AgentFlow.work``."""

    def __init__(
        self,
        app: AppCore,
        queues: Sequence[str],
        *,
        concurrency: int = 1,
        lease: float = 30.0,
        poll: float = 1.0,
        grace: float = 30.0,
        worker_id: str | None = None,
        stop: Callable[[], bool] | None = None,
        drain: bool = False,
        handle_signals: bool = True,
    ) -> None:
        from ._store._queues import QueueStore
        from ._store._sql import SQLStore

        if concurrency < 1:
            raise ConfigurationError(f"concurrency={concurrency!r}: a worker runs at least 1 run at a time")
        if lease <= 0 or poll <= 0 or grace < 0:
            raise ConfigurationError("lease and poll must be positive, grace at least 0 (seconds)")
        if not queues:
            raise ConfigurationError("give a worker at least one queue")
        store = app._store
        if not isinstance(store, SQLStore):  # pragma: no cover - there is one store
            raise ConfigurationError("workers need agentflow's SQL store")
        self._app = app
        self._qs: QueueStore = QueueStore(store)
        self._queues = [app._queues.get(name) or Queue(name) for name in dict.fromkeys(queues)]
        self._names = {q.name for q in self._queues}
        self._concurrency = concurrency
        self._lease = lease
        self._poll = poll
        self._grace = grace
        self._stop = stop
        self._drain = drain
        self._handle_signals = handle_signals
        self.worker_id = worker_id or default_worker_id()
        self.report = WorkerReport(self.worker_id)
        self._held: dict[str, _Held] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._forced: asyncio.Event | None = None
        self._draining = False
        self._releasing = False

    # -- stopping ---------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop claiming and end gracefully (runs in flight get ``grace`` seconds); called again, release
        what is still held at once. Safe from any thread and from a signal handler."""
        loop = self._loop
        if loop is None:
            self._draining = True
            return
        loop.call_soon_threadsafe(self._shutdown_here)

    def _shutdown_here(self) -> None:
        if self._draining and self._forced is not None:
            self._forced.set()
        self._draining = True
        if self._wakeup is not None:
            self._wakeup.set()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> dict[signal.Signals, Any]:
        """Handle SIGTERM and SIGINT while working (main thread only); the handlers they had before."""
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        installed = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            before = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, self._shutdown_here)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on this platform
                continue
            installed[sig] = before
        return installed

    # -- the loop ---------------------------------------------------------------------------------------

    async def run(self) -> WorkerReport:
        """Claim and execute runs until stopped (``stop()``, ``drain`` and nothing left, a signal)."""
        if not self._app._workflows:
            raise ConfigurationError("this AgentFlow has no registered workflow: a worker runs the workflows "
                                     "registered on its app (import the module that defines them)")  # fmt: skip
        loop = self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._forced = asyncio.Event()
        signals = self._install_signals(loop)
        listener = await self._listen()
        heartbeat = asyncio.create_task(self._heartbeat())
        log.info("worker %s serves queue(s) %s", self.worker_id, ", ".join(sorted(self._names)))
        try:
            while not self._draining:
                if self._stop is not None and self._stop():
                    break
                self._wakeup.clear()
                try:
                    due = self._claim()
                    if self._drain and not self._held and self._qs.unfinished(sorted(self._names)) == 0:
                        break
                except StoreError as exc:  # the database is away for now: try again at the next poll
                    log.warning("worker %s cannot claim: %s", self.worker_id, exc)
                    due = None
                await self._idle(due)
            self._draining = True
            await self._wind_down()
        finally:
            tasks = [heartbeat] if listener is None else [heartbeat, listener]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sig, before in signals.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, before)
            self._loop = None
        log.info("worker %s stopped: %s", self.worker_id, self.report)
        return self.report

    def _claim(self) -> float | None:
        """Claim what the limits allow and start executing it; the next time something becomes due that
        only time brings (a waiting run's wake-up, a rate bucket's refill), if known."""
        clock = self._app._clock
        now = clock.time()
        due: float | None = None
        workflows = sorted(self._app._workflows)
        for queue in self._queues:
            free = self._concurrency - len(self._held)
            if free <= 0:
                break
            if queue.worker_concurrency is not None:
                mine = sum(1 for h in self._held.values() if h.queue.name == queue.name)
                free = min(free, queue.worker_concurrency - mine)
            if free <= 0:
                continue
            if queue.rate_limit is not None and queue.bucket is not None:
                limit = queue.rate_limit
                wait = self._qs.wait_for_room(
                    queue.bucket, rpm=limit.requests_per_minute, tpm=limit.tokens_per_minute, now=now
                )
                if wait > 0:  # the provider's budget for now is spent: claiming would only hold runs idle
                    due = now + wait if due is None else min(due, now + wait)
                    continue
            claimed = self._qs.claim(
                queue.name,
                worker=self.worker_id,
                limit=free,
                workflows=workflows,
                now=now,
                lease=self._lease,
                global_limit=queue.concurrency,
                exclude=list(self._held),
            )
            for record in claimed:
                self.report.claimed += 1
                log.debug("worker %s claimed run %s (token %d)", self.worker_id, record.id, record.lease_token)
                task = asyncio.create_task(self._execute(record, queue))
                self._held[record.id] = _Held(record.id, record.lease_token, queue, task)
        if not self._held:  # idle: when will a waiting run wake?
            for queue in self._queues:
                wake = self._qs.next_wake(queue.name, workflows, now)
                if wake is not None:
                    due = wake if due is None else min(due, wake)
        return due

    async def _idle(self, due: float | None) -> None:
        """Wait for a reason to claim again: a notification, a run of ours ending, the poll interval, or
        (with nothing in flight) the next known due time, on the app's clock (a FakeClock jumps there)."""
        assert self._wakeup is not None
        waits: list[Awaitable[Any]] = [self._wakeup.wait()]
        if due is not None and not self._held:
            clock = self._app._clock
            waits.append(clock.sleep(max(0.0, due - clock.time())))
        await _first(waits, self._poll)

    async def _wind_down(self) -> None:
        """Let the runs in flight end within ``grace`` (unless forced), then release the rest."""
        assert self._forced is not None
        if self._held and not self._forced.is_set():
            log.info("worker %s stops: %d run(s) in flight get %g s to end", self.worker_id, len(self._held),
                     self._grace)  # fmt: skip
            running = asyncio.gather(*(h.task for h in self._held.values()), return_exceptions=True)
            await _first([asyncio.shield(running), self._forced.wait()], self._grace)
        if self._held:
            self._releasing = True
            held = list(self._held.values())
            for entry in held:
                self._interrupt(entry)
            await asyncio.gather(*(h.task for h in held), return_exceptions=True)

    def _interrupt(self, entry: _Held) -> None:
        inner = self._app._inflight.get(entry.run_id)
        if inner is not None and not inner.done():
            inner.get_loop().call_soon_threadsafe(inner.cancel)
        else:
            entry.task.cancel()

    # -- one run ----------------------------------------------------------------------------------------

    async def _execute(self, record: RunRecord, queue: Queue) -> None:
        app, token, run_id = self._app, record.lease_token, record.id
        clock = app._clock
        limiter = None
        if queue.rate_limit is not None and queue.bucket is not None:
            limiter = RunLimiter(self._qs, queue.rate_limit, queue.bucket, clock, max_wait=self._lease / 3,
                                 between_waits=self._renew)  # fmt: skip

        def setup(engine: RunEngine) -> None:
            engine.journal.lease_token = token
            if limiter is not None:
                engine.extras.rate_limiter = limiter

        try:
            try:
                run = await app._execute(app._workflows[record.workflow], record, fresh=False, setup=setup)
            except asyncio.CancelledError:
                inner = app._inflight.get(run_id)
                if inner is not None and not inner.done():  # stop the run itself, not only our wait on it
                    inner.cancel()
                    with contextlib.suppress(BaseException):
                        await inner
                raise
        except LeaseLost as exc:
            self.report.lost += 1
            log.warning("worker %s: %s", self.worker_id, exc)
        except asyncio.CancelledError:
            entry = self._held.get(run_id)
            if entry is not None and entry.lost:
                self.report.lost += 1
                log.warning("worker %s lost its lease on run %s (token %d); another worker has it",
                            self.worker_id, run_id, token)  # fmt: skip
            else:
                self.report.released += 1
                self._release(run_id, token, outcome="released", notify=queue.name, requeue=True)
                log.info("worker %s released run %s", self.worker_id, run_id)
                if not self._releasing:
                    raise
        except Exception as exc:
            self.report.errors += 1
            log.error("worker %s could not execute run %s (tried again in %g s): %s", self.worker_id, run_id,
                      self._lease, exc)  # fmt: skip
            self._release(run_id, token, outcome="error", retry_at=clock.time() + self._lease)
        else:
            self.report.finished += 1
            # Other workers wake only when this frees a slot the queue's global limit was holding back.
            notify = queue.name if queue.concurrency is not None else None
            self._release(run_id, token, outcome=run.status.value, notify=notify)
        finally:
            self._held.pop(run_id, None)
            if self._wakeup is not None:
                self._wakeup.set()

    # -- leases -----------------------------------------------------------------------------------------

    def _release(self, run_id: str, token: int, *, outcome: str, **options: Any) -> None:
        """End a lease; if the database is away, the lease runs out by itself and the run is taken over."""
        try:
            self._qs.release(run_id, token, now=self._app._clock.time(), outcome=outcome, **options)
        except StoreError as exc:
            log.warning("worker %s could not release run %s (its lease will run out): %s", self.worker_id,
                        run_id, exc)  # fmt: skip

    def _renew(self) -> None:
        """Extend the leases held; interrupt the runs whose lease another worker took."""
        held = {run_id: entry.token for run_id, entry in self._held.items()}
        if not held:
            return
        try:
            still = self._qs.renew(self.worker_id, held, self._app._clock.time() + self._lease)
        except Exception as exc:  # the database is away: the leases run out, and others take the runs over
            log.warning("worker %s could not renew its leases: %s", self.worker_id, exc)
            return
        for run_id in held.keys() - still:
            entry = self._held.get(run_id)
            if entry is not None and entry.token == held[run_id] and not entry.lost:
                entry.lost = True
                self._interrupt(entry)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            self._renew()

    async def _listen(self) -> asyncio.Task[None] | None:
        """On Postgres: a task that sets the wake-up event on each NOTIFY for one of our queues."""
        if not self._qs.postgres:
            return None
        from ._store._queues import NOTIFY_CHANNEL

        try:
            import psycopg

            url = self._app._store.engine.url  # type: ignore[attr-defined]
            conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except Exception as exc:
            log.warning("worker %s cannot LISTEN (%s); it polls every %g s", self.worker_id, exc, self._poll)
            return None

        async def listen() -> None:
            wakeup = self._wakeup
            assert wakeup is not None
            try:
                async for note in conn.notifies():
                    if note.payload in self._names:
                        wakeup.set()
            except Exception as exc:
                log.warning("worker %s stopped listening (%s); it polls every %g s", self.worker_id, exc, self._poll)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

        return asyncio.create_task(listen())
