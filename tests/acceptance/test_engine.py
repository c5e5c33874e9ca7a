"""The engine end to end: `funnel event` and `funnel run --once` as real processes, a real database
(SQLite and PostgreSQL) and a real SMTP server that records what it accepted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from engine.authoring.validation import load_funnels
from engine.runtime.worker import Worker
from engine.store import leads as store
from engine.store.tables import events
from tests.acceptance.conftest import Project, iso, outbox_rows, write_emails

DRIP = """\
id: drip
name: Drip
entry:
  triggers:
    - event: signed_up
stages:
  - id: nurture
    steps:
      - id: welcome
        send: drip/welcome
      - id: pause
        wait: 2s
      - id: tip
        send: drip/tip
    on_end: exit
"""

# Daily steps and a lateness of 36 h: after three days of downtime the first daily step is two days
# late (skipped), the second one day late (still sent).
DAILY = """\
id: daily
name: Daily
allowed_lateness: 36h
entry:
  triggers:
    - event: joined
stages:
  - id: course
    steps:
      - id: welcome
        send: drip/welcome
      - id: day1
        wait: 1d
      - id: tip
        send: drip/tip
      - id: day2
        wait: 1d
      - id: offer
        send: drip/offer
    on_end: exit
"""


def _setup(project: Project) -> None:
    write_emails(project.root, ["welcome", "tip", "offer"])
    project.add_funnel("drip", DRIP)
    project.add_funnel("daily", DAILY)


def test_event_then_run_sends_each_step_once(project: Project) -> None:
    _setup(project)
    start = datetime.now(UTC)
    project.funnel("event", "ada@example.com", "signed_up", "--id", "signup-1", "--at", iso(start))
    replay = project.funnel("event", "ada@example.com", "signed_up", "--id", "signup-1", "--at", iso(start))
    assert "already recorded" in replay.stdout

    project.funnel("run", "--once", "--now", iso(start))
    got = project.smtp.wait_for(1)
    assert [(m.rcpt, m.funnel_step) for m in got] == [(("ada@example.com",), "drip/welcome")]
    assert got[0].subject == "Welcome for you"

    # The 2 s wait is over three seconds later: the second step goes, the first is not sent again.
    project.funnel("run", "--once", "--now", iso(start + timedelta(seconds=5)))
    project.funnel("event", "ada@example.com", "signed_up", "--id", "signup-1", "--at", iso(start))
    project.funnel("run", "--once", "--now", iso(start + timedelta(seconds=7)))
    got = project.smtp.wait_for(3, timeout=1)
    assert [m.funnel_step for m in got] == ["drip/welcome", "drip/tip"]
    assert len({m.message_id for m in got}) == 2

    engine = project.db()
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 1
        assert [(r.step, r.status) for r in outbox_rows(engine)] == [("welcome", "sent"), ("tip", "sent")]
    finally:
        engine.dispose()


def test_after_downtime_due_steps_run_in_order_and_late_ones_are_skipped(project: Project) -> None:
    _setup(project)
    start = datetime.now(UTC)
    project.funnel("event", "bo@example.com", "joined", "--id", "join-bo", "--at", iso(start))
    project.funnel("run", "--once", "--now", iso(start))
    # Three days of downtime.
    project.funnel("run", "--once", "--now", iso(start + timedelta(days=3)))

    got = project.smtp.wait_for(3, timeout=1)
    assert [m.funnel_step for m in got] == ["daily/welcome", "daily/offer"]
    engine = project.db()
    try:
        rows = outbox_rows(engine)
    finally:
        engine.dispose()
    assert [(r.step, r.status, r.skip_reason) for r in rows] == [
        ("welcome", "sent", None),
        ("tip", "skipped", "late"),
        ("offer", "sent", None),
    ]
    assert [r.due_at for r in rows] == sorted(r.due_at for r in rows)


def test_unsubscribed_lead_gets_no_marketing_email_even_when_queued(sqlite_project: Project) -> None:
    project = sqlite_project
    _setup(project)
    now = datetime.now(UTC)
    project.funnel("event", "cy@example.com", "signed_up", "--id", "signup-cy", "--at", iso(now))
    # The tick queues the welcome email; the lead unsubscribes before the mailer gets to it.
    loaded = load_funnels([project.funnels_dir], emails_dir=project.emails_dir)
    assert not loaded.errors
    engine = project.db()
    try:
        result = Worker(engine, {f.id: f for f in loaded.funnels}).tick(now)
        assert result.emails_queued == 1
        assert [(r.step, r.status) for r in outbox_rows(engine)] == [("welcome", "queued")]
        with engine.begin() as conn:
            store.upsert_lead(conn, "cy@example.com", consent="unsubscribed", now=now)

        project.funnel("run", "--once", "--now", iso(now + timedelta(seconds=5)))
        rows = [(r.step, r.status, r.skip_reason) for r in outbox_rows(engine)]
    finally:
        engine.dispose()
    assert project.smtp.wait_for(1, timeout=0.5) == []
    assert rows == [("welcome", "skipped", "no-consent"), ("tip", "skipped", "no-consent")]
