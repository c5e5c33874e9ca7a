"""Reports that come back after the relay's 250 (bounces, complaints, auto-replies), one row per recipient.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "bounce_reports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("report_key", sa.String(64), nullable=False),
        sa.Column("recipient_key", sa.String(64), nullable=False),
        sa.Column("recipient_hash", sa.String(64), nullable=True),
        sa.Column("recipient_domain", sa.String(255), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("failure_class", sa.String(16), nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("diagnostic", sa.Text(), nullable=True),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("lead_id", sa.Integer(), nullable=True),
        sa.Column("matched_by", sa.String(16), nullable=True),
        sa.Column("action", sa.String(32), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.UniqueConstraint("report_key", "recipient_key", name="uq_bounce_reports_key_recipient"),
    )
    op.create_index("ix_bounce_reports_recipient_hash", "bounce_reports", ["recipient_hash", "received_at"])
    op.create_index("ix_bounce_reports_lead_id", "bounce_reports", ["lead_id"])


def downgrade() -> None:
    op.drop_table("bounce_reports")
