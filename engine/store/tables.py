"""The durable tables: leads, enrollments, events, stage transitions, the email outbox, webhook calls,
goals, suppressions, funnel versions, API keys, consent records, inbound webhook receipts, outbound
webhook deliveries with their cursors, and the dashboard's digests, sessions and failed sign-ins.

Declared as SQLModel tables so the schema reads as one list of fields; the hot paths in `engine.store.leads`
use their SQLAlchemy Core `Table`s (`Lead.__table__`), not ORM objects. The migration in
`engine/store/migrations/versions` creates exactly this schema, and a test checks the two agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend.

    PostgreSQL stores `timestamptz`. SQLite has no time type: values are stored as naive UTC text of one
    fixed width, so they sort and compare correctly in SQL, and come back aware. Naive input is refused:
    a naive datetime has no single meaning, and guessing is how timers fire an hour off.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"expected an aware datetime, got naive {value.isoformat()}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSONB on PostgreSQL (compact, comparable), JSON text on SQLite.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

ASSIGNED = "name = 'experiment_assigned'"
CONSENT_STATUSES = ("subscribed", "unsubscribed", "bounced", "complained", "erased", "pending")
OUTBOX_STATUSES = ("queued", "sending", "sent", "failed", "bounced", "unknown", "skipped", "deferred")
WEBHOOK_STATUSES = ("queued", "sending", "sent", "failed", "unknown")
CONSENT_ACTIONS = ("given", "requested", "confirmed", "withdrawn", "lifted")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _lead_fk() -> Any:
    # Erasing a lead deletes its rows everywhere; only the suppression (a hash) survives.
    return Field(foreign_key="leads.id", ondelete="CASCADE", nullable=False)


class Lead(SQLModel, table=True):
    __tablename__ = "leads"
    __table_args__ = (
        sa.UniqueConstraint("email", name="uq_leads_email"),
        sa.CheckConstraint(_in("consent_status", CONSENT_STATUSES), name="ck_leads_consent"),
    )

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_type=sa.String(320), nullable=False)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_type=Json, nullable=False)
    tags: list[str] = Field(default_factory=list, sa_type=Json, nullable=False)
    score: int = Field(default=0, nullable=False)
    timezone: str | None = Field(default=None, sa_type=sa.String(64))
    # A BCP 47 tag in canonical case (engine.core.languages); None: the funnel's default language.
    language: str | None = Field(default=None, sa_type=sa.String(64))
    consent_status: str = Field(default="subscribed", sa_type=sa.String(16), nullable=False)
    consent_source: str | None = Field(default=None, sa_type=sa.String(200))
    consent_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    updated_at: datetime = Field(sa_type=UtcDateTime, nullable=False)


class Enrollment(SQLModel, table=True):
    __tablename__ = "enrollments"
    __table_args__ = (
        sa.UniqueConstraint("lead_id", "funnel_id", name="uq_enrollments_lead_funnel"),
        # The tick's claim: a range scan over due active rows, in wake order.
        sa.Index(
            "ix_enrollments_wake_active",
            "wake_at",
            sqlite_where=sa.text("status = 'active'"),
            postgresql_where=sa.text("status = 'active'"),
        ),
        sa.CheckConstraint("status IN ('active', 'exited')", name="ck_enrollments_status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = _lead_fk()
    funnel_id: str = Field(sa_type=sa.String(100), nullable=False)
    version: str = Field(sa_type=sa.String(64), nullable=False)
    status: str = Field(sa_type=sa.String(16), nullable=False)
    stage: str = Field(sa_type=sa.String(100), nullable=False)
    step: str | None = Field(default=None, sa_type=sa.String(100))
    phase: str = Field(sa_type=sa.String(16), nullable=False)
    due: datetime = Field(sa_type=UtcDateTime, nullable=False)
    wake_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    entered_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    stage_entered_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    sent: list[str] = Field(default_factory=list, sa_type=Json, nullable=False)
    spent_timers: list[str] = Field(default_factory=list, sa_type=Json, nullable=False)
    goal_reached_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    exit_reason: str | None = Field(default=None, sa_type=sa.String(100))
    exited_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    # When this enrollment's report figures went into `report_rollups`: its rows stamped at or before
    # it count there, not in the raw tables (engine.store.rollups).
    rolled_up_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ReportRollup(SQLModel, table=True):
    """The report's figures of enrollments whose raw rows may be pruned, summed per funnel, day of entry
    (UTC), lead language ('' for none) and report row: `kind` names the row type, `key` its fields but
    the count, as a JSON array (engine.store.rollups)."""

    __tablename__ = "report_rollups"
    __table_args__ = (
        sa.UniqueConstraint("funnel_id", "day", "language", "kind", "key", name="uq_report_rollups_group"),
    )

    id: int | None = Field(default=None, primary_key=True)
    funnel_id: str = Field(sa_type=sa.String(100), nullable=False)
    day: str = Field(sa_type=sa.String(10), nullable=False)  # YYYY-MM-DD: compares as it sorts
    language: str = Field(sa_type=sa.String(64), nullable=False)
    kind: str = Field(sa_type=sa.String(32), nullable=False)
    key: str = Field(sa_type=sa.Text, nullable=False)
    count: int = Field(sa_type=sa.BigInteger, nullable=False)


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
        sa.Index(
            "ix_events_pending",
            "received_at",
            "id",
            sqlite_where=sa.text("processed_at IS NULL"),
            postgresql_where=sa.text("processed_at IS NULL"),
        ),
        sa.Index("ix_events_lead", "lead_id", "occurred_at"),
        # Experiments count their assignments every minute: without it, a read of every event.
        sa.Index(
            "ix_events_experiment_assigned",
            "occurred_at",
            sqlite_where=sa.text(ASSIGNED),
            postgresql_where=sa.text(ASSIGNED),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(sa_type=sa.String(200), nullable=False)
    lead_id: int = _lead_fk()
    name: str = Field(sa_type=sa.String(100), nullable=False)
    properties: dict[str, Any] = Field(default_factory=dict, sa_type=Json, nullable=False)
    occurred_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    received_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    processed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    source: str | None = Field(default=None, sa_type=sa.String(100))


class ExperimentOutcome(SQLModel, table=True):
    """An assignment's outcome, written when its lead is rolled up (engine.store.rollups): when the lead
    first met the experiment's metric after it (None: not by then), so the experiment's counts stay
    what they were once the transitions and events that told it are pruned."""

    __tablename__ = "experiment_outcomes"

    assignment_id: int = Field(primary_key=True, foreign_key="events.id", ondelete="CASCADE")
    converted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class StageTransition(SQLModel, table=True):
    """Append-only: answers "why is this lead in this stage?"."""

    __tablename__ = "stage_transitions"
    __table_args__ = (sa.Index("ix_stage_transitions_lead_funnel", "lead_id", "funnel_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = _lead_fk()
    funnel_id: str = Field(sa_type=sa.String(100), nullable=False)
    version: str = Field(sa_type=sa.String(64), nullable=False)
    from_stage: str | None = Field(default=None, sa_type=sa.String(100))
    to_stage: str | None = Field(default=None, sa_type=sa.String(100))
    cause_kind: str = Field(sa_type=sa.String(32), nullable=False)
    cause_ref: str | None = Field(default=None, sa_type=sa.String(200))
    at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    exit_reason: str | None = Field(default=None, sa_type=sa.String(100))


class OutboxMessage(SQLModel, table=True):
    """One email per (lead, funnel, step), ever: the unique key is the promise "never twice"."""

    __tablename__ = "outbox"
    __table_args__ = (
        sa.UniqueConstraint("lead_id", "funnel_id", "step", name="uq_outbox_lead_funnel_step"),
        sa.Index(
            "ix_outbox_ready",
            "next_attempt_at",
            "id",
            sqlite_where=sa.text("status IN ('queued', 'deferred')"),
            postgresql_where=sa.text("status IN ('queued', 'deferred')"),
        ),
        sa.Index(
            "ix_outbox_sending",
            "id",
            sqlite_where=sa.text("status = 'sending'"),
            postgresql_where=sa.text("status = 'sending'"),
        ),
        # A report that returns only the original Message-ID is matched through it.
        sa.Index(
            "ix_outbox_message_id",
            "message_id",
            sqlite_where=sa.text("message_id IS NOT NULL"),
            postgresql_where=sa.text("message_id IS NOT NULL"),
        ),
        sa.CheckConstraint(_in("status", OUTBOX_STATUSES), name="ck_outbox_status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = _lead_fk()
    funnel_id: str = Field(sa_type=sa.String(100), nullable=False)
    step: str = Field(sa_type=sa.String(100), nullable=False)
    template: str = Field(sa_type=sa.String(200), nullable=False)
    stage: str = Field(sa_type=sa.String(100), nullable=False)
    transactional: bool = Field(default=False, nullable=False)
    status: str = Field(sa_type=sa.String(16), nullable=False)
    due_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    attempts: int = Field(default=0, nullable=False)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    claimed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    message_id: str | None = Field(default=None, sa_type=sa.String(300))
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    sent_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    skip_reason: str | None = Field(default=None, sa_type=sa.String(32))
    # The language the message was written in (its template's translation), once it is rendered.
    language: str | None = Field(default=None, sa_type=sa.String(64))


class WebhookCall(SQLModel, table=True):
    __tablename__ = "webhook_calls"
    __table_args__ = (
        sa.UniqueConstraint("lead_id", "funnel_id", "step", name="uq_webhook_calls_lead_funnel_step"),
        sa.Index(
            "ix_webhook_calls_ready",
            "next_attempt_at",
            sqlite_where=sa.text("status = 'queued'"),
            postgresql_where=sa.text("status = 'queued'"),
        ),
        sa.CheckConstraint(_in("status", WEBHOOK_STATUSES), name="ck_webhook_calls_status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = _lead_fk()
    funnel_id: str = Field(sa_type=sa.String(100), nullable=False)
    step: str = Field(sa_type=sa.String(100), nullable=False)
    url: str = Field(sa_type=sa.Text, nullable=False)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=Json, nullable=False)
    status: str = Field(sa_type=sa.String(16), nullable=False)
    attempts: int = Field(default=0, nullable=False)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(sa_type=UtcDateTime, nullable=False)


class Goal(SQLModel, table=True):
    __tablename__ = "goals"
    __table_args__ = (sa.UniqueConstraint("lead_id", "funnel_id", "goal", name="uq_goals_lead_funnel_goal"),)

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = _lead_fk()
    funnel_id: str = Field(sa_type=sa.String(100), nullable=False)
    goal: str = Field(sa_type=sa.String(100), nullable=False)
    at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    within_window: bool = Field(nullable=False)


class Suppression(SQLModel, table=True):
    """Addresses that must never be mailed again; a hash, so it survives erasure of the lead."""

    __tablename__ = "suppressions"
    __table_args__ = (sa.UniqueConstraint("email_hash", name="uq_suppressions_email_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    email_hash: str = Field(sa_type=sa.String(64), nullable=False)
    reason: str = Field(sa_type=sa.String(32), nullable=False)
    created_at: datetime = Field(sa_type=UtcDateTime, nullable=False)


class FunnelVersion(SQLModel, table=True):
    __tablename__ = "funnel_versions"
    __table_args__ = (sa.UniqueConstraint("funnel_id", "version", name="uq_funnel_versions_funnel_version"),)

    id: int | None = Field(default=None, primary_key=True)
    funnel_id: str = Field(sa_type=sa.String(100), nullable=False)
    version: str = Field(sa_type=sa.String(64), nullable=False)
    definition: dict[str, Any] = Field(sa_type=Json, nullable=False)
    created_at: datetime = Field(sa_type=UtcDateTime, nullable=False)


class ApiKey(SQLModel, table=True):
    """A key for the HTTP API. Only its SHA-256 is kept: the key itself is shown once, at creation."""

    __tablename__ = "api_keys"
    __table_args__ = (sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_type=sa.String(100), nullable=False)
    prefix: str = Field(sa_type=sa.String(16), nullable=False)
    key_hash: str = Field(sa_type=sa.String(64), nullable=False)
    created_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ConsentRecord(SQLModel, table=True):
    """Proof of consent, one row per act: a form's consent box ticked (`given`), a double opt-in asked
    for (`requested`) and then confirmed (`confirmed`), or consent withdrawn (`withdrawn`). It holds
    what the lead saw (the consent text's version), where (form, IP), and when; erasure deletes it.
    `status_before` and `status_after` are the lead's consent status around the act: every change of
    status, from any source, has its row (NULL before a lead's first act, and on acts about one funnel)."""

    __tablename__ = "consent_records"
    __table_args__ = (
        sa.Index("ix_consent_records_lead", "lead_id", "form_id"),
        # The form's limit per client counts the confirmations one IP caused lately.
        sa.Index("ix_consent_records_ip", "ip", "at"),
        sa.CheckConstraint(_in("action", CONSENT_ACTIONS), name="ck_consent_records_action"),
    )

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = _lead_fk()
    action: str = Field(sa_type=sa.String(16), nullable=False)
    source: str = Field(sa_type=sa.String(200), nullable=False)
    form_id: str | None = Field(default=None, sa_type=sa.String(100))
    text_version: str | None = Field(default=None, sa_type=sa.String(100))
    ip: str | None = Field(default=None, sa_type=sa.String(45))
    user_agent: str | None = Field(default=None, sa_type=sa.String(300))
    fields: dict[str, Any] = Field(default_factory=dict, sa_type=Json, nullable=False)
    status_before: str | None = Field(default=None, sa_type=sa.String(16))
    status_after: str | None = Field(default=None, sa_type=sa.String(16))
    at: datetime = Field(sa_type=UtcDateTime, nullable=False)


class WebhookReceipt(SQLModel, table=True):
    """Signatures of inbound webhooks already accepted: the same signed request twice is a replay and is
    refused. Rows older than the signature tolerance can go: such a request is refused as too old."""

    __tablename__ = "webhook_receipts"
    __table_args__ = (sa.Index("ix_webhook_receipts_received_at", "received_at"),)

    signature: str = Field(sa_type=sa.String(64), primary_key=True)
    source: str = Field(sa_type=sa.String(100), nullable=False)
    received_at: datetime = Field(sa_type=UtcDateTime, nullable=False)


DELIVERY_STATUSES = ("queued", "sent", "failed")
DELIVERY_SOURCES = ("transition", "goal", "call", "alarm", "alarm_over")


class WebhookDelivery(SQLModel, table=True):
    """One outbound webhook request to make: a stage transition or a goal for a subscription, or a funnel
    `webhook` step's call (subscription ""). A lead's deliveries to one subscription go out in id order:
    a row waits while an earlier one of its lane (subscription, lead) is still `queued`."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # Fanning the same row out twice is a no-op.
        sa.UniqueConstraint("subscription", "source", "source_id", name="uq_webhook_deliveries_source"),
        sa.Index(
            "ix_webhook_deliveries_ready",
            "next_attempt_at",
            sqlite_where=sa.text("status = 'queued'"),
            postgresql_where=sa.text("status = 'queued'"),
        ),
        # "Is an earlier delivery of this lane unfinished?": one probe per candidate.
        sa.Index(
            "ix_webhook_deliveries_lane",
            "subscription",
            "lead_id",
            "id",
            sqlite_where=sa.text("status = 'queued'"),
            postgresql_where=sa.text("status = 'queued'"),
        ),
        sa.CheckConstraint(_in("status", DELIVERY_STATUSES), name="ck_webhook_deliveries_status"),
        sa.CheckConstraint(_in("source", DELIVERY_SOURCES), name="ck_webhook_deliveries_source"),
    )

    id: int | None = Field(default=None, primary_key=True)
    subscription: str = Field(sa_type=sa.String(100), nullable=False)
    source: str = Field(sa_type=sa.String(16), nullable=False)
    source_id: int = Field(nullable=False)
    lead_id: int | None = Field(default=None, foreign_key="leads.id", ondelete="CASCADE")  # NULL: a domain alarm
    url: str | None = Field(default=None, sa_type=sa.Text)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=Json, nullable=False)
    status: str = Field(sa_type=sa.String(16), nullable=False)
    attempts: int = Field(default=0, nullable=False)
    next_attempt_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    lease_until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_status: int | None = Field(default=None)
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class WebhookCursor(SQLModel, table=True):
    """How far a subscription has fanned out one source table (stage transitions or goals): every id up
    to `last_id` is done, except the `gaps`, ids not visible yet when the cursor passed them (a
    transaction still open on PostgreSQL) and looked for again until they show up or a grace period ends.
    `last_key` identifies the row at `last_id`, so a reused id (SQLite after the newest rows were erased)
    is noticed; `start_id` is where the subscription started, never looked behind."""

    __tablename__ = "webhook_cursors"

    subscription: str = Field(sa_type=sa.String(100), primary_key=True)
    source: str = Field(sa_type=sa.String(16), primary_key=True)
    start_id: int = Field(nullable=False)
    last_id: int = Field(nullable=False)
    last_key: str | None = Field(default=None, sa_type=sa.String(100))
    gaps: list[Any] = Field(default_factory=list, sa_type=Json, nullable=False)
    updated_at: datetime = Field(sa_type=UtcDateTime, nullable=False)


class OpsDigest(SQLModel, table=True):
    """One row per daily digest: taken before the email goes, so several engines send it once."""

    __tablename__ = "ops_digests"

    day: str = Field(sa_type=sa.String(10), primary_key=True)
    status: str = Field(sa_type=sa.String(16), nullable=False)
    at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    error: str | None = Field(default=None, sa_type=sa.Text)


class OpsSession(SQLModel, table=True):
    """One sign-in to the dashboard. The cookie is signed and names the session; the session is valid
    while its row is here, unexpired and not ended, so a sign-out ends it for every copy of the cookie
    and on every process of the app. Kept by a hash of its id; expired rows are swept at sign-in."""

    __tablename__ = "ops_sessions"
    __table_args__ = (sa.Index("ix_ops_sessions_expires_at", "expires_at"),)

    id_hash: str = Field(sa_type=sa.String(64), primary_key=True)
    user_name: str = Field(sa_type=sa.String(64), nullable=False)
    created_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    expires_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    ended_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class OpsSignInFailure(SQLModel, table=True):
    """Failed dashboard sign-ins counted per name (by a hash: a name field sometimes holds a password
    typed in the wrong box) and per client address, and the lockout they earned (`engine.core.ops_auth`)."""

    __tablename__ = "ops_sign_in_failures"
    __table_args__ = (sa.Index("ix_ops_sign_in_failures_last_failed_at", "last_failed_at"),)

    key: str = Field(sa_type=sa.String(100), primary_key=True)
    failures: int = Field(nullable=False)
    last_failed_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    locked_until: datetime | None = Field(default=None, sa_type=UtcDateTime)


class BounceReport(SQLModel, table=True):
    """What one report said about one recipient (`engine.bounce_store`), kept whether or not it matched a
    message: the lead's timeline shows it with its source, and what matched nothing or could not be
    classed waits for an operator (`funnel bounces unknown`) with the raw report. A report received
    twice is one row (its key is a digest of the raw message, or the provider's event id)."""

    __tablename__ = "bounce_reports"
    __table_args__ = (
        sa.UniqueConstraint("report_key", "recipient_key", name="uq_bounce_reports_key_recipient"),
        sa.Index("ix_bounce_reports_recipient_hash", "recipient_hash", "received_at"),
        sa.Index("ix_bounce_reports_lead_id", "lead_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    report_key: str = Field(sa_type=sa.String(64), nullable=False)
    recipient_key: str = Field(sa_type=sa.String(64), nullable=False)  # the recipient's hash, or "" for none
    recipient_hash: str | None = Field(default=None, sa_type=sa.String(64))
    recipient_domain: str | None = Field(default=None, sa_type=sa.String(255))
    source: str = Field(sa_type=sa.String(16), nullable=False)
    kind: str = Field(sa_type=sa.String(16), nullable=False)
    failure_class: str | None = Field(default=None, sa_type=sa.String(16))
    status: str | None = Field(default=None, sa_type=sa.String(16))
    diagnostic: str | None = Field(default=None, sa_type=sa.Text)
    outbox_id: int | None = Field(default=None, sa_type=sa.Integer)
    lead_id: int | None = Field(default=None, sa_type=sa.Integer)
    matched_by: str | None = Field(default=None, sa_type=sa.String(16))
    action: str | None = Field(default=None, sa_type=sa.String(32))  # what it did: suppressed, soft bounce, ...
    received_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    raw: bytes | None = Field(default=None, sa_type=sa.LargeBinary)


class DomainAlarm(SQLModel, table=True):
    """A receiving domain that refuses the sender: `bounces.sender_fault_alarm` reports of the sender's
    fault from it within `bounces.sender_fault_window_minutes` raise one row (`engine.store.domain_alarms`).
    It is active while `open_key` holds the domain (one open alarm per domain, by the unique key) and
    `ends_at` (the last such report plus the window) has not come; it ends then, or when an operator
    clears it."""

    __tablename__ = "domain_alarms"
    __table_args__ = (sa.UniqueConstraint("open_key", name="uq_domain_alarms_open_key"),)

    id: int | None = Field(default=None, primary_key=True)
    domain: str = Field(sa_type=sa.String(255), nullable=False)
    open_key: str | None = Field(default=None, sa_type=sa.String(255))  # the domain while open, else NULL
    raised_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    reports: int = Field(nullable=False)  # reports of the sender's fault counted, from the window that raised it
    last_report_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    ends_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    ended_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    cleared_by: str | None = Field(default=None, sa_type=sa.String(100))  # who cleared it by hand, if anyone
    clear_reason: str | None = Field(default=None, sa_type=sa.Text)


class ExperimentDecision(SQLModel, table=True):
    """How an experiment ended: one row per (funnel, experiment) at most, so that it is decided once even
    with several workers deciding at the same time (`engine.store.experiment_decisions`). `arm`: where new
    leads go from then on (NULL: on by weight, as before); `how`: `auto` (the engine, at the horizon),
    `manual` (an operator promoted an arm) or `stopped` (an operator ended it); `figures`: the counts and
    the test's state when it was decided."""

    __tablename__ = "experiment_decisions"
    __table_args__ = (
        sa.UniqueConstraint("funnel_id", "experiment", name="uq_experiment_decisions_funnel_experiment"),
        sa.CheckConstraint("how IN ('auto', 'manual', 'stopped')", name="ck_experiment_decisions_how"),
    )

    id: int | None = Field(default=None, primary_key=True)
    funnel_id: str = Field(sa_type=sa.String(100), nullable=False)
    experiment: str = Field(sa_type=sa.String(100), nullable=False)
    arm: str | None = Field(default=None, sa_type=sa.String(100))
    how: str = Field(sa_type=sa.String(16), nullable=False)
    decided_at: datetime = Field(sa_type=UtcDateTime, nullable=False)
    decided_by: str = Field(sa_type=sa.String(200), nullable=False)
    reason: str = Field(sa_type=sa.Text, nullable=False)
    figures: dict[str, Any] = Field(default_factory=dict, sa_type=Json, nullable=False)


metadata = SQLModel.metadata

leads: sa.Table = Lead.__table__  # type: ignore[attr-defined]
enrollments: sa.Table = Enrollment.__table__  # type: ignore[attr-defined]
events: sa.Table = Event.__table__  # type: ignore[attr-defined]
stage_transitions: sa.Table = StageTransition.__table__  # type: ignore[attr-defined]
outbox: sa.Table = OutboxMessage.__table__  # type: ignore[attr-defined]
webhook_calls: sa.Table = WebhookCall.__table__  # type: ignore[attr-defined]
goals: sa.Table = Goal.__table__  # type: ignore[attr-defined]
suppressions: sa.Table = Suppression.__table__  # type: ignore[attr-defined]
funnel_versions: sa.Table = FunnelVersion.__table__  # type: ignore[attr-defined]
api_keys: sa.Table = ApiKey.__table__  # type: ignore[attr-defined]
consent_records: sa.Table = ConsentRecord.__table__  # type: ignore[attr-defined]
webhook_receipts: sa.Table = WebhookReceipt.__table__  # type: ignore[attr-defined]
webhook_deliveries: sa.Table = WebhookDelivery.__table__  # type: ignore[attr-defined]
webhook_cursors: sa.Table = WebhookCursor.__table__  # type: ignore[attr-defined]
ops_digests: sa.Table = OpsDigest.__table__  # type: ignore[attr-defined]
ops_sessions: sa.Table = OpsSession.__table__  # type: ignore[attr-defined]
ops_sign_in_failures: sa.Table = OpsSignInFailure.__table__  # type: ignore[attr-defined]
domain_alarms: sa.Table = DomainAlarm.__table__  # type: ignore[attr-defined]
bounce_reports: sa.Table = BounceReport.__table__  # type: ignore[attr-defined]
experiment_decisions: sa.Table = ExperimentDecision.__table__  # type: ignore[attr-defined]
report_rollups: sa.Table = ReportRollup.__table__  # type: ignore[attr-defined]
experiment_outcomes: sa.Table = ExperimentOutcome.__table__  # type: ignore[attr-defined]
