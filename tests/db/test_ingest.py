"""Events in bulk (engine.store.ingest): leads by address and events recorded a batch at a time, idempotent and
safe when two transactions race; a real lead's decisions written in batches of any size leave the same
rows, and on SQLite a batch decided without the writer lock is written only if what it was decided from
holds."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.authoring.validation import load_funnels
from engine.core import journey
from engine.runtime.worker import Worker
from engine.store import ingest, tables
from engine.store import leads as store
from engine.store.database import create_engine_for
from engine.store.decisions import apply_decisions

T0 = datetime(2026, 3, 2, 9, 0, 0, 0, tzinfo=UTC)  # a whole second: the stored text keeps its microseconds
ROOT = Path(__file__).resolve().parent.parent.parent


def _event(event_id: str, lead_id: int, name: str = "page_viewed", **properties: Any) -> store.NewEvent:
    return store.NewEvent(event_id, lead_id, name, T0 - timedelta(minutes=5), properties, "api")


def _count(db: Engine, table: sa.Table) -> int:
    with db.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_lead_ids_creates_the_missing_leads_and_leaves_the_others_as_they_are(db: Engine) -> None:
    with db.begin() as conn:
        old = store.upsert_lead(
            conn, "old@example.com", attributes={"plan": "pro"}, tags=["vip"], consent="unsubscribed", now=T0
        )
    later = T0 + timedelta(hours=1)
    with db.begin() as conn:
        ids = ingest.lead_ids(conn, [" Old@Example.com", "new@example.com", "NEW@example.com"], later)
    assert set(ids) == {"old@example.com", "new@example.com"} and ids["old@example.com"] == old
    with db.connect() as conn:
        rows = {r.email: r for r in conn.execute(sa.select(tables.leads))}
    new, kept = rows["new@example.com"], rows["old@example.com"]
    assert (new.id, new.consent_status, new.attributes, new.tags, new.score) == (
        ids["new@example.com"], "subscribed", {}, [], 0
    )  # fmt: skip
    assert (new.created_at, new.updated_at, new.consent_at) == (later, later, None)
    assert (kept.consent_status, kept.attributes, kept.tags, kept.updated_at) == (
        "unsubscribed",
        {"plan": "pro"},
        ["vip"],
        T0,
    )
    with pytest.raises(ValueError, match="is not a valid address"), db.begin() as conn:
        ingest.lead_ids(conn, ["not-an-address"], T0)


def test_a_batch_repeating_ids_records_each_once_and_counts_the_rest(db: Engine) -> None:
    with db.begin() as conn:
        lead = ingest.lead_ids(conn, ["e@example.com"], T0)["e@example.com"]
        first = [_event("a", lead, form="guide"), _event("b", lead), _event("a", lead, form="other")]
        assert ingest.record(conn, first, T0) == (2, 1)
    with db.begin() as conn:
        assert ingest.record(conn, [_event("a", lead), _event("c", lead)], T0 + timedelta(hours=1)) == (1, 1)
        assert ingest.record(conn, [], T0) == (0, 0)
    with db.connect() as conn:
        rows = conn.execute(sa.select(tables.events).order_by(tables.events.c.id)).all()
    assert [(r.event_id, r.properties, r.received_at) for r in rows] == [
        ("a", {"form": "guide"}, T0),  # the first of the batch's two "a"s
        ("b", {}, T0),
        ("c", {}, T0 + timedelta(hours=1)),
    ]


def test_events_are_stored_exactly_as_the_store_stores_them(db: Engine) -> None:
    """Same columns, same text on SQLite (fixed-width UTC timestamps sort and compare in SQL), same JSON."""
    with db.begin() as conn:
        lead = store.upsert_lead(conn, "s@example.com", now=T0)
        ingest.record(conn, [_event("bulk", lead, link="pricing", n=1)], T0)
        store.record_events(conn, [_event("single", lead, link="pricing", n=1)], now=T0)
        rows = conn.exec_driver_sql(
            "SELECT event_id, lead_id, name, properties, occurred_at, received_at, processed_at, source"
            " FROM events ORDER BY event_id"
        ).all()
    bulk, single = (tuple(r[1:]) for r in rows)
    assert bulk == single


def test_a_leads_events_keep_their_order_and_are_claimed_in_it(db: Engine) -> None:
    with db.begin() as conn:
        ids = ingest.lead_ids(conn, ["a@example.com", "b@example.com"], T0)
        a, b = ids["a@example.com"], ids["b@example.com"]
        ingest.record(conn, [_event("b1", b), _event("a1", a), _event("b2", b), _event("a2", a)], T0)
    with db.begin() as conn:
        claimed = store.claim_pending_events(conn, 10)
    order = [p.event.id for p in claimed]
    assert order.index("a1") < order.index("a2") and order.index("b1") < order.index("b2")


def _race(db: Engine, work: Callable[[sa.Connection], Any], threads: int) -> list[Any]:
    results: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def run() -> None:
        try:
            start.wait()
            results.append(ingest.in_transaction(db, work))
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert errors == []
    return results


def test_batches_racing_on_the_same_addresses_and_ids_neither_fail_nor_double(db: Engine) -> None:
    emails = [f"race{i}@example.com" for i in range(50)]

    def post(conn: sa.Connection) -> tuple[int, int]:
        ids = ingest.lead_ids(conn, emails, T0)
        return ingest.record(conn, [_event(f"evt-{e}", ids[e]) for e in emails], T0)

    results = _race(db, post, threads=4)
    assert sum(inserted for inserted, _ in results) == 50
    assert sum(duplicates for _, duplicates in results) == 150
    assert _count(db, tables.leads) == 50 and _count(db, tables.events) == 50


@pytest.mark.postgres
def test_on_postgresql_a_racing_transaction_waits_for_the_first_and_then_finds_its_rows(postgres_url: str) -> None:
    db = sa.create_engine(postgres_url)
    try:
        found: dict[str, Any] = {}

        def second() -> None:
            with db.begin() as conn:
                ids = ingest.lead_ids(conn, ["race@example.com"], T0)
                found["ids"] = ids
                found["counts"] = ingest.record(conn, [_event("evt-1", ids["race@example.com"])], T0)

        with db.connect() as conn, conn.begin():
            mine = ingest.lead_ids(conn, ["race@example.com"], T0)
            assert ingest.record(conn, [_event("evt-1", mine["race@example.com"])], T0) == (1, 0)
            thread = threading.Thread(target=second)
            thread.start()
            time.sleep(0.5)
            assert thread.is_alive()  # its insert of the same address waits for this transaction
        thread.join(timeout=30)
        assert found == {"ids": mine, "counts": (0, 1)}
        with db.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(tables.leads)).scalar_one() == 1
    finally:
        db.dispose()


@pytest.mark.postgres
def test_on_postgresql_two_batches_naming_the_same_ids_in_opposite_orders_both_succeed(postgres_url: str) -> None:
    """They deadlock; the server rolls one back and `in_transaction` runs it again."""
    db = sa.create_engine(postgres_url)
    try:
        with db.begin() as conn:
            lead = ingest.lead_ids(conn, ["d@example.com"], T0)["d@example.com"]
        a_holds_x, b_holds_y = threading.Event(), threading.Event()
        results: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}

        def a(conn: sa.Connection) -> None:
            results["a"] = [ingest.record(conn, [_event("x", lead)], T0)]
            a_holds_x.set()
            b_holds_y.wait(10)
            results["a"].append(ingest.record(conn, [_event("y", lead)], T0))

        def b(conn: sa.Connection) -> None:
            a_holds_x.wait(10)
            results["b"] = [ingest.record(conn, [_event("y", lead)], T0)]
            b_holds_y.set()
            results["b"].append(ingest.record(conn, [_event("x", lead)], T0))

        errors: list[BaseException] = []

        def run(work: Callable[[sa.Connection], None]) -> None:
            try:
                ingest.in_transaction(db, work)
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=run, args=(w,)) for w in (a, b)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=60)
        assert errors == []
        assert sum(inserted for r in results.values() for inserted, _ in r) == 2
        with db.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(tables.events)).scalar_one() == 2
    finally:
        db.dispose()


# --------------------------------------------------------------------------------------------------
# The worker's batched writes
# --------------------------------------------------------------------------------------------------


def _journey() -> list[journey.Decision]:
    """A lead's decisions in the example funnel: signup (enrollment, report email, tag and score),
    a pricing click (stage change, invitation), an event it ignores, a purchase (goal, onboarding),
    an email skipped for consent in another enrollment, and leaving by unsubscribing."""
    funnel = load_funnels([ROOT / "funnels"], emails_dir=None).funnels[0]
    lead = journey.Lead("someone@example.com", attributes={"employees": 80})
    signup = journey.Event("form", "form_submitted", T0, {"form": "cost-of-not-recycling"})
    cause = journey.entry_trigger(funnel, lead, signup)
    assert cause is not None
    decisions = [journey.enroll(funnel, lead, T0, cause)]

    def then(name: str, at: datetime, **properties: Any) -> None:
        last = decisions[-1]
        assert last.enrollment is not None
        event = journey.Event(f"{name}-{at.isoformat()}", name, at, properties)
        decisions.append(journey.on_event(funnel, last.lead, last.enrollment, event))

    then("email_clicked", T0 + timedelta(hours=1), link="pricing")
    then("page_viewed", T0 + timedelta(hours=2))
    then("purchase_completed", T0 + timedelta(days=1))
    unsubscribed = journey.Lead("someone@example.com", consent="unsubscribed")
    skipped = journey.enroll(funnel, unsubscribed, T0, cause)  # the report is transactional: still sent
    decisions.append(journey.on_clock(funnel, unsubscribed, skipped.enrollment, T0 + timedelta(days=3)))  # type: ignore[arg-type]
    then("unsubscribed", T0 + timedelta(days=4))
    return decisions


def _written(db: Engine, lead_id: int) -> dict[str, list[tuple[Any, ...]]]:
    found: dict[str, list[tuple[Any, ...]]] = {}
    with db.connect() as conn:
        for table in (tables.enrollments, tables.stage_transitions, tables.outbox, tables.goals, tables.webhook_calls):
            columns = [c for c in table.c if c.name not in ("id", "lead_id")]
            rows = conn.execute(sa.select(*columns).where(table.c.lead_id == lead_id).order_by(table.c.id))
            # Transitions in the order they were written; rows with a unique key (outbox rows, goals, ...) by it.
            found[table.name] = [tuple(r) for r in rows]
            if table is not tables.stage_transitions:
                found[table.name].sort(key=repr)
        lead = conn.execute(sa.select(tables.leads).where(tables.leads.c.id == lead_id)).one()
        found["lead"] = [(lead.attributes, lead.tags, lead.score, lead.updated_at)]
    return found


def test_a_journeys_decisions_in_batches_of_any_size_write_the_same_rows(db: Engine) -> None:
    decisions = _journey()
    kinds = {type(c).__name__ for d in decisions for c in d.commands}
    assert {"SendEmail", "SkipEmail", "UpdateLead", "RecordTransition", "GoalReached"} <= kinds
    now = T0 + timedelta(days=5)
    sizes = range(1, len(decisions) + 1)
    with db.begin() as conn:
        ids = ingest.lead_ids(conn, [f"size{size}@example.com" for size in sizes], T0)
    counts = set()
    for size in sizes:
        lead = ids[f"size{size}@example.com"]
        queued = transitions = 0
        for start in range(0, len(decisions), size):
            with db.begin() as conn:
                written = apply_decisions(conn, [(lead, d) for d in decisions[start : start + size]], now)
            queued, transitions = queued + written.queued, transitions + written.transitions
        counts.add((queued, transitions))
    assert len(counts) == 1 and min(counts) > (0, 0)
    assert all(_written(db, ids[f"size{size}@example.com"]) == _written(db, ids["size1@example.com"]) for size in sizes)


# --------------------------------------------------------------------------------------------------
# The worker's event batches on SQLite: decided on a snapshot, written only if it still holds
# --------------------------------------------------------------------------------------------------


class _ChangedMeanwhile(Worker):
    """A worker that, right after deciding its first batch on a snapshot (before taking the writer lock),
    lets another transaction change the database."""

    def __init__(self, engine: Engine, change: Callable[[sa.Connection], None]) -> None:
        funnel = load_funnels([ROOT / "funnels"], emails_dir=None).funnels[0]
        super().__init__(engine, {funnel.id: funnel})
        self.change = change
        self.decided = 0

    def _decide(self, conn: sa.Connection, now: datetime) -> Any:
        batch = super()._decide(conn, now)
        self.decided += 1
        if self.decided == 1:
            with self.engine.begin() as other:
                self.change(other)
        return batch


@pytest.fixture
def sqlite_db(sqlite_template: Path, tmp_path: Path) -> Iterator[Engine]:
    path = tmp_path / "funnel.db"
    shutil.copyfile(sqlite_template, path)
    engine = create_engine_for(f"sqlite:///{path}")
    yield engine
    engine.dispose()


def _signup(db: Engine, email: str) -> int:
    with db.begin() as conn:
        lead = ingest.lead_ids(conn, [email], T0)[email]
        ingest.record(conn, [_event(f"signup-{email}", lead, "form_submitted", form="cost-of-not-recycling")], T0)
    return lead


def test_a_batch_decided_on_a_snapshot_is_decided_again_if_its_lead_changed_before_the_write(
    sqlite_db: Engine,
) -> None:
    lead = _signup(sqlite_db, "gone@example.com")
    worker = _ChangedMeanwhile(
        sqlite_db, lambda conn: conn.execute(sa.delete(tables.leads).where(tables.leads.c.id == lead))
    )
    result = worker.process_events(T0 + timedelta(minutes=1))
    assert worker.decided == 2  # the snapshot's decision (enrol the lead) was dropped
    assert (result.events, result.enrolled) == (0, 0)
    # Erasure took the lead's events with it; nothing was written for the lead that is gone.
    assert _count(sqlite_db, tables.events) == 0
    assert _count(sqlite_db, tables.enrollments) == 0 and _count(sqlite_db, tables.outbox) == 0


def test_a_batch_already_handled_by_another_worker_meanwhile_is_not_written_twice(sqlite_db: Engine) -> None:
    _signup(sqlite_db, "twice@example.com")
    other = _ChangedMeanwhile(sqlite_db, lambda conn: None)

    def handled_elsewhere(conn: sa.Connection) -> None:
        pending = store.claim_pending_events(conn, 10)
        store.mark_events_processed(conn, [p.pk for p in pending], T0)

    worker = _ChangedMeanwhile(sqlite_db, handled_elsewhere)
    assert worker.process_events(T0 + timedelta(minutes=1)).events == 0
    assert worker.decided == 2
    assert other.process_events(T0 + timedelta(minutes=1)).events == 0
    assert _count(sqlite_db, tables.enrollments) == 0


def test_a_batch_whose_snapshot_still_holds_is_written_as_decided(sqlite_db: Engine) -> None:
    _signup(sqlite_db, "kept@example.com")
    worker = _ChangedMeanwhile(sqlite_db, lambda conn: None)
    result = worker.process_events(T0 + timedelta(minutes=1))
    assert worker.decided == 1 and (result.events, result.enrolled, result.emails_queued) == (1, 1, 1)
    assert _count(sqlite_db, tables.enrollments) == 1 and _count(sqlite_db, tables.outbox) == 1


def test_batches_setting_time_zones_on_the_same_leads_race_without_failing(db: Engine) -> None:
    """Events that carry a zone set it on their lead: batches racing on the same leads, some with zones
    and some without, all commit (the leads are locked in one order), and each lead ends with a zone
    one of them sent."""
    from engine.http.api_v1 import EventIn, record_items

    emails = [f"zone{i}@example.com" for i in range(20)]
    zones = ("Europe/Berlin", "Asia/Tokyo", "America/Chicago", None)
    counter = iter(range(1_000_000))
    lock = threading.Lock()

    def post(conn: sa.Connection) -> tuple[int, int]:
        with lock:
            n = next(counter)
        zone = zones[n % len(zones)]
        order = emails if n % 2 else list(reversed(emails))
        items = [EventIn(id=f"z{n}-{e}", type="page_viewed", email=e, timezone=zone) for e in order]
        return record_items(conn, items, "api", T0)

    results = _race(db, post, threads=4)
    assert sum(inserted for inserted, _ in results) == 4 * len(emails)
    with db.connect() as conn:
        found = dict(conn.execute(sa.select(tables.leads.c.email, tables.leads.c.timezone)).all())
    assert set(found) == set(emails) and set(found.values()) <= set(zones[:3])
