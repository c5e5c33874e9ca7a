"""The dashboard's reads of reports kept for an operator, on SQLite and PostgreSQL: kept is unmatched or
unclassed and nothing else; newest first, paged, counted in all; the recipient's lead when there is one;
a report's raw message read up to a cap in the database, byte for byte, with its full size."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.core.bounce_outcome import ADDRESS_GONE, MAILBOX_TROUBLE, Outcome
from engine.settings import BounceSettings
from engine.store import bounces, tables
from engine.store import leads as store

T0 = datetime(2026, 3, 29, 9, 0, tzinfo=UTC)
RAW = b"From: MAILER-DAEMON\r\n\r\n\x00\xff<b>\xe2\x80\xae" + b"z" * 5000


def _sent(conn: sa.Connection, address: str) -> int:
    lead_id = store.upsert_lead(conn, address, now=T0)
    conn.execute(
        sa.insert(tables.outbox).values(
            lead_id=lead_id, funnel_id="f", step="s", template="t", stage="s", transactional=False,
            status="sent", due_at=T0, attempts=1, created_at=T0, sent_at=T0, message_id="<m1@greenleaf.example>",
        )
    )  # fmt: skip
    return lead_id


def test_kept_reports_are_the_unmatched_and_the_unclassed_newest_first(db: Engine) -> None:
    settings = BounceSettings()
    with db.begin() as conn:
        lead_id = _sent(conn, "kim@greenleaf.example")
        outcomes = [
            Outcome("k0", "lmtp", "dsn", ADDRESS_GONE, "nobody@elsewhere.example", "5.1.1", "550 no", raw=RAW),
            Outcome("k1", "imap", "non_standard", None, message_id="<m1@greenleaf.example>", raw=b"unclassed"),
            Outcome("k2", "ingest", "non_standard", None, raw=b"neither"),
            Outcome("k3", "ingest", "dsn", MAILBOX_TROUBLE, "kim@greenleaf.example", "4.2.2", raw=b"acted on"),
        ]
        for i, outcome in enumerate(outcomes):
            applied = bounces.record_outcomes(conn, [outcome], T0 + timedelta(minutes=i), settings)
            assert applied[0].action == ("soft bounce" if i == 3 else "kept for an operator")
    with db.connect() as conn:
        assert bounces.kept_count(conn) == 3
        listed = bounces.kept(conn)
        assert [(r.source, r.why) for r in listed] == [
            ("ingest", "unmatched, unclassed"),
            ("imap", "unclassed"),
            ("lmtp", "unmatched"),
        ]
        assert [r.id for r in bounces.kept(conn, limit=2, offset=1)] == [r.id for r in listed[1:]]
        assert (listed[1].lead_id, listed[1].lead_email) == (lead_id, "kim@greenleaf.example")
        assert (listed[2].recipient_domain, listed[2].lead_email, listed[2].raw_size) == (
            "elsewhere.example",
            None,
            len(RAW),
        )
        assert listed[2].received_at == T0

        detail = bounces.kept_report(conn, listed[2].id, 30)
        assert detail is not None and detail.raw_head == RAW[:30] and detail.report.raw_size == len(RAW)
        assert (detail.report_key, detail.action, detail.matched_by) == ("k0", "kept for an operator", None)
        assert bounces.kept_report(conn, listed[1].id, 10_000).raw_head == b"unclassed"  # type: ignore[union-attr]
        assert bounces.kept_report(conn, listed[1].id, 10_000).matched_by == "message-id"  # type: ignore[union-attr]
        acted_on = conn.execute(
            sa.select(tables.bounce_reports.c.id).where(tables.bounce_reports.c.report_key == "k3")
        ).scalar_one()
        assert bounces.kept_report(conn, acted_on, 100) is None
        assert bounces.kept_report(conn, 10_000, 100) is None
        stored = conn.execute(sa.select(tables.bounce_reports.c.raw).where(tables.bounce_reports.c.report_key == "k0"))
        assert stored.scalar_one() == RAW
