"""The schema version: checked every time a database is opened, migrated with Alembic when behind.

The revisions this agentflow knows are listed in ``REVISIONS`` (oldest first) so that opening an
up-to-date database costs one query and no Alembic import; ``tests/test_store_schema.py`` checks the list
against the migration scripts. A database at a revision not in the list was written by a newer agentflow
and is refused, unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import NotAnAgentFlowDatabase, SchemaVersionError, StoreError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = ["HEAD", "REVISIONS", "VERSION_TABLE", "ensure_schema", "migration_transaction"]

VERSION_TABLE = "agentflow_schema_version"
REVISIONS: tuple[str, ...] = (
    "0001_initial",
    "0002_facts",
    "0003_workflow_ref",
    "0004_lifecycle",
    "0005_queues",
    "0006_evals",
    "0007_packed_steps",
    "0008_packed_blobs",
    "0009_reservations",
    "0010_superseded_steps",
)
HEAD = REVISIONS[-1]
OUR_TABLES = frozenset(
    {
        "runs",
        "steps",
        "blobs",
        "facts",
        "events",
        "leases",
        "rate_buckets",
        "evals",
        "eval_cases",
        "reservations",
        "superseded_steps",
    }
)
_MIGRATIONS = Path(__file__).parent / "migrations"
# Arbitrary constant: Postgres advisory lock held while one process migrates.
_PG_MIGRATION_LOCK = 0x61676E74666C6F77 % (2**63)


def current_revision(conn: Connection, tables: set[str]) -> str | None:
    """The revision recorded in the database, None for a database agentflow never touched."""
    from sqlalchemy import text

    if VERSION_TABLE not in tables:
        return None
    row = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).first()
    return None if row is None else str(row[0])


def check_revision(where: str, revision: str | None, tables: set[str], *, create: bool = True) -> bool:
    """Raise if the database cannot be used; True when it must be migrated first.

    With ``create=False`` a database that would have to be changed (set up, or migrated) is refused too.
    """
    if revision is None:
        foreign = tables & OUR_TABLES if where.startswith("postgres") else tables
        if foreign:
            raise NotAnAgentFlowDatabase(
                f"{where} holds tables agentflow did not create ({', '.join(sorted(foreign)[:5])}) and no "
                f"{VERSION_TABLE} table; point agentflow at an empty database or another file"
            )
        if not create:
            raise StoreError(f"{where} holds no agentflow database; run a workflow first, or pass another --db")
        return True
    if revision not in REVISIONS:
        raise SchemaVersionError(
            f"{where} has schema revision {revision!r}, which this agentflow does not know (it knows up to "
            f"{HEAD!r}): the database was written by a newer agentflow. Upgrade agentflow; nothing was changed"
        )
    if revision != HEAD and not create:
        raise StoreError(
            f"{where} is at schema revision {revision!r} and this agentflow needs {HEAD!r}; open it once with "
            "AgentFlow(url) to migrate it"
        )
    return revision != HEAD


def list_tables(conn: Connection) -> set[str]:
    from sqlalchemy import inspect

    return set(inspect(conn).get_table_names())


@contextlib.contextmanager
def migration_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction that holds the schema changes too, and keeps other migrators out.

    Postgres: DDL is transactional; an advisory lock makes a second process wait. SQLite: Python's sqlite3
    begins a transaction only before a data change, so ``CREATE``, ``ALTER`` and ``DROP`` issued first
    would each commit at once and a migration failing half-way would leave half a schema. ``BEGIN
    IMMEDIATE`` opens the transaction first (and takes the write lock, so a second process waits).
    """
    from sqlalchemy import text

    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        elif engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn


def migrate(engine: Engine, where: str) -> None:
    """Bring the database to ``HEAD`` inside one transaction (``migration_transaction``)."""
    from alembic import command
    from alembic.config import Config

    with migration_transaction(engine) as conn:
        tables = list_tables(conn)
        if not check_revision(where, current_revision(conn, tables), tables):
            return  # another process migrated it while we waited for the lock
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def ensure_schema(engine: Engine, where: str, *, create: bool = True) -> None:
    """Check the schema version; migrate a new or older database to ``HEAD`` (unless ``create`` is False)."""
    with engine.connect() as conn:
        tables = list_tables(conn)
        needs_migration = check_revision(where, current_revision(conn, tables), tables, create=create)
    if needs_migration:
        migrate(engine, where)
