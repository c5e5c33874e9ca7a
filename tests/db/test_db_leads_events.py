"""Leads (normalised, unique addresses) and events (idempotent by id, claimed in received order)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.store import leads as store
from engine.store import tables

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_an_address_is_normalised_and_names_one_lead(db: Engine) -> None:
    with db.begin() as conn:
        first = store.upsert_lead(conn, "  Ann.Lee@Example.COM ", now=T0)
        again = store.upsert_lead(conn, "ann.lee@example.com", now=T0)
    assert first == again
    with db.connect() as conn:
        lead = store.get_lead(conn, first)
        count = conn.execute(sa.select(sa.func.count()).select_from(tables.leads)).scalar()
    assert lead is not None and lead.id == "ann.lee@example.com"
    assert count == 1


def test_the_database_refuses_a_second_row_for_an_address(db: Engine) -> None:
    with db.begin() as conn:
        store.upsert_lead(conn, "dup@example.com", now=T0)
    row = {
        "email": "dup@example.com",
        "attributes": {},
        "tags": [],
        "score": 0,
        "consent_status": "subscribed",
        "created_at": T0,
        "updated_at": T0,
    }
    with pytest.raises(sa.exc.IntegrityError), db.begin() as conn:
        conn.execute(sa.insert(tables.leads).values(**row))


def test_upsert_merges_attributes_adds_tags_and_sets_consent(db: Engine) -> None:
    with db.begin() as conn:
        lead_id = store.upsert_lead(
            conn, "m@example.com", attributes={"plan": "free", "city": "Bristol"}, tags=["b"], now=T0
        )
        store.upsert_lead(
            conn,
            "M@example.com",
            attributes={"plan": "pro"},
            tags=["a"],
            timezone="Europe/London",
            consent="unsubscribed",
            consent_source="one-click",
            now=T0 + timedelta(hours=1),
        )
    with db.connect() as conn:
        lead = store.get_lead(conn, lead_id)
        row = conn.execute(sa.select(tables.leads).where(tables.leads.c.id == lead_id)).one()
    assert lead is not None
    assert dict(lead.attributes) == {"plan": "pro", "city": "Bristol"}
    assert lead.tags == frozenset({"a", "b"})
    assert lead.timezone == "Europe/London"
    assert lead.consent == "unsubscribed"
    assert (row.consent_source, row.consent_at, row.created_at) == ("one-click", T0 + timedelta(hours=1), T0)


@pytest.mark.parametrize("bad", ["", "no-at-sign", "a@b@c", "x@example.com\r\nBcc: y@example.com", "@example.com"])
def test_an_address_that_is_not_one_is_refused(db: Engine, bad: str) -> None:
    with pytest.raises(ValueError, match="is not a valid address"), db.begin() as conn:
        store.upsert_lead(conn, bad, now=T0)


def test_an_unknown_consent_status_is_refused(db: Engine) -> None:
    with pytest.raises(ValueError, match="consent"), db.begin() as conn:
        store.upsert_lead(conn, "c@example.com", consent="maybe", now=T0)


def test_load_leads_returns_the_leads_asked_for(db: Engine) -> None:
    with db.begin() as conn:
        ids = [store.upsert_lead(conn, f"l{i}@example.com", now=T0) for i in range(3)]
    with db.connect() as conn:
        loaded = store.load_leads(conn, [ids[0], ids[2], 999_999])
    assert {k: v.id for k, v in loaded.items()} == {ids[0]: "l0@example.com", ids[2]: "l2@example.com"}


def _events(lead_id: int) -> list[store.NewEvent]:
    return [
        store.NewEvent("evt-1", lead_id, "signed_up", T0, {"form": "guide"}, "api"),
        store.NewEvent("evt-2", lead_id, "opened", T0 + timedelta(minutes=5)),
        store.NewEvent("evt-3", lead_id, "clicked", T0 + timedelta(minutes=6)),
    ]


def test_replaying_events_changes_nothing(db: Engine) -> None:
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, "e@example.com", now=T0)
        assert store.record_events(conn, _events(lead_id), now=T0) == (3, 0)
    with db.begin() as conn:
        assert store.record_events(conn, _events(lead_id), now=T0 + timedelta(hours=1)) == (0, 3)
    with db.connect() as conn:
        rows = conn.execute(sa.select(tables.events).order_by(tables.events.c.id)).all()
    assert [(r.event_id, r.received_at) for r in rows] == [("evt-1", T0), ("evt-2", T0), ("evt-3", T0)]


def test_a_batch_repeating_an_id_records_it_once(db: Engine) -> None:
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, "e@example.com", now=T0)
        twice = [_events(lead_id)[0], _events(lead_id)[0]]
        assert store.record_events(conn, twice, now=T0) == (1, 1)


def test_pending_events_are_claimed_in_received_order_until_processed(db: Engine) -> None:
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, "e@example.com", now=T0)
        store.record_events(conn, _events(lead_id)[:2], now=T0 + timedelta(seconds=1))
        store.record_events(conn, _events(lead_id)[2:], now=T0)  # received earlier, so first
    with db.begin() as conn:
        pending = store.claim_pending_events(conn, limit=2)
        assert [p.event.id for p in pending] == ["evt-3", "evt-1"]
        assert pending[1].event.properties == {"form": "guide"}
        assert pending[1].event.at == T0 and pending[1].source == "api"
        store.mark_events_processed(conn, [p.pk for p in pending], T0 + timedelta(minutes=10))
    with db.begin() as conn:
        assert [p.event.id for p in store.claim_pending_events(conn, limit=10)] == ["evt-2"]
