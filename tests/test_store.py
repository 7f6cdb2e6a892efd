"""The store refuses bad input with a clear error and changes nothing; it keeps what it is given.

Bad input: unknown run ids, files that are not SQLite, damaged files, someone else's database, a schema
written by a newer agentflow, a missing database. Then durability settings, URL handling, blobs and the
hash chain over step records. Tests taking ``db_url`` or ``app`` run on SQLite and on Postgres.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import random
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from dbtools import execute, table_names
from nested_restart import nested_then_restarted
from sqlalchemy import Engine, text

from agentflow import AgentFlow, Context
from agentflow._llm import blob_hash
from agentflow._store._checkpointer import WalCheckpointer
from agentflow._store._open import open_store
from agentflow._store._schema import HEAD, VERSION_TABLE
from agentflow._store._sql import SQLStore, normalize_url
from agentflow.errors import (
    ConfigurationError,
    NotAnAgentFlowDatabase,
    RunNotFound,
    SchemaVersionError,
    StoreError,
)

AGENTFLOW_TABLES = {
    *("runs", "steps", "blobs", "facts", "events", "evals", "eval_cases", "leases", "rate_buckets", "reservations"),
    "superseded_steps",
    VERSION_TABLE,
}


# -- helpers ----------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sidecars(path: Path) -> list[str]:
    """The SQLite -wal / -shm / -journal files beside ``path``."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path)


def _engine(app: AgentFlow) -> Engine:
    assert isinstance(app._store, SQLStore)
    return app._store.engine


def _engine_rows(app: AgentFlow, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with _engine(app).connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql), params)]


async def _add(x: int, y: int) -> int:
    return x + y


async def _three_steps(ctx: Context, x: int) -> int:
    a = await ctx.step("a", _add, x, 1)
    b = await ctx.step("b", _add, a, 10)
    return await ctx.step("c", _add, b, 100)


def _record_run(app: AgentFlow, run_id: str) -> None:
    """Record a finished run of three steps under ``run_id``."""
    workflow = app.workflow(name="three_steps")(_three_steps)
    assert app.run(workflow, 1, run_id=run_id).output == 112


def _make_agentflow_sqlite(path: Path) -> None:
    """A real, closed agentflow database at ``path`` holding run ``r1``."""
    with AgentFlow(str(path)) as app:
        _record_run(app, "r1")
    assert _sidecars(path) == []


# -- unknown runs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["get_run", "resume", "verify"])
def test_unknown_run_id_raises_run_not_found_naming_the_id(app: AgentFlow, call: str) -> None:
    with pytest.raises(RunNotFound, match="no-such-run-7f3a") as info:
        getattr(app, call)("no-such-run-7f3a")
    assert info.value.run_id == "no-such-run-7f3a"
    assert app.list_runs() == []


# -- files that are not agentflow databases ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [random.Random(0).randbytes(8192), b"name,email\nada,ada@example.com\n" * 50],
    ids=["random-bytes", "text-file"],
)
def test_file_that_is_not_sqlite_is_refused_and_left_unchanged(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    before = _sha256(path)

    with pytest.raises(NotAnAgentFlowDatabase) as info:
        AgentFlow(str(path))

    assert str(path) in str(info.value)
    assert _sha256(path) == before
    assert _sidecars(path) == []


def test_directory_is_refused_as_a_database(tmp_path: Path) -> None:
    with pytest.raises(NotAnAgentFlowDatabase, match="directory"):
        AgentFlow(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def _corrupt_header(path: Path) -> None:
    """Overwrite the 16-byte magic string "SQLite format 3\\0"."""
    data = bytearray(path.read_bytes())
    data[0:16] = b"\xff" * 16
    path.write_bytes(bytes(data))


def _corrupt_schema_page(path: Path) -> None:
    """Overwrite the b-tree header of page 1, which holds sqlite_master."""
    data = bytearray(path.read_bytes())
    data[100:164] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _corrupt_version_table(path: Path) -> None:
    """Overwrite the root page of agentflow's version table, the first table agentflow reads at open."""
    with sqlite3.connect(path) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (VERSION_TABLE,)).fetchone()
    conn.close()
    data = bytearray(path.read_bytes())
    start = (root - 1) * page_size
    data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "header": _corrupt_header,
    "schema-page": _corrupt_schema_page,
    "version-table-page": _corrupt_version_table,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_damaged_sqlite_file_is_refused_and_left_unchanged(tmp_path: Path, corruption: str) -> None:
    path = tmp_path / "agentflow.db"
    _make_agentflow_sqlite(path)
    CORRUPTIONS[corruption](path)
    before = _sha256(path)

    with pytest.raises(NotAnAgentFlowDatabase) as info:
        AgentFlow(str(path))

    assert str(path) in str(info.value)
    assert _sha256(path) == before


@pytest.mark.parametrize(
    "corruption",
    [
        "header",
        "schema-page",
        "version-table-page",
    ],
)
def test_damaged_sqlite_file_gets_no_wal_or_shm_files_beside_it(tmp_path: Path, corruption: str) -> None:
    path = tmp_path / "agentflow.db"
    _make_agentflow_sqlite(path)
    CORRUPTIONS[corruption](path)

    with pytest.raises(NotAnAgentFlowDatabase):
        AgentFlow(str(path))

    assert _sidecars(path) == []


def _make_foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('Ada')")
    conn.close()


def test_foreign_sqlite_database_is_refused_naming_its_table(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    _make_foreign_sqlite(path)

    with pytest.raises(NotAnAgentFlowDatabase, match="customers"):
        AgentFlow(str(path))

    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows = conn.execute("SELECT id, name FROM customers").fetchall()
    conn.close()
    assert tables == {"customers"}
    assert rows == [(1, "Ada")]
    assert _sidecars(path) == []


def test_foreign_sqlite_database_bytes_are_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    _make_foreign_sqlite(path)
    before = _sha256(path)

    with pytest.raises(NotAnAgentFlowDatabase):
        AgentFlow(str(path))

    assert _sha256(path) == before


# -- foreign Postgres schemas -----------------------------------------------------------------------------


def test_postgres_schema_with_a_foreign_runs_table_is_refused_and_nothing_created(postgres_schema_url: str) -> None:
    execute(postgres_schema_url, "CREATE TABLE runs (run_number INTEGER PRIMARY KEY, ran_at DATE)")
    execute(postgres_schema_url, "INSERT INTO runs VALUES (1, '2024-01-01')")

    with pytest.raises(NotAnAgentFlowDatabase, match="runs"):
        AgentFlow(postgres_schema_url)

    assert table_names(postgres_schema_url) == {"runs"}
    assert execute(postgres_schema_url, "SELECT run_number FROM runs") == [(1,)]


def test_postgres_schema_with_unrelated_tables_gets_agentflow_tables_beside_them(postgres_schema_url: str) -> None:
    execute(postgres_schema_url, "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    execute(postgres_schema_url, "INSERT INTO customers VALUES (1, 'Ada')")

    with AgentFlow(postgres_schema_url) as app:
        _record_run(app, "r1")
        assert app.get_run("r1").output == 112

    assert table_names(postgres_schema_url) == AGENTFLOW_TABLES | {"customers"}
    assert execute(postgres_schema_url, "SELECT id, name FROM customers") == [(1, "Ada")]


# -- a schema written by a newer agentflow ----------------------------------------------------------------


def test_newer_schema_version_is_refused_and_left_unchanged(db_url: str) -> None:
    with AgentFlow(db_url) as app:
        _record_run(app, "r1")
    execute(db_url, f"UPDATE {VERSION_TABLE} SET version_num = '9999_future'")
    runs_before = execute(db_url, "SELECT * FROM runs ORDER BY id")
    steps_before = execute(db_url, "SELECT * FROM steps ORDER BY run_id, seq")
    sqlite_file = None if "://" in db_url else Path(db_url)
    bytes_before = _sha256(sqlite_file) if sqlite_file else None

    with pytest.raises(SchemaVersionError) as info:
        AgentFlow(db_url)

    message = str(info.value)
    assert "9999_future" in message
    assert "Upgrade agentflow" in message
    assert HEAD in message
    assert execute(db_url, f"SELECT version_num FROM {VERSION_TABLE}") == [("9999_future",)]
    assert execute(db_url, "SELECT * FROM runs ORDER BY id") == runs_before
    assert execute(db_url, "SELECT * FROM steps ORDER BY run_id, seq") == steps_before
    if sqlite_file is not None:
        assert _sha256(sqlite_file) == bytes_before
        assert _sidecars(sqlite_file) == []


# -- a missing database -----------------------------------------------------------------------------------


def test_missing_database_with_create_false_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "agentflow.db"

    with pytest.raises(StoreError, match="no agentflow database") as info:
        AgentFlow(str(path), create=False)

    assert str(path) in str(info.value)
    assert not path.parent.exists()


def test_existing_database_opens_with_create_false(tmp_path: Path) -> None:
    path = tmp_path / "agentflow.db"
    _make_agentflow_sqlite(path)
    with AgentFlow(str(path), create=False) as app:
        assert app.get_run("r1").output == 112


# -- durability -------------------------------------------------------------------------------------------


def _pragma(engine: Engine, name: str) -> Any:
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


def test_sqlite_default_durability_is_wal_with_synchronous_normal(tmp_path: Path) -> None:
    with AgentFlow(str(tmp_path / "agentflow.db")) as app:
        engine = _engine(app)
        assert _pragma(engine, "journal_mode") == "wal"
        assert _pragma(engine, "synchronous") == 1  # NORMAL


def test_sqlite_full_durability_syncs_every_commit(tmp_path: Path) -> None:
    with AgentFlow(str(tmp_path / "agentflow.db"), durability="full") as app:
        engine = _engine(app)
        assert _pragma(engine, "journal_mode") == "wal"
        assert _pragma(engine, "synchronous") == 2  # FULL


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "agentflow-checkpoint"]


def test_step_commits_leave_the_wal_checkpoint_to_the_store_thread(tmp_path: Path) -> None:
    """The step writer never checkpoints; the store's thread copies the WAL into the database file after
    every ``every`` step commits, and stops when the store closes (leaving no WAL behind)."""
    path = tmp_path / "agentflow.db"
    with AgentFlow(str(path)) as app:
        store = app._store
        assert isinstance(store, SQLStore) and store.checkpointer is not None
        store.checkpointer.every = 3
        _record_run(app, "r1")  # three step commits: one checkpoint asked for
        store.checkpointer.wait()
        assert store.checkpointer.checkpoints == 1 and store.checkpointer.last_error is None
        assert store._writer_dbapi().execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        # The database file alone (without its -wal) holds the steps now.
        alone = tmp_path / "alone.db"
        shutil.copyfile(path, alone)
        conn = sqlite3.connect(alone)
        try:
            assert conn.execute("SELECT count(*) FROM steps WHERE run_id = 'r1'").fetchone() == (3,)
        finally:
            conn.close()
        assert len(_checkpoint_threads()) == 1
    assert _checkpoint_threads() == [] and _sidecars(path) == []


def test_a_failing_checkpoint_is_logged_and_kept_and_the_next_one_is_tried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpointer = WalCheckpointer(str(tmp_path / "no-such-folder" / "agentflow.db"), every=1)
    try:
        with caplog.at_level(logging.WARNING, logger="agentflow.store"):
            checkpointer.committed()
            checkpointer.wait()
        assert isinstance(checkpointer.last_error, sqlite3.Error) and checkpointer.checkpoints == 0
        assert "checkpoint of" in caplog.text and "no-such-folder" in caplog.text
        (tmp_path / "no-such-folder").mkdir()
        checkpointer.request()
        checkpointer.wait()
        assert checkpointer.checkpoints == 1
    finally:
        checkpointer.close()
    assert _checkpoint_threads() == []


def test_a_memory_database_has_no_checkpoint_thread(clock: Any) -> None:
    with AgentFlow(":memory:", clock=clock) as app:
        assert isinstance(app._store, SQLStore) and app._store.checkpointer is None


def test_unknown_durability_is_a_configuration_error_before_anything_is_created(tmp_path: Path) -> None:
    path = tmp_path / "agentflow.db"
    with pytest.raises(ConfigurationError, match="paranoid"):
        AgentFlow(str(path), durability="paranoid")  # type: ignore[arg-type]
    assert not path.exists()


# -- URLs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("runs/agentflow.db", "sqlite:///runs/agentflow.db"),
        ("/var/lib/agentflow.db", "sqlite:////var/lib/agentflow.db"),
        ("~/agentflow.db", f"sqlite:///{Path.home() / 'agentflow.db'}"),
        (":memory:", "sqlite://"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("postgres://u:pw@db:5432/prod", "postgresql+psycopg://u:pw@db:5432/prod"),
        ("postgresql://u@db/prod", "postgresql+psycopg://u@db/prod"),
        ("postgresql+psycopg://u@db/prod", "postgresql+psycopg://u@db/prod"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_unsupported_backend_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="mysql"):
        open_store("mysql://x/y")


def test_postgres_driver_other_than_psycopg_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="psycopg"):
        open_store("postgresql+asyncpg://u@db/prod")


def test_default_url_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "from-env.db"
    monkeypatch.setenv("AGENTFLOW_DATABASE_URL", str(target))

    with AgentFlow() as app:
        assert app.url == str(target)

    assert target.exists()
    assert not (tmp_path / ".agentflow").exists()


def test_default_url_is_agentflow_db_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTFLOW_DATABASE_URL", raising=False)

    with AgentFlow() as app:
        _record_run(app, "r1")

    path = tmp_path / ".agentflow" / "agentflow.db"
    assert path.is_file()
    assert execute(str(path), "SELECT id FROM runs") == [("r1",)]


def test_memory_database_works(clock: Any) -> None:
    with AgentFlow(":memory:", clock=clock) as app:
        _record_run(app, "r1")
        assert app.get_run("r1").output == 112


# -- blobs ------------------------------------------------------------------------------------------------


def _blob(data: bytes) -> tuple[str, bytes]:
    return blob_hash(data), data


def test_blobs_round_trip(app: AgentFlow) -> None:
    blobs = dict([_blob(b"hello"), _blob(bytes(range(256)) * 3), _blob(b"")])
    app._store.put_blobs(blobs)
    assert app._store.get_blobs(list(blobs)) == blobs


def test_putting_the_same_blob_twice_keeps_one_row(app: AgentFlow) -> None:
    digest, data = _blob(b'{"role": "user", "content": "hi"}')
    app._store.put_blobs({digest: data})
    app._store.put_blobs({digest: data})

    assert app._store.get_blobs([digest]) == {digest: data}
    assert _engine_rows(app, "SELECT count(*) FROM blobs") == [(1,)]


def test_a_blob_key_that_is_not_a_blob_hash_is_refused_and_nothing_is_written(app: AgentFlow) -> None:
    digest, data = _blob(b"kept")
    hex_key = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ValueError, match="is not a blob hash"):
        app._store.put_blobs({digest: data, hex_key: b"other"})
    assert app._store.get_blobs([digest, hex_key]) == {}


def test_get_blobs_leaves_out_unknown_hashes(app: AgentFlow) -> None:
    digest, data = _blob(b"known")
    unknown = blob_hash(b"never stored")
    app._store.put_blobs({digest: data})

    assert app._store.get_blobs([unknown, digest, digest]) == {digest: data}
    assert app._store.get_blobs([unknown]) == {}
    assert app._store.get_blobs([]) == {}


# -- step writes ------------------------------------------------------------------------------------------


def test_a_refused_step_write_leaves_nothing_and_the_next_write_commits(app: AgentFlow) -> None:
    """A step written twice is refused as a whole (its blob goes too); the writer is then out of its
    transaction, so the next write commits and other connections see it."""
    _record_run(app, "r1")
    (first,) = (rec for rec in app._store.load_steps("r1") if rec.seq == 0)
    digest, data = _blob(b'{"role":"user","content":"written with the refused step"}')
    with pytest.raises(StoreError, match="recorded already"):
        app._store.write_step(first, {digest: data})
    assert app._store.get_blobs([digest]) == {}

    later = first._replace(key="d#0", seq=3)
    app._store.write_step(later, {digest: data})
    assert app._store.get_blobs([digest]) == {digest: data}
    assert _step_keys(app, "r1") == ["a#0", "b#0", "c#0", "d#0"]


def test_run_control_reads_what_another_connection_asked_for_the_run(app: AgentFlow, db_url: str) -> None:
    """A running run reads its ``control`` before live steps; a pause asked by another process (another
    store on the same database) shows, also after the reader has written steps on its connection."""
    _record_run(app, "r1")
    assert app._store.run_control("r1") is None
    assert app._store.run_control("no-such-run") is None
    other = AgentFlow(db_url)
    try:
        other._store.update_run("r1", {"control": "pause"})
        assert app._store.run_control("r1") == "pause"
        other._store.update_run("r1", {"control": "cancel"})
    finally:
        other.close()
    assert app._store.run_control("r1") == "cancel"


class _InterruptedCursor:
    """The step writer's cursor, but a KeyboardInterrupt (a notebook's stop button) comes right after the
    step row of ``key`` is inserted, before the COMMIT."""

    def __init__(self, cursor: Any, key: str) -> None:
        self._cursor, self._key = cursor, key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def execute(self, sql: str, params: Any = ()) -> Any:
        result = self._cursor.execute(sql, params)
        if sql.startswith("INSERT INTO steps") and self._key in params:
            self._key = "\x00"  # once
            raise KeyboardInterrupt
        return result


def test_an_interrupt_between_a_step_insert_and_its_commit_leaves_nothing_half_written(app: AgentFlow) -> None:
    _record_run(app, "first")  # the writer's connection is open now
    store = app._store
    assert isinstance(store, SQLStore)
    store._writer_cur = _InterruptedCursor(store._writer_cur, "b#0")
    with pytest.raises(KeyboardInterrupt):
        _record_run(app, "r")
    assert _step_keys(app, "r") == ["a#0"]  # b#0 was not committed
    # Before: the writer's connection stayed in the interrupted transaction; resuming wrote b#0 again
    # inside it and failed ("recorded already: another process is running this run").
    assert app.resume("r").output == 112
    assert _step_keys(app, "r") == ["a#0", "b#0", "c#0"]
    assert app.verify("r") is None


# -- the hash chain over step records ---------------------------------------------------------------------


def _step_keys(app: AgentFlow, run_id: str) -> list[str]:
    return [key for (key,) in _engine_rows(app, "SELECT key FROM steps WHERE run_id = :r ORDER BY seq", r=run_id)]


def test_verify_is_none_for_an_untouched_run(app: AgentFlow) -> None:
    _record_run(app, "r1")
    assert len(_step_keys(app, "r1")) == 3
    assert app.verify("r1") is None


def test_verify_names_the_step_whose_output_was_changed(app: AgentFlow) -> None:
    _record_run(app, "r1")
    _record_run(app, "r2")
    middle = _step_keys(app, "r1")[1]

    with _engine(app).begin() as conn:
        conn.execute(
            text("UPDATE steps SET output = '999' WHERE run_id = 'r1' AND key = :key"),
            {"key": middle},
        )

    assert app.verify("r1") == middle
    assert app.verify("r2") is None


def test_verify_names_the_step_after_a_removed_step(app: AgentFlow) -> None:
    _record_run(app, "r1")
    first, second, _third = _step_keys(app, "r1")

    with _engine(app).begin() as conn:
        conn.execute(text("DELETE FROM steps WHERE run_id = 'r1' AND key = :key"), {"key": first})

    assert app.verify("r1") == second


def test_verify_holds_after_a_restart_takes_records_out_of_the_middle_of_the_run(app: AgentFlow) -> None:
    nested_then_restarted(app)
    assert app.verify("n") is None  # before: "side#0", which links to the inner#0 taken out
    assert app.restart("n", from_key="side#0").output == 6  # a second restart, on top of the first
    assert app.verify("n") is None


def test_verify_names_a_changed_record_a_restart_took_out(app: AgentFlow) -> None:
    nested_then_restarted(app)
    with _engine(app).begin() as conn:
        conn.execute(text("UPDATE superseded_steps SET output = '99' WHERE run_id = 'n' AND key = 'last#0'"))
    assert app.verify("n") == "last#0 (taken out by restart 1)"


def test_verify_names_the_kept_record_whose_superseded_link_was_removed(app: AgentFlow) -> None:
    nested_then_restarted(app)
    with _engine(app).begin() as conn:
        conn.execute(text("DELETE FROM superseded_steps WHERE run_id = 'n' AND key = 'outer#0/inner#0'"))
    assert app.verify("n") == "side#0"


# -- create=False changes nothing -------------------------------------------------------------------------


def test_create_false_refuses_an_empty_sqlite_file_and_leaves_it_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()

    with pytest.raises(StoreError, match="holds no agentflow database"):
        AgentFlow(str(path), create=False)

    assert path.read_bytes() == b""
    assert _sidecars(path) == []


def test_create_false_refuses_an_empty_postgres_schema_and_creates_nothing(postgres_schema_url: str) -> None:
    with pytest.raises(StoreError, match="holds no agentflow database"):
        AgentFlow(postgres_schema_url, create=False)

    assert table_names(postgres_schema_url) == set()


# -- reads from a damaged file ----------------------------------------------------------------------------


def test_damage_found_only_when_reading_runs_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "agentflow.db"
    _make_agentflow_sqlite(path)
    with sqlite3.connect(path) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()
    conn.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page_size : (root - 1) * page_size + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))

    with AgentFlow(str(path)) as app, pytest.raises(StoreError, match="failed"):  # opens: the damage is elsewhere
        app.get_run("r1")


def test_a_long_run_grows_no_heap_the_garbage_collector_walks(tmp_path: Path) -> None:
    """The journal keeps a run's records as plain tuples, which the collector stops tracking: 500 more
    steps leave no more objects for a full collection to walk (else one such collection, over a heap
    that grows with the run, lands in a late step and makes it cost more than an early one)."""
    tracked: dict[int, int] = {}

    async def row(i: int) -> dict[str, Any]:
        return {"index": i, "text": "x" * 150}

    with AgentFlow(str(tmp_path / "long.db")) as app:

        @app.workflow(name="long")
        async def long(ctx: Context, n: int) -> int:
            for i in range(n):
                if i in (100, n - 1):
                    gc.collect()
                    tracked[i] = len(gc.get_objects())
                await ctx.step("s", row, i)
            return n

        run = app.run(long, 600)
        assert run.status == "completed" and len(run.steps) == 600
    assert tracked[599] - tracked[100] < 100, tracked  # one tracked record a step would be 498 more


def test_the_journal_builds_step_records_as_their_constructor_would(db_url: str) -> None:
    from agentflow._journal import Journal
    from agentflow._store import RunRecord, StepRecord

    store = open_store(db_url)
    try:
        store.insert_run(RunRecord(id="r", workflow="w", status="running", input="{}", created_at=1.0, updated_at=1.0))
        journal = Journal("r", store, [])
        made = journal.append(
            key="s#0", kind="step", name="s", fingerprint="f" * 64, request='{"x":1}', status="completed",
            attempt=1, output="2", error=None, started_at=1.0, finished_at=2.0, prompt_tokens=3,
            completion_tokens=4, cost=0.5,
        )  # fmt: skip
        assert type(made) is StepRecord and made == StepRecord(**made._asdict())
        assert hash(made) == hash(StepRecord(**made._asdict()))
        assert journal.recorded("s#0") == made and type(journal.recorded("s#0")) is StepRecord
        assert store.load_steps("r") == [made]
    finally:
        store.close()


def test_a_reserved_key_keeps_its_first_request_and_a_restart_drops_the_runs_reservations(app: AgentFlow) -> None:
    store = app._store
    first, second = "a" * 64, "b" * 64
    store.reserve_keys("r1", [("pay#0", first, 1.0)])
    store.reserve_keys("r1", [("pay#0", second, 2.0), ("pay#1", second, 2.0)])  # pay#0 again: the first stands
    store.reserve_keys("r2", [("pay#0", second, 2.0)])
    assert store.load_reservations("r1") == {"pay#0": first, "pay#1": second}
    store.supersede_steps_from("r1", 0, 3.0)
    assert store.load_reservations("r1") == {}
    assert store.load_reservations("r2") == {"pay#0": second}
    store.drop_reservations("r2")
    assert store.load_reservations("r2") == {}
