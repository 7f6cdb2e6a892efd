"""The SQL of queues: enqueueing with deduplication, claiming runs under leases, heartbeats, releases, the
lease history and the rate buckets shared by every worker.

Workers coordinate through the database alone. On Postgres a claim is ``SELECT ... FOR UPDATE SKIP
LOCKED`` (workers never wait on each other's rows), serialized per queue by an advisory lock only when the
queue has a global concurrency limit (the count and the claim must be one decision); ``NOTIFY`` tells
listening workers that a queue has work. On SQLite (one machine) a claim is a transaction that takes the
write lock at its start (``BEGIN IMMEDIATE``), so the read and the write after it see no other writer.

Every claim increments the run's ``lease_token``, the fencing token: a worker writes its steps and its
updates only while the run's token is still the one it got (see ``SQLStore.write_step``).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, case, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from ..errors import RunConflict, StoreError
from ._records import RunRecord
from ._sql import SQLStore
from ._tables import LeaseRow, RateBucketRow, RunRow

__all__ = ["NOTIFY_CHANNEL", "LeaseRecord", "QueueStore"]

# One channel for every queue of a database; the payload is the queue's name. Postgres channels are
# database-wide (not per schema): a worker may hear another schema's queue of the same name and claim
# nothing, which costs one query.
NOTIFY_CHANNEL = "agentflow_queues"
_FINISHED = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class LeaseRecord:
    """One row of ``leases``: a claim of a run by a worker and how it ended."""

    run_id: str
    token: int
    worker: str
    claimed_at: float
    released_at: float | None
    outcome: str | None


# The claim on Postgres, written out: built with SQLAlchemy constructs the same statement costs ~2 ms of
# Python a call; as text it is one round trip (~0.6 ms with the commit). The conditions are those of
# QueueStore._claimable (the SQLite path).
_PG_CLAIM = text(
    """
    WITH picked AS (
        SELECT id FROM runs
        WHERE queue = :queue AND workflow = ANY(:workflows) AND NOT (id = ANY(:exclude))
          AND (status = 'pending'
               OR (status = 'running'
                   AND (lease_expires_at <= :now OR (lease_expires_at IS NULL AND parent_id IS NULL)))
               OR (status = 'waiting' AND wake_at <= :now
                   AND (lease_expires_at IS NULL OR lease_expires_at <= :now)))
        ORDER BY priority DESC, created_at, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE runs SET status = 'running', lease_owner = :worker, lease_expires_at = :expires,
                        lease_token = runs.lease_token + 1, updated_at = :now, wake_at = NULL, waiting_for = NULL
        FROM picked WHERE runs.id = picked.id
        RETURNING runs.*
    ), history AS (
        INSERT INTO leases (run_id, token, worker, claimed_at)
        SELECT id, lease_token, :worker, :now FROM claimed
    )
    SELECT * FROM claimed
    """
)


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key for a queue."""
    return int.from_bytes(hashlib.sha256(f"agentflow-queue:{name}".encode()).digest()[:8], "big", signed=True)


class QueueStore:
    """Queue operations on an ``SQLStore``'s database."""

    def __init__(self, store: SQLStore) -> None:
        self._store = store
        self._postgres = store.dialect == "postgresql"
        self._runs = RunRow.__table__  # type: ignore[attr-defined]
        self._leases = LeaseRow.__table__  # type: ignore[attr-defined]
        self._buckets = RateBucketRow.__table__  # type: ignore[attr-defined]

    @property
    def postgres(self) -> bool:
        return self._postgres

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction that holds SQLite's write lock from its start; on Postgres a plain one (row locks
        and advisory locks serialize what must be serialized)."""
        with self._store._connect() as conn:
            if not self._postgres:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def _notify(self, conn: Connection, queue: str) -> None:
        if self._postgres:  # delivered at commit, to every worker that LISTENs
            conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, queue)))

    # -- enqueue ------------------------------------------------------------------------------------------

    def enqueue(self, run: RunRecord) -> tuple[RunRecord, bool]:
        """Insert a pending run on its queue; ``(run, True)``. When its ``dedup_id`` is taken by an
        unfinished run of the queue, or its id by a run of the same workflow and input, ``(that run,
        False)``; an id taken by another workflow or input raises ``RunConflict``."""
        runs = self._runs
        values = {name: getattr(run, name) for name in RunRecord.__dataclass_fields__}
        for _ in range(5):  # a duplicate that finishes between our insert and our look-up: try again
            try:
                with self._store._connect(begin=True) as conn:
                    conn.execute(insert(runs).values(values))
                    self._notify(conn, run.queue or "")
                return run, True
            except IntegrityError:
                pass
            with self._store._connect() as conn:
                if run.dedup_id is not None:
                    row = conn.execute(
                        select(runs).where(
                            runs.c.queue == run.queue, runs.c.dedup_id == run.dedup_id, runs.c.status.not_in(_FINISHED)
                        )
                    ).mappings().first()  # fmt: skip
                    if row is not None:
                        return RunRecord(**row), False
                row = conn.execute(select(runs).where(runs.c.id == run.id)).mappings().first()
            if row is not None:
                existing = RunRecord(**row)
                if existing.workflow != run.workflow or existing.input != run.input:
                    raise RunConflict(run.id, f"workflow {existing.workflow!r} and input {existing.input[:200]}")
                return existing, False
        raise StoreError(f"could not enqueue run {run.id!r}: its dedup id {run.dedup_id!r} kept changing hands")

    # -- claims ---------------------------------------------------------------------------------------------

    def _claimable(self, queue: str, workflows: Sequence[str], now: float, exclude: Sequence[str]) -> object:
        runs = self._runs
        unleased = or_(runs.c.lease_expires_at.is_(None), runs.c.lease_expires_at <= now)
        # A running child run with no lease of its own is executing inside its parent, under the root's
        # lease: it is not for a worker to take (its parent resumes it). One a worker claimed is.
        unheld_root = and_(runs.c.lease_expires_at.is_(None), runs.c.parent_id.is_(None))
        condition = and_(
            runs.c.queue == queue,
            runs.c.workflow.in_(list(workflows)),
            or_(
                runs.c.status == "pending",
                and_(runs.c.status == "running", or_(runs.c.lease_expires_at <= now, unheld_root)),
                and_(runs.c.status == "waiting", runs.c.wake_at <= now, unleased),
            ),
        )
        if exclude:
            condition = and_(condition, runs.c.id.not_in(list(exclude)))
        return condition

    def claim(
        self,
        queue: str,
        *,
        worker: str,
        limit: int,
        workflows: Sequence[str],
        now: float,
        lease: float,
        global_limit: int | None = None,
        exclude: Sequence[str] = (),
    ) -> list[RunRecord]:
        """Claim up to ``limit`` runs of ``queue`` for ``worker``: pending runs, due waiting runs and runs
        whose lease expired, highest priority first, then oldest. Each gets ``status='running'`` (a waiting
        run's wait cleared), the worker as ``lease_owner``, a lease until ``now + lease`` and its
        ``lease_token`` incremented; the claim is written to the lease history. ``global_limit`` caps the
        queue's runs held at once."""
        if limit <= 0 or not workflows:
            return []
        runs = self._runs
        with self._write() as conn:
            if global_limit is not None:
                if self._postgres:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(queue)})
                held = conn.execute(
                    select(func.count()).select_from(runs).where(
                        runs.c.queue == queue, runs.c.status == "running", runs.c.lease_expires_at > now
                    )
                ).scalar_one()  # fmt: skip
                limit = min(limit, global_limit - int(held))
                if limit <= 0:
                    return []
            if self._postgres:  # one statement: choose (skipping rows other workers have locked), claim, log
                params = {"queue": queue, "workflows": list(workflows), "exclude": list(exclude), "now": now,
                          "limit": limit, "worker": worker, "expires": now + lease}  # fmt: skip
                rows = conn.execute(_PG_CLAIM, params).mappings().all()
                records = [RunRecord(**row) for row in rows]
            else:
                chosen = (
                    select(runs.c.id)
                    .where(self._claimable(queue, workflows, now, exclude))  # type: ignore[arg-type]
                    .order_by(runs.c.priority.desc(), runs.c.created_at, runs.c.id)
                    .limit(limit)
                )
                ids = [row[0] for row in conn.execute(chosen)]
                if not ids:
                    return []
                rows = conn.execute(
                    update(runs)
                    .where(runs.c.id.in_(ids))
                    .values(status="running", lease_owner=worker, lease_expires_at=now + lease,
                            lease_token=runs.c.lease_token + 1, updated_at=now, wake_at=None, waiting_for=None)
                    .returning(*runs.c)
                ).mappings().all()  # fmt: skip
                records = [RunRecord(**row) for row in rows]
                conn.execute(
                    insert(self._leases),
                    [{"run_id": r.id, "token": r.lease_token, "worker": worker, "claimed_at": now} for r in records],
                )
        return sorted(records, key=lambda r: (-r.priority, r.created_at, r.id))

    def renew(self, worker: str, held: Mapping[str, int], expires_at: float) -> set[str]:
        """Heartbeat: extend the leases ``worker`` holds (run id to token) to ``expires_at``. The ids of
        the runs it still holds; the others were taken over by another worker."""
        if not held:
            return set()
        runs = self._runs
        with self._store._connect(begin=True) as conn:
            if self._postgres:  # their rows locked in id order, a parent's before its children's, as end_run does
                ordered = select(runs.c.id).where(runs.c.id.in_(list(held))).order_by(runs.c.id)
                conn.execute(ordered.with_for_update(key_share=True))
            rows = conn.execute(
                update(runs)
                .where(runs.c.id.in_(list(held)), runs.c.lease_owner == worker, runs.c.lease_expires_at.is_not(None))
                .values(lease_expires_at=expires_at)
                .returning(runs.c.id, runs.c.lease_token)
            ).all()
        return {run_id for run_id, token in rows if held.get(run_id) == token}

    def release(
        self,
        run_id: str,
        token: int,
        *,
        now: float,
        outcome: str,
        notify: str | None = None,
        requeue: bool = False,
        retry_at: float | None = None,
    ) -> bool:
        """End ``token``'s lease on a run. ``requeue``: a run still running goes back to ``pending`` with a
        new token (another worker takes it at once; a straggling thread of this one can no longer write).
        ``retry_at``: the run stays held until then (a run that failed to execute here, tried again
        later). ``notify``: the queue whose workers to wake (a slot or a run came free). False when the
        lease was not this token's any more. A lease the run's end closed already (``end_run``) keeps the
        time and outcome it got there."""
        if self._postgres:  # one round trip: the run, its lease history and the notification
            sql = (
                "WITH released AS (UPDATE runs SET lease_expires_at = :retry_at{requeue} "
                "WHERE id = :run_id AND lease_token = :token RETURNING id), "
                "history AS (UPDATE leases SET released_at = :now, outcome = :outcome "
                "WHERE run_id = :run_id AND token = :token AND released_at IS NULL) "
                "SELECT count(*){notify} FROM released"
            ).format(
                requeue=", status = CASE WHEN status = 'running' THEN 'pending' ELSE status END, "
                "lease_token = lease_token + 1" if requeue else "",
                notify=f", pg_notify('{NOTIFY_CHANNEL}', :queue)" if notify is not None else "",
            )  # fmt: skip
            params = {"retry_at": retry_at, "run_id": run_id, "token": token, "now": now, "outcome": outcome,
                      "queue": notify}  # fmt: skip
            with self._store._connect(begin=True) as conn:
                return bool(conn.execute(text(sql), params).scalar_one())
        runs, leases = self._runs, self._leases
        values: dict[str, object] = {"lease_expires_at": retry_at}
        if requeue:
            values["status"] = case((runs.c.status == "running", "pending"), else_=runs.c.status)
            values["lease_token"] = runs.c.lease_token + 1
        with self._store._connect(begin=True) as conn:
            result = conn.execute(update(runs).where(runs.c.id == run_id, runs.c.lease_token == token).values(values))
            conn.execute(
                update(leases)
                .where(leases.c.run_id == run_id, leases.c.token == token, leases.c.released_at.is_(None))
                .values(released_at=now, outcome=outcome)
            )
        return bool(result.rowcount)

    # -- what a worker looks at -----------------------------------------------------------------------------

    def next_wake(self, queue: str, workflows: Sequence[str], now: float) -> float | None:
        """When the earliest waiting run of ``queue`` is due (after ``now``), or None."""
        runs = self._runs
        query = select(func.min(runs.c.wake_at)).where(
            runs.c.queue == queue, runs.c.status == "waiting", runs.c.workflow.in_(list(workflows)),
            runs.c.wake_at > now,
        )  # fmt: skip
        with self._store._connect() as conn:
            found = conn.execute(query).scalar_one_or_none()
        return None if found is None else float(found)

    def unfinished(self, queues: Sequence[str]) -> int:
        """How many runs of ``queues`` are pending, running, or waiting with a time to wake (a run that
        waits for an event with no timeout, or is paused, waits for someone else)."""
        runs = self._runs
        query = (
            select(func.count())
            .select_from(runs)
            .where(
                runs.c.queue.in_(list(queues)),
                or_(
                    runs.c.status.in_(["pending", "running"]),
                    and_(runs.c.status == "waiting", runs.c.wake_at.is_not(None)),
                ),
            )
        )
        with self._store._connect() as conn:
            return int(conn.execute(query).scalar_one())

    def leases(self, run_id: str) -> list[LeaseRecord]:
        """The lease history of a run, oldest claim first."""
        leases = self._leases
        query = select(leases).where(leases.c.run_id == run_id).order_by(leases.c.token)
        with self._store._connect() as conn:
            return [LeaseRecord(**row) for row in conn.execute(query).mappings()]

    # -- rate buckets ---------------------------------------------------------------------------------------

    def _bucket(
        self, conn: Connection, key: str, rpm: float | None, tpm: float | None, now: float
    ) -> tuple[float, float]:
        """The bucket's levels at ``now`` (refilled since it was written, capped at the limits), the row
        locked; a bucket seen for the first time is full."""
        buckets = self._buckets
        query = select(buckets.c.requests, buckets.c.tokens, buckets.c.updated_at).where(buckets.c.key == key)
        if self._postgres:
            conn.execute(
                text("INSERT INTO rate_buckets (key, requests, tokens, updated_at) VALUES (:k, :r, :t, :u) "
                     "ON CONFLICT (key) DO NOTHING"),
                {"k": key, "r": rpm or 0.0, "t": tpm or 0.0, "u": now},
            )  # fmt: skip
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            conn.execute(insert(buckets).values(key=key, requests=rpm or 0.0, tokens=tpm or 0.0, updated_at=now))
            return rpm or 0.0, tpm or 0.0
        requests, tokens, updated_at = float(row[0]), float(row[1]), float(row[2])
        elapsed = max(0.0, now - updated_at)
        if rpm is not None:
            requests = min(rpm, requests + elapsed * rpm / 60.0)
        if tpm is not None:
            tokens = min(tpm, tokens + elapsed * tpm / 60.0)
        return requests, tokens

    def _put_bucket(self, conn: Connection, key: str, requests: float, tokens: float, now: float) -> None:
        buckets = self._buckets
        conn.execute(
            update(buckets).where(buckets.c.key == key).values(requests=requests, tokens=tokens, updated_at=now)
        )

    def take(
        self, key: str, *, rpm: float | None, tpm: float | None, requests: float, tokens: float, now: float
    ) -> float:
        """Take ``requests`` and ``tokens`` from the bucket ``key``: 0.0 when taken, else the seconds until
        there will be enough (nothing taken). A request for more tokens than the bucket holds when full
        waits for a full bucket and leaves it in debt."""
        with self._write() as conn:
            have_requests, have_tokens = self._bucket(conn, key, rpm, tpm, now)
            wait = 0.0
            if rpm is not None and have_requests < requests:
                wait = max(wait, (requests - have_requests) * 60.0 / rpm)
            if tpm is not None:
                need = min(tokens, tpm)
                if have_tokens < need:
                    wait = max(wait, (need - have_tokens) * 60.0 / tpm)
            if wait > 0:
                return wait
            self._put_bucket(conn, key, have_requests - requests, have_tokens - tokens, now)
            return 0.0

    def adjust(
        self, key: str, *, rpm: float | None, tpm: float | None, requests: float, tokens: float, now: float
    ) -> None:
        """Charge the bucket what a call used beyond what was taken for it (negative: give back)."""
        if not requests and not tokens:
            return
        with self._write() as conn:
            have_requests, have_tokens = self._bucket(conn, key, rpm, tpm, now)
            self._put_bucket(conn, key, have_requests - requests, have_tokens - tokens, now)

    def wait_for_room(self, key: str, *, rpm: float | None, tpm: float | None, now: float) -> float:
        """Seconds until the bucket holds a request and a token (0.0: now); takes nothing."""
        buckets = self._buckets
        with self._store._connect() as conn:
            row = conn.execute(
                select(buckets.c.requests, buckets.c.tokens, buckets.c.updated_at).where(buckets.c.key == key)
            ).first()
        if row is None:
            return 0.0
        elapsed = max(0.0, now - float(row[2]))
        wait = 0.0
        if rpm is not None:
            have = min(rpm, float(row[0]) + elapsed * rpm / 60.0)
            wait = max(wait, (1.0 - have) * 60.0 / rpm if have < 1.0 else 0.0)
        if tpm is not None:
            have = min(tpm, float(row[1]) + elapsed * tpm / 60.0)
            wait = max(wait, (1.0 - have) * 60.0 / tpm if have < 1.0 else 0.0)
        return wait
