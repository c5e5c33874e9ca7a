"""The daily digest's reads and writes: the day's figures (transitions, goals, bounces, `unknown`
messages) and the `ops_digests` row that makes one engine of several send a day's digest, once.
Sending it is `engine.runtime.digest`'s.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from engine.store import domain_alarms, tables


@dataclass
class Figures:
    day: date
    transitions: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # funnel, from, to
    goals: Counter[tuple[str, str]] = field(default_factory=Counter)  # funnel, goal
    bounced: Counter[str] = field(default_factory=Counter)  # funnel
    unknown_new: int = 0
    unknown_open: int = 0
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
    figures.alarms = [a for a in domain_alarms.listing(conn, start) if a.raised_at < end]
    return figures


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
