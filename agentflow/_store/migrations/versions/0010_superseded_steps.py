"""superseded_steps: what a restart took out of a run, kept; runs.derived_as: how a derived run uses its source

Revision ID: 0010_superseded_steps
Revises: 0009_reservations
Create Date: 2026-11-25 18:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_superseded_steps"
down_revision: str | None = "0009_reservations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("derived_as", sa.String(), nullable=True))
    op.create_table(
        "superseded_steps",
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("restart", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("output", sa.LargeBinary(), nullable=True),
        sa.Column("error", sa.LargeBinary(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("chain", sa.LargeBinary(), nullable=False),
        sa.Column("superseded_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "restart", "key"),
    )


def downgrade() -> None:
    op.drop_table("superseded_steps")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("derived_as")
