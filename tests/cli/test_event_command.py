"""`funnel event --at`: an event dated after the engine's clock by more than the tolerance is refused with
the engine's time, and one a little ahead (a clock skewed by up to 5 minutes) is recorded at now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from engine import tables
from engine.database import create_engine_for
from tests.cli.test_existing_database import funnel


def _occurred(folder: Path) -> dict[str, datetime]:
    engine = create_engine_for(f"sqlite:///{folder / 'data' / 'funnel.db'}")
    try:
        with engine.connect() as conn:
            e = tables.events
            return {r.event_id: r.occurred_at for r in conn.execute(sa.select(e.c.event_id, e.c.occurred_at))}
    finally:
        engine.dispose()


def test_an_event_dated_after_the_engines_clock_is_refused_and_a_skewed_one_is_taken_as_now(tmp_path: Path) -> None:
    funnel(tmp_path, "event", "ana@example.com", "page_viewed", "--id", "first")  # the database, with a lead
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    refused = funnel(tmp_path, "event", "ana@example.com", "page_viewed", "--id", "later", "--at", tomorrow.isoformat())
    assert refused.returncode == 2, refused.stdout
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"--at: {tomorrow.isoformat()} is after the engine's time ")
    assert line.endswith(
        "by more than 5 minutes (an event is sent once it has happened; a clock up to 5 minutes ahead is taken as now)"
    )
    assert set(_occurred(tmp_path)) == {"first"}

    before = datetime.now(UTC)
    soon = before + timedelta(minutes=3)
    taken = funnel(tmp_path, "event", "ana@example.com", "page_viewed", "--id", "soon", "--at", soon.isoformat())
    assert taken.returncode == 0, taken.stderr
    assert before <= _occurred(tmp_path)["soon"] <= datetime.now(UTC)
    past = funnel(tmp_path, "event", "ana@example.com", "page_viewed", "--id", "past", "--at", "2026-01-05T09:00")
    assert past.returncode == 0, past.stderr
    assert _occurred(tmp_path)["past"] == datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
