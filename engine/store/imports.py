"""The CSV import's reads and writes of leads (`engine.runtime.importer` decides what changes): the
leads a batch names, which of its addresses are suppressed, and the batch's inserts, updates and consent
records, each an executemany.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from engine.store import leads as store
from engine.store import tables

ExistingLead = tuple[int, dict[str, Any], list[str], str | None, str, str | None]
"""id, attributes, tags, time zone, consent status and language of a lead already in the database."""


def existing_leads(conn: sa.Connection, emails: Sequence[str]) -> dict[str, ExistingLead]:
    leads = tables.leads
    stmt = sa.select(
        leads.c.email,
        leads.c.id,
        leads.c.attributes,
        leads.c.tags,
        leads.c.timezone,
        leads.c.consent_status,
        leads.c.language,
    )
    return {
        email: (lead_id, attributes, tags, timezone, consent, language)
        for chunk in store.chunks(list(emails))
        for email, lead_id, attributes, tags, timezone, consent, language in conn.execute(
            stmt.where(leads.c.email.in_(chunk))
        )
    }


def suppressed_among(conn: sa.Connection, emails: Sequence[str]) -> set[str]:
    """The addresses among these on the suppression list. An empty list (a first import into a new
    database, the usual case for moving tools) is asked about once per batch, not once per address."""
    s = tables.suppressions
    if conn.execute(sa.select(s.c.id).limit(1)).first() is None:
        return set()
    hashes = {store.email_hash(e): e for e in emails}
    return {
        hashes[h]
        for chunk in store.chunks(list(hashes))
        for h in conn.scalars(sa.select(s.c.email_hash).where(s.c.email_hash.in_(chunk)))
    }


def _lead_update(consent: bool) -> sa.Update:
    """An executemany update of leads an import changed: their fields, and with `consent` their status."""
    leads = tables.leads
    stmt = (
        sa.update(leads)
        .where(leads.c.id == sa.bindparam("lead"))
        .values(
            attributes=sa.bindparam("new_attributes"),
            tags=sa.bindparam("new_tags"),
            timezone=sa.bindparam("new_timezone"),
            language=sa.bindparam("new_language"),
            updated_at=sa.bindparam("at"),
        )
    )
    if consent:
        stmt = stmt.values(
            consent_status=sa.bindparam("consent"), consent_source=sa.bindparam("source"), consent_at=sa.bindparam("at")
        )
    return stmt


_UPDATE_KEPT = _lead_update(consent=False)
_UPDATE_CHANGED = _lead_update(consent=True)


def write_leads(
    conn: sa.Connection,
    inserts: Sequence[dict[str, Any]],
    kept: Sequence[dict[str, Any]],
    changed: Sequence[dict[str, Any]],
    records: Sequence[dict[str, Any]],
) -> None:
    """New leads, updated leads (`kept`: their consent stays; `changed`: this import sets it) and a consent
    record per changed status, in the caller's transaction."""
    if inserts:
        store.insert_rows(conn, tables.leads, list(inserts), "ON CONFLICT (email) DO NOTHING")
    if kept:
        conn.execute(_UPDATE_KEPT, list(kept))
    if changed:
        conn.execute(_UPDATE_CHANGED, list(changed))
    if records:
        conn.execute(sa.insert(tables.consent_records), list(records))
