"""blobs: hashes as 32 bytes, message nodes packed, no size column

Revision ID: 0008_packed_blobs
Revises: 0007_packed_steps
Create Date: 2026-11-25 09:00:00.000000

The blobs are copied into the new layout (``agentflow._store._blob_packing``) in batches of 500, in
Python: base64 and the node layout have no portable SQL form. A key that is not a blob hash (agentflow
never wrote one) stops the migration, which then changes nothing. ``size`` was written and never read;
it is dropped.

Step records written from this revision on may leave their fingerprint to be derived from their request
(an empty value) and hold a model call's message head as 32 bytes (``0x03``); a downgrade writes those
rows out in full, as 0007 reads them, and turns the blobs back into text keys and plain data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008_packed_blobs"
down_revision: str | None = "0007_packed_steps"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 500
PROGRESS_EVERY = 20_000
log = logging.getLogger("agentflow.migrations")


def upgrade() -> None:
    from agentflow._store._blob_packing import pack_blob, pack_blob_hash

    def convert(row: Sequence[Any]) -> dict[str, Any]:
        try:
            key = pack_blob_hash(row[0])
        except ValueError as exc:
            raise RuntimeError(f"cannot migrate the blobs table: {exc}. Nothing was changed") from exc
        return {"hash": key, "data": pack_blob(bytes(row[1]))}

    _rebuild(
        columns=[
            sa.Column("hash", sa.LargeBinary(), nullable=False),
            sa.Column("data", sa.LargeBinary(), nullable=False),
        ],
        convert=convert,
    )


def downgrade() -> None:
    from agentflow._store._blob_packing import unpack_blob, unpack_blob_hash
    from agentflow._store._packing import pack_digest, pack_json, unpack_request, unpacked_step
    from agentflow._store._records import STEP_COLUMNS

    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT * FROM steps WHERE length(fingerprint) = 0 OR substr(request, 1, 1) = :head"),
        {"head": b"\x03"},
    )
    names = list(rows.keys())
    full = []
    for row in rows.all():
        values = dict(zip(names, row, strict=True))
        step = unpacked_step([values[name] for name in STEP_COLUMNS])
        assert step.request == unpack_request(values["request"])
        full.append(
            {"run_id": step.run_id, "key": step.key, "f": pack_digest(step.fingerprint), "r": pack_json(step.request)}
        )
    if full:
        bind.execute(
            sa.text("UPDATE steps SET fingerprint = :f, request = :r WHERE run_id = :run_id AND key = :key"), full
        )

    def convert(row: Sequence[Any]) -> dict[str, Any]:
        data = unpack_blob(row[1])
        return {"hash": unpack_blob_hash(row[0]), "data": data, "size": len(data)}

    _rebuild(
        columns=[
            sa.Column("hash", sa.String(), nullable=False),
            sa.Column("data", sa.LargeBinary(), nullable=False),
            sa.Column("size", sa.Integer(), nullable=False),
        ],
        convert=convert,
    )


def _rebuild(columns: list[sa.Column[Any]], convert: Callable[[Sequence[Any]], dict[str, Any]]) -> None:
    """Replace ``blobs`` by a table of ``columns``, its rows copied through ``convert`` in key order."""
    bind = op.get_bind()
    op.rename_table("blobs", "blobs_old")
    if bind.dialect.name == "postgresql":  # the primary key's index keeps its name: free it for the new table
        op.execute("ALTER INDEX blobs_pkey RENAME TO blobs_old_pkey")
    new = op.create_table("blobs", *columns, sa.PrimaryKeyConstraint("hash"))
    page = sa.text(f"SELECT hash, data FROM blobs_old WHERE hash > :last ORDER BY hash LIMIT {BATCH}")
    first = sa.text(f"SELECT hash, data FROM blobs_old ORDER BY hash LIMIT {BATCH}")
    total = bind.execute(sa.text("SELECT count(*) FROM blobs_old")).scalar_one()
    done = 0
    rows = bind.execute(first).all()
    while rows:
        bind.execute(sa.insert(new), [convert(row) for row in rows])
        done += len(rows)
        if done % PROGRESS_EVERY < BATCH or done == total:  # a large database takes a while: say how far
            log.info("migrating the blobs table: %d of %d rows", done, total)
        rows = bind.execute(page, {"last": rows[-1][0]}).all()
    op.drop_table("blobs_old")
