"""Where a crash stress seed keeps its records (see ``crash_stress.py``): a SQLite file in a folder of its own,
or, with ``--postgres URL``, a Postgres database of its own on that server. Each seed gets a new, empty one,
and the derived phase copies it (the same records, for the run made without crashes)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflow import AgentFlow


@dataclass(frozen=True)
class SeedDatabase:
    """One seed's database. ``url`` is what ``AgentFlow`` opens: a SQLite file's path or a SQLAlchemy URL."""

    url: str
    postgres: str | None = None  # the server's URL (a database on it to connect to) when this one is on it
    name: str = ""  # the Postgres database's name

    @classmethod
    def new(cls, seed: int, directory: str | os.PathLike[str], postgres: str | None = None) -> SeedDatabase:
        """A new, empty database for ``seed``: a SQLite file under ``directory``, or a Postgres database."""
        if postgres is None:
            return cls(str(Path(tempfile.mkdtemp(prefix=f"seed{seed}-", dir=directory)) / "db.sqlite"))
        name = f"afstress_{os.getpid()}_{seed}"
        _admin(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
        return cls(_database_url(postgres, name), postgres, name)

    def copy(self, app: AgentFlow, suffix: str) -> SeedDatabase:
        """A copy of this database as ``app`` (open on it, not running anything) has written it. On Postgres
        a database copied as a template must have no connection to it: ``app`` lets go of its connections
        (it opens new ones when next used)."""
        if self.postgres is None:
            target = Path(self.url).with_name(f"{suffix}.sqlite")
            with sqlite3.connect(self.url) as source, sqlite3.connect(target) as copy:
                source.backup(copy)
            source.close()
            copy.close()
            return SeedDatabase(str(target))
        store: Any = app._store
        with store._writer_lock:
            store._drop_writer()
        store.engine.dispose()
        name = f"{self.name}_{suffix}"
        _admin(
            self.postgres,
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}" TEMPLATE "{self.name}"',
        )
        return SeedDatabase(_database_url(self.postgres, name), self.postgres, name)

    def drop(self) -> None:
        """Remove a Postgres database (a SQLite file stays in its folder, removed with the folder)."""
        if self.postgres is not None:
            _admin(self.postgres, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _database_url(server: str, name: str) -> str:
    """``server``'s URL with database ``name``, for SQLAlchemy with psycopg."""
    from sqlalchemy.engine import make_url

    url = make_url(server).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


def _admin(server: str, *statements: str) -> None:
    """Run statements on ``server`` outside a transaction (CREATE and DROP DATABASE need that)."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]
