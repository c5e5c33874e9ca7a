"""The initial schema: leads, enrollments, events, stage transitions, outbox, webhook calls, goals,
suppressions, funnel versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Plain types only: a migration must not change meaning when application code changes later.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.Integer(), primary_key=True)


def _lead_id() -> sa.Column[int]:
    return sa.Column("lead_id", sa.Integer(), sa.ForeignKey("leads.id", ondelete="CASCADE"), nullable=False)


def _partial_index(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(name, table, columns, sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def upgrade() -> None:
    op.create_table(
        "leads",
        _id(),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("attributes", JSON, nullable=False),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("timezone", sa.String(64)),
        sa.Column("consent_status", sa.String(16), nullable=False),
        sa.Column("consent_source", sa.String(200)),
        sa.Column("consent_at", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("email", name="uq_leads_email"),
        sa.CheckConstraint(
            "consent_status IN ('subscribed', 'unsubscribed', 'bounced', 'complained', 'erased', 'pending')",
            name="ck_leads_consent",
        ),
    )
    op.create_table(
        "enrollments",
        _id(),
        _lead_id(),
        sa.Column("funnel_id", sa.String(100), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(100), nullable=False),
        sa.Column("step", sa.String(100)),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("due", TS, nullable=False),
        sa.Column("wake_at", TS),
        sa.Column("entered_at", TS, nullable=False),
        sa.Column("stage_entered_at", TS, nullable=False),
        sa.Column("sent", JSON, nullable=False),
        sa.Column("spent_timers", JSON, nullable=False),
        sa.Column("goal_reached_at", TS),
        sa.Column("exit_reason", sa.String(100)),
        sa.Column("exited_at", TS),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("lead_id", "funnel_id", name="uq_enrollments_lead_funnel"),
        sa.CheckConstraint("status IN ('active', 'exited')", name="ck_enrollments_status"),
    )
    _partial_index("ix_enrollments_wake_active", "enrollments", ["wake_at"], "status = 'active'")

    op.create_table(
        "events",
        _id(),
        sa.Column("event_id", sa.String(200), nullable=False),
        _lead_id(),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("properties", JSON, nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("processed_at", TS),
        sa.Column("source", sa.String(100)),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
    )
    op.create_index("ix_events_lead", "events", ["lead_id", "occurred_at"])
    _partial_index("ix_events_pending", "events", ["received_at", "id"], "processed_at IS NULL")

    op.create_table(
        "stage_transitions",
        _id(),
        _lead_id(),
        sa.Column("funnel_id", sa.String(100), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("from_stage", sa.String(100)),
        sa.Column("to_stage", sa.String(100)),
        sa.Column("cause_kind", sa.String(32), nullable=False),
        sa.Column("cause_ref", sa.String(200)),
        sa.Column("at", TS, nullable=False),
        sa.Column("exit_reason", sa.String(100)),
    )
    op.create_index("ix_stage_transitions_lead_funnel", "stage_transitions", ["lead_id", "funnel_id", "at"])

    op.create_table(
        "outbox",
        _id(),
        _lead_id(),
        sa.Column("funnel_id", sa.String(100), nullable=False),
        sa.Column("step", sa.String(100), nullable=False),
        sa.Column("template", sa.String(200), nullable=False),
        sa.Column("stage", sa.String(100), nullable=False),
        sa.Column("transactional", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS),
        sa.Column("claimed_at", TS),
        sa.Column("message_id", sa.String(300)),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS),
        sa.Column("skip_reason", sa.String(32)),
        sa.UniqueConstraint("lead_id", "funnel_id", "step", name="uq_outbox_lead_funnel_step"),
        sa.CheckConstraint(
            "status IN ('queued', 'sending', 'sent', 'failed', 'bounced', 'unknown', 'skipped', 'deferred')",
            name="ck_outbox_status",
        ),
    )
    _partial_index("ix_outbox_ready", "outbox", ["next_attempt_at"], "status IN ('queued', 'deferred')")
    _partial_index("ix_outbox_sending", "outbox", ["claimed_at"], "status = 'sending'")

    op.create_table(
        "webhook_calls",
        _id(),
        _lead_id(),
        sa.Column("funnel_id", sa.String(100), nullable=False),
        sa.Column("step", sa.String(100), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("lead_id", "funnel_id", "step", name="uq_webhook_calls_lead_funnel_step"),
        sa.CheckConstraint(
            "status IN ('queued', 'sending', 'sent', 'failed', 'unknown')", name="ck_webhook_calls_status"
        ),
    )
    _partial_index("ix_webhook_calls_ready", "webhook_calls", ["next_attempt_at"], "status = 'queued'")

    op.create_table(
        "goals",
        _id(),
        _lead_id(),
        sa.Column("funnel_id", sa.String(100), nullable=False),
        sa.Column("goal", sa.String(100), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("within_window", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("lead_id", "funnel_id", "goal", name="uq_goals_lead_funnel_goal"),
    )
    op.create_table(
        "suppressions",
        _id(),
        sa.Column("email_hash", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("email_hash", name="uq_suppressions_email_hash"),
    )
    op.create_table(
        "funnel_versions",
        _id(),
        sa.Column("funnel_id", sa.String(100), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("definition", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("funnel_id", "version", name="uq_funnel_versions_funnel_version"),
    )


def downgrade() -> None:
    for table in (
        "funnel_versions",
        "suppressions",
        "goals",
        "webhook_calls",
        "outbox",
        "stage_transitions",
        "events",
        "enrollments",
        "leads",
    ):
        op.drop_table(table)
