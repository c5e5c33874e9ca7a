"""Retention: the report's figures rolled up per funnel, day, language and row before raw rows are
pruned, when each enrollment was rolled up, and each rolled-up assignment's outcome.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "report_rollups",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("funnel_id", sa.String(100), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("language", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("funnel_id", "day", "language", "kind", "key", name="uq_report_rollups_group"),
    )
    op.create_table(
        "experiment_outcomes",
        sa.Column("assignment_id", sa.Integer, sa.ForeignKey("events.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("converted_at", sa.DateTime(timezone=True), nullable=True),
    )
    # Nullable, no default: a constant-time change on both backends.
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("rolled_up_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("rolled_up_at")
    op.drop_table("experiment_outcomes")
    op.drop_table("report_rollups")
