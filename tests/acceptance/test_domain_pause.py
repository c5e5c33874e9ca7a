"""`bounces.pause_domain_on_alarm`, through the real mailer and a real SMTP server: while a receiving
domain's alarm is on, its marketing email is held (deferred, no attempt spent) and its transactional
email goes; once the alarm ends, the held email goes."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.core.bounce_outcome import SENDER_FAULT, Outcome
from engine.mail.mailer import Mailer
from engine.mail.templates import TemplateLibrary
from engine.settings import BounceSettings, Settings, SmtpSettings
from engine.store import domain_alarms, tables
from engine.store.bounces import record_outcomes
from tests.acceptance.conftest import queue_email
from tests.smtp_server import RecordingSmtpServer

EMAILS = Path(__file__).resolve().parent.parent / "fixtures" / "emails"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
RULES = BounceSettings(sender_fault_alarm=2, sender_fault_window_minutes=30, pause_domain_on_alarm=True)


def statuses(engine: sa.Engine) -> dict[str, tuple[str, int, str | None]]:
    o, leads = tables.outbox, tables.leads
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(leads.c.email, o.c.status, o.c.attempts, o.c.last_error).join(leads, leads.c.id == o.c.lead_id)
        ).all()
    return {r.email: (r.status, r.attempts, r.last_error) for r in rows}


def dispatch(engine: sa.Engine, smtp: RecordingSmtpServer, at: datetime, pause: bool = True) -> None:
    settings = Settings(
        smtp=SmtpSettings(host="127.0.0.1", port=smtp.port, security="none", timeout_s=5),
        bounces=RULES.model_copy(update={"pause_domain_on_alarm": pause}),
    )
    asyncio.run(Mailer(engine, settings, TemplateLibrary(EMAILS)).dispatch(at, "127.0.0.1", smtp.port))


def raise_alarm(engine: sa.Engine) -> domain_alarms.Alarm:
    """Two of the domain's earlier messages come back refused for the sender's reasons."""
    for i in range(2):
        queue_email(engine, f"gone{i}@blocky.example", "earlier", NOW - timedelta(days=1))
    with engine.begin() as conn:
        conn.execute(sa.update(tables.outbox).values(status="sent", sent_at=NOW - timedelta(days=1)))
    outcomes = [
        Outcome(f"k{i}", "test", "dsn", SENDER_FAULT, f"gone{i}@blocky.example", status="5.7.1") for i in range(2)
    ]
    with engine.begin() as conn:
        record_outcomes(conn, outcomes, NOW, RULES)
        [alarm] = domain_alarms.active(conn, NOW)
    return alarm


def test_a_paused_domain_holds_marketing_email_lets_transactional_through_and_releases_it_after(
    engine: sa.Engine, smtp: RecordingSmtpServer
) -> None:
    alarm = raise_alarm(engine)
    queue_email(engine, "ana@blocky.example", "news", NOW)
    queue_email(engine, "bo@blocky.example", "receipt", NOW, transactional=True)
    queue_email(engine, "cy@fine.example", "news", NOW)
    dispatch(engine, smtp, NOW)
    held = statuses(engine)
    assert held["ana@blocky.example"] == ("deferred", 0, domain_alarms.pause_reason("blocky.example"))
    assert held["bo@blocky.example"][0] == "sent" and held["cy@fine.example"][0] == "sent"
    assert sorted(r for m in smtp.messages() for r in m.rcpt) == ["bo@blocky.example", "cy@fine.example"]
    # Still held while the alarm is on, even when the message comes due again.
    with engine.begin() as conn:
        conn.execute(sa.update(tables.outbox).where(tables.outbox.c.status == "deferred").values(next_attempt_at=NOW))
    dispatch(engine, smtp, NOW + timedelta(minutes=5))
    assert statuses(engine)["ana@blocky.example"][0] == "deferred"
    # The alarm ends: the held email is due at once and goes, its attempt budget untouched.
    with engine.begin() as conn:
        assert [a.id for a in domain_alarms.end_due(conn, alarm.ends_at)] == [alarm.id]
    dispatch(engine, smtp, alarm.ends_at)
    assert statuses(engine)["ana@blocky.example"][:2] == ("sent", 1)
    assert sorted(r for m in smtp.messages() for r in m.rcpt) == [
        "ana@blocky.example",
        "bo@blocky.example",
        "cy@fine.example",
    ]


def test_without_the_setting_an_alarm_holds_nothing(engine: sa.Engine, smtp: RecordingSmtpServer) -> None:
    raise_alarm(engine)
    queue_email(engine, "ana@blocky.example", "news", NOW)
    dispatch(engine, smtp, NOW, pause=False)
    assert statuses(engine)["ana@blocky.example"][0] == "sent"


def test_the_engines_round_ends_the_alarm_when_its_time_comes_and_sends_what_it_held(
    tmp_path: Path, smtp: RecordingSmtpServer, caplog: Any
) -> None:
    from engine.runtime.runner import Runner

    now = [NOW]
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'engine.db'}",
        emails_dir=EMAILS,
        smtp=SmtpSettings(host="127.0.0.1", port=smtp.port, security="none", timeout_s=5),
        bounces=RULES,
    )
    runner = Runner(settings, [], lambda: now[0])
    try:
        alarm = raise_alarm(runner.engine)
        queue_email(runner.engine, "ana@blocky.example", "news", NOW)
        asyncio.run(runner.step())
        assert statuses(runner.engine)["ana@blocky.example"][0] == "deferred"
        now[0] = alarm.ends_at - timedelta(seconds=1)
        asyncio.run(runner.step())
        assert statuses(runner.engine)["ana@blocky.example"][0] == "deferred"
        caplog.set_level(logging.INFO, logger="engine.bounces")
        now[0] = alarm.ends_at
        asyncio.run(runner.step())  # the alarm ends, and what it held goes in the same round
        assert statuses(runner.engine)["ana@blocky.example"][:2] == ("sent", 1)
        assert [r for r in smtp.messages() for r in r.rcpt] == ["ana@blocky.example"]
        [over] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alarm over")]
        assert "blocky.example" in over and "1 held email(s) released" in over
        asyncio.run(runner.step())
        assert len([r for r in caplog.records if r.getMessage().startswith("alarm over")]) == 1  # said once
    finally:
        runner.close()
