"""Shared fixtures: a fresh database per test, on SQLite and (when configured) on Postgres.

``AGENTFLOW_TEST_POSTGRES_URL`` (CI sets it) adds a Postgres variant of every test that takes ``db_url``
or ``app``. Each Postgres test gets a schema of its own, dropped afterwards. When the variable is set and
the server cannot be reached, those tests fail; they are skipped only when the variable is unset.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from agentflow import AgentFlow, FakeClock

POSTGRES_URL = os.environ.get("AGENTFLOW_TEST_POSTGRES_URL")


def _psycopg_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A SQLAlchemy URL for a new, empty Postgres schema; dropped after the test."""
    if not POSTGRES_URL:
        pytest.skip("AGENTFLOW_TEST_POSTGRES_URL is not set")
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    base = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{_psycopg_url(POSTGRES_URL)}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh database: a SQLite file, or a Postgres schema of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "agentflow.db")
    url: str = request.getfixturevalue("postgres_schema_url")
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(db_url: str, clock: FakeClock) -> Iterator[AgentFlow]:
    """An AgentFlow on a fresh database with a fake clock (retries' backoff takes no time)."""
    flow = AgentFlow(db_url, clock=clock)
    try:
        yield flow
    finally:
        flow.close()
