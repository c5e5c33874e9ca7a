"""The ops dashboard's own queries on SQLite and PostgreSQL: transitions counted per UTC day, lead search
by prefix (wildcards in the prefix are plain characters), and an operator's decision on an `unknown`
message, taken only while it is still unknown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.store import dashboard_data, outbox, tables
from engine.store import leads as store

T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # half past midnight UTC; already 01:30 or later in Europe


def _transition(conn: sa.Connection, lead_id: int, at: datetime) -> None:
    conn.execute(
        sa.insert(tables.stage_transitions).values(
            lead_id=lead_id, funnel_id="f", version="v1", from_stage="a", to_stage="b", cause_kind="timeout", at=at
        )
    )


def test_transitions_are_counted_per_utc_day(db: Engine) -> None:
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, "day@example.com", now=T0)
        for at in (T0 - timedelta(minutes=31), T0 - timedelta(days=3), T0, T0 + timedelta(hours=23, minutes=29)):
            _transition(conn, lead_id, at)
        _transition(conn, lead_id, T0 - timedelta(days=40))
    with db.connect() as conn:
        per_day = dashboard_data.transitions_per_day(conn, T0 - timedelta(days=30))
    assert per_day == {"2026-03-26": 1, "2026-03-28": 1, "2026-03-29": 2}


def test_lead_search_matches_a_prefix_in_any_case_and_treats_wildcards_as_characters(db: Engine) -> None:
    with db.begin() as conn:
        for address in ("ana@example.com", "anna@example.com", "an_x@example.com", "an%y@example.com", "bo@ana.com"):
            store.upsert_lead(conn, address, now=T0)
    with db.connect() as conn:
        assert [r.email for r in dashboard_data.search_leads(conn, " AN")] == [
            "an%y@example.com",
            "an_x@example.com",
            "ana@example.com",
            "anna@example.com",
        ]
        assert [r.email for r in dashboard_data.search_leads(conn, "an_")] == ["an_x@example.com"]
        assert [r.email for r in dashboard_data.search_leads(conn, "an%")] == ["an%y@example.com"]
        assert [r.email for r in dashboard_data.search_leads(conn, "an", limit=2)] == [
            "an%y@example.com",
            "an_x@example.com",
        ]


def test_a_decision_applies_only_to_an_unknown_message(db: Engine) -> None:
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, "dec@example.com", now=T0)
        ids = [
            conn.execute(
                sa.insert(tables.outbox)
                .values(
                    lead_id=lead_id, funnel_id="f", step=step, template="t", stage="s", transactional=False,
                    status="queued", due_at=T0, attempts=0, next_attempt_at=T0, created_at=T0,
                )
                .returning(tables.outbox.c.id)
            ).scalar_one()
            for step in ("one", "two")
        ]  # fmt: skip
        assert outbox.mark_sending(conn, {ids[0]: "<1@x>", ids[1]: "<2@x>"}, T0) == set(ids)
        assert len(outbox.sweep_stale_sending(conn, T0 + timedelta(minutes=5))) == 2
        assert dashboard_data.outbox_counts(conn)["unknown"] == 2
        assert [m.id for m in dashboard_data.messages(conn, ("unknown",))] == ids

    later = T0 + timedelta(hours=1)
    with db.begin() as conn:
        assert dashboard_data.decide(conn, ids[0], "sent", "olivia", later)
        assert dashboard_data.decide(conn, ids[1], "resend", "olivia", later)
        assert not dashboard_data.decide(conn, ids[0], "resend", "olivia", later)  # settled already
        assert not dashboard_data.decide(conn, 999_999, "sent", "olivia", later)
    o = tables.outbox
    with db.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(o))}
        decided = conn.execute(
            sa.select(tables.events.c.properties).where(tables.events.c.name == "email_decided")
        ).scalars()
        assert sorted(p["decision"] for p in decided) == ["resend", "sent"]
        counts = dashboard_data.outbox_counts(conn)
    assert (rows[ids[0]].status, rows[ids[0]].sent_at) == ("sent", T0)
    assert rows[ids[0]].last_error.startswith("marked sent by olivia at 2026-03-29T01:30:00Z (was: worker stopped")
    assert (rows[ids[1]].status, rows[ids[1]].next_attempt_at, rows[ids[1]].claimed_at) == ("queued", later, None)
    assert counts == {**{s: 0 for s in tables.OUTBOX_STATUSES}, "sent": 1, "queued": 1}
