"""Events in bulk: the leads they name and the events themselves, recorded with a few statements per
batch (the HTTP API's batches of up to 1,000, CSV imports, the demo month).

Each batch is one `IN` lookup and one executemany per kind of row, through SQLAlchemy (`store.insert_rows`),
so values go through each column's own type and rows read back exactly like rows from the store. The
worker reads these events back and writes what it decides with `engine.store.decisions`.

Concurrency: every insert is `ON CONFLICT DO NOTHING` followed by a lookup, so two transactions racing
on a new address or an event id neither fail nor write it twice. On PostgreSQL the loser's insert
waits for the winner's commit and then does nothing; rows are inserted in one global order (addresses
sorted, events by lead) so two batches, or a batch and the worker's per-lead lock, never wait on each
other in a cycle. On SQLite the transaction holds the single writer lock (`BEGIN IMMEDIATE`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TypeVar

import sqlalchemy as sa

from engine.core import addresses
from engine.store import leads as store
from engine.store import tables

T = TypeVar("T")


# PostgreSQL's "deadlock detected" and "could not serialize": the transaction was chosen to give way
# and did nothing; running it again is safe.
_GIVE_WAY = frozenset({"40P01", "40001"})


def in_transaction(engine: sa.Engine, work: Callable[[sa.Connection], T], attempts: int = 3) -> T:
    """`work` in one transaction, committed before this returns. On PostgreSQL two batches naming the
    same event ids in opposite orders can deadlock; the server rolls one back, and it runs again
    (by then the other's rows are committed, so its inserts find them)."""
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                return work(conn)
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) not in _GIVE_WAY or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------------------
# Leads by address
# --------------------------------------------------------------------------------------------------


def find_leads(conn: sa.Connection, emails: Sequence[str]) -> dict[str, int]:
    """Ids of the leads that exist among these (normalised) addresses."""
    leads = tables.leads
    stmt = sa.select(leads.c.email, leads.c.id)
    return {
        email: int(lead_id)
        for chunk in store.chunks(emails)
        for email, lead_id in conn.execute(stmt.where(leads.c.email.in_(chunk)))
    }


def lead_ids(conn: sa.Connection, emails: Iterable[str], now: datetime) -> dict[str, int]:
    """The id of the lead for each address, keyed by the normalised address (`addresses.normalise`, which
    raises `AddressError` for one it refuses). Missing leads are created as `store.upsert_lead` creates
    them without consent (subscribed, no attributes); existing leads are not touched."""
    wanted = sorted({addresses.normalise(e) for e in emails})
    found = find_leads(conn, wanted)
    missing = [e for e in wanted if e not in found]
    if missing:
        rows = [
            {"email": email, "attributes": {}, "tags": [], "score": 0, "consent_status": "subscribed",
             "created_at": now, "updated_at": now}
            for email in missing
        ]  # fmt: skip
        store.insert_rows(conn, tables.leads, rows, "ON CONFLICT (email) DO NOTHING")
        # Inserted here, or by a concurrent transaction that committed first: either way it is there now.
        found.update(find_leads(conn, missing))
    return found


def set_lead_settings(
    conn: sa.Connection,
    zones: Mapping[int, str],
    languages: Mapping[int, str],
    batch: Iterable[int],
    now: datetime,
) -> None:
    """Set leads' time zones and languages (events that carry them). On PostgreSQL every lead of the
    batch is locked first, in id order like every per-lead lock: the batch's events then wait for no
    lead another transaction holds while this one holds some, so two batches never wait on each other
    in a cycle."""
    store.lock_leads(conn, batch)
    leads = tables.leads
    for column, values in (("timezone", zones), ("language", languages)):
        if values:
            conn.execute(
                sa.update(leads)
                .where(leads.c.id == sa.bindparam("lead_id"))
                .values({column: sa.bindparam("value"), "updated_at": now}),
                [{"lead_id": lead_id, "value": value} for lead_id, value in sorted(values.items())],
            )


# --------------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------------


def record(conn: sa.Connection, new_events: Sequence[store.NewEvent], now: datetime) -> tuple[int, int]:
    """Insert events, ignoring ids already recorded (also ids repeated within the batch: the first one
    is kept); returns (inserted, duplicates), as `store.record_events` does.

    Rows go in by lead (in the given order within a lead, which is the order the worker handles
    them): on PostgreSQL each row's foreign key takes a share lock on its lead, and the worker locks
    leads in id order, so taking them in the same order can never deadlock with it."""
    if not new_events:
        return 0, 0
    rows = [
        {"event_id": e.event_id, "lead_id": e.lead_id, "name": e.name, "properties": dict(e.properties),
         "occurred_at": e.occurred_at, "received_at": now, "source": e.source}
        for e in sorted(new_events, key=lambda e: e.lead_id)
    ]  # fmt: skip
    inserted = store.insert_rows(conn, tables.events, rows, "ON CONFLICT (event_id) DO NOTHING")
    return inserted, len(rows) - inserted


def recorded_event_ids(conn: sa.Connection, event_ids: Sequence[str]) -> set[str]:
    """The ids among these that are already recorded."""
    events = tables.events
    stmt = sa.select(events.c.event_id)
    return {
        event_id
        for chunk in store.chunks(event_ids)
        for event_id in conn.scalars(stmt.where(events.c.event_id.in_(chunk)))
    }
