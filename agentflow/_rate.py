"""Rate limits on model calls: a run executed by a worker for a queue with a ``RateLimit`` takes a request
and its estimated tokens from the queue's shared bucket before each model call, and is charged what the
call really used after it.

The engine's model-call path (``_llm_calls``) finds the limiter in ``engine.extras.rate_limiter``; runs
without one (every run outside a rate-limited queue) pay nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._clock import Clock

if TYPE_CHECKING:
    from ._engine import RunEngine
    from ._queue import RateLimit
    from ._store._queues import QueueStore

__all__ = ["RunLimiter"]

log = logging.getLogger("agentflow")


class RunLimiter:
    """The rate limit of one queue as one run's model calls see it."""

    def __init__(
        self,
        queues: QueueStore,
        limit: RateLimit,
        key: str,
        clock: Clock,
        *,
        max_wait: float = 10.0,
        between_waits: Callable[[], None] | None = None,
    ) -> None:
        self._queues = queues
        self._limit = limit
        self._key = key
        self._clock = clock
        self._max_wait = max_wait  # a long wait is cut into pieces, so the worker heartbeats between them
        self._between_waits = between_waits
        self._taken: dict[str, float] = {}  # call key -> tokens taken for it
        self.waited = 0.0  # seconds this run spent waiting for the bucket (for tests and logs)

    def estimate(self, model: str, messages: Any, params: dict[str, Any]) -> float:
        """The tokens a call may use, known before it: its prompt (tiktoken) and its ``max_tokens``."""
        if self._limit.tokens_per_minute is None:
            return 0.0
        from ._tokens import count_prompt_tokens

        prompt = count_prompt_tokens(model, messages, params.get("tools"))
        return float(prompt + int(params.get("max_tokens") or params.get("max_completion_tokens") or 0))

    async def before_call(self, engine: RunEngine, key: str, model: str, messages: Any, params: dict[str, Any]) -> None:
        """Wait until the bucket holds a request and the call's estimated tokens, and take them."""
        tokens = self.estimate(model, messages, params)
        rpm, tpm = self._limit.requests_per_minute, self._limit.tokens_per_minute
        while True:
            wait = self._queues.take(self._key, rpm=rpm, tpm=tpm, requests=1.0, tokens=tokens, now=self._clock.time())
            if wait <= 0:
                break
            step = min(wait, self._max_wait)
            log.debug("run %s waits %.2f s for the rate limit %s", engine.run_id, step, self._key)
            self.waited += step
            await self._clock.sleep(step)
            if self._between_waits is not None:
                self._between_waits()
        self._taken[key] = tokens

    def after_call(self, key: str, attempts: int, used_tokens: int) -> None:
        """Charge what the call used beyond what was taken (retries are requests too)."""
        taken = self._taken.pop(key, None)
        if taken is None:  # served from the record, or never taken
            return
        limit = self._limit
        self._queues.adjust(
            self._key,
            rpm=limit.requests_per_minute,
            tpm=limit.tokens_per_minute,
            requests=max(0, attempts - 1) if limit.requests_per_minute is not None else 0,
            tokens=used_tokens - taken if limit.tokens_per_minute is not None else 0,
            now=self._clock.time(),
        )
