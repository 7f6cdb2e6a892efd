"""Queues and leases for many workers: a run's queue, priority and dedup id; the lease history; rate buckets

Revision ID: 0005_queues
Revises: 0004_lifecycle
Create Date: 2026-11-26 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_queues"
down_revision: str | None = "0004_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out, not imported from the tables module: a migration keeps the schema of its day.
UNFINISHED_DEDUP = "dedup_id IS NOT NULL AND status NOT IN ('completed', 'failed', 'cancelled')"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("queue", sa.String(), nullable=True))
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("dedup_id", sa.String(), nullable=True))
    op.create_index("ix_runs_queue_status", "runs", ["queue", "status"])
    op.create_index(
        "ix_runs_queue_dedup",
        "runs",
        ["queue", "dedup_id"],
        unique=True,
        sqlite_where=sa.text(UNFINISHED_DEDUP),
        postgresql_where=sa.text(UNFINISHED_DEDUP),
    )
    op.create_table(
        "leases",
        sa.Column("run_id", sa.String(), primary_key=True),
        sa.Column("token", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("worker", sa.String(), nullable=False),
        sa.Column("claimed_at", sa.Float(), nullable=False),
        sa.Column("released_at", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("requests", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
    op.drop_table("leases")
    op.drop_index("ix_runs_queue_dedup", table_name="runs")
    op.drop_index("ix_runs_queue_status", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        for column in ("dedup_id", "priority", "queue"):
            batch.drop_column(column)
