"""Alembic environment for agentflow's schema.

agentflow runs migrations itself when it opens a database (``_schema.migrate`` passes a connection in
``config.attributes``). For writing a new revision by hand::

    alembic -c alembic.ini -x url=sqlite:///scratch.db revision --autogenerate -m "..."

with an ``alembic.ini`` whose ``script_location`` is this folder (README, Contributing).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from agentflow._store._schema import VERSION_TABLE
from agentflow._store._tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode rebuilds tables
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("pass the database with -x url=...")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
