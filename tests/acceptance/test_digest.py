"""The daily ops digest: yesterday's figures from the database, emailed once to a real SMTP server, even
when two engines fire the job; the cron trigger fires at the local time asked for."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.runtime import digest
from engine.settings import Settings
from engine.store import digests, tables
from tests.acceptance.conftest import queue_email
from tests.smtp_server import RecordingSmtpServer

LONDON = ZoneInfo("Europe/London")
NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)  # the digest of Monday 23 November goes on Tuesday morning
YESTERDAY = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def history(engine: Engine) -> None:
    queue_email(engine, "a@example.com", "welcome", YESTERDAY, funnel="guide")
    queue_email(engine, "b@example.com", "welcome", YESTERDAY, funnel="guide")
    queue_email(engine, "c@example.com", "welcome", YESTERDAY - timedelta(days=3), funnel="guide")
    t, o, g = tables.stage_transitions, tables.outbox, tables.goals
    with engine.begin() as conn:
        ids = dict(conn.execute(sa.select(tables.leads.c.email, tables.leads.c.id)).all())
        rows = [
            (ids["a@example.com"], None, "inquiry", YESTERDAY),
            (ids["b@example.com"], None, "inquiry", YESTERDAY),
            (ids["a@example.com"], "inquiry", "conversion", YESTERDAY + timedelta(hours=1)),
            (ids["c@example.com"], None, "inquiry", YESTERDAY - timedelta(days=3)),  # not yesterday
        ]
        for lead, from_stage, to_stage, at in rows:
            conn.execute(
                t.insert().values(
                    lead_id=lead,
                    funnel_id="guide",
                    version="v1",
                    from_stage=from_stage,
                    to_stage=to_stage,
                    cause_kind="event",
                    cause_ref="e",
                    at=at,
                )
            )
        conn.execute(
            g.insert().values(
                lead_id=ids["a@example.com"],
                funnel_id="guide",
                goal="became-client",
                at=YESTERDAY + timedelta(hours=2),
                within_window=True,
            )
        )
        conn.execute(
            sa.update(o).where(o.c.lead_id == ids["b@example.com"]).values(status="bounced", sent_at=YESTERDAY)
        )
        conn.execute(
            sa.update(o).where(o.c.lead_id == ids["a@example.com"]).values(status="unknown", sent_at=YESTERDAY)
        )


def test_yesterdays_digest_goes_once_with_the_days_figures(engine: Engine) -> None:
    history(engine)
    with RecordingSmtpServer() as smtp:
        settings = Settings(
            digest={"to": ["ops@greenleaf.example"], "timezone": "Europe/London"},
            smtp={"host": smtp.host, "port": smtp.port, "security": "none"},
        )

        async def two_engines() -> list[str]:
            return list(
                await asyncio.gather(*(digest.send(engine, settings, NOW, smtp.host, smtp.port) for _ in range(2)))
            )

        outcomes = asyncio.run(two_engines())
        again = asyncio.run(digest.send(engine, settings, NOW + timedelta(hours=1), smtp.host, smtp.port))
        messages = smtp.messages()
    assert sorted(outcomes) == ["digest for 2026-11-23 already taken", "digest for 2026-11-23 sent"]
    assert again == "digest for 2026-11-23 already taken"
    [message] = messages
    assert message.rcpt == ("ops@greenleaf.example",)
    assert message.subject == "Funnels on 2026-11-23: 2 entered, 1 moved, 1 converted, 1 bounced, 1 unknown"
    assert "guide: inquiry -> conversion: 1" in message.body
    assert "guide: became-client: 1" in message.body
    assert "Bounced in guide: 1" in message.body
    assert "1 new, 1 waiting for a decision" in message.body
    assert "@example.com" not in message.body  # counts, not leads
    with engine.connect() as conn:
        assert conn.execute(sa.select(tables.ops_digests.c.status)).scalars().all() == ["sent"]


def test_a_failed_send_is_recorded_and_not_retried_blindly(engine: Engine) -> None:
    settings = Settings(digest={"to": ["ops@greenleaf.example"]}, smtp={"security": "none", "timeout_s": 2})
    outcome = asyncio.run(digest.send(engine, settings, NOW, "127.0.0.1", 1))  # nothing listens on port 1
    assert outcome == "digest for 2026-11-23 failed"
    with engine.connect() as conn:
        row = conn.execute(sa.select(tables.ops_digests)).one()
    assert row.status == "failed" and row.error


def test_the_window_is_the_local_day_and_the_trigger_its_local_time() -> None:
    start, end = digests.window(date(2026, 10, 25), LONDON)  # clocks go back: a 25-hour day
    assert end - start == timedelta(hours=25)
    settings = Settings(digest={"to": ["ops@greenleaf.example"], "at": "07:30", "timezone": "America/New_York"})
    fire = digest.trigger(settings).get_next_fire_time(None, datetime(2026, 11, 23, 13, 0, tzinfo=UTC))
    assert fire is not None and fire.astimezone(UTC) == datetime(2026, 11, 24, 12, 30, tzinfo=UTC)


def test_the_digest_names_each_domain_in_alarm_that_day(engine: Engine) -> None:
    from engine.core.bounce_outcome import SENDER_FAULT, Outcome
    from engine.settings import BounceSettings
    from engine.store.bounces import record_outcomes

    for i in range(3):
        queue_email(engine, f"u{i}@blocky.example", "welcome", YESTERDAY - timedelta(hours=1), funnel="guide")
    with engine.begin() as conn:
        conn.execute(sa.update(tables.outbox).values(status="sent", sent_at=YESTERDAY - timedelta(hours=1)))
        outcomes = [Outcome(f"k{i}", "test", "dsn", SENDER_FAULT, f"u{i}@blocky.example") for i in range(3)]
        record_outcomes(conn, outcomes, YESTERDAY, BounceSettings(sender_fault_alarm=3))
    with RecordingSmtpServer() as smtp:
        settings = Settings(
            digest={"to": ["ops@greenleaf.example"], "timezone": "Europe/London"},
            smtp={"host": smtp.host, "port": smtp.port, "security": "none"},
        )
        assert asyncio.run(digest.send(engine, settings, NOW, smtp.host, smtp.port)) == "digest for 2026-11-23 sent"
        [message] = smtp.messages()
    assert message.subject.startswith("ALARM (1 domain(s) refuse the sender) - Funnels on 2026-11-23")
    assert "ALARM: blocky.example refuses the sender: 3 reports of the sender's fault since 2026-11-23 15:00 UTC" in (
        message.body
    )
