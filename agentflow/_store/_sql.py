"""The store on SQLAlchemy: SQLite (embedded default) and Postgres (production, many workers).

Reads and run updates go through SQLAlchemy Core. The hot path, one row per completed step, is an
``INSERT`` prepared once and executed on a DBAPI connection the writer keeps, then a commit: the same
work as a hand-written insert, so a durable step costs little more than the database's own floor.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, literal, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.pool import PoolProxiedConnection

from ..errors import ConfigurationError, LeaseLost, RunConflict, StoreError
from ._blob_packing import packed_blob_rows, unpack_blob, unpack_blob_hash
from ._checkpointer import WalCheckpointer
from ._eval_sql import EvalSQL
from ._packing import pack_digest, packed_step, raw_hash, unpack_digest, unpacked_step, unpacked_step_row
from ._records import STEP_COLUMNS, EventRecord, RunRecord, StepRecord, SupersededStep
from ._tables import BlobRow, EventRow, FactRow, LeaseRow, ReservationRow, RunRow, StepRow, superseded_steps

__all__ = ["SQLStore", "describe_url", "normalize_url"]
RUN_COLUMNS: tuple[str, ...] = tuple(RunRecord.__dataclass_fields__)


def normalize_url(url: str) -> str:
    """Accept a path, ``:memory:``, ``sqlite:///...`` or a Postgres URL; Postgres goes through psycopg 3."""
    if url == ":memory:":
        return "sqlite://"
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser()}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _is_integrity_error(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.IntegrityError) or type(exc).__name__ in {
        "UniqueViolation",
        "IntegrityError",
    }


class SQLStore(EvalSQL):
    """``Store`` on one SQLAlchemy engine."""

    def __init__(self, engine: Engine, url: str, checkpointer: WalCheckpointer | None = None) -> None:
        self._engine = engine
        self._url = url
        # A SQLite file: its WAL is checkpointed by a thread of its own, not by a step's commit.
        self.checkpointer = checkpointer
        placeholder = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        # One connection for step records, shared by every run of this store: writes are synchronous
        # calls that never overlap on one event loop, so a connection per run would only exhaust the pool.
        self._writer: PoolProxiedConnection | None = None
        self._writer_driver: Any = None  # the writer's driver connection, and a cursor of it kept open
        self._writer_cur: Any = None
        self._writer_lock = threading.Lock()
        self._sqlite = engine.dialect.name == "sqlite"
        self._insert_blob_sql = (
            f"INSERT INTO blobs (hash, data) VALUES ({placeholder}, {placeholder}) ON CONFLICT (hash) DO NOTHING"
        )
        self._insert_step_sql = (
            f"INSERT INTO {StepRow.__tablename__} ({', '.join(STEP_COLUMNS)}) "
            f"VALUES ({', '.join([placeholder] * len(STEP_COLUMNS))})"
        )
        self._reserve_sql = (
            f"INSERT INTO {ReservationRow.__tablename__} (run_id, key, fingerprint, reserved_at) "
            f"VALUES ({', '.join([placeholder] * 4)}) ON CONFLICT (run_id, key) DO NOTHING"
        )
        # A run held by a worker under a lease: the row goes in only while the run's lease_token is still
        # the worker's (fencing). FOR SHARE holds off a claim by another worker until this commit, so a
        # claim either sees this step or makes this insert find no row.
        share = " FOR SHARE" if engine.dialect.name == "postgresql" else ""
        self._insert_fenced_step_sql = (
            f"INSERT INTO {StepRow.__tablename__} ({', '.join(STEP_COLUMNS)}) "
            f"SELECT {', '.join([placeholder] * len(STEP_COLUMNS))} WHERE EXISTS (SELECT 1 FROM "
            f"{RunRow.__tablename__} WHERE id = {placeholder} AND lease_token = {placeholder}{share})"
        )

    @contextlib.contextmanager
    def _connect(self, *, begin: bool = False) -> Iterator[Connection]:
        """A connection (in a transaction when ``begin``); driver failures come out as ``StoreError``."""
        try:
            with self._engine.begin() if begin else self._engine.connect() as conn:
                yield conn
        except IntegrityError:
            raise
        except SADatabaseError as exc:
            raise StoreError(f"the database at {self.url} failed: {exc.orig}") from exc

    @property
    def url(self) -> str:
        return describe_url(self._url)

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    @property
    def engine(self) -> Engine:
        return self._engine

    def insert_run(self, run: RunRecord) -> bool:
        values = {name: getattr(run, name) for name in RUN_COLUMNS}
        try:
            with self._connect(begin=True) as conn:
                conn.execute(insert(RunRow.__table__).values(values))  # type: ignore[attr-defined]
        except IntegrityError:
            return False
        return True

    def get_run(self, run_id: str) -> RunRecord | None:
        table = RunRow.__table__  # type: ignore[attr-defined]
        with self._connect() as conn:
            row = conn.execute(select(table).where(table.c.id == run_id)).mappings().first()
        return None if row is None else RunRecord(**row)

    def run_control(self, run_id: str) -> str | None:
        if not self._sqlite:
            table = RunRow.__table__  # type: ignore[attr-defined]
            with self._connect() as conn:
                return conn.execute(select(table.c.control).where(table.c.id == run_id)).scalar()
        # On SQLite, through the step writer's connection with a cached statement: a running run reads
        # this every 0.2 s, and SQLAlchemy's get_run took ~700 us there (~30 us a model call).
        with self._writer_lock:
            dbapi = self._writer_dbapi()
            try:
                row = dbapi.execute("SELECT control FROM runs WHERE id = ?", (run_id,)).fetchone()
            except sqlite3.Error as exc:
                self._drop_writer()
                raise StoreError(f"the database at {self.url} failed: {exc}") from exc
        return None if row is None else row[0]

    def _writer_dbapi(self) -> Any:
        """The driver connection that writes step records (opened on first use); hold ``_writer_lock``."""
        if self._writer_driver is None:
            self._writer = self._engine.raw_connection()
            dbapi: Any = self._writer.driver_connection
            if self.checkpointer is not None:
                dbapi.execute("PRAGMA wal_autocheckpoint=0")
            # Kept, with one cursor: the pool's proxy properties and a new cursor cost ~6 us a step in a run.
            self._writer_driver, self._writer_cur = dbapi, dbapi.cursor()
        return self._writer_driver

    def _drop_writer(self) -> None:
        """After a failure: a broken connection is not reused; the next write opens a new one."""
        self._writer_driver = self._writer_cur = None
        if self._writer is not None:
            self._writer.invalidate()
            self._writer = None

    def list_runs(
        self,
        *,
        statuses: Sequence[str] | None = None,
        workflow: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        table = RunRow.__table__  # type: ignore[attr-defined]
        query = select(table).order_by(table.c.created_at.desc(), table.c.id)
        if statuses:
            query = query.where(table.c.status.in_(list(statuses)))
        if workflow:
            query = query.where(table.c.workflow == workflow)
        if limit is not None:
            query = query.limit(limit)
        with self._connect() as conn:
            return [RunRecord(**row) for row in conn.execute(query).mappings()]

    def update_run(
        self,
        run_id: str,
        fields: Mapping[str, object],
        *,
        lease_token: int | None = None,
        lease_of: str | None = None,
        if_status: Sequence[str] | None = None,
    ) -> bool:
        with self._connect(begin=True) as conn:
            what = f"an update of run {run_id!r}"
            return self._update_run(conn, run_id, fields, lease_token, lease_of, what, if_status)

    def _update_run(
        self,
        conn: Connection,
        run_id: str,
        fields: Mapping[str, object],
        lease_token: int | None,
        lease_of: str | None,
        what: str,
        if_status: Sequence[str] | None = None,
    ) -> bool:
        """Set ``fields`` on the run in ``conn``'s transaction; fenced by ``lease_token`` (``LeaseLost``
        naming ``what`` when the lease is not that one any more); with ``if_status``, only while the run's
        status is one of those. Whether the row was written."""
        unknown = set(fields) - set(RUN_COLUMNS)
        if unknown:
            raise ConfigurationError(f"runs has no column(s) {sorted(unknown)}")
        table = RunRow.__table__  # type: ignore[attr-defined]
        query = update(table).where(table.c.id == run_id)
        if lease_token is not None:
            query = query.where(self._fence(run_id, lease_token, lease_of))
        if if_status is not None:
            query = query.where(table.c.status.in_(list(if_status)))
        written = conn.execute(query.values(dict(fields))).rowcount != 0
        if not written and lease_token is not None and if_status is None:
            raise LeaseLost(lease_of or run_id, lease_token, what)
        return written

    def end_run(
        self,
        run_id: str,
        fields: Mapping[str, object],
        *,
        at: float,
        parent_id: str | None = None,
        lease_token: int | None = None,
        lease_of: str | None = None,
    ) -> None:
        with self._connect(begin=True) as conn:
            self._end_run(conn, run_id, fields, at, parent_id, lease_token, lease_of)

    def _end_run(
        self,
        conn: Connection,
        run_id: str,
        fields: Mapping[str, object],
        at: float,
        parent_id: str | None,
        lease_token: int | None,
        lease_of: str | None,
    ) -> None:
        """``end_run`` in ``conn``'s transaction."""
        if parent_id is not None:  # the parent's row first, then this one's: the order renew locks rows in
            self._lock_run(conn, parent_id)
        self._update_run(conn, run_id, fields, lease_token, lease_of, f"the end of run {run_id!r}")
        self._delete_reservations(conn, run_id)
        if lease_token is not None and lease_of is None:  # claimed by a worker: its lease ends with it
            leases = LeaseRow.__table__  # type: ignore[attr-defined]
            conn.execute(
                update(leases)
                .where(leases.c.run_id == run_id, leases.c.token == lease_token, leases.c.released_at.is_(None))
                .values(released_at=at, outcome=fields.get("status"))
            )
        if parent_id is not None:
            self._insert_event(conn, parent_id, f"child:{run_id}", "null", at)

    def _fence(self, run_id: str, lease_token: int, lease_of: str | None) -> Any:
        """The condition of a fenced write to the row of ``run_id``: the lease token of ``lease_of`` (the
        run itself by default) is still ``lease_token``. Another run's row is read FOR SHARE on Postgres, as
        the step insert does: a claim of it waits for this commit."""
        runs = RunRow.__table__  # type: ignore[attr-defined]
        if lease_of is None or lease_of == run_id:
            return runs.c.lease_token == lease_token
        holder = runs.alias("holder")
        held = select(holder.c.id).where(holder.c.id == lease_of, holder.c.lease_token == lease_token)
        if self._engine.dialect.name == "postgresql":
            held = held.with_for_update(read=True)
        return held.exists()

    def load_steps(self, run_id: str) -> list[StepRecord]:
        return [StepRecord._make(row) for row in self.load_step_rows(run_id)]

    def load_step_rows(self, run_id: str) -> list[tuple[Any, ...]]:
        table = StepRow.__table__  # type: ignore[attr-defined]
        query = select(*(table.c[name] for name in STEP_COLUMNS)).where(table.c.run_id == run_id)
        with self._connect() as conn:  # row by row: 10,000 rows held at once are 10,000 tracked objects
            return [unpacked_step_row(row) for row in conn.execute(query.order_by(table.c.seq))]

    def write_step(
        self,
        step: StepRecord,
        blobs: Mapping[str, bytes] | None = None,
        lease_token: int | None = None,
        lease_of: str | None = None,
        reservations: Sequence[tuple[str, str, float]] = (),
    ) -> None:
        values = packed_step(step)
        packed_blobs = packed_blob_rows(blobs or {})
        sql = self._insert_step_sql
        if lease_token is not None:
            sql = self._insert_fenced_step_sql
            values = (*values, lease_of or step.run_id, lease_token)

        def statements(cur: Any) -> bool:
            for row in packed_blobs:  # usually one: a call's new message node
                cur.execute(self._insert_blob_sql, row)
            if reservations:  # keys of gathered steps still running, kept along (see reserve_keys)
                cur.executemany(self._reserve_sql, self._reservation_rows(step.run_id, reservations))
            cur.execute(sql, values)
            return lease_token is None or cur.rowcount != 0  # else fenced off: another worker holds the run

        try:
            written = self._writer_transaction(statements)
        except Exception as exc:
            if _is_integrity_error(exc):
                raise StoreError(
                    f"step {step.key!r} of run {step.run_id!r} is recorded already: another process is "
                    "running this run at the same time. Let one process run it"
                ) from exc
            raise StoreError(f"could not record step {step.key!r} of run {step.run_id!r}: {exc}") from exc
        if not written:
            raise LeaseLost(lease_of or step.run_id, lease_token or 0, f"step {step.key!r} of run {step.run_id!r}")

    def reserve_keys(self, run_id: str, reservations: Sequence[tuple[str, str, float]]) -> None:
        rows = self._reservation_rows(run_id, reservations)

        def statements(cur: Any) -> bool:
            cur.executemany(self._reserve_sql, rows)
            return True

        try:
            self._writer_transaction(statements)
        except Exception as exc:
            keys = ", ".join(repr(key) for key, _, _ in reservations)
            raise StoreError(f"could not reserve key(s) {keys} of run {run_id!r}: {exc}") from exc

    def _writer_transaction(self, statements: Callable[[Any], bool]) -> bool:
        """Run ``statements(cursor)`` in one transaction on the step writer's connection: committed when
        they return True, rolled back when False; whether it was committed. A failure is rolled back and
        raised as it came; the connection is not used again, unless the failure was a row already there.

        On SQLite, BEGIN and COMMIT are statements: sqlite3's statement cache keeps them prepared, where
        its implicit BEGIN and commit() parse them again for every step.
        """
        with self._writer_lock:
            dbapi = self._writer_dbapi()
            cur = self._writer_cur
            try:
                explicit = self._sqlite and not dbapi.in_transaction
                if explicit:
                    cur.execute("BEGIN IMMEDIATE")
                if not statements(cur):
                    dbapi.rollback()
                    return False
                if explicit:
                    cur.execute("COMMIT")
                else:
                    dbapi.commit()
                if self.checkpointer is not None:
                    self.checkpointer.committed()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    dbapi.rollback()
                if not _is_integrity_error(exc):
                    self._drop_writer()
                raise
            except BaseException:  # KeyboardInterrupt (a notebook's stop button): nothing half written.
                # Else the transaction stays open on this connection (on SQLite, holding the write lock
                # against every other writer), and the next step is written inside it.
                with contextlib.suppress(Exception):
                    dbapi.rollback()
                raise
        return True

    @staticmethod
    def _reservation_rows(run_id: str, reservations: Sequence[tuple[str, str, float]]) -> list[tuple[Any, ...]]:
        return [(run_id, key, pack_digest(fingerprint), at) for key, fingerprint, at in reservations]

    def load_reservations(self, run_id: str) -> dict[str, str]:
        table = ReservationRow.__table__  # type: ignore[attr-defined]
        with self._connect() as conn:
            rows = conn.execute(select(table.c.key, table.c.fingerprint).where(table.c.run_id == run_id)).all()
        return {key: unpack_digest(fp) for key, fp in rows}

    def drop_reservations(self, run_id: str) -> None:
        with self._connect(begin=True) as conn:
            self._delete_reservations(conn, run_id)

    @staticmethod
    def _delete_reservations(conn: Connection, run_id: str) -> None:
        table = ReservationRow.__table__  # type: ignore[attr-defined]
        conn.execute(delete(table).where(table.c.run_id == run_id))

    def _dialect_insert(self, table: Any) -> Any:
        """An ``INSERT`` with ``ON CONFLICT`` support: both dialects spell it the same way."""
        if self._engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
        return dialect_insert(table)

    def put_blobs(self, blobs: Mapping[str, bytes]) -> None:
        if not blobs:
            return
        table = BlobRow.__table__  # type: ignore[attr-defined]
        rows = [{"hash": h, "data": data} for h, data in packed_blob_rows(blobs)]
        with self._connect(begin=True) as conn:
            conn.execute(self._dialect_insert(table).on_conflict_do_nothing(index_elements=["hash"]), rows)

    def send_event(self, run_id: str, type: str, payload: str, sent_at: float) -> int:
        with self._connect(begin=True) as conn:
            return self._insert_event(conn, run_id, type, payload, sent_at)

    def _lock_run(self, conn: Connection, run_id: str) -> None:
        """On Postgres, lock the run's row until ``conn``'s transaction ends (as an update of it would)."""
        if not self._sqlite:
            runs = RunRow.__table__  # type: ignore[attr-defined]
            conn.execute(select(runs.c.id).where(runs.c.id == run_id).with_for_update(key_share=True))

    def _insert_event(self, conn: Connection, run_id: str, type: str, payload: str, sent_at: float) -> int:
        """Keep the event, and make the run due if it waits for ``type``; the event's id.

        The run's row is locked first. Else, on Postgres, a run suspending to wait for ``type`` at the same
        time (``suspend_run``: its status, then a look in its inbox) could miss this event, not committed
        yet, while this transaction saw the run still running and woke nobody: the run would wait for
        ever. Locked, one of the two waits for the other's commit and sees what it wrote.
        """
        events, runs = EventRow.__table__, RunRow.__table__  # type: ignore[attr-defined]
        self._lock_run(conn, run_id)
        inserted = conn.execute(
            insert(events).values(run_id=run_id, type=type, payload=payload, sent_at=sent_at)
        ).inserted_primary_key
        conn.execute(
            update(runs)
            .where(runs.c.id == run_id, runs.c.status == "waiting", runs.c.waiting_for == type)
            .values(wake_at=sent_at)
        )
        return int(inserted[0]) if inserted else 0

    def claim_event(self, run_id: str, type: str, key: str) -> tuple[int, str] | None:
        table = EventRow.__table__  # type: ignore[attr-defined]
        mine = (table.c.run_id == run_id) & (table.c.type == type)
        with self._connect(begin=True) as conn:
            row = conn.execute(select(table.c.id, table.c.payload).where(mine, table.c.delivered_key == key)).first()
            if row is not None:
                return int(row[0]), str(row[1])
            query = select(table.c.id, table.c.payload).where(mine, table.c.delivered_key.is_(None))
            query = query.order_by(table.c.id).limit(1)
            if self._engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            row = conn.execute(query).first()
            if row is None:
                return None
            conn.execute(update(table).where(table.c.id == row[0]).values(delivered_key=key))
            return int(row[0]), str(row[1])

    def load_events(self, run_id: str) -> list[EventRecord]:
        table = EventRow.__table__  # type: ignore[attr-defined]
        columns = (table.c.run_id, table.c.type, table.c.payload, table.c.sent_at, table.c.delivered_key)
        with self._connect() as conn:
            rows = conn.execute(select(*columns).where(table.c.run_id == run_id).order_by(table.c.id)).all()
        return [EventRecord(*row) for row in rows]

    def suspend_run(
        self,
        run_id: str,
        *,
        status: str,
        wake_at: float | None,
        waiting_for: str | None,
        updated_at: float,
        usage: tuple[int, int, float],
        lease_token: int | None = None,
        lease_of: str | None = None,
    ) -> None:
        runs, events = RunRow.__table__, EventRow.__table__  # type: ignore[attr-defined]
        prompt, completion, cost = usage
        mine = runs.c.id == run_id
        if lease_token is not None:
            mine = mine & self._fence(run_id, lease_token, lease_of)
        with self._connect(begin=True) as conn:
            result = conn.execute(
                update(runs)
                .where(mine)
                .values(status=status, wake_at=wake_at, waiting_for=waiting_for, updated_at=updated_at,
                        prompt_tokens=prompt, completion_tokens=completion, cost=cost)
            )  # fmt: skip
            if lease_token is not None and result.rowcount == 0:
                raise LeaseLost(lease_of or run_id, lease_token, f"suspending run {run_id!r}")
            if waiting_for is not None:
                waiting = select(events.c.id).where(
                    events.c.run_id == run_id, events.c.type == waiting_for, events.c.delivered_key.is_(None)
                )
                if conn.execute(waiting.limit(1)).first() is not None:
                    conn.execute(update(runs).where(runs.c.id == run_id).values(wake_at=updated_at))

    def due_runs(self, now: float, limit: int | None = None) -> list[RunRecord]:
        table = RunRow.__table__  # type: ignore[attr-defined]
        query = select(table).where(table.c.status == "waiting", table.c.wake_at <= now).order_by(table.c.wake_at)
        if limit is not None:
            query = query.limit(limit)
        with self._connect() as conn:
            return [RunRecord(**row) for row in conn.execute(query).mappings()]

    def supersede_steps_from(self, run_id: str, seq: int, at: float, also: Sequence[str] = ()) -> int:
        steps, kept = StepRow.__table__, superseded_steps  # type: ignore[attr-defined]
        taken = steps.c.seq >= seq if not also else or_(steps.c.seq >= seq, steps.c.key.in_(list(also)))
        mine = (steps.c.run_id == run_id, taken)
        with self._connect(begin=True) as conn:
            if not self._sqlite:  # one restart of a run at a time: the next restart number is taken here
                runs = RunRow.__table__  # type: ignore[attr-defined]
                conn.execute(select(runs.c.id).where(runs.c.id == run_id).with_for_update())
            last = conn.execute(select(func.max(kept.c.restart)).where(kept.c.run_id == run_id)).scalar()
            restart = (last or 0) + 1
            copied = select(*(steps.c[name] for name in STEP_COLUMNS), literal(restart), literal(at)).where(*mine)
            conn.execute(insert(kept).from_select([*STEP_COLUMNS, "restart", "superseded_at"], copied))
            conn.execute(delete(steps).where(*mine))
            self._delete_reservations(conn, run_id)  # for the calls after ``seq``, which run again
        return restart

    def load_superseded(self, run_id: str) -> list[SupersededStep]:
        with self._connect() as conn:
            return self._load_superseded(conn, run_id)

    @staticmethod
    def _load_superseded(conn: Connection, run_id: str) -> list[SupersededStep]:
        kept = superseded_steps
        query = select(kept.c.restart, kept.c.superseded_at, *(kept.c[name] for name in STEP_COLUMNS))
        rows = conn.execute(query.where(kept.c.run_id == run_id).order_by(kept.c.restart, kept.c.seq)).all()
        return [SupersededStep(row[0], row[1], unpacked_step(row[2:])) for row in rows]

    def get_blobs(self, hashes: Iterable[str]) -> dict[str, bytes]:
        wanted = [raw for raw in map(raw_hash, dict.fromkeys(hashes)) if raw is not None]  # others: never stored
        if not wanted:
            return {}
        table = BlobRow.__table__  # type: ignore[attr-defined]
        with self._connect() as conn:
            rows = conn.execute(select(table.c.hash, table.c.data).where(table.c.hash.in_(wanted))).all()
        return {unpack_blob_hash(h): unpack_blob(data) for h, data in rows}

    # -- facts (long-term memory) ----------------------------------------------------------------------

    def put_fact(
        self, namespace: str, key: str, value_json: str, run_id: str | None, *, updated_at: float | None = None
    ) -> None:
        table = FactRow.__table__  # type: ignore[attr-defined]
        row = {
            "namespace": namespace,
            "key": key,
            "value": value_json,
            "updated_at": time.time() if updated_at is None else updated_at,
            "run_id": run_id,
        }
        stmt = self._dialect_insert(table).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["namespace", "key"],
            set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at, "run_id": stmt.excluded.run_id},
        )
        with self._connect(begin=True) as conn:
            conn.execute(stmt)

    def get_facts(
        self, namespace: str, *, keys: Iterable[str] | None = None, prefix: str | None = None
    ) -> dict[str, str]:
        table = FactRow.__table__  # type: ignore[attr-defined]
        query = select(table.c.key, table.c.value).where(table.c.namespace == namespace)
        if keys is not None:
            wanted = list(dict.fromkeys(keys))
            if not wanted:
                return {}
            query = query.where(table.c.key.in_(wanted))
        if prefix:
            query = query.where(table.c.key.startswith(prefix, autoescape=True))
        with self._connect() as conn:
            rows = conn.execute(query.order_by(table.c.key)).all()
        return {k: v for k, v in rows}

    def delete_fact(self, namespace: str, key: str) -> bool:
        table = FactRow.__table__  # type: ignore[attr-defined]
        with self._connect(begin=True) as conn:
            result = conn.execute(delete(table).where(table.c.namespace == namespace, table.c.key == key))
        return bool(result.rowcount)

    # -- bundles (export and import of whole runs) ------------------------------------------------------

    def child_runs(self, run_id: str) -> list[RunRecord]:
        table = RunRow.__table__  # type: ignore[attr-defined]
        query = select(table).where(table.c.parent_id == run_id).order_by(table.c.created_at, table.c.id)
        with self._connect() as conn:
            return [RunRecord(**row) for row in conn.execute(query).mappings()]

    def import_runs(
        self,
        runs: Sequence[RunRecord],
        steps: Sequence[StepRecord],
        blobs: Mapping[str, bytes],
        superseded: Sequence[SupersededStep] = (),
        events: Sequence[EventRecord] = (),
    ) -> list[str]:
        run_table, step_table = RunRow.__table__, StepRow.__table__  # type: ignore[attr-defined]
        blob_table, event_table = BlobRow.__table__, EventRow.__table__  # type: ignore[attr-defined]
        by_run: dict[str, list[StepRecord]] = {}
        for step in sorted(steps, key=lambda s: s.seq):
            by_run.setdefault(step.run_id, []).append(step)
        kept_by_run: dict[str, list[SupersededStep]] = {}
        for kept in sorted(superseded, key=lambda k: (k.restart, k.record.seq)):  # load_superseded's order
            kept_by_run.setdefault(kept.record.run_id, []).append(kept)
        step_query = select(*(step_table.c[name] for name in STEP_COLUMNS)).order_by(step_table.c.seq)
        inserted: list[str] = []
        try:
            with self._connect(begin=True) as conn:
                for run in runs:
                    ours = by_run.get(run.id, [])
                    row = conn.execute(select(run_table).where(run_table.c.id == run.id)).mappings().first()
                    if row is not None:
                        present = conn.execute(step_query.where(step_table.c.run_id == run.id)).all()
                        if RunRecord(**row) != run:
                            raise RunConflict(run.id, "another record (status, output, times or usage differ)")
                        if [unpacked_step(r) for r in present] != ours:
                            raise RunConflict(run.id, "other steps")
                        if self._load_superseded(conn, run.id) != kept_by_run.get(run.id, []):
                            raise RunConflict(run.id, "other records superseded by its restarts")
                        continue  # imported before: nothing to do
                    conn.execute(insert(run_table).values(asdict(run)))
                    if ours:
                        packed = [dict(zip(STEP_COLUMNS, packed_step(step), strict=True)) for step in ours]
                        conn.execute(insert(step_table), packed)
                    if run.id in kept_by_run:
                        columns = (*STEP_COLUMNS, "restart", "superseded_at")
                        rows = [
                            dict(zip(columns, (*packed_step(k.record), k.restart, k.superseded_at), strict=True))
                            for k in kept_by_run[run.id]
                        ]
                        conn.execute(insert(superseded_steps), rows)
                    sent = [asdict(event) for event in events if event.run_id == run.id]
                    if sent:  # in the order they were sent: the ids given here keep it
                        conn.execute(insert(event_table), sent)
                    inserted.append(run.id)
                if inserted and blobs:
                    rows = [{"hash": h, "data": data} for h, data in packed_blob_rows(blobs)]
                    conn.execute(self._dialect_insert(blob_table).on_conflict_do_nothing(index_elements=["hash"]), rows)
        except IntegrityError as exc:
            raise StoreError(
                f"another process wrote one of the runs {', '.join(r.id for r in runs)} while they were being "
                "imported; nothing was imported. Try again"
            ) from exc
        return inserted

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        with self._writer_lock:
            self._writer_driver = self._writer_cur = None
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self._engine.dispose()
