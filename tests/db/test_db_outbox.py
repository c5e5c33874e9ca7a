"""The outbox as the mailer sees it: leases hand messages out once, one worker marks a message
`sending` before DATA, a crash mid-send leaves it `unknown` (never resent), suppressions outlive the lead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.store import leads as store
from engine.store import outbox, tables

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


def test_a_lease_takes_due_messages_once_until_it_expires(db: Engine) -> None:
    _, ids = _messages(db)
    now = T0 + 30 * MIN
    with db.begin() as conn:
        leased = outbox.lease_batch(conn, now, limit=10)
    assert {m.step: m.id for m in leased} == {"deferred-due": ids["deferred-due"], "queued-due": ids["queued-due"]}
    assert {m.email for m in leased} == {"o@example.com"}
    with db.begin() as conn:
        assert outbox.lease_batch(conn, now, limit=10) == []  # leased: not handed out twice
        # A worker that died holding a lease loses nothing: once it expires the messages come back.
        again = outbox.lease_batch(conn, T0 + 61 * MIN, limit=10)  # lease gone, queued-later due
    assert sorted(m.step for m in again) == ["deferred-due", "queued-due", "queued-later"]


def test_a_lease_respects_the_limit(db: Engine) -> None:
    _messages(db)
    with db.begin() as conn:
        assert [m.step for m in outbox.lease_batch(conn, T0 + 90 * MIN, limit=1)] == ["deferred-due"]


def test_only_one_worker_marks_a_message_sending(db: Engine) -> None:
    _, ids = _messages(db)
    with db.begin() as conn:
        both = {ids["queued-due"]: "<m1@x>", ids["deferred-due"]: "<m2@x>"}
        assert outbox.mark_sending(conn, both, T0) == set(both)
        again = {ids["queued-due"]: "<m1@x>", ids["sent"]: "<m3@x>", ids["queued-later"]: "<m4@x>"}
        assert outbox.mark_sending(conn, again, T0) == {ids["queued-later"]}


def test_an_outcome_is_recorded_only_from_the_expected_state(db: Engine) -> None:
    lead_id, ids = _messages(db)
    with db.begin() as conn:
        outbox.mark_sending(conn, {ids["queued-due"]: "<m1@greenleaf.example>"}, T0)
        assert outbox.apply(conn, [outbox.Change(ids["queued-due"], {"status": "sent"}, ("sending",))]) == 1
        # A late verdict from a worker whose lease ran out cannot undo the send.
        assert outbox.apply(conn, [outbox.Change(ids["queued-due"], {"status": "failed"})]) == 0
        later = {"status": "deferred", "next_attempt_at": T0 + 5 * MIN, "last_error": "421 try later", "attempts": 1}
        outbox.apply(conn, [outbox.Change(ids["deferred-due"], later)])
    with db.connect() as conn:
        by_step = {m.step: m for m in store.get_outbox(conn, lead_id)}
    sent = by_step["queued-due"]
    assert (sent.status, sent.message_id, sent.sent_at) == ("sent", "<m1@greenleaf.example>", T0)
    assert (by_step["deferred-due"].status, by_step["deferred-due"].next_attempt_at) == ("deferred", T0 + 5 * MIN)
    assert by_step["deferred-due"].attempts == 1


def test_a_message_left_sending_by_a_crash_becomes_unknown_and_is_not_resent(db: Engine) -> None:
    lead_id, ids = _messages(db)
    with db.begin() as conn:
        outbox.mark_sending(conn, {ids["queued-due"]: "<m1@x>"}, T0)  # ...and the worker dies
    with db.begin() as conn:
        assert outbox.sweep_stale_sending(conn, older_than=T0) == []  # marked at T0: not older
        assert len(outbox.sweep_stale_sending(conn, older_than=T0 + 10 * MIN)) == 1
    with db.begin() as conn:  # a day later the unknown message is not handed out again
        later = outbox.lease_batch(conn, T0 + 24 * 60 * MIN, limit=10)
    assert "queued-due" not in [m.step for m in later]
    with db.connect() as conn:
        statuses = {m.step: m.status for m in store.get_outbox(conn, lead_id)}
    assert statuses["queued-due"] == "unknown"


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


def test_outcomes_apply_in_one_batch_each_only_from_its_expected_state(db: Engine) -> None:
    lead_id, ids = _messages(db)
    with db.begin() as conn:
        changed = outbox.apply(
            conn,
            [
                outbox.Change(ids["queued-due"], {"status": "failed", "last_error": "554 no"}),
                outbox.Change(ids["deferred-due"], {"status": "failed", "last_error": "552 too big"}),
                outbox.Change(ids["sent"], {"status": "failed", "last_error": "late verdict"}),  # not pending
                outbox.Change(ids["queued-later"], {"status": "deferred", "next_attempt_at": T0 + 90 * MIN}),
            ],
        )
    assert changed == 3
    with db.connect() as conn:
        by_step = {m.step: m for m in store.get_outbox(conn, lead_id)}
    assert (by_step["queued-due"].status, by_step["queued-due"].last_error) == ("failed", "554 no")
    assert by_step["deferred-due"].last_error == "552 too big"
    assert by_step["sent"].status == "sent"
    assert by_step["queued-later"].next_attempt_at == T0 + 90 * MIN


def test_a_batch_of_one_shape_gives_each_message_its_own_values(db: Engine) -> None:
    """Changes of one shape go to the database together (on PostgreSQL as one statement): each message
    gets its own values, times and NULLs included, and a message changed twice in one batch ends as the
    second change says, as when they are applied one after the other."""
    lead_id, ids = _messages(db)
    with db.begin() as conn:
        outbox.lease_batch(conn, T0 + 90 * MIN, limit=10)  # claimed_at set on the three pending ones
        retry = {"status": "deferred", "claimed_at": None, "last_error": None}
        changed = outbox.apply(
            conn,
            [
                outbox.Change(ids["queued-due"], {**retry, "next_attempt_at": T0 + 5 * MIN, "attempts": 1}),
                outbox.Change(ids["deferred-due"], {**retry, "next_attempt_at": T0 + 7 * MIN, "attempts": 3}),
                outbox.Change(ids["queued-later"], {**retry, "next_attempt_at": T0 + 9 * MIN, "attempts": 2}),
            ],
        )
        assert changed == 3
        twice = [
            outbox.Change(ids["queued-due"], {"status": "failed", "last_error": "first"}, ("deferred",)),
            outbox.Change(ids["queued-due"], {"status": "bounced", "last_error": "second"}, ("failed",)),
            outbox.Change(ids["deferred-due"], {"status": "failed", "last_error": "only"}, ("deferred",)),
        ]
        assert outbox.apply(conn, twice) == 3
    o = tables.outbox
    columns = (o.c.step, o.c.status, o.c.next_attempt_at, o.c.attempts, o.c.claimed_at, o.c.last_error)
    with db.connect() as conn:
        rows = conn.execute(sa.select(*columns).where(o.c.lead_id == lead_id, o.c.status != "sent")).all()
    got = {row.step: tuple(row)[1:] for row in rows if row.step != "skipped"}
    assert got == {
        "queued-due": ("bounced", T0 + 5 * MIN, 1, None, "second"),
        "deferred-due": ("failed", T0 + 7 * MIN, 3, None, "only"),
        "queued-later": ("deferred", T0 + 9 * MIN, 2, None, None),
    }


def test_consent_and_daily_history_are_read_for_a_whole_batch(db: Engine) -> None:
    lead_id, ids = _messages(db)
    with db.begin() as conn:
        other = store.upsert_lead(conn, "gone@example.com", consent="unsubscribed", now=T0)
        third = store.upsert_lead(conn, "bounced@example.com", now=T0)
        store.suppress(conn, "bounced@example.com", "bounced", now=T0)
        outbox.mark_sending(conn, {ids["queued-due"]: "<m1@x>"}, T0)
        emails = {lead_id: "o@example.com", other: "gone@example.com", third: "bounced@example.com", 999_999: "x@y.z"}
        found = outbox.consent_of(conn, emails, lock=True)
        assert outbox.consent_of(conn, emails, lock=False) == found
        history = outbox.marketing_sent_since(conn, [lead_id, other], T0 - 30 * MIN)
    assert found == {lead_id: ("subscribed", False), other: ("unsubscribed", False), third: ("subscribed", True)}
    # `sending` counts (it may have reached the server); the message sent an hour ago is before `since`.
    assert history == {lead_id: [T0]}
