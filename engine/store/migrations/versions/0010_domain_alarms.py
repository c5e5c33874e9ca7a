"""Alarms per receiving domain that refuses the sender, sent as outbound webhooks too (a delivery about no
lead), and consent records of a lifted bounce.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

BEFORE = "action IN ('given', 'requested', 'confirmed', 'withdrawn')"
AFTER = "action IN ('given', 'requested', 'confirmed', 'withdrawn', 'lifted')"
SOURCES_BEFORE = "source IN ('transition', 'goal', 'call')"
SOURCES_AFTER = "source IN ('transition', 'goal', 'call', 'alarm', 'alarm_over')"


def upgrade() -> None:
    op.create_table(
        "domain_alarms",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("open_key", sa.String(255), nullable=True),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("last_report_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cleared_by", sa.String(100), nullable=True),
        sa.Column("clear_reason", sa.Text(), nullable=True),
        sa.UniqueConstraint("open_key", name="uq_domain_alarms_open_key"),
    )
    _action_check(AFTER)
    _deliveries(SOURCES_AFTER, lead_required=False)


def downgrade() -> None:
    op.execute("DELETE FROM webhook_deliveries WHERE lead_id IS NULL")
    _deliveries(SOURCES_BEFORE, lead_required=True)
    op.execute("DELETE FROM consent_records WHERE action = 'lifted'")
    _action_check(BEFORE)
    op.drop_table("domain_alarms")


def _deliveries(sources: str, lead_required: bool) -> None:
    with op.batch_alter_table("webhook_deliveries", recreate="auto") as batch:
        batch.drop_constraint("ck_webhook_deliveries_source", type_="check")
        batch.create_check_constraint("ck_webhook_deliveries_source", sources)
        batch.alter_column("lead_id", existing_type=sa.Integer(), nullable=not lead_required)


def _action_check(condition: str) -> None:
    with op.batch_alter_table("consent_records", recreate="auto") as batch:
        batch.drop_constraint("ck_consent_records_action", type_="check")
        batch.create_check_constraint("ck_consent_records_action", condition)
