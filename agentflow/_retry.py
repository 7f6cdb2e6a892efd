"""Retry policies: how often a failing step is tried again, how long between tries, how long each may take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import ConfigurationError

__all__ = ["Backoff", "RetryPolicy"]

Backoff = Literal["constant", "linear", "exponential"]


@dataclass(frozen=True)
class RetryPolicy:
    """How a step is retried.

    ``max_attempts`` counts the first try (1 means no retry). The wait before attempt ``n + 1`` (after
    ``n`` failures) is ``delay`` (constant), ``delay * n`` (linear) or ``delay * multiplier ** (n - 1)``
    (exponential), capped at ``max_delay``. ``timeout`` bounds each attempt in seconds; a sync function
    that times out keeps running in its thread (Python cannot stop a thread) but its result is discarded.
    Exceptions listed in ``non_retryable``, and ``NonRetryableError``, fail the step at once.
    """

    max_attempts: int = 1
    delay: float = 1.0
    backoff: Backoff = "exponential"
    multiplier: float = 2.0
    max_delay: float | None = 60.0
    timeout: float | None = None
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"RetryPolicy.max_attempts must be at least 1, got {self.max_attempts}")
        if self.delay < 0:
            raise ConfigurationError(f"RetryPolicy.delay must not be negative, got {self.delay}")
        if self.backoff not in ("constant", "linear", "exponential"):
            raise ConfigurationError(
                f"RetryPolicy.backoff must be 'constant', 'linear' or 'exponential', got {self.backoff!r}"
            )
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigurationError(f"RetryPolicy.timeout must be positive, got {self.timeout}")

    def delay_after(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts, before the next one."""
        if self.backoff == "constant":
            wait = self.delay
        elif self.backoff == "linear":
            wait = self.delay * failures
        else:
            wait = self.delay * self.multiplier ** (failures - 1)
        return wait if self.max_delay is None else min(wait, self.max_delay)
