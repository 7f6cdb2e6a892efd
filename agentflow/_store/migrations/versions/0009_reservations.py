"""reservations: the keys of calls about to run, so that a call in flight at a crash keeps its key

Revision ID: 0009_reservations
Revises: 0008_packed_blobs
Create Date: 2026-11-25 15:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_reservations"
down_revision: str | None = "0008_packed_blobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reservations",
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(), nullable=False),
        sa.Column("reserved_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key"),
    )


def downgrade() -> None:
    op.drop_table("reservations")
