"""The outbox queries of the send pipeline: lease a batch, mark one message `sending` right before DATA,
record the outcome. A lease is not a send: a worker that dies holding a lease loses nothing, the lease
expires and another worker takes the message. A message in `sending` whose worker died is `unknown`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from engine.core.outbox_item import OutboxItem
from engine.store.leads import email_hash
from engine.store.tables import OUTBOX_STATUSES, leads, outbox, suppressions

LEASE = timedelta(minutes=2)
# Not handed to the SMTP server yet: the only states a worker may act on before DATA.
PENDING = ("queued", "deferred")
# Handed to (or maybe taken by) an SMTP server: these count against a lead's daily cap.
HANDED_OVER = ("sending", "sent", "unknown")


def _typed(sql: str, **types: sa.types.TypeEngine[Any]) -> sa.TextClause:
    """SQL text whose parameters carry these types: SQLAlchemy converts their values as for any of its
    statements (aware UTC datetimes), and compiles the text once into its statement cache."""
    return sa.text(sql).bindparams(*(sa.bindparam(name, type_=type_) for name, type_ in types.items()))


_ids: sa.BindParameter[list[int]] = sa.bindparam("ids", expanding=True)
_LEASE = {
    # The states are written out, not bound, so SQLite can use the partial index `ix_outbox_ready`.
    dialect: _typed(
        "UPDATE outbox SET claimed_at = :now WHERE id IN ("  # noqa: S608
        "SELECT id FROM outbox WHERE status IN ('queued', 'deferred') AND next_attempt_at <= :now"
        " AND (claimed_at IS NULL OR claimed_at < :expired)"
        f" ORDER BY next_attempt_at, id LIMIT :limit{skip_locked}) RETURNING id",
        now=outbox.c.claimed_at.type,
        expired=outbox.c.claimed_at.type,
        limit=sa.Integer(),
    )
    for dialect, skip_locked in (("postgresql", " FOR UPDATE SKIP LOCKED"), ("sqlite", ""))
}
_LEASED = (
    sa.text(
        "SELECT o.id, o.lead_id, l.email, l.consent_status, l.attributes, l.timezone, l.language, o.funnel_id, o.step,"
        " o.template, o.stage, o.transactional, o.attempts"
        " FROM outbox o JOIN leads l ON l.id = o.lead_id WHERE o.id IN :ids ORDER BY o.id"
    )
    .bindparams(_ids)
    .columns(attributes=leads.c.attributes.type, transactional=outbox.c.transactional.type)
)


def waiting(conn: sa.Connection, horizon: datetime) -> tuple[int, datetime | None]:
    """Messages ready to go by `horizon` (queued or deferred), and when the oldest of them was due: the
    relay's backlog while it is down. The count reads the partial index `ix_outbox_ready`."""
    o = outbox
    count, oldest = conn.execute(
        sa.select(sa.func.count(), sa.func.min(o.c.due_at)).where(
            sa.text("status IN ('queued', 'deferred')"), o.c.next_attempt_at <= horizon
        )
    ).one()
    return int(count), oldest


def lease_batch(conn: sa.Connection, now: datetime, limit: int, lease: timedelta = LEASE) -> list[OutboxItem]:
    """Queued or deferred messages that are due and not leased by a live worker, oldest first.

    A lease only spares two workers the same envelope work; it is not what makes a send happen once
    (`mark_sending` is). So it can be short: a worker killed while holding one delays its messages by
    `lease`, no more."""
    statement = _LEASE["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    leased = conn.execute(statement, {"now": now, "expired": now - lease, "limit": limit})
    ids = sorted(row[0] for row in leased)
    if not ids:
        return []
    rows = conn.execute(_LEASED, {"ids": ids}).all()
    hashes = {r.email: email_hash(r.email) for r in rows}
    suppressed = _suppressed(conn, list(hashes.values()))
    return [
        OutboxItem(
            id=r.id,
            lead_id=r.lead_id,
            email=r.email,
            consent_status=r.consent_status,
            attributes=dict(r.attributes or {}),
            funnel_id=r.funnel_id,
            step=r.step,
            template=r.template,
            stage=r.stage,
            transactional=bool(r.transactional),
            attempts=r.attempts,
            suppressed=hashes[r.email] in suppressed,
            timezone=r.timezone,
            language=r.language,
        )
        for r in rows
    ]


# Ids, hashes and statuses need no conversion by a column type: these statements go to the driver as
# they are (SQLAlchemy's typed statements cost tens of microseconds more each, paid per round of replies).


def _marks(conn: sa.Connection, count: int) -> str:
    return ", ".join(["?" if conn.dialect.paramstyle == "qmark" else "%s"] * count)


def _suppressed(conn: sa.Connection, hashes: Sequence[str]) -> set[str]:
    """The hashes among these on the suppression list."""
    if not hashes:
        return set()
    sql = f"SELECT email_hash FROM suppressions WHERE email_hash IN ({_marks(conn, len(hashes))})"  # noqa: S608
    return {h for (h,) in conn.exec_driver_sql(sql, tuple(hashes))}


def suppression_reasons(conn: sa.Connection, emails: Sequence[str]) -> dict[str, str]:
    """{address: why it is suppressed} for those of these addresses on the suppression list."""
    hashes = {email_hash(e): e for e in emails}
    s = suppressions
    rows = conn.execute(sa.select(s.c.email_hash, s.c.reason).where(s.c.email_hash.in_(list(hashes))))
    return {hashes[h]: str(reason) for h, reason in rows}


def consent_of(conn: sa.Connection, emails: Mapping[int, str], lock: bool = False) -> dict[int, tuple[str, bool]]:
    """Each lead's consent and suppression as they are at this instant (read again right before DATA),
    for `emails` {lead id: address}. A lead missing from the answer was erased. With `lock`, the leads'
    rows stay locked until the transaction ends (PostgreSQL), so two workers cannot both send a lead's
    last email of the day."""
    ids = sorted(emails)
    if not ids:
        return {}
    hashes = {lead_id: email_hash(emails[lead_id]) for lead_id in ids}
    if conn.dialect.name == "postgresql":
        # One statement of one text whatever the count (the server keeps it prepared): each lead with
        # whether its hash is suppressed.
        sql = _CONSENT_LOCKED if lock else _CONSENT
        found = conn.exec_driver_sql(sql, (ids, [hashes[i] for i in ids])).all()
        return {lead_id: (status, bool(suppressed)) for lead_id, status, suppressed in found}
    # One round trip: the leads' rows, then the suppressed hashes (id -1).
    leads_sql = f"SELECT id, consent_status FROM leads WHERE id IN ({_marks(conn, len(ids))})"  # noqa: S608
    hits = f"SELECT -1, email_hash FROM suppressions WHERE email_hash IN ({_marks(conn, len(ids))})"  # noqa: S608
    found = conn.exec_driver_sql(f"{leads_sql} UNION ALL {hits}", (*ids, *hashes.values())).all()
    suppressed = {h for i, h in found if i == -1}
    return {lead_id: (status, hashes[lead_id] in suppressed) for lead_id, status in found if lead_id != -1}


_CONSENT = (
    "SELECT l.id, l.consent_status, EXISTS (SELECT 1 FROM suppressions s WHERE s.email_hash = v.hash)"
    " FROM unnest(CAST(%s AS INTEGER[]), CAST(%s AS VARCHAR[])) AS v(id, hash) JOIN leads l ON l.id = v.id"
    " ORDER BY l.id"
)
_CONSENT_LOCKED = f"{_CONSENT} FOR UPDATE OF l"


def marketing_sent_since(conn: sa.Connection, lead_ids: Iterable[int], since: datetime) -> dict[int, list[datetime]]:
    """When each lead's marketing emails were handed to a server (or may have been), across funnels."""
    rows = conn.execute(
        sa.select(outbox.c.lead_id, outbox.c.sent_at).where(
            outbox.c.lead_id.in_(sorted(set(lead_ids))),
            outbox.c.transactional.is_(False),
            outbox.c.status.in_(HANDED_OVER),
            outbox.c.sent_at >= since,
        )
    )
    found: dict[int, list[datetime]] = {}
    for lead_id, sent_at in rows:
        found.setdefault(lead_id, []).append(sent_at)
    return found


@functools.cache
def _mark_sending(count: int) -> sa.TextClause:
    """Queued/deferred -> sending for `count` messages, each with its Message-ID and language, in one
    statement."""
    cases = " ".join(f"WHEN :id_{i} THEN :message_id_{i}" for i in range(count))
    languages = " ".join(f"WHEN :id_{i} THEN :language_{i}" for i in range(count))
    ids = ", ".join(f":id_{i}" for i in range(count))
    return _typed(
        "UPDATE outbox SET status = 'sending', claimed_at = :now, sent_at = :now, attempts = attempts + 1,"  # noqa: S608
        f" message_id = CASE id {cases} END, language = CASE id {languages} END"
        f" WHERE id IN ({ids}) AND status IN ('queued', 'deferred') RETURNING id",
        now=outbox.c.sent_at.type,
    )


def mark_sending(
    conn: sa.Connection,
    message_ids: Mapping[int, str],
    now: datetime,
    languages: Mapping[int, str | None] | None = None,
) -> set[int]:
    """Queued/deferred -> sending, with each one's Message-ID and the language it was written in (None:
    a funnel of one language), all in one statement. Only the returned ids may be sent: a message that
    someone else got to first is not among them. `sent_at` is when DATA began."""
    if not message_ids:
        return set()
    ids = list(message_ids)
    written = languages or {}
    if conn.dialect.name == "postgresql":
        # The ids, Message-IDs and languages as arrays: one statement text for any count, kept prepared.
        params = {
            "now": now,
            "ids": ids,
            "message_ids": list(message_ids.values()),
            "languages": [written.get(i) for i in ids],
        }
        return set(conn.scalars(_MARK_SENDING_ARRAYS, params))
    params_: dict[str, Any] = {"now": now}
    for i, message in enumerate(ids):
        params_[f"id_{i}"] = message
        params_[f"message_id_{i}"] = message_ids[message]
        params_[f"language_{i}"] = written.get(message)
    return set(conn.scalars(_mark_sending(len(ids)), params_))


_MARK_SENDING_ARRAYS = sa.text(
    "UPDATE outbox SET status = 'sending', claimed_at = :now, sent_at = :now, attempts = attempts + 1,"
    " message_id = v.message_id, language = v.language FROM unnest(CAST(:ids AS INTEGER[]),"
    " CAST(:message_ids AS VARCHAR[]), CAST(:languages AS VARCHAR[])) AS v(id, message_id, language)"
    " WHERE outbox.id = v.id AND outbox.id = ANY(CAST(:ids AS INTEGER[]))"
    " AND outbox.status IN ('queued', 'deferred') RETURNING outbox.id"
).bindparams(sa.bindparam("now", type_=outbox.c.sent_at.type))
# `id = ANY(ids)` says again what the join says: the rows are found by the primary key whatever the
# planner's statistics say (taken before a campaign filled the outbox, they would have it read every
# ready row instead).


@dataclass(frozen=True, slots=True)
class Change:
    """One message's new state, applied only while it is still in one of the `expect`ed states."""

    id: int
    values: Mapping[str, Any]
    expect: tuple[str, ...] = PENDING


def apply(conn: sa.Connection, changes: Sequence[Change]) -> int:
    """Many outcomes at once: one statement per shape of change (on PostgreSQL one UPDATE for all of its
    messages, elsewhere an executemany). Returns how many rows changed."""
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[Change]] = {}
    for change in changes:
        groups.setdefault((tuple(sorted(change.values)), change.expect), []).append(change)
    changed = 0
    postgres = conn.dialect.name == "postgresql"
    for (columns, expect), members in groups.items():
        if postgres and len(members) > 1 and len({m.id for m in members}) == len(members):
            # Column by column as arrays: the server matches them to the rows in one statement. (A
            # message changed twice in one batch goes row by row instead: the second change sees the first.)
            arrays = {c: [m.values[c] for m in members] for c in columns}
            statement = _outcomes(conn.dialect, columns, expect)
            result = conn.execute(statement, {**arrays, "message": [m.id for m in members]})
        else:
            result = conn.execute(_outcome(columns, expect), [{**m.values, "message": m.id} for m in members])
        changed += max(int(result.rowcount or 0), 0)
    return changed


def _checked(columns: tuple[str, ...], expect: tuple[str, ...]) -> None:
    if not set(columns) <= set(outbox.c.keys()) or not set(expect) <= set(OUTBOX_STATUSES):
        raise ValueError(f"expected outbox columns and states, found {columns} and {expect}")


@functools.cache
def _outcome(columns: tuple[str, ...], expect: tuple[str, ...]) -> sa.TextClause:
    """`UPDATE outbox SET columns WHERE id = :message AND status IN expect`, each value bound with its
    column's type. Column names and states are our own constants, never input."""
    _checked(columns, expect)
    return _typed(
        f"UPDATE outbox SET {', '.join(f'{c} = :{c}' for c in columns)}"  # noqa: S608
        f" WHERE id = :message AND status IN ({', '.join(repr(s) for s in expect)})",
        **{c: outbox.c[c].type for c in columns},
    )


@functools.cache
def _outcomes(dialect: sa.Dialect, columns: tuple[str, ...], expect: tuple[str, ...]) -> sa.TextClause:
    """PostgreSQL: the same change for many messages in one statement, each column's values an array
    (converted element by element by the column's type), matched to the ids by position."""
    _checked(columns, expect)
    arrays = ", ".join(f"CAST(:{c} AS {outbox.c[c].type.compile(dialect=dialect)}[])" for c in columns)
    return sa.text(
        f"UPDATE outbox SET {', '.join(f'{c} = v.{c}' for c in columns)}"  # noqa: S608
        f" FROM unnest(CAST(:message AS INTEGER[]), {arrays}) AS v(message, {', '.join(columns)})"
        f" WHERE outbox.id = v.message AND outbox.id = ANY(CAST(:message AS INTEGER[]))"
        f" AND outbox.status IN ({', '.join(repr(s) for s in expect)})"
    ).bindparams(*(sa.bindparam(c, type_=postgresql.ARRAY(outbox.c[c].type)) for c in columns))


@dataclass(frozen=True, slots=True)
class Swept:
    """A message the sweep found left in `sending`, now `unknown`."""

    id: int
    funnel_id: str
    step: str


STALE_SENDING = "worker stopped between DATA and the server's reply"


def sweep_stale_sending(conn: sa.Connection, older_than: datetime) -> list[Swept]:
    """Messages left in `sending` by a worker that died: the server may or may not have them. They become
    `unknown` for an operator to decide; never sent again automatically (at most once)."""
    result = conn.execute(
        sa.update(outbox)
        .where(outbox.c.status == "sending", outbox.c.claimed_at < older_than)
        .values(status="unknown", last_error=STALE_SENDING)
        .returning(outbox.c.id, outbox.c.funnel_id, outbox.c.step)
    )
    return sorted((Swept(*row) for row in result), key=lambda swept: swept.id)
