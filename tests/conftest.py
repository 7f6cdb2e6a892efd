"""Shared fixtures: a fresh database per test, on SQLite and (when configured) on Postgres.

No test reaches the network: every socket connection to an address other than loopback fails (the
Postgres server is on 127.0.0.1), and litellm uses its bundled cost map and httpx (so that respx, which
``agentflow.testing.FakeProvider`` is built on, sees its traffic).

``AGENTFLOW_TEST_POSTGRES_URL`` (CI sets it) adds a Postgres variant of every test that takes ``db_url``
or ``app``. Each Postgres test gets a schema of its own, dropped afterwards. When the variable is set and
the server cannot be reached, those tests fail; they are skipped only when the variable is unset.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before anything imports litellm

from agentflow import AgentFlow, FakeClock

POSTGRES_URL = os.environ.get("AGENTFLOW_TEST_POSTGRES_URL")


class NetworkBlocked(RuntimeError):
    """A test tried to open a connection off this machine."""


def _is_loopback(address: object) -> bool:
    if not isinstance(address, tuple):
        return True  # a unix socket path
    host = str(address[0])
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def _no_network() -> Iterator[None]:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def connect(self: socket.socket, address: object) -> None:
        if not _is_loopback(address):
            raise NetworkBlocked(f"tests do not reach the network (tried {address!r})")
        return real_connect(self, address)  # type: ignore[arg-type]

    def connect_ex(self: socket.socket, address: object) -> int:
        if not _is_loopback(address):
            raise NetworkBlocked(f"tests do not reach the network (tried {address!r})")
        return real_connect_ex(self, address)  # type: ignore[arg-type]

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    try:
        import litellm

        litellm.disable_aiohttp_transport = True
        yield
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]


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
