"""How each experiment was decided: one row per (funnel, experiment) at most, the unique key making the
first decision the only one, whichever worker or operator writes it first; and an index on the
assignments (`experiment_assigned` events), which the engine counts every minute per experiment.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None

ASSIGNED = "name = 'experiment_assigned'"


def upgrade() -> None:
    op.create_table(
        "experiment_decisions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("funnel_id", sa.String(100), nullable=False),
        sa.Column("experiment", sa.String(100), nullable=False),
        sa.Column("arm", sa.String(100), nullable=True),
        sa.Column("how", sa.String(16), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("figures", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.UniqueConstraint("funnel_id", "experiment", name="uq_experiment_decisions_funnel_experiment"),
        sa.CheckConstraint("how IN ('auto', 'manual', 'stopped')", name="ck_experiment_decisions_how"),
    )
    op.create_index(
        "ix_events_experiment_assigned",
        "events",
        ["occurred_at"],
        sqlite_where=sa.text(ASSIGNED),
        postgresql_where=sa.text(ASSIGNED),
    )


def downgrade() -> None:
    op.drop_index("ix_events_experiment_assigned", table_name="events")
    op.drop_table("experiment_decisions")
