"""What `funnel demo-month` (`engine.runtime.month`) asks the database beyond the engine's own queries:
whether it holds any lead, and when the next enrollment wakes and the next email is due, so the virtual
clock can jump there.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from engine.store import tables


def no_leads(conn: sa.Connection) -> bool:
    return conn.execute(sa.select(tables.leads.c.id).limit(1)).first() is None


def next_due(conn: sa.Connection) -> tuple[datetime | None, datetime | None]:
    """When the next enrollment wakes and the next email is due."""
    e, o = tables.enrollments, tables.outbox
    # Constants written out, so SQLite sees the partial indexes' conditions and reads one entry.
    active = e.c.status == sa.literal_column("'active'")
    ready = o.c.status.in_([sa.literal_column("'queued'"), sa.literal_column("'deferred'")])
    wake = sa.select(sa.func.min(e.c.wake_at)).where(active).scalar_subquery()
    mail = sa.select(sa.func.min(o.c.next_attempt_at)).where(ready).scalar_subquery()
    row = conn.execute(sa.select(sa.type_coerce(wake, e.c.wake_at.type), sa.type_coerce(mail, o.c.due_at.type))).one()
    return row[0], row[1]
