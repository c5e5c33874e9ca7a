"""The daily digest's reads and writes: the day's figures (transitions, goals, bounces, `unknown`
messages, what came back after the relay's 250) and the `ops_digests` row that makes one engine of
several send a day's digest, once.
Sending it is `engine.runtime.digest`'s.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from engine.core.bounce_outcome import ADDRESS_GONE, COMPLAINT, MAILBOX_TROUBLE
from engine.store import domain_alarms, tables


@dataclass(frozen=True)
class Returns:
    """What came back in the day: hard bounces (reports that the address is gone, and the relay's own
    refusals of an address that no report repeats), soft bounces and complaints (reports received, matched
    or not), the messages delivered that day (the complaint rate's denominator), and the reports kept for
    an operator (all of them, and those received that day)."""

    hard_bounces: int = 0
    soft_bounces: int = 0
    complaints: int = 0
    delivered: int = 0
    kept: int = 0
    kept_new: int = 0


@dataclass
class Figures:
    day: date
    transitions: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # funnel, from, to
    goals: Counter[tuple[str, str]] = field(default_factory=Counter)  # funnel, goal
    bounced: Counter[str] = field(default_factory=Counter)  # funnel
    unknown_new: int = 0
    unknown_open: int = 0
    returns: Returns = field(default_factory=Returns)
    alarms: list[domain_alarms.Alarm] = field(default_factory=list)  # raised that day, or on at its end


def window(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The local day as a range of UTC instants (23 or 25 hours long on DST days)."""
    start = datetime.combine(day, time(0), zone).astimezone(UTC)
    return start, datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)


def gather(conn: sa.Connection, day: date, zone: ZoneInfo) -> Figures:
    start, end = window(day, zone)
    figures = Figures(day)
    t, g, o = tables.stage_transitions, tables.goals, tables.outbox
    for funnel, from_stage, to_stage, n in conn.execute(
        sa.select(t.c.funnel_id, t.c.from_stage, t.c.to_stage, sa.func.count())
        .where(t.c.at >= start, t.c.at < end)
        .group_by(t.c.funnel_id, t.c.from_stage, t.c.to_stage)
    ):
        figures.transitions[(funnel, from_stage or "", to_stage or "")] = int(n)
    for funnel, goal, n in conn.execute(
        sa.select(g.c.funnel_id, g.c.goal, sa.func.count())
        .where(g.c.at >= start, g.c.at < end)
        .group_by(g.c.funnel_id, g.c.goal)
    ):
        figures.goals[(funnel, goal)] = int(n)
    for funnel, n in conn.execute(
        sa.select(o.c.funnel_id, sa.func.count())
        .where(o.c.status == "bounced", o.c.sent_at >= start, o.c.sent_at < end)
        .group_by(o.c.funnel_id)
    ):
        figures.bounced[funnel] = int(n)
    figures.unknown_open = int(
        conn.execute(sa.select(sa.func.count()).select_from(o).where(o.c.status == "unknown")).scalar_one()
    )
    figures.unknown_new = int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(o)
            .where(o.c.status == "unknown", o.c.sent_at >= start, o.c.sent_at < end)
        ).scalar_one()
    )
    figures.returns = gather_returns(conn, start, end)
    figures.alarms = [a for a in domain_alarms.listing(conn, start) if a.raised_at < end]
    return figures


def gather_returns(conn: sa.Connection, start: datetime, end: datetime) -> Returns:
    """The day's `Returns`, for [start, end)."""
    b, o = tables.bounce_reports, tables.outbox
    in_day = (b.c.received_at >= start, b.c.received_at < end)
    by_class: dict[str, int] = {
        klass: int(n)
        for klass, n in conn.execute(
            sa.select(b.c.failure_class, sa.func.count())
            .where(*in_day, b.c.failure_class.in_((ADDRESS_GONE, MAILBOX_TROUBLE, COMPLAINT)))
            .group_by(b.c.failure_class)
        )
    }
    reported_gone = sa.exists().where(b.c.outbox_id == o.c.id, b.c.failure_class == ADDRESS_GONE)
    # Refused at RCPT, a message has no `sent_at`: its last try was due at `next_attempt_at`.
    tried = sa.func.coalesce(o.c.sent_at, o.c.next_attempt_at)
    refused = conn.execute(
        sa.select(sa.func.count())
        .select_from(o)
        .where(o.c.status == "bounced", tried >= start, tried < end, ~reported_gone)
    ).scalar_one()
    delivered = conn.execute(
        sa.select(sa.func.count()).select_from(o).where(o.c.status == "sent", o.c.sent_at >= start, o.c.sent_at < end)
    ).scalar_one()
    kept = sa.or_(b.c.outbox_id.is_(None), b.c.failure_class.is_(None))
    kept_all, kept_new = conn.execute(
        sa.select(sa.func.count(), sa.func.count().filter(sa.and_(*in_day))).select_from(b).where(kept)
    ).one()
    return Returns(
        hard_bounces=by_class.get(ADDRESS_GONE, 0) + int(refused),
        soft_bounces=by_class.get(MAILBOX_TROUBLE, 0),
        complaints=by_class.get(COMPLAINT, 0),
        delivered=int(delivered),
        kept=int(kept_all),
        kept_new=int(kept_new or 0),
    )


def take_day(conn: sa.Connection, day: date, now: datetime) -> bool:
    """Whether this engine takes the day's digest: the first to insert its row does."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    taken = conn.execute(
        insert(tables.ops_digests)
        .values(day=day.isoformat(), status="sending", at=now)
        .on_conflict_do_nothing(index_elements=["day"])
    ).rowcount
    return bool(taken)


def record_failed(conn: sa.Connection, day: date, error: str) -> None:
    d = tables.ops_digests
    conn.execute(sa.update(d).where(d.c.day == day.isoformat()).values(status="failed", error=error))


def record_sent(conn: sa.Connection, day: date, now: datetime) -> None:
    d = tables.ops_digests
    conn.execute(sa.update(d).where(d.c.day == day.isoformat()).values(status="sent", at=now))
