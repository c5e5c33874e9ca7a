"""What retention may delete, and deleting it a batch at a time (`engine.runtime.pruning` runs them).

Each kind of record has its own maximum age (`RetentionSettings`); a row older than that goes unless
the engine still needs it to be right:

- a lead's rows that the report counts (stage transitions, emails, opens, clicks, unsubscribes) go only
  once the lead is rolled up (`engine.store.rollups`): when it has ended every enrollment, nothing of
  it is in flight (an email queued, sending, deferred or unknown; an event not yet processed; a webhook
  call pending) and it has done nothing for the shortest of those ages;
- a lead's experiment assignments stay while the lead exists (the lead keeps its arm), and its
  transitions and events stay until the assignments' outcomes are written at its rollup (the
  experiment counts them);
- enrollments (where each lead stands, the emails it was sent: never twice), consent records, goals
  and suppression hashes are not pruned by age: they go only with their lead (`funnel lead forget`,
  or `forget_inactive_days`), and the suppression hash never;
- an event is kept at least 7 days (the settings' floor): its id is its sender's idempotency key;
- a form's confirmation email stays while its lead's double opt-in is pending.

Every function takes at most `limit` rows, so a caller commits after each: short transactions, no
table lock on PostgreSQL and a SQLite WAL that stays small.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.core.own_events import EXPERIMENT_ASSIGNED
from engine.store import lead_data, rollups, tables

# Statuses of messages the pipeline is done with; the others are in flight.
DONE = ("sent", "failed", "bounced", "skipped")
IN_FLIGHT = ("queued", "sending", "deferred", "unknown")
# The events the report counts: they go with their lead's rollup.
COUNTED = ("email_opened", "email_clicked", "unsubscribed", "funnel_unsubscribed")
WEBHOOK_DONE = ("sent", "failed")


def _literal(value: str) -> Any:
    # Constants written out, so the databases see partial indexes' conditions.
    return sa.literal_column(f"'{value}'")


def _outcome_unwritten(lead_id: Any) -> Any:
    """Whether an experiment assignment of the lead has no outcome written yet: its transitions and
    events may still be what the experiment counts (`experiment_decisions.stamp_outcomes`)."""
    ev, o = tables.events.alias("assignment"), tables.experiment_outcomes
    return sa.exists().where(
        ev.c.lead_id == lead_id,
        ev.c.name == _literal(EXPERIMENT_ASSIGNED),
        ~sa.exists().where(o.c.assignment_id == ev.c.id),
    )


def _quiet_since(lead_id: Any, since: datetime) -> list[Any]:
    """WHERE terms: nothing of the lead in flight, and nothing it did or was sent since `since`."""
    e, o, ev = tables.enrollments.alias("other"), tables.outbox, tables.events
    w, b = tables.webhook_calls, tables.bounce_reports
    return [
        ~sa.exists().where(e.c.lead_id == lead_id, sa.or_(e.c.status == _literal("active"), e.c.exited_at >= since)),
        ~sa.exists().where(o.c.lead_id == lead_id, sa.or_(o.c.status.in_(IN_FLIGHT), o.c.created_at >= since)),
        ~sa.exists().where(ev.c.lead_id == lead_id, sa.or_(ev.c.processed_at.is_(None), ev.c.received_at >= since)),
        ~sa.exists().where(w.c.lead_id == lead_id, w.c.status.in_(("queued", "sending", "unknown"))),
        ~sa.exists().where(b.c.lead_id == lead_id, b.c.received_at >= since),
    ]


def settled(quiet_since: datetime, limit: int) -> sa.Select[Any]:
    """Leads to roll up: one enrollment at least not rolled up since it last ended, every enrollment
    ended before `quiet_since`, nothing in flight and nothing done since."""
    e = tables.enrollments
    return (
        sa.select(e.c.lead_id)
        .where(
            e.c.status == _literal("exited"),
            sa.or_(e.c.rolled_up_at.is_(None), e.c.rolled_up_at < e.c.exited_at),
            *_quiet_since(e.c.lead_id, quiet_since),
        )
        .group_by(e.c.lead_id)
        .order_by(e.c.lead_id)
        .limit(limit)
    )


# PostgreSQL advisory lock key of rolling up ("rollup" in ASCII): one writer of rollups at a time.
ROLLING_UP = 0x726F6C6C7570


def _alone(conn: sa.Connection) -> bool:
    """Whether this transaction is the only one rolling up. Two workers rolling up the same lead at once
    would count it twice; deletes need no such care (a row goes once). SQLite has one writer anyway."""
    if conn.dialect.name != "postgresql":
        return True
    return bool(conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(ROLLING_UP))).scalar_one())


def roll_up_settled(conn: sa.Connection, quiet_since: datetime, now: datetime, limit: int) -> int:
    """Roll up a batch of settled leads; how many (0 while another worker is rolling up)."""
    if not _alone(conn):
        return 0
    leads = list(conn.execute(settled(quiet_since, limit)).scalars())
    rollups.roll_up(conn, leads, now)
    return len(leads)


def _rolled_up(lead_id: Any, funnel_id: Any, stamped: Any) -> Any:
    e = tables.enrollments
    return sa.exists().where(e.c.lead_id == lead_id, e.c.funnel_id == funnel_id, e.c.rolled_up_at >= stamped)


def transitions(before: datetime, limit: int) -> sa.Select[Any]:
    t = tables.stage_transitions
    return (
        sa.select(t.c.id)
        .where(t.c.at < before, _rolled_up(t.c.lead_id, t.c.funnel_id, t.c.at), ~_outcome_unwritten(t.c.lead_id))
        .limit(limit)
    )


def outbox(before: datetime, limit: int) -> sa.Select[Any]:
    """Messages done with: of a rolled-up enrollment, or a form's confirmation (no enrollment; the report
    does not count it) once its lead is no longer pending."""
    o, e, lead = tables.outbox, tables.enrollments, tables.leads
    enrolled = sa.exists().where(e.c.lead_id == o.c.lead_id, e.c.funnel_id == o.c.funnel_id)
    confirmed = sa.exists().where(lead.c.id == o.c.lead_id, lead.c.consent_status != _literal("pending"))
    return (
        sa.select(o.c.id)
        .where(
            o.c.status.in_(DONE),
            o.c.created_at < before,
            sa.or_(_rolled_up(o.c.lead_id, o.c.funnel_id, o.c.created_at), sa.and_(~enrolled, confirmed)),
        )
        .limit(limit)
    )


def events(before: datetime, limit: int) -> sa.Select[Any]:
    """Processed events but assignments; those the report counts once every enrollment of their lead is
    rolled up past them."""
    ev, e = tables.events, tables.enrollments
    unrolled = sa.exists().where(
        e.c.lead_id == ev.c.lead_id, sa.or_(e.c.rolled_up_at.is_(None), e.c.rolled_up_at < ev.c.received_at)
    )
    return (
        sa.select(ev.c.id)
        .where(
            ev.c.received_at < before,
            ev.c.processed_at.is_not(None),
            ev.c.name != _literal(EXPERIMENT_ASSIGNED),
            sa.or_(ev.c.name.not_in(COUNTED), ~unrolled),
            ~_outcome_unwritten(ev.c.lead_id),
        )
        .limit(limit)
    )


def webhook_deliveries(before: datetime, limit: int) -> sa.Select[Any]:
    d = tables.webhook_deliveries
    return sa.select(d.c.id).where(d.c.status.in_(WEBHOOK_DONE), d.c.created_at < before).limit(limit)


KINDS = {
    "transitions": (tables.stage_transitions, transitions),
    "outbox": (tables.outbox, outbox),
    "events": (tables.events, events),
    "webhook deliveries": (tables.webhook_deliveries, webhook_deliveries),
}


def delete(conn: sa.Connection, kind: str, before: datetime, limit: int) -> int:
    """Delete a batch of `kind` older than `before`; how many rows went."""
    table, chosen = KINDS[kind]
    ids = chosen(before, limit).scalar_subquery()
    return conn.execute(sa.delete(table).where(table.c.id.in_(ids))).rowcount or 0


def count(conn: sa.Connection, kind: str, before: datetime) -> int:
    """How many rows of `kind` older than `before` may go now (a dry run: nothing changes)."""
    _, chosen = KINDS[kind]
    return int(conn.execute(sa.select(sa.func.count()).select_from(chosen(before, 2**62).subquery())).scalar_one())


def inactive(quiet_since: datetime, limit: int) -> sa.Select[Any]:
    """Leads to forget: no enrollment active or ended since `quiet_since`, nothing done or sent since,
    not pending a double opt-in, not in a running experiment."""
    lead = tables.leads
    return (
        sa.select(lead.c.id, lead.c.email)
        .where(
            lead.c.updated_at < quiet_since,
            lead.c.consent_status != _literal("pending"),
            *_quiet_since(lead.c.id, quiet_since),
        )
        .order_by(lead.c.id)
        .limit(limit)
    )


def forget_inactive(conn: sa.Connection, quiet_since: datetime, now: datetime, limit: int) -> int:
    """Erase a batch of inactive leads, their figures rolled up first; how many (0 while another worker
    is rolling up)."""
    if not _alone(conn):
        return 0
    found = conn.execute(inactive(quiet_since, limit)).all()
    rollups.roll_up(conn, [lead_id for lead_id, _ in found], now, with_stages=True)
    for _, address in found:
        lead_data.erase(conn, address, now)
    return len(found)


def count_leads(conn: sa.Connection, query: sa.Select[Any]) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one())
