"""What `/metrics` reads from the database (`engine.http.metrics` serves it): emails by status, the
stage transitions added since the last scrape, and what is due now; the bounce reports and suppressions
added since the last scrape, and the reports kept for an operator.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from engine.store import tables


def outbox_statuses(conn: sa.Connection) -> dict[str, int]:
    o = tables.outbox
    rows = conn.execute(sa.select(o.c.status, sa.func.count()).group_by(o.c.status))
    return {status: int(n) for status, n in rows}


def transitions_after(conn: sa.Connection, last_id: int) -> list[tuple[str, str | None, str | None, int, int]]:
    """Transitions with an id above `last_id`, counted by funnel, from and to, each with its highest id."""
    t = tables.stage_transitions
    rows = conn.execute(
        sa.select(t.c.funnel_id, t.c.from_stage, t.c.to_stage, sa.func.count(), sa.func.max(t.c.id))
        .where(t.c.id > last_id)
        .group_by(t.c.funnel_id, t.c.from_stage, t.c.to_stage)
    ).all()
    return [(funnel, from_stage, to_stage, int(n), int(last)) for funnel, from_stage, to_stage, n, last in rows]


def backlog(conn: sa.Connection, now: datetime) -> tuple[int, int, int]:
    """Enrollments due, emails ready to send, and events not yet handled, at `now`."""
    e, o, ev = tables.enrollments, tables.outbox, tables.events
    due = conn.execute(
        sa.select(sa.func.count()).select_from(e).where(e.c.status == "active", e.c.wake_at <= now)
    ).scalar_one()
    ready = conn.execute(
        sa.select(sa.func.count())
        .select_from(o)
        .where(sa.text("status IN ('queued', 'deferred')"), o.c.next_attempt_at <= now)
    ).scalar_one()
    pending = conn.execute(sa.select(sa.func.count()).select_from(ev).where(ev.c.processed_at.is_(None))).scalar_one()
    return int(due), int(ready), int(pending)


def bounce_reports_after(conn: sa.Connection, last_id: int) -> list[tuple[str, str | None, bool, int, int]]:
    """Bounce reports (one row per recipient) with an id above `last_id`, counted by source, class (None:
    nothing could class it) and whether they matched a message, each group with its highest id. A report
    that matched nothing or has no class is kept for an operator (`funnel bounces unknown`)."""
    b = tables.bounce_reports
    matched = b.c.outbox_id.is_not(None)
    rows = conn.execute(
        sa.select(b.c.source, b.c.failure_class, matched, sa.func.count(), sa.func.max(b.c.id))
        .where(b.c.id > last_id)
        .group_by(b.c.source, b.c.failure_class, matched)
    ).all()
    return [(source, klass, bool(found), int(n), int(last)) for source, klass, found, n, last in rows]


def suppressions_after(conn: sa.Connection, last_id: int) -> list[tuple[str, int, int]]:
    """Suppressions with an id above `last_id`, counted by reason, each with its highest id."""
    s = tables.suppressions
    rows = conn.execute(
        sa.select(s.c.reason, sa.func.count(), sa.func.max(s.c.id)).where(s.c.id > last_id).group_by(s.c.reason)
    ).all()
    return [(reason, int(n), int(last)) for reason, n, last in rows]
