"""`funnel event --at` and `funnel lead enroll --at`: a time after the engine's clock by more than the
tolerance is refused with the engine's time, one a little ahead (a clock skewed by up to 5 minutes) is
recorded at now, and one in the past is recorded as given (a replay)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from engine.store import tables
from engine.store.database import create_engine_for
from tests.cli.test_existing_database import ROOT, funnel


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


def test_a_manual_enroll_may_be_dated_in_the_past_and_not_after_the_engines_clock(tmp_path: Path) -> None:
    funnel_file = str(ROOT / "funnels" / "lead-magnet.yaml")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0).isoformat()
    refused = funnel(tmp_path, "lead", "enroll", "ana@example.com", funnel_file, "--at", tomorrow)
    assert refused.returncode == 2 and refused.stderr.startswith(f"--at: {tomorrow} is after the engine's time ")
    assert not (tmp_path / "data").exists()
    done = funnel(
        tmp_path, "lead", "enroll", "ana@example.com", funnel_file, "--by", "olivia", "--at", "2026-01-05T09:00"
    )
    assert done.returncode == 0, done.stderr
    (when,) = _occurred(tmp_path).values()
    assert when == datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
