"""Consent records (proof of each opt-in and opt-out) and receipts of signed inbound webhooks.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "consent_records",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("lead_id", sa.Integer(), sa.ForeignKey("leads.id", ondelete="CASCADE"), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("form_id", sa.String(100), nullable=True),
        sa.Column("text_version", sa.String(100), nullable=True),
        sa.Column("ip", sa.String(45), nullable=True),
        sa.Column("user_agent", sa.String(300), nullable=True),
        sa.Column("fields", JSON, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.CheckConstraint(
            "action IN ('given', 'requested', 'confirmed', 'withdrawn')", name="ck_consent_records_action"
        ),
    )
    op.create_index("ix_consent_records_lead", "consent_records", ["lead_id", "form_id"])
    op.create_table(
        "webhook_receipts",
        sa.Column("signature", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("received_at", TS, nullable=False),
    )
    op.create_index("ix_webhook_receipts_received_at", "webhook_receipts", ["received_at"])


def downgrade() -> None:
    op.drop_table("webhook_receipts")
    op.drop_table("consent_records")
