"""What the engine and the modules around it hand each other: the exceptions that unwind a run (a wait, a
cancellation), what a child run needs from the app and inherits from a derived parent, compensations,
the outcome of a step's attempts, and the per-run state of the modules above the engine (``RunExtras``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ._llm import Budget, MessageChains
from ._retry import RetryPolicy
from ._store import StepRecord
from ._tool import Tool
from .errors import AgentFlowError

if TYPE_CHECKING:
    from ._checkpoint import _Last
    from ._rate import RunLimiter

__all__ = [
    "Attempts",
    "CancelRequested",
    "ChildOrigin",
    "ChildRunFailed",
    "ChildRunner",
    "Compensation",
    "RunExtras",
    "Suspend",
]


class Suspend(BaseException):
    """Unwinds a run that has to wait (a durable sleep, an event, a pause): not an error. The run holds
    nothing while it waits; it is executed again when it wakes and finds its steps in the record.

    A BaseException, like ``asyncio.CancelledError``, so that a workflow's ``except Exception`` does not
    swallow it.
    """

    def __init__(self, *, wake_at: float | None, waiting_for: str | None, why: str, paused: bool = False) -> None:
        super().__init__(why)
        self.wake_at = wake_at
        self.waiting_for = waiting_for
        self.paused = paused


class CancelRequested(BaseException):
    """Unwinds a run whose cancellation was asked for, at its next live step; its compensations run."""


@dataclass(frozen=True)
class ChildOrigin:
    """What a child run of a derived run (a fork, a live replay, a counterfactual) inherits, so that the
    non-idempotent tool calls made inside the source's child are not made again: the source's child run
    (its records serve them, as ``RunEngine.source`` does), or the recorded world (shared with its
    parent, each answer served once). Kept in the child's row too (``forked_from``, ``derived_as``), so
    that the child inherits the same when it is resumed on its own."""

    source_run: str | None = None
    world: dict[str, list[StepRecord]] | None = None
    world_missing: Literal["live", "missing"] = "live"
    world_source: str | None = None  # the run whose recorded world ``world`` is


class ChildRunner(Protocol):
    """What the engine needs to run child workflows (the ``AgentFlow``)."""

    def name_of(self, workflow: Any) -> str: ...

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
        """Run (or resume, or look up) the child; its ``(status, output JSON, error text)``. With ``lease``
        (the parent's, ``(run id, token)``: a worker holds it) every write of the child is fenced by it;
        ``origin`` is what a derived run's child inherits from its source; ``queue``: the parent's, which a
        new child run is put on (when it waits, that queue's workers wake it)."""
        ...


class ChildRunFailed(AgentFlowError):
    """A child run ended failed or cancelled; raised into the parent as ``StepFailed``."""

    def __init__(self, child_id: str, status: str, error: str | None) -> None:
        super().__init__(f"child run {child_id!r} ended {status}: {error or 'no error recorded'}")


@dataclass
class Compensation:
    """An undo registered by ``ctx.step(..., compensate=fn)``: ``fn(output)`` of the step at ``key``."""

    key: str
    name: str
    fn: Callable[[Any], Any]
    output: Any
    retry: RetryPolicy | None


@dataclass
class Attempts:
    """How the attempts at a step ended: ``value`` or the final ``error``, after ``count`` attempts."""

    value: Any
    error: Exception | None
    count: int


@dataclass
class RunExtras:
    """Per-run state that the modules around the engine keep on it, one field each; all empty by default."""

    # The LLM gateway (_llm_calls): the run's message chains, its retry policy and budget for model calls
    # (from the app and the workflow), and the rate limiter of a queue whose worker executes the run.
    message_chain: MessageChains = field(default_factory=MessageChains)
    llm_retry: RetryPolicy | None = None
    budget: Budget | None = None
    rate_limiter: RunLimiter | None = None
    # Model calls of a run with a budget, asked but not recorded yet: key -> (prompt tokens by tiktoken,
    # max completion tokens, estimated cost). The budget counts them, so concurrent calls cannot pass it.
    llm_in_flight: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    # Live streams made and not read to their end yet: key -> what reads the rest. The run reads each
    # before it ends or waits, so that a stream left unread or half read is recorded whole all the same.
    open_streams: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    parent_id: str | None = None  # a child run's parent, woken when the child ends
    queue: str | None = None  # the run's queue: its child runs are on it too (its workers wake them)
    tools: dict[Callable[..., Any], Tool] = field(default_factory=dict)  # functions made tools by ctx.tool
    checkpoints: dict[str, _Last] = field(default_factory=dict)  # the last checkpoint of each chain
    running_graphs: set[tuple[str, str]] = field(default_factory=set)  # (scope, name) of graphs running
