"""The outbox as the mailer sees it: claims mark messages `sending`, a crash mid-send leaves them
`unknown` (never resent), and suppressions outlive the lead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine import store, tables

T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def _messages(db: Engine) -> tuple[int, dict[str, int]]:
    rows = {
        "queued-due": ("queued", T0),
        "queued-later": ("queued", T0 + 60 * MIN),
        "deferred-due": ("deferred", T0 - MIN),
        "skipped": ("skipped", None),
        "sent": ("sent", T0 - 60 * MIN),
    }
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, "o@example.com", now=T0)
        ids = {}
        for step, (status, next_at) in rows.items():
            ids[step] = conn.execute(
                sa.insert(tables.outbox)
                .values(
                    lead_id=lead_id,
                    funnel_id="guide",
                    step=step,
                    template=f"guide/{step}",
                    stage="s",
                    transactional=False,
                    status=status,
                    due_at=T0 - 60 * MIN,
                    attempts=0,
                    next_attempt_at=next_at,
                    created_at=T0 - 60 * MIN,
                )
                .returning(tables.outbox.c.id)
            ).scalar_one()
    return lead_id, ids


def test_claiming_marks_ready_messages_sending_once(db: Engine) -> None:
    _, ids = _messages(db)
    now = T0 + 30 * MIN
    with db.begin() as conn:
        claimed = store.claim_outbox(conn, now, limit=10)
    assert [m.step for m in claimed] == ["deferred-due", "queued-due"]
    assert all(m.status == "sending" and m.attempts == 1 and m.claimed_at == now for m in claimed)
    assert claimed[0].id == ids["deferred-due"]
    with db.begin() as conn:
        assert store.claim_outbox(conn, now, limit=10) == []


def test_claiming_respects_the_limit(db: Engine) -> None:
    _messages(db)
    with db.begin() as conn:
        assert [m.step for m in store.claim_outbox(conn, T0 + 90 * MIN, limit=1)] == ["deferred-due"]


def test_marking_a_message_sets_its_status_and_columns(db: Engine) -> None:
    lead_id, ids = _messages(db)
    with db.begin() as conn:
        store.claim_outbox(conn, T0, limit=10)
        assert store.mark_outbox(conn, ids["queued-due"], "sent", message_id="<m1@greenleaf.example>", sent_at=T0)
        assert store.mark_outbox(
            conn, ids["deferred-due"], "deferred", last_error="421 try later", next_attempt_at=T0 + 5 * MIN
        )
        assert not store.mark_outbox(conn, 999_999, "sent")
    with db.connect() as conn:
        by_step = {m.step: m for m in store.get_outbox(conn, lead_id)}
    assert (by_step["queued-due"].status, by_step["queued-due"].message_id, by_step["queued-due"].sent_at) == (
        "sent",
        "<m1@greenleaf.example>",
        T0,
    )
    assert (by_step["deferred-due"].status, by_step["deferred-due"].next_attempt_at) == ("deferred", T0 + 5 * MIN)
    with db.begin() as conn:  # a deferred message comes back when its time comes, attempts counting up
        (again,) = store.claim_outbox(conn, T0 + 5 * MIN, limit=10)
    assert (again.step, again.attempts) == ("deferred-due", 2)


def test_marking_refuses_unknown_statuses_and_columns(db: Engine) -> None:
    _, ids = _messages(db)
    with db.begin() as conn:
        with pytest.raises(ValueError, match="status"):
            store.mark_outbox(conn, ids["queued-due"], "delivered")
        with pytest.raises(ValueError, match="columns"):
            store.mark_outbox(conn, ids["queued-due"], "sent", step="other")


def test_a_message_left_sending_by_a_crash_becomes_unknown_and_is_not_resent(db: Engine) -> None:
    lead_id, ids = _messages(db)
    with db.begin() as conn:
        store.claim_outbox(conn, T0, limit=10)  # ...and the worker dies before reporting back
    with db.begin() as conn:
        assert store.mark_stale_sending_unknown(conn, older_than=T0) == []  # claimed at T0: not older
        stale = store.mark_stale_sending_unknown(conn, older_than=T0 + 10 * MIN)
    assert stale == sorted([ids["queued-due"], ids["deferred-due"]])
    with db.begin() as conn:  # a day later only the message that was never claimed goes out
        assert [m.step for m in store.claim_outbox(conn, T0 + 24 * 60 * MIN, limit=10)] == ["queued-later"]
    with db.connect() as conn:
        statuses = {m.step: m.status for m in store.get_outbox(conn, lead_id)}
    assert statuses["queued-due"] == statuses["deferred-due"] == "unknown"


def test_a_suppression_outlives_the_erased_lead(db: Engine) -> None:
    lead_id, _ = _messages(db)
    with db.begin() as conn:
        assert store.suppress(conn, " O@Example.com", "complained", now=T0) is True
        assert store.suppress(conn, "o@example.com", "bounced", now=T0) is False
        conn.execute(sa.delete(tables.leads).where(tables.leads.c.id == lead_id))
    with db.connect() as conn:
        assert store.is_suppressed(conn, "o@example.com")
        assert not store.is_suppressed(conn, "other@example.com")
        assert store.get_outbox(conn, lead_id) == []  # the lead's rows went with it
        stored = conn.execute(sa.select(tables.suppressions.c.email_hash)).scalar_one()
    assert "@" not in stored and len(stored) == 64
