"""Opening a database: a path or URL made a SQLAlchemy URL, a SQLite file probed first (a file that is not
agentflow's, or from a newer agentflow, is refused and left byte for byte as it was), the schema created
or migrated, and the store handed over (``SQLStore``).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.pool import StaticPool

from ..errors import ConfigurationError, NotAnAgentFlowDatabase, StoreError
from ._checkpointer import WalCheckpointer
from ._schema import VERSION_TABLE, check_revision, ensure_schema
from ._sql import SQLStore, describe_url, normalize_url

__all__ = ["Durability", "default_sqlite_path", "open_store"]

Durability = Literal["normal", "full"]


def _probe_sqlite_file(path: Path, create: bool) -> None:
    """Refuse a missing (unless ``create``), non-SQLite, damaged, foreign or newer file, reading only.

    The probe opens the file immutable and read-only, so a file it refuses comes out byte for byte as it
    went in, with no -wal or -shm file left beside it. ``ensure_schema`` checks again on the real
    connection; this check is what guarantees a refused file is never written.
    """
    if not path.exists():
        if not create:
            raise StoreError(f"no agentflow database at {path}; run a workflow first, or pass another --db")
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if path.is_dir():
        raise NotAnAgentFlowDatabase(f"{path} is a directory, not a database file")
    try:
        probe = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            tables = {row[0] for row in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            revision = None
            if VERSION_TABLE in tables:
                row = probe.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
                revision = None if row is None else str(row[0])
        finally:
            probe.close()
    except sqlite3.DatabaseError as exc:
        raise NotAnAgentFlowDatabase(
            f"{path} is not an agentflow database: it is not SQLite or it is damaged ({exc}); "
            "move it aside or point agentflow at another path. Nothing was changed"
        ) from exc
    check_revision(str(path), revision, tables, create=create)


def _sqlite_engine(url: str, durability: Durability) -> Engine:
    memory = make_url(url).database in (None, "", ":memory:")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30.0},
        poolclass=StaticPool if memory else None,
    )
    synchronous = "FULL" if durability == "full" else "NORMAL"

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.close()

    return engine


def open_store(url: str, *, durability: Durability = "normal", create: bool = True) -> SQLStore:
    """Open (and, when new or older, migrate) the database at ``url``.

    ``durability="normal"`` is SQLite's WAL with ``synchronous=NORMAL``: a killed process loses nothing, a
    power cut may lose the last commits. ``"full"`` syncs every commit. Postgres is always durable per
    commit (its own ``synchronous_commit``).
    """
    if durability not in ("normal", "full"):
        raise ConfigurationError(f"durability must be 'normal' or 'full', got {durability!r}")
    full_url = normalize_url(url)
    where = describe_url(full_url)
    try:
        parsed = make_url(full_url)
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {url!r} ({exc})") from exc
    backend = parsed.get_backend_name()
    file_backed = backend == "sqlite" and parsed.database not in (None, "", ":memory:")
    if backend == "sqlite":
        if file_backed:
            _probe_sqlite_file(Path(parsed.database or ""), create)
        engine = _sqlite_engine(full_url, durability)
    elif backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            raise ConfigurationError(f"use the psycopg 3 driver for Postgres (postgresql+psycopg://), got {where}")
        try:
            engine = create_engine(full_url, pool_pre_ping=True)
        except ModuleNotFoundError as exc:
            raise ConfigurationError("Postgres needs psycopg: pip install 'agentflow[postgres]'") from exc
    else:
        raise ConfigurationError(f"agentflow stores runs in SQLite or Postgres, not {backend!r} ({where})")
    try:
        ensure_schema(engine, where, create=create)
        if file_backed:
            # Persistent in the file; set once the file is known to be ours.
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    except SADatabaseError as exc:
        engine.dispose()
        if isinstance(exc, OperationalError) and backend == "postgresql":
            raise StoreError(f"cannot reach the database at {where}: {exc.orig}") from exc
        raise NotAnAgentFlowDatabase(f"{where} cannot be used as an agentflow database: {exc.orig}") from exc
    except BaseException:
        engine.dispose()
        raise
    return SQLStore(engine, full_url, WalCheckpointer(parsed.database or "") if file_backed else None)


def default_sqlite_path() -> str:
    """``./.agentflow/agentflow.db`` relative to the working directory."""
    return os.path.join(".agentflow", "agentflow.db")
