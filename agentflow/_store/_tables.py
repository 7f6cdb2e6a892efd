"""The SQLModel tables. Every change here needs an Alembic migration in ``migrations/versions``.

``tests/test_store_schema.py`` checks that the migrations build exactly these tables.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, LargeBinary, String, Table, Text, text
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

__all__ = [
    "BlobRow",
    "EvalCaseRow",
    "EvalRow",
    "FactRow",
    "LeaseRow",
    "RateBucketRow",
    "ReservationRow",
    "RunRow",
    "StepRow",
    "metadata",
    "superseded_steps",
]


# The rows the deduplication index covers: a dedup id is unique among the runs of a queue not yet finished.
UNFINISHED_DEDUP = "dedup_id IS NOT NULL AND status NOT IN ('completed', 'failed', 'cancelled')"


class _AgentFlowTable(SQLModel, registry=registry()):
    """Base of agentflow's tables: their own registry and metadata, apart from a user's SQLModel tables."""


class RunRow(_AgentFlowTable, table=True):
    __tablename__ = "runs"

    id: str = Field(sa_column=Column(String, primary_key=True))
    workflow: str = Field(sa_column=Column(String, nullable=False, index=True))
    status: str = Field(sa_column=Column(String, nullable=False, index=True))
    input: str = Field(sa_column=Column(Text, nullable=False))
    output: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    code_version: str | None = Field(default=None, sa_column=Column(String))
    workflow_ref: str | None = Field(default=None, sa_column=Column(String))  # module:qualname of its code
    # Waiting runs: when to wake (a sleep's end, an event wait's timeout, or now when an event came) and
    # which event type they wait for. A deadline for the whole run; control holds a pending "pause" or
    # "cancel" request; rollback says how the compensations of a failed or cancelled run went.
    wake_at: float | None = Field(default=None, sa_column=Column(Float, index=True))
    waiting_for: str | None = Field(default=None, sa_column=Column(String))
    deadline_at: float | None = Field(default=None, sa_column=Column(Float))
    control: str | None = Field(default=None, sa_column=Column(String))
    rollback: str | None = Field(default=None, sa_column=Column(Text))
    parent_id: str | None = Field(default=None, sa_column=Column(String, index=True))
    forked_from: str | None = Field(default=None, sa_column=Column(String))
    forked_at: str | None = Field(default=None, sa_column=Column(String))
    # How a run derived from ``forked_from`` uses it, so that a resume after a crash uses it the same way:
    # "fork" (a fork or a live replay: its non-idempotent calls are served from the source's records),
    # "counterfactual:live" or "counterfactual:missing" (its tool calls are answered from the source's
    # recorded world). None for a run derived from nothing.
    derived_as: str | None = Field(default=None, sa_column=Column(String))
    created_at: float = Field(sa_column=Column(Float, nullable=False, index=True))
    updated_at: float = Field(sa_column=Column(Float, nullable=False))
    prompt_tokens: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    completion_tokens: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    cost: float = Field(default=0.0, sa_column=Column(Float, nullable=False, server_default="0"))
    # Leases, for many workers (a later migration adds queues): who holds the run, until when, and a
    # fencing token that grows with every new holder.
    lease_owner: str | None = Field(default=None, sa_column=Column(String))
    lease_expires_at: float | None = Field(default=None, sa_column=Column(Float))
    lease_token: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    # Queues: the queue a run waits on for a worker (None: it runs in the process that started it), its
    # priority (higher first) and a deduplication id, unique among the queue's unfinished runs.
    queue: str | None = Field(default=None, sa_column=Column(String))
    priority: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    dedup_id: str | None = Field(default=None, sa_column=Column(String))

    __table_args__ = (
        Index("ix_runs_queue_status", "queue", "status"),
        Index(
            "ix_runs_queue_dedup",
            "queue",
            "dedup_id",
            unique=True,
            sqlite_where=text(UNFINISHED_DEDUP),
            postgresql_where=text(UNFINISHED_DEDUP),
        ),
    )


class StepRow(_AgentFlowTable, table=True):
    """One recorded step. The hot table: one insert per step, so it carries only its primary key.

    ``fingerprint`` and ``chain`` hold sha256 digests as 32 bytes; ``request``, ``output`` and ``error``
    hold JSON, deflated against a preset dictionary when that is shorter (``_packing`` says how). Rows
    written before migration 0007 hold the same as text and read the same.

    No foreign key to ``runs`` and no index on ``seq``: on Postgres the foreign key alone costs ~50 us
    per insert (a KEY SHARE lock on the run's row), a sixth of a step's whole budget. The engine inserts
    a run before its steps and numbers ``seq`` itself; reads of a run's steps use the primary key prefix.
    """

    __tablename__ = "steps"

    run_id: str = Field(sa_column=Column(String, primary_key=True))
    key: str = Field(sa_column=Column(String, primary_key=True))
    seq: int = Field(sa_column=Column(Integer, nullable=False))
    kind: str = Field(sa_column=Column(String, nullable=False))
    name: str = Field(sa_column=Column(String, nullable=False))
    fingerprint: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    request: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    status: str = Field(sa_column=Column(String, nullable=False))
    attempt: int = Field(sa_column=Column(Integer, nullable=False))
    output: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    error: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    started_at: float = Field(sa_column=Column(Float, nullable=False))
    finished_at: float = Field(sa_column=Column(Float, nullable=False))
    prompt_tokens: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    completion_tokens: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    cost: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    chain: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class ReservationRow(_AgentFlowTable, table=True):
    """A key taken by a call that was about to run, with the fingerprint of its request: written before
    the call when another execution could hand the key to a sibling (``asyncio.gather``), so that a call
    in flight when the process died keeps its key on resume (``Journal.reserved_match``).

    Not a step record: outside the hash chain, never served; a run's are dropped when it ends. Written
    before the call for non-idempotent tools, tools that take their ``IdempotencyKey`` and child runs
    started in a gathered coroutine; for a gathered step, with the run's next record.
    """

    __tablename__ = "reservations"

    run_id: str = Field(sa_column=Column(String, primary_key=True))
    key: str = Field(sa_column=Column(String, primary_key=True))
    fingerprint: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    reserved_at: float = Field(sa_column=Column(Float, nullable=False))


class BlobRow(_AgentFlowTable, table=True):
    """A content-addressed payload (a message chain's node, a call's tools): the sha256 of the data as 32
    bytes, and the data packed (``agentflow._store._blob_packing``)."""

    __tablename__ = "blobs"

    hash: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class FactRow(_AgentFlowTable, table=True):
    """A durable fact of long-term memory: a JSON value under a key, in a namespace (an agent's name).

    Facts outlive runs; ``run_id`` says which run wrote the current value. Reads of a namespace by key
    or key prefix use the primary key.
    """

    __tablename__ = "facts"

    namespace: str = Field(sa_column=Column(String, primary_key=True))
    key: str = Field(sa_column=Column(String, primary_key=True))
    value: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: float = Field(sa_column=Column(Float, nullable=False))
    run_id: str | None = Field(default=None, sa_column=Column(String))


class EventRow(_AgentFlowTable, table=True):
    """An event sent to a run: kept until a wait takes it, then marked with the key of that wait, so that
    each event is delivered once (and to the same wait again if the run crashed before recording it)."""

    __tablename__ = "events"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    run_id: str = Field(sa_column=Column(String, nullable=False, index=True))
    type: str = Field(sa_column=Column(String, nullable=False))
    payload: str = Field(sa_column=Column(Text, nullable=False))
    sent_at: float = Field(sa_column=Column(Float, nullable=False))
    delivered_key: str | None = Field(default=None, sa_column=Column(String))


class LeaseRow(_AgentFlowTable, table=True):
    """One claim of a run by a worker (the lease history): the fencing token it got, when, and how the
    lease ended (``released_at`` and ``outcome``; both None while held, or forever if the worker died)."""

    __tablename__ = "leases"

    run_id: str = Field(sa_column=Column(String, primary_key=True))
    token: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    worker: str = Field(sa_column=Column(String, nullable=False))
    claimed_at: float = Field(sa_column=Column(Float, nullable=False))
    released_at: float | None = Field(default=None, sa_column=Column(Float))
    outcome: str | None = Field(default=None, sa_column=Column(String))


class RateBucketRow(_AgentFlowTable, table=True):
    """A token bucket shared by every worker of a rate limit: the requests and LLM tokens left in it at
    ``updated_at`` (it refills continuously up to the limit per minute; usage above an estimate is debt)."""

    __tablename__ = "rate_buckets"

    key: str = Field(sa_column=Column(String, primary_key=True))
    requests: float = Field(sa_column=Column(Float, nullable=False))
    tokens: float = Field(sa_column=Column(Float, nullable=False))
    updated_at: float = Field(sa_column=Column(Float, nullable=False))


class EvalRow(_AgentFlowTable, table=True):
    """An eval of a suite's cases (``agentflow.evals``): how it ran, its totals, and a JSON summary."""

    __tablename__ = "evals"

    id: str = Field(sa_column=Column(String, primary_key=True))
    suite: str = Field(sa_column=Column(String, nullable=False, index=True))
    mode: str = Field(sa_column=Column(String, nullable=False))
    created_at: float = Field(sa_column=Column(Float, nullable=False, index=True))
    dataset: str = Field(default="", sa_column=Column(String, nullable=False))
    candidate: str | None = Field(default=None, sa_column=Column(String))
    baseline_id: str | None = Field(default=None, sa_column=Column(String))
    case_count: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    passed_count: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    prompt_tokens: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    completion_tokens: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    cost: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    summary: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class EvalCaseRow(_AgentFlowTable, table=True):
    """One case of an eval: the run scored, its scores and its trajectory (JSON), so that evals can be
    compared later without the runs."""

    __tablename__ = "eval_cases"

    eval_id: str = Field(sa_column=Column(String, primary_key=True))
    case_id: str = Field(sa_column=Column(String, primary_key=True))
    seq: int = Field(sa_column=Column(Integer, nullable=False))
    source_run_id: str | None = Field(default=None, sa_column=Column(String))
    run_id: str | None = Field(default=None, sa_column=Column(String))
    status: str = Field(sa_column=Column(String, nullable=False))
    passed: bool = Field(sa_column=Column(Boolean, nullable=False))
    scores: str = Field(sa_column=Column(Text, nullable=False))
    trajectory: str = Field(sa_column=Column(Text, nullable=False))
    output: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    prompt_tokens: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    completion_tokens: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    cost: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    latency: float = Field(default=0.0, sa_column=Column(Float, nullable=False))


metadata = _AgentFlowTable.metadata

# The records a restart took out of a run (``AgentFlow.restart``): kept for the audit trail, and so that a
# restarted run, resumed after a crash too, serves a non-idempotent call its superseded part made. The
# columns of ``steps`` as they are there (packed), plus which restart of the run took them out and when.
superseded_steps = Table(
    "superseded_steps",
    metadata,
    Column("run_id", String, primary_key=True),
    Column("restart", Integer, primary_key=True),  # 1 for the run's first restart, 2 for the next...
    *(
        Column(column.name, column.type, primary_key=column.primary_key, nullable=column.nullable)
        for column in StepRow.__table__.columns  # type: ignore[attr-defined]
        if column.name != "run_id"
    ),
    Column("superseded_at", Float, nullable=False),
)
