"""What `/metrics` reads from the database (`engine.http.metrics` serves it): emails by status, the
stage transitions added since the last scrape, and what is due now.
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
