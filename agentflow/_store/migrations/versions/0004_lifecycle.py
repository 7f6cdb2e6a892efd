"""Run lifecycle: waits (wake_at, waiting_for), a deadline, control requests, rollback; the events inbox

Revision ID: 0004_lifecycle
Revises: 0003_workflow_ref
Create Date: 2026-11-25 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_lifecycle"
down_revision: str | None = "0003_workflow_ref"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("wake_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("waiting_for", sa.String(), nullable=True))
        batch.add_column(sa.Column("deadline_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("control", sa.String(), nullable=True))
        batch.add_column(sa.Column("rollback", sa.Text(), nullable=True))
        batch.create_index("ix_runs_wake_at", ["wake_at"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=False),
        sa.Column("delivered_key", sa.String(), nullable=True),
    )
    op.create_index("ix_events_run_id", "events", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_events_run_id", table_name="events")
    op.drop_table("events")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_wake_at")
        for column in ("rollback", "control", "deadline_at", "waiting_for", "wake_at"):
            batch.drop_column(column)
