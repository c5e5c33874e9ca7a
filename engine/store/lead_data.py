"""Everything the database holds about one lead, for its timeline, its export and its erasure
(`engine.views.lead_timeline` puts them together).

Every table that holds a row about a lead has a `lead_id` that cascades on delete; export and erasure
go by that, so a table added later is exported and erased without a change here. Only the suppression
survives erasure: a hash of the address, so it is never mailed again.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.store import leads as store
from engine.store import tables


def lead_tables() -> list[sa.Table]:
    """Every table with rows about one lead (by `lead_id`), in dependency order."""
    return [t for t in tables.metadata.sorted_tables if "lead_id" in t.c]


def lead_table_names() -> list[str]:
    return [t.name for t in lead_tables()]


def lead(conn: sa.Connection, lead_id: int) -> dict[str, Any]:
    return dict(conn.execute(sa.select(tables.leads).where(tables.leads.c.id == lead_id)).one()._mapping)


def rows(conn: sa.Connection, lead_id: int, names: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """The lead's rows in each named table, in the order they were written."""
    found: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        table = tables.metadata.tables[name]
        stmt = sa.select(table).where(table.c.lead_id == lead_id).order_by(*table.primary_key)
        found[name] = [dict(r._mapping) for r in conn.execute(stmt)]
    return found


def suppression(conn: sa.Connection, address: str) -> dict[str, Any] | None:
    s = tables.suppressions
    row = conn.execute(sa.select(s.c.reason, s.c.created_at).where(s.c.email_hash == store.email_hash(address))).first()
    return dict(row._mapping) if row is not None else None


def held(conn: sa.Connection, lead_id: int) -> dict[str, int]:
    """How many rows each table holds about the lead (what erasure will delete)."""
    counts = {"leads": 1}
    for table in lead_tables():
        counts[table.name] = conn.execute(
            sa.select(sa.func.count()).select_from(table).where(table.c.lead_id == lead_id)
        ).scalar_one()
    return counts


def erase(conn: sa.Connection, address: str, now: datetime) -> dict[str, int] | None:
    """Erasure: the lead and every row about it go (the foreign keys cascade); only a hash of the address
    stays, so it is never mailed again and a later import or signup cannot quietly bring it back into
    marketing. Returns the rows deleted per table, or None when there was no such lead (the address is
    suppressed all the same). `address` as an entry took it (`engine.core.addresses`) or as it is stored."""
    lead_id = store.find_lead_id(conn, address)
    if not store.suppress(conn, address, "erased", now=now):
        # Suppressed already: a bounce becomes an erasure, which nothing lifts (a bounce may be lifted).
        s = tables.suppressions
        conn.execute(
            sa.update(s)
            .where(s.c.email_hash == store.email_hash(address), s.c.reason == "bounced")
            .values(reason="erased")
        )
    if lead_id is None:
        return None
    counts = held(conn, lead_id)
    # Bounce reports name the lead without a foreign key (a report may name no lead) and keep raw
    # messages that hold the address: they go too, matched or not.
    b = tables.bounce_reports
    conn.execute(sa.delete(b).where(sa.or_(b.c.lead_id == lead_id, b.c.recipient_hash == store.email_hash(address))))
    conn.execute(sa.delete(tables.leads).where(tables.leads.c.id == lead_id))
    return counts
