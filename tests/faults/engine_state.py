"""What the scenarios read of the engine's database while they wait for it to finish."""

from __future__ import annotations

import sqlalchemy as sa

from engine.store.tables import enrollments, outbox


def left(engine: sa.Engine, leads: int) -> tuple[int, int]:
    """(leads not done with the funnel, outbox rows not final); a signup not handled yet counts."""
    with engine.connect() as conn:
        exited = conn.execute(
            sa.select(sa.func.count()).select_from(enrollments).where(enrollments.c.status == "exited")
        ).scalar_one()
        open_rows = conn.execute(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.status.in_(("queued", "deferred", "sending")))
        ).scalar_one()
    return leads - exited, open_rows
