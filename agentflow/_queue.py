"""Queues of runs for workers: what a queue allows (``Queue``, ``RateLimit``), the handle ``enqueue``
returns (``QueuedRun``), a run's lease history (``Lease``) and what a worker did (``WorkerReport``).

A queued run is a row in ``runs`` with ``status='pending'`` and its queue's name; workers on any number of
machines claim it through the database (see ``_worker`` and ``_store/_queues``). Nothing here imports the
store or SQLAlchemy: ``import agentflow`` stays light.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ._lifecycle import RunRef
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._app_core import AppCore
    from ._models import Run

__all__ = ["Lease", "Queue", "QueuedRun", "RateLimit", "WorkerReport"]


@dataclass(frozen=True)
class RateLimit:
    """A provider's limits, shared by every worker of the queues that use it: model requests and LLM
    tokens (prompt + completion) per minute.

    A token bucket kept in the database: it holds up to a minute's worth and refills continuously.
    Before a model call, a request and the call's estimated tokens (prompt counted offline with tiktoken,
    plus ``max_tokens`` when given) are taken from it, waiting (on the app's clock) until there is
    enough; after the call, what it really used is charged (usage above the estimate is debt that delays
    the next calls; retries are charged as requests). Workers also claim no run of the queue while the
    bucket is empty. ``key`` names the bucket (default: the queue's name): queues that call the same
    provider account share one by naming the same key.
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigurationError(f"RateLimit({name}={value!r}): give a positive number, or None for no limit")


@dataclass(frozen=True)
class Queue:
    """A named queue of runs and its limits.

    ``concurrency`` caps the runs of the queue running at once across every worker (a count under a lock
    at each claim); ``worker_concurrency`` caps them within one worker; ``rate_limit`` caps model
    requests and tokens per minute. Declare it with ``app.queue(...)`` in the code every worker runs;
    an undeclared queue has no limits.
    """

    name: str
    concurrency: int | None = None
    worker_concurrency: int | None = None
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("a queue needs a name")
        for name in ("concurrency", "worker_concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigurationError(f"Queue({self.name!r}, {name}={value!r}): give at least 1, or None")

    @property
    def bucket(self) -> str | None:
        """The key of this queue's rate bucket, None when it has no rate limit."""
        if self.rate_limit is None:
            return None
        return self.rate_limit.key or f"queue:{self.name}"


class QueuedRun(RunRef):
    """A run put on a queue by ``app.enqueue``: a worker will run it. Ask its status, or wait for its end.

    ``deduplicated`` is True when no new run was made: a run with the same ``dedup_id`` was still
    unfinished on the queue (or the same ``run_id`` existed), and this handle is that run's.
    """

    def __init__(self, app: AppCore, run_id: str, *, deduplicated: bool) -> None:
        super().__init__(app, run_id)
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"QueuedRun({self.run_id!r}{', deduplicated' if self.deduplicated else ''})"

    def result(self, timeout: float | None = None, *, poll: float = 0.05) -> Run:
        """Wait until a worker has ended the run (completed, failed or cancelled) and return it: the
        database is read every ``poll`` seconds. Raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._wait_until_ended(deadline, timeout, poll)


@dataclass(frozen=True)
class Lease:
    """One claim of a run by a worker: its fencing ``token`` (one more than the claim before), the
    ``worker``, when it claimed the run, and when and how the lease ended (``outcome``: the run's status
    when the worker let go of it, ``released`` at a shutdown, ``error`` when it could not execute it);
    both None while the lease is held, or if the worker died holding it (the lease then expired)."""

    token: int
    worker: str
    claimed_at: datetime
    released_at: datetime | None
    outcome: str | None

    @classmethod
    def from_row(
        cls, token: int, worker: str, claimed_at: float, released_at: float | None, outcome: str | None
    ) -> Lease:
        released = None if released_at is None else datetime.fromtimestamp(released_at, tz=timezone.utc)
        return cls(token, worker, datetime.fromtimestamp(claimed_at, tz=timezone.utc), released, outcome)


@dataclass
class WorkerReport:
    """What a worker did before it stopped: the runs it claimed, and how its leases ended (``finished``:
    the run ended or suspended; ``released``: handed back at shutdown; ``lost``: taken over by another
    worker after this one's lease expired; ``errors``: it could not execute the run, tried again later)."""

    worker_id: str
    claimed: int = 0
    finished: int = 0
    released: int = 0
    lost: int = 0
    errors: int = 0
