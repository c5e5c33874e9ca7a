"""A working engine's log is quiet (invariant 17): each round is a DEBUG line, INFO gets one summary a
minute when something happened, and the summary's counts are what the database says happened. The engine
ticks in this process every 5 s of a clock the test moves, sending to a real SMTP server.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.authoring.validation import load_funnels
from engine.runtime.runner import Runner
from engine.settings import Settings
from engine.store import leads as store
from engine.store import tables
from tests.smtp_server import RecordingSmtpServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday, inside the funnel's send window
SIGNUPS = 4
SUMMARY = re.compile(r"in the last 1 minute: (.*)")


def sign_up(runner: Runner, now: datetime) -> None:
    with runner.engine.begin() as conn:
        for i in range(SIGNUPS):
            lead_id = store.upsert_lead(conn, f"lead{i}@example.com", now=now)
            event = store.NewEvent(f"signup-{i}", lead_id, "form_submitted", now, {"form": "report"})
            store.record_events(conn, [event], now=now)


def test_an_engine_with_nothing_new_to_do_writes_a_summary_a_minute_at_most(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = load_funnels([FIXTURES / "valid" / "nurture.yaml"], FIXTURES / "emails")
    assert not loaded.errors, loaded.errors
    clock = [T0]
    with RecordingSmtpServer() as smtp:
        settings = Settings(
            database_url=f"sqlite:///{tmp_path / 'funnel.db'}",
            data_dir=tmp_path / "data",
            emails_dir=FIXTURES / "emails",
            smtp={"host": smtp.host, "port": smtp.port, "security": "none", "timeout_s": 2.0, "rate_per_s": 1000},
        )
        runner = Runner(settings, loaded.funnels, lambda: clock[0])
        lines: list[tuple[datetime, logging.LogRecord]] = []

        async def ten_minutes() -> None:
            for tick in range(1, 10 * 12 + 1):
                clock[0] = T0 + timedelta(seconds=5 * tick)
                if tick == 8:  # 40 s in: four signups, then nothing new for nine minutes
                    sign_up(runner, clock[0])
                caplog.clear()
                await runner.step()
                lines.extend((clock[0], r) for r in caplog.records if r.name.startswith("engine"))

        try:
            with caplog.at_level(logging.DEBUG, logger="engine"):
                asyncio.run(ten_minutes())
        finally:
            runner.close()
        assert len(smtp.messages()) == SIGNUPS

    info = [(at, r.getMessage()) for at, r in lines if r.levelno >= logging.INFO]
    per_minute = Counter(int((at - T0).total_seconds() - 1) // 60 for at, _ in info)
    assert max(per_minute.values(), default=0) <= 5, info
    assert [text for _, text in info if not SUMMARY.match(text)] == [], info  # nothing else changed
    summaries = [SUMMARY.match(text).group(1) for _, text in info]  # type: ignore[union-attr]
    assert len(summaries) == 1, info  # the minute of the signups; the quiet minutes say nothing
    assert any(r.levelno == logging.DEBUG and "tick events=" in r.getMessage() for _, r in lines)

    said = dict(pair.split("=") for pair in summaries[0].split())
    with runner.engine.connect() as conn:

        def count(table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())

        happened = {
            "events": count(tables.events, tables.events.c.processed_at.is_not(None)),
            "enrolled": count(tables.enrollments),
            "transitions": count(tables.stage_transitions),
            "sent": count(tables.outbox, tables.outbox.c.status == "sent"),
        }
    assert happened["events"] == happened["enrolled"] == happened["sent"] == SIGNUPS, happened
    assert {k: int(said[k]) for k in happened} == happened, summaries
    assert {k: int(v) for k, v in said.items() if k not in happened} == dict.fromkeys(
        ("deferred", "failed", "unknown", "skipped"), 0
    )
