"""What the ops dashboard reads beyond `funnel report`'s figures and live feed (`engine.store.report_queries`)
and a lead's timeline (`engine.views.lead_timeline`): transitions per day, lead search, the outbox's messages
by status (`/ops/outbox` and `funnel outbox`), and the one thing they write: an operator's decision on an
`unknown` message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.core.own_events import EMAIL_DECIDED, OPERATOR, engine_id
from engine.store import leads as store
from engine.store import outbox, tables
from engine.store.outbox import Change


def _day(conn: sa.Connection, column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """A timestamp's UTC day as 'YYYY-MM-DD' text. SQLite holds naive UTC text (see `UtcDateTime`)."""
    if conn.dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")
    return sa.func.substr(column, 1, 10)


def transitions_per_day(conn: sa.Connection, since: datetime) -> dict[str, int]:
    """Stage transitions recorded per UTC day from `since` on (days without any are missing)."""
    t = tables.stage_transitions
    day = _day(conn, t.c.at).label("day")
    rows = conn.execute(sa.select(day, sa.func.count()).where(t.c.at >= since).group_by(day))
    return {str(d): int(n) for d, n in rows}


def funnel_names(conn: sa.Connection) -> dict[str, str]:
    """Each funnel's name as its latest recorded definition gives it."""
    f = tables.funnel_versions
    names: dict[str, str] = {}
    for funnel_id, definition in conn.execute(
        sa.select(f.c.funnel_id, f.c.definition).order_by(f.c.created_at, f.c.id)
    ):
        names[funnel_id] = str((definition or {}).get("name") or funnel_id)
    return names


# --------------------------------------------------------------------------------------------------
# Leads
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeadRow:
    id: int
    email: str
    consent: str
    created_at: datetime
    active_in: int


def search_leads(conn: sa.Connection, prefix: str, limit: int = 50) -> list[LeadRow]:
    """Leads whose address starts with `prefix` (case does not matter: addresses are stored lowercased)."""
    leads, e = tables.leads, tables.enrollments
    active = (
        sa.select(sa.func.count())
        .where(e.c.lead_id == leads.c.id, e.c.status == "active")
        .correlate(leads)
        .scalar_subquery()
    )
    stmt = (
        sa.select(leads.c.id, leads.c.email, leads.c.consent_status, leads.c.created_at, active)
        .where(leads.c.email.startswith(prefix.strip().lower(), autoescape=True))
        .order_by(leads.c.email)
        .limit(limit)
    )
    return [LeadRow(*row) for row in conn.execute(stmt)]


def lead_email(conn: sa.Connection, lead_id: int) -> str | None:
    found = conn.execute(sa.select(tables.leads.c.email).where(tables.leads.c.id == lead_id)).scalar()
    return str(found) if found is not None else None


# --------------------------------------------------------------------------------------------------
# The outbox
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: int
    lead_id: int
    email: str
    funnel: str
    step: str
    template: str
    transactional: bool
    status: str
    attempts: int
    sent_at: datetime | None  # when DATA began (its last try)
    next_attempt_at: datetime | None
    message_id: str | None
    last_error: str | None
    skip_reason: str | None

    @property
    def reason(self) -> str | None:
        """Why it is where it is: the last error, or why it was skipped."""
        return self.last_error or self.skip_reason


def messages(conn: sa.Connection, statuses: Sequence[str], limit: int = 200) -> list[OutboxMessage]:
    """Messages in these states, oldest first: `unknown` ones (the connection dropped after DATA) for an
    operator to decide, `failed` and `deferred` ones with their reasons."""
    o, leads = tables.outbox, tables.leads
    stmt = (
        sa.select(
            o.c.id,
            o.c.lead_id,
            leads.c.email,
            o.c.funnel_id,
            o.c.step,
            o.c.template,
            o.c.transactional,
            o.c.status,
            o.c.attempts,
            o.c.sent_at,
            o.c.next_attempt_at,
            o.c.message_id,
            o.c.last_error,
            o.c.skip_reason,
        )
        .join(leads, leads.c.id == o.c.lead_id)
        .where(o.c.status.in_(list(statuses)))
        .order_by(sa.nulls_last(o.c.sent_at), o.c.id)
        .limit(limit)
    )
    return [OutboxMessage(*row) for row in conn.execute(stmt)]


def outbox_counts(conn: sa.Connection) -> dict[str, int]:
    o = tables.outbox
    found = {status: int(n) for status, n in conn.execute(sa.select(o.c.status, sa.func.count()).group_by(o.c.status))}
    return {status: found.get(status, 0) for status in tables.OUTBOX_STATUSES}


DECISIONS = {"sent": "marked sent", "resend": "sent again"}


def status_of(conn: sa.Connection, message_id: int) -> str | None:
    """A message's state now; None when there is no such message."""
    o = tables.outbox
    found: str | None = conn.execute(sa.select(o.c.status).where(o.c.id == message_id)).scalar_one_or_none()
    return found


def decide(conn: sa.Connection, message_id: int, decision: str, user: str, now: datetime) -> bool:
    """An operator's decision on an `unknown` message: `sent` (the server did get it: done) or `resend`
    (queued again: the lead may get it twice). Only while the message is still `unknown`: a late 250
    reply or another operator may have settled it first (False then).

    The outbox has no column for who decided: the note goes in `last_error` (shown with the message), and
    an `email_decided` event in the lead's history keeps it for good (a resent message that then goes
    out has its `last_error` cleared by the mailer)."""
    o = tables.outbox
    row = conn.execute(sa.select(o).where(o.c.id == message_id)).first()
    if row is None or row.status != "unknown":
        return False
    note = f"{DECISIONS[decision]} by {user} at {now.isoformat().replace('+00:00', 'Z')}"
    if row.last_error:
        note += f" (was: {row.last_error})"
    values: dict[str, Any] = {"status": "sent", "last_error": note}
    if decision == "resend":
        values = {"status": "queued", "last_error": note, "next_attempt_at": now, "claimed_at": None}
    if not outbox.apply(conn, [Change(message_id, values, ("unknown",))]):
        return False
    event = store.NewEvent(
        engine_id("ops", message_id, decision, now.isoformat()),
        row.lead_id,
        EMAIL_DECIDED,
        now,
        {"decision": decision, "by": user, "message": message_id, "funnel": row.funnel_id, "step": row.step},
        OPERATOR,
    )
    store.record_events(conn, [event], now=now)
    return True
