"""A mailbox's trouble over days, as a relay reports it: delay warnings (4.x.x) for one message, then
a permanent failure (5.1.1) once the receiving server gives up on the address. Each report is a real
RFC 3464 message through the one processor, on a virtual clock, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from engine.runtime.bounce_processing import process_report
from engine.settings import BounceSettings
from engine.store import leads as store
from engine.store import tables
from engine.store.database import Engine

DAY0 = datetime(2026, 3, 27, 8, 0, tzinfo=UTC)  # the clocks go forward in Europe two days later
RULES = BounceSettings(soft_limit=3, soft_window_days=7)


def dsn(n: int, message_id: str, action: str, status: str, diagnostic: str) -> bytes:
    return f"""\
Return-Path: <>
From: MAILER-DAEMON@relay.example.org (Mail Delivery System)
To: news@shop.example.com
Subject: {"Delayed Mail (still being retried)" if action == "delayed" else "Undelivered Mail Returned to Sender"}
Auto-Submitted: auto-replied
Message-Id: <report-{n}@relay.example.org>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="R"

--R
Content-Type: text/plain

The mail system at relay.example.org.

--R
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.org

Final-Recipient: rfc822; lena@example.net
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--R
Content-Type: text/rfc822-headers

Message-ID: {message_id}
From: Shop <news@shop.example.com>
To: lena@example.net
Subject: Week one

--R--
""".replace("\n", "\r\n").encode()


def queued(db: Engine, step: str) -> int:
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, "lena@example.net", now=DAY0)
        return int(
            conn.execute(
                sa.insert(tables.outbox)
                .values(
                    lead_id=lead_id, funnel_id="guide", step=step, template=f"guide/{step}", stage="s",
                    transactional=False, status="sent", due_at=DAY0, attempts=1, created_at=DAY0, sent_at=DAY0,
                    message_id=f"<{step}@shop.example.com>",
                )
                .returning(tables.outbox.c.id)
            ).scalar_one()
        )  # fmt: skip


def status_of(db: Engine, outbox_id: int) -> str:
    with db.connect() as conn:
        return str(conn.execute(sa.select(tables.outbox.c.status).where(tables.outbox.c.id == outbox_id)).scalar_one())


def suppressed(db: Engine) -> bool:
    with db.connect() as conn:
        return store.is_suppressed(conn, "lena@example.net")


def test_days_of_delays_then_a_permanent_failure_suppress_only_at_the_failure(db: Engine) -> None:
    first = queued(db, "week-1")
    delays = [
        (0, "4.2.2", "452 4.2.2 Mailbox full"),
        (1, "4.2.2", "452 4.2.2 Mailbox full"),
        (3, "4.4.1", "421 4.4.1 Connection timed out"),
    ]
    for n, (day, status, said) in enumerate(delays):
        at = DAY0 + timedelta(days=day, hours=n)
        _, [applied] = process_report(
            db, dsn(n, "<week-1@shop.example.com>", "delayed", status, said), "pipe", at, RULES
        )
        assert (applied.action, applied.outbox_id) == ("soft bounce", first)
        assert not suppressed(db) and status_of(db, first) == "sent"  # one message delayed: one soft bounce

    at = DAY0 + timedelta(days=5)
    gone = dsn(9, "<week-1@shop.example.com>", "failed", "5.1.1", "550 5.1.1 <lena@example.net>: mailbox removed")
    _, [applied] = process_report(db, gone, "pipe", at, RULES)
    assert (applied.action, applied.outbox_id) == ("suppressed", first)
    assert suppressed(db) and status_of(db, first) == "bounced"
    # The same report handed over again (the MTA retried its delivery) changes nothing.
    _, [again] = process_report(db, gone, "pipe", at + timedelta(minutes=5), RULES)
    assert again.action == "duplicate"


def test_three_messages_each_refused_for_a_full_mailbox_within_the_window_suppress(db: Engine) -> None:
    actions = []
    for day in range(3):
        step = f"week-{day + 1}"
        queued(db, step)
        report = dsn(day, f"<{step}@shop.example.com>", "failed", "5.2.2", "552 5.2.2 Mailbox full")
        actions.append(process_report(db, report, "lmtp", DAY0 + timedelta(days=2 * day), RULES)[1][0].action)
    assert actions == ["soft bounce", "soft bounce", "suppressed after soft bounces"]
    assert suppressed(db)
