"""Scanning a test database for a secret, in any form it could be stored in (text, hex, base64), in its
files and in every column of every row (packed columns unpacked): ``scan(url, secret)``. Used by
``test_llm_secrets.py`` and the worker chaos harness (``worker_chaos.py``)."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from dbtools import execute

from agentflow._store._blob_packing import unpack_blob
from agentflow._store._packing import unpack_json, unpack_request

__all__ = ["scan", "traces"]


def _forms(secret: str) -> dict[str, tuple[bytes, bool]]:
    """``secret`` as stored text, hex, and base64 (at each of the three alignments inside a longer value):
    name -> (bytes to look for, whether case matters)."""
    raw = secret.encode()
    forms: dict[str, tuple[bytes, bool]] = {"text": (raw, False), "hex": (raw.hex().encode(), False)}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        # Keep the characters made of the secret's bits only: not those mixed with what comes before or after.
        inner = encoded[-(-shift * 4 // 3) : (shift + len(raw)) * 8 // 6]
        forms[f"base64+{shift}"] = (inner, True)
        forms[f"urlsafe-base64+{shift}"] = (inner.replace(b"+", b"-").replace(b"/", b"_"), True)
    return forms


def traces(haystack: bytes, secret: str) -> list[str]:
    lowered = haystack.lower()
    return [
        name
        for name, (needle, case_matters) in _forms(secret).items()
        if (needle in haystack if case_matters else needle.lower() in lowered)
    ]


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def _sqlite_files(path: Path) -> Iterator[Path]:
    """The database file and its companions (-wal, -shm, -journal)."""
    return (p for p in sorted(path.parent.iterdir()) if p.name.startswith(path.name))


_PG_COLUMNS = (
    "SELECT column_name FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = :t ORDER BY ordinal_position"
)


# The columns packed at rest (agentflow._store._packing and _blob_packing), and how to unpack them; digests
# are packed too, but as raw sha256 bytes, which hold nothing to look for.
UNPACK: dict[str, Callable[[Any], Any]] = {
    ".request": unpack_request,
    ".output": unpack_json,
    ".error": unpack_json,
    ".data": unpack_blob,
}


def scan(url: str, secret: str) -> dict[str, list[str]]:
    """Where ``secret`` (in any of its forms) occurs in the database: {place: [forms found]}.

    SQLite: the bytes of the file and its -wal and -shm files (so deleted and not yet checkpointed data
    count), and every column of every row, read through sqlite3. Postgres: every column of every table of
    the schema, as psycopg gives it (bytea as bytes) and cast to text (each row as ``row::text``). A column
    packed at rest (``agentflow._store._packing``, ``_blob_packing``) is looked at unpacked too; the file
    scan cannot see into packed bytes of rows already deleted.
    """
    found: dict[str, list[str]] = {}

    def look(place: str, value: Any) -> None:
        if value is not None and (forms := traces(_as_bytes(value), secret)):
            found[place] = forms
        column = place[place.rfind(".") :]
        if place.startswith(("steps[", "blobs[")) and column in UNPACK and isinstance(value, bytes | memoryview):
            look(f"{place} (unpacked)", UNPACK[column](value))

    if "://" not in url:
        path = Path(url)
        for file in _sqlite_files(path):
            look(f"file {file.name}", file.read_bytes())
        with closing(sqlite3.connect(path)) as conn:
            tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                cursor = conn.execute(f'SELECT * FROM "{table}"')
                columns = [d[0] for d in cursor.description]
                for n, row in enumerate(cursor):
                    for column, value in zip(columns, row, strict=True):
                        look(f"{table}[{n}].{column}", value)
        return found
    tables = [t for (t,) in execute(url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
    assert tables, "no tables found in the schema"
    for table in tables:
        columns = [c for (c,) in execute(url, _PG_COLUMNS, t=table)]
        for n, row in enumerate(execute(url, f'SELECT * FROM "{table}"')):
            for column, value in zip(columns, row, strict=True):
                look(f"{table}[{n}].{column}", value)
        for n, (text,) in enumerate(execute(url, f'SELECT t::text FROM "{table}" AS t')):
            look(f"{table}[{n}]::text", text)
    return found
