"""The store: where runs, steps and blobs are kept.

The engine talks to the store only through ``Store`` and the plain records in ``_records``; it never sees
SQL. ``open_store`` (in ``_open``) builds the one implementation, ``SQLStore`` (in ``_sql``) on SQLAlchemy,
for SQLite and Postgres; importing this package does not import SQLAlchemy.
"""

from __future__ import annotations

from ._records import RunRecord, StepRecord, Store

__all__ = ["RunRecord", "StepRecord", "Store"]
