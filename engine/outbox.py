"""The outbox queries of the send pipeline: lease a batch, mark one message `sending` right before DATA,
record the outcome. A lease is not a send: a worker that dies holding a lease loses nothing, the lease
expires and another worker takes the message. A message in `sending` whose worker died is `unknown`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.outbox_item import OutboxItem
from engine.store import email_hash
from engine.tables import OUTBOX_STATUSES, leads, outbox

LEASE = timedelta(minutes=2)
# Not handed to the SMTP server yet: the only states a worker may act on before DATA.
PENDING = ("queued", "deferred")
# Handed to (or maybe taken by) an SMTP server: these count against a lead's daily cap.
HANDED_OVER = ("sending", "sent", "unknown")


def lease_batch(conn: sa.Connection, now: datetime, limit: int, lease: timedelta = LEASE) -> list[OutboxItem]:
    """Queued or deferred messages that are due and not leased by a live worker, oldest first.

    A lease only spares two workers the same envelope work; it is not what makes a send happen once
    (`mark_sending` is). So it can be short: a worker killed while holding one delays its messages by
    `lease`, no more. The states are written out, not bound, so SQLite can use the partial index
    `ix_outbox_ready` (a queued row always has `next_attempt_at`)."""
    mark = _placeholder(conn)
    skip_locked = " FOR UPDATE SKIP LOCKED" if conn.dialect.name == "postgresql" else ""
    at = _bind(conn, "claimed_at")
    leased = conn.exec_driver_sql(
        f"UPDATE outbox SET claimed_at = {mark} WHERE id IN ("  # noqa: S608
        f"SELECT id FROM outbox WHERE status IN ('queued', 'deferred') AND next_attempt_at <= {mark}"
        f" AND (claimed_at IS NULL OR claimed_at < {mark})"
        f" ORDER BY next_attempt_at, id LIMIT {mark}{skip_locked}) RETURNING id",
        (at(now), at(now), at(now - lease), limit),
    )
    ids = sorted(row[0] for row in leased)
    if not ids:
        return []
    rows = conn.exec_driver_sql(
        "SELECT o.id, o.lead_id, l.email, l.consent_status, l.attributes, l.timezone, o.funnel_id, o.step,"  # noqa: S608
        " o.template, o.stage, o.transactional, o.attempts"
        f" FROM outbox o JOIN leads l ON l.id = o.lead_id WHERE o.id IN ({_marks(mark, len(ids))}) ORDER BY o.id",
        tuple(ids),
    ).all()
    hashes = {r[2]: email_hash(r[2]) for r in rows}
    suppressed: set[str] = set()
    if hashes:
        hits = conn.exec_driver_sql(
            f"SELECT email_hash FROM suppressions WHERE email_hash IN ({_marks(mark, len(hashes))})",  # noqa: S608
            tuple(hashes.values()),
        )
        suppressed = {h for (h,) in hits}
    attributes = _attributes_reader(conn)
    return [
        OutboxItem(
            id=r[0],
            lead_id=r[1],
            email=r[2],
            consent_status=r[3],
            attributes=dict(attributes(r[4]) or {}),
            funnel_id=r[6],
            step=r[7],
            template=r[8],
            stage=r[9],
            transactional=bool(r[10]),
            attempts=r[11],
            suppressed=hashes[r[2]] in suppressed,
            timezone=r[5],
        )
        for r in rows
    ]


def _attributes_reader(conn: sa.Connection) -> Callable[[Any], Any]:
    """The JSON column's own decoding (text on SQLite; PostgreSQL's driver hands back objects)."""
    impl = leads.c.attributes.type.dialect_impl(conn.dialect)
    reader = impl.result_processor(conn.dialect, None)
    return reader if reader is not None else _same


def consent_of(conn: sa.Connection, emails: Mapping[int, str], lock: bool = False) -> dict[int, tuple[str, bool]]:
    """Each lead's consent and suppression as they are at this instant (read again right before DATA),
    for `emails` {lead id: address}. A lead missing from the answer was erased. With `lock`, the leads'
    rows stay locked until the transaction ends (PostgreSQL), so two workers cannot both send a lead's
    last email of the day."""
    ids = sorted(emails)
    if not ids:
        return {}
    mark = _placeholder(conn)
    hashes = {lead_id: email_hash(emails[lead_id]) for lead_id in ids}
    leads_sql = f"SELECT id, consent_status FROM leads WHERE id IN ({_marks(mark, len(ids))})"  # noqa: S608
    hits_sql = f"SELECT email_hash FROM suppressions WHERE email_hash IN ({_marks(mark, len(ids))})"  # noqa: S608
    if lock and conn.dialect.name == "postgresql":
        rows = conn.exec_driver_sql(f"{leads_sql} ORDER BY id FOR UPDATE", tuple(ids)).all()
        suppressed = {h for (h,) in conn.exec_driver_sql(hits_sql, tuple(hashes.values()))}
    else:
        # One round trip: the leads' rows, then the suppressed hashes (id -1).
        hits_as_rows = hits_sql.replace("SELECT email_hash", "SELECT -1, email_hash", 1)
        found = conn.exec_driver_sql(f"{leads_sql} UNION ALL {hits_as_rows}", (*ids, *hashes.values())).all()
        rows = [r for r in found if r[0] != -1]
        suppressed = {h for i, h in found if i == -1}
    return {lead_id: (status, hashes[lead_id] in suppressed) for lead_id, status in rows}


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


def mark_sending(conn: sa.Connection, message_ids: Mapping[int, str], now: datetime) -> set[int]:
    """Queued/deferred -> sending, with each one's Message-ID, all in one statement. Only the returned
    ids may be sent: a message that someone else got to first is not among them. `sent_at` is when
    DATA began."""
    if not message_ids:
        return set()
    mark = _placeholder(conn)
    ids = list(message_ids)
    at = _bind(conn, "sent_at")(now)
    cases = " ".join(f"WHEN {mark} THEN {mark}" for _ in ids)
    result = conn.exec_driver_sql(
        f"UPDATE outbox SET status = 'sending', claimed_at = {mark}, sent_at = {mark}, attempts = attempts + 1,"  # noqa: S608
        f" message_id = CASE id {cases} END"
        f" WHERE id IN ({_marks(mark, len(ids))}) AND status IN ('queued', 'deferred') RETURNING id",
        (at, at, *(v for i in ids for v in (i, message_ids[i])), *ids),
    )
    return {row[0] for row in result}


@dataclass(frozen=True, slots=True)
class Change:
    """One message's new state, applied only while it is still in one of the `expect`ed states."""

    id: int
    values: Mapping[str, Any]
    expect: tuple[str, ...] = PENDING


def apply(conn: sa.Connection, changes: Sequence[Change]) -> int:
    """Many outcomes at once: one executemany per shape of change. Returns how many rows changed."""
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[Change]] = {}
    for change in changes:
        groups.setdefault((tuple(sorted(change.values)), change.expect), []).append(change)
    changed = 0
    mark = _placeholder(conn)
    for (columns, expect), members in groups.items():
        binds = [_bind(conn, c) for c in columns]
        # Column names and states are our own constants, never input.
        assert set(columns) <= set(outbox.c.keys()) and set(expect) <= set(OUTBOX_STATUSES)
        sql = (
            f"UPDATE outbox SET {', '.join(f'{c} = {mark}' for c in columns)}"  # noqa: S608
            f" WHERE id = {mark} AND status IN ({', '.join(repr(s) for s in expect)})"
        )
        params = [(*(b(m.values[c]) for b, c in zip(binds, columns, strict=True)), m.id) for m in members]
        result = conn.exec_driver_sql(sql, params)
        changed += max(int(result.rowcount or 0), 0)
    return changed


def _placeholder(conn: sa.Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _marks(mark: str, count: int) -> str:
    return ", ".join([mark] * count)


_BINDS: dict[tuple[str, str], Callable[[Any], Any]] = {}


def _bind(conn: sa.Connection, column: str) -> Callable[[Any], Any]:
    """The column type's own conversion to the driver's value (aware UTC datetimes, JSON ...), for the
    hot statements that skip SQLAlchemy's compiler: a flush runs several of them per round of replies."""
    key = (conn.dialect.name, column)
    found = _BINDS.get(key)
    if found is None:
        processor = outbox.c[column].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        found = _BINDS[key] = processor if processor is not None else _same
    return found


def _same(value: Any) -> Any:
    return value


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
