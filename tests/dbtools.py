"""Reading and writing a test database behind agentflow's back, on a connection of its own."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from agentflow._store._sql import normalize_url


def execute(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the database at ``url`` and return its rows."""
    engine = create_engine(normalize_url(url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(normalize_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()
