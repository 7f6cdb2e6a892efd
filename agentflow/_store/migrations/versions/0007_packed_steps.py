"""steps: digests as 32 bytes, JSON columns as bytes (deflated against a dictionary when shorter)

Revision ID: 0007_packed_steps
Revises: 0006_evals
Create Date: 2026-11-25 05:00:00.000000

The rows already there keep their content: on Postgres a hex digest becomes its 32 bytes (any other value
``0x00`` + its UTF-8) and JSON text its UTF-8 bytes; on SQLite the table is rebuilt with the new column
types and the old text values are copied as they are. ``agentflow._store._packing`` reads both. New rows
are written packed. A downgrade turns every value back into text.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_packed_steps"
down_revision: str | None = "0006_evals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_COLUMNS = ("request", "output", "error")
DIGEST_COLUMNS = ("fingerprint", "chain")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in JSON_COLUMNS:
            op.alter_column("steps", name, type_=sa.LargeBinary(), postgresql_using=f"convert_to({name}, 'UTF8')")
        for name in DIGEST_COLUMNS:
            using = (
                f"CASE WHEN {name} ~ '^[0-9a-f]{{64}}$' THEN decode({name}, 'hex') "
                f"ELSE '\\x00'::bytea || convert_to({name}, 'UTF8') END"
            )
            op.alter_column("steps", name, type_=sa.LargeBinary(), existing_nullable=False, postgresql_using=using)
        return
    with op.batch_alter_table("steps", recreate="always") as batch:
        for name in JSON_COLUMNS:
            batch.alter_column(name, type_=sa.LargeBinary(), existing_type=sa.Text())
        for name in DIGEST_COLUMNS:
            batch.alter_column(name, type_=sa.LargeBinary(), existing_type=sa.String(), existing_nullable=False)


def downgrade() -> None:
    # Unpacked in Python (the dictionary's deflate has no SQL form), then the columns go back to text.
    from agentflow._store._packing import unpack_digest, unpack_json

    bind = op.get_bind()
    columns = ", ".join((*JSON_COLUMNS, *DIGEST_COLUMNS))
    rows = bind.execute(sa.text(f"SELECT run_id, key, {columns} FROM steps")).all()
    plain = [
        {
            "run_id": run_id,
            "key": key,
            **{name: unpack_json(value) for name, value in zip(JSON_COLUMNS, json_values, strict=True)},
            **{name: unpack_digest(value) for name, value in zip(DIGEST_COLUMNS, digests, strict=True)},
        }
        for run_id, key, *values in rows
        for json_values, digests in [(values[:3], values[3:])]
    ]
    if bind.dialect.name == "postgresql":
        for name in (*JSON_COLUMNS, *DIGEST_COLUMNS):
            op.alter_column("steps", name, type_=sa.Text() if name in JSON_COLUMNS else sa.String(),
                            postgresql_using=f"encode({name}, 'escape')")  # fmt: skip
    else:
        with op.batch_alter_table("steps", recreate="always") as batch:
            for name in JSON_COLUMNS:
                batch.alter_column(name, type_=sa.Text(), existing_type=sa.LargeBinary())
            for name in DIGEST_COLUMNS:
                batch.alter_column(name, type_=sa.String(), existing_type=sa.LargeBinary(), existing_nullable=False)
    if plain:
        sets = ", ".join(f"{name} = :{name}" for name in (*JSON_COLUMNS, *DIGEST_COLUMNS))
        bind.execute(sa.text(f"UPDATE steps SET {sets} WHERE run_id = :run_id AND key = :key"), plain)
