"""What users get back: ``Run`` and ``Step`` snapshots, their statuses, and token usage."""

from __future__ import annotations

import enum
import json
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from ._secrets import ambient_secrets, redact

if TYPE_CHECKING:
    from ._store import RunRecord, StepRecord, Store
    from .errors import ReplayDivergence

__all__ = ["ErrorInfo", "Run", "RunStatus", "Step", "StepKind", "StepStatus", "SupersededStep", "Usage"]


class RunStatus(str, enum.Enum):
    """Where a run is in its life.

    ``pending`` (started, not yet running) and ``running`` runs are resumed by ``recover`` after a crash;
    a ``waiting`` run (a durable sleep or an event wait) wakes when due; a ``paused`` one waits for
    ``resume``. ``completed``, ``failed`` and ``cancelled`` are final.
    """

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)

    def __str__(self) -> str:
        return self.value


class StepStatus(str, enum.Enum):
    """How a recorded step ended; a step is recorded once, when it has completed or failed for good."""

    COMPLETED = "completed"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class StepKind(str, enum.Enum):
    """What a recorded step was (DESIGN.md, Storage); ``now``, ``uuid`` and ``random`` are ``step``."""

    STEP = "step"
    LLM = "llm"
    TOOL = "tool"
    SLEEP = "sleep"
    EVENT = "event"
    CHECKPOINT = "checkpoint"
    CHILD = "child"

    def __str__(self) -> str:
        return self.value


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


@dataclass(frozen=True)
class ErrorInfo:
    """A recorded failure: the exception's type name, its message and the traceback text."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_json(cls, text: str | None) -> ErrorInfo | None:
        if text is None:
            return None
        data = json.loads(text)
        return cls(type=data.get("type", ""), message=data.get("message", ""), traceback=data.get("traceback", ""))

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        """What is recorded for ``exc``, with ``[secret]`` for the values ``keep_secrets_out`` gave any
        exception of its chain (a provider error that echoed the API key) and for the environment's and
        litellm's keys (``ambient_secrets``: a tool or a step that failed saying ``OPENAI_API_KEY``'s value)."""
        info = cls(
            type=type(exc).__qualname__,
            message=str(exc),
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
        secrets = _secrets_of(exc)
        if not secrets:
            return info
        return cls(info.type, redact(info.message, secrets), redact(info.traceback, secrets))

    @staticmethod
    def encode(exc: BaseException) -> str:
        """The JSON text recorded for ``exc``."""
        info = ErrorInfo.of(exc)
        return json.dumps({"type": info.type, "message": info.message, "traceback": info.traceback})


_SECRETS_ATTRIBUTE = "_agentflow_secrets"


def keep_secrets_out(exc: BaseException, values: list[str]) -> None:
    """Have ``values`` replaced by ``[secret]`` wherever ``exc`` is recorded: as the error of a step, or
    in the traceback of an error chained to it (the ``StepFailed`` raised from it, a run's error)."""
    if values:
        setattr(exc, _SECRETS_ATTRIBUTE, [*getattr(exc, _SECRETS_ATTRIBUTE, ()), *values])


def redact_error(exc: BaseException, text: str) -> str:
    """``text``, made of ``exc`` (its message for a ``StepFailed``, a tool's error result), with ``[secret]``
    for the values ``ErrorInfo.of`` replaces in its record."""
    return redact(text, _secrets_of(exc))


def _secrets_of(exc: BaseException) -> list[str]:
    return [*_chained_secrets(exc), *ambient_secrets()]


def _chained_secrets(exc: BaseException) -> list[str]:
    found: list[str] = []
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        found.extend(getattr(current, _SECRETS_ATTRIBUTE, ()))
        pending += [current.__cause__, current.__context__]
        grouped = getattr(current, "exceptions", None)  # an exception group (Python 3.11+: BaseExceptionGroup)
        if isinstance(grouped, tuple):
            pending += [e for e in grouped if isinstance(e, BaseException)]
    return found


@dataclass(frozen=True)
class Usage:
    """Tokens a step or a run used (model calls record them)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Step:
    """A recorded step as stored: ``output`` is the JSON value (not rebuilt into the step's type)."""

    key: str
    seq: int
    kind: StepKind
    name: str
    status: StepStatus
    attempt: int
    output: Any
    error: ErrorInfo | None
    started_at: datetime
    finished_at: datetime
    fingerprint: str
    usage: Usage
    cost: float
    request: Any = field(default=None, compare=False, repr=False)  # the normalized request (JSON data)
    # The record's link in the run's hash chain (sha256 hex over the one before it and this record): the
    # last step's is the chain's head, which an auditor can keep to check the record later.
    chain: str = field(default="", compare=False, repr=False)

    @property
    def duration(self) -> float:
        """Seconds from the first attempt's start to the record."""
        return (self.finished_at - self.started_at).total_seconds()

    @classmethod
    def from_record(cls, rec: StepRecord) -> Step:
        return cls(
            key=rec.key,
            seq=rec.seq,
            kind=StepKind(rec.kind),
            name=rec.name,
            status=StepStatus(rec.status),
            attempt=rec.attempt,
            output=None if rec.output is None else json.loads(rec.output),
            error=ErrorInfo.from_json(rec.error),
            started_at=_utc(rec.started_at),
            finished_at=_utc(rec.finished_at),
            fingerprint=rec.fingerprint,
            usage=Usage(rec.prompt_tokens, rec.completion_tokens),
            cost=rec.cost,
            request=None if rec.request is None else json.loads(rec.request),
            chain=rec.chain,
        )


@dataclass(frozen=True)
class SupersededStep:
    """A step record a restart took out of its run (``AgentFlow.restart``), kept: by the run's ``restart``-th
    restart (1 for its first), at ``superseded_at``."""

    restart: int
    superseded_at: datetime
    step: Step


@dataclass(frozen=True)
class Run:
    """A snapshot of a run. ``output`` is rebuilt into the workflow's declared return type when the
    workflow is registered with the ``AgentFlow`` that read it. ``steps`` are read from the store on first
    access."""

    id: str
    workflow: str
    status: RunStatus
    input: dict[str, Any]
    output: Any
    error: ErrorInfo | None
    created_at: datetime
    updated_at: datetime
    code_version: str | None
    parent_id: str | None
    forked_from: str | None
    usage: Usage
    cost: float
    workflow_ref: str | None = None
    forked_at: str | None = None
    wake_at: datetime | None = None  # a waiting run: when it wakes (a sleep's end, an event wait's timeout)
    waiting_for: str | None = None  # a waiting run: the event type it waits for
    rollback: str | None = None  # a failed or cancelled run: how its compensations went
    queue: str | None = None  # the queue it was enqueued on (None: it ran where it was started)
    priority: int = 0  # on its queue: higher is claimed first
    dedup_id: str | None = None
    worker: str | None = None  # the worker that holds it, or held it last
    lease_expires_at: datetime | None = None  # set while a worker holds it
    lease_token: int = 0  # the fencing token: one more at each claim by a worker
    _store: Store | None = field(default=None, repr=False, compare=False)

    def _repr_html_(self) -> str:
        """The run in a notebook: its header and its steps, as ``agentflow show`` prints them."""
        from ._html import run_html

        return run_html(self)

    @cached_property
    def steps(self) -> list[Step]:
        """The recorded steps in the order they were recorded."""
        if self._store is None:
            return []
        return [Step.from_record(r) for r in self._store.load_steps(self.id)]

    def state_at(self, step: str | int | Step, *, chain: str | None = None) -> Any:
        """The checkpointed state (an agent's messages and scratch state) as it was at ``step``.

        ``step`` is a key, a ``seq`` or a ``Step``; the state is that of the last checkpoint recorded at or
        before it, rebuilt from the snapshot before it and the JSON patches since (None when there is no
        checkpoint yet). A run with checkpoints of several agents needs ``chain``: the checkpoint key
        without its ``#n`` (``support.state``), or its last part when that is unambiguous.
        """
        from ._checkpoint import checkpoint_chains, rebuild_state
        from .errors import AgentFlowError

        if isinstance(step, Step):
            seq = step.seq
        elif isinstance(step, int):
            seq = step
        else:
            found = [s.seq for s in self.steps if s.key == step]
            if not found:
                raise AgentFlowError(f"run {self.id!r} has no step {step!r}")
            seq = found[0]
        chains = checkpoint_chains(self.steps)
        if chain is None:
            if len(chains) > 1:
                raise AgentFlowError(f"run {self.id!r} checkpoints several states; pass chain= one of {sorted(chains)}")
            names = list(chains)
        else:
            names = [c for c in chains if c == chain] or [c for c in chains if c.endswith("/" + chain)]
            if len(names) != 1:
                raise AgentFlowError(
                    f"run {self.id!r}: chain {chain!r} matches {len(names)} of its checkpoint chains {sorted(chains)}"
                )
        if not names:
            return None
        return rebuild_state(chains[names[0]], seq)

    @classmethod
    def from_record(cls, rec: RunRecord, output: Any, store: Store | None) -> Run:
        return cls(
            id=rec.id,
            workflow=rec.workflow,
            status=RunStatus(rec.status),
            input=json.loads(rec.input),
            output=output,
            error=ErrorInfo.from_json(rec.error),
            created_at=_utc(rec.created_at),
            updated_at=_utc(rec.updated_at),
            code_version=rec.code_version,
            parent_id=rec.parent_id,
            forked_from=rec.forked_from,
            usage=Usage(rec.prompt_tokens, rec.completion_tokens),
            cost=rec.cost,
            workflow_ref=rec.workflow_ref,
            forked_at=rec.forked_at,
            wake_at=None if rec.wake_at is None else _utc(rec.wake_at),
            waiting_for=rec.waiting_for,
            rollback=rec.rollback,
            queue=rec.queue,
            priority=rec.priority,
            dedup_id=rec.dedup_id,
            worker=rec.lease_owner,
            lease_expires_at=None if rec.lease_expires_at is None else _utc(rec.lease_expires_at),
            lease_token=rec.lease_token,
            _store=store,
        )


ReplayMode = Literal["strict", "relaxed", "live"]


@dataclass(frozen=True)
class Replay:
    """How a replay went: the ``status`` and ``output`` it reached and how many recorded steps it was
    ``served``. A live replay that diverged says where (``diverged``, the report) and names the run that
    went on live (``live_run_id``); a strict or relaxed one that returns matched its record."""

    run_id: str
    status: RunStatus
    output: Any
    served: int
    mode: ReplayMode = "strict"
    diverged: ReplayDivergence | None = None
    live_run_id: str | None = None
    note: str | None = None  # set when the run was recorded under another code version than it replayed

    @property
    def matched(self) -> bool:
        return self.diverged is None
