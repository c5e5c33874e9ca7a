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

from engine.store import email_hash
from engine.tables import OUTBOX_STATUSES, leads, outbox, suppressions

LEASE = timedelta(minutes=2)
# Not handed to the SMTP server yet: the only states a worker may act on before DATA.
PENDING = ("queued", "deferred")
# Handed to (or maybe taken by) an SMTP server: these count against a lead's daily cap.
HANDED_OVER = ("sending", "sent", "unknown")


@dataclass(frozen=True)
class OutboxItem:
    id: int
    lead_id: int
    email: str
    consent_status: str
    attributes: dict[str, Any]
    funnel_id: str
    step: str
    template: str
    stage: str
    transactional: bool
    attempts: int
    suppressed: bool
    timezone: str | None = None

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2].lower()


def lease_batch(conn: sa.Connection, now: datetime, limit: int, lease: timedelta = LEASE) -> list[OutboxItem]:
    """Queued or deferred messages that are due and not leased by a live worker, oldest first.

    A lease only spares two workers the same envelope work; it is not what makes a send happen once
    (`mark_sending` is). So it can be short: a worker killed while holding one delays its messages by
    `lease`, no more."""
    ready = sa.and_(
        outbox.c.status.in_(PENDING),
        sa.or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now),
        sa.or_(outbox.c.claimed_at.is_(None), outbox.c.claimed_at < now - lease),
    )
    pick = sa.select(outbox.c.id).where(ready).order_by(outbox.c.next_attempt_at, outbox.c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    ids = [r[0] for r in conn.execute(pick)]
    if not ids:
        return []
    conn.execute(sa.update(outbox).where(outbox.c.id.in_(ids)).values(claimed_at=now))
    rows = conn.execute(
        sa.select(
            outbox.c.id,
            outbox.c.lead_id,
            leads.c.email,
            leads.c.consent_status,
            leads.c.attributes,
            leads.c.timezone,
            outbox.c.funnel_id,
            outbox.c.step,
            outbox.c.template,
            outbox.c.stage,
            outbox.c.transactional,
            outbox.c.attempts,
        )
        .join(leads, leads.c.id == outbox.c.lead_id)
        .where(outbox.c.id.in_(ids))
        .order_by(outbox.c.id)
    ).all()
    hashes = {email_hash(r.email) for r in rows}
    hits = conn.execute(sa.select(suppressions.c.email_hash).where(suppressions.c.email_hash.in_(hashes)))
    suppressed = {h for (h,) in hits}
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
            transactional=r.transactional,
            attempts=r.attempts,
            suppressed=email_hash(r.email) in suppressed,
            timezone=r.timezone,
        )
        for r in rows
    ]


def consent_of(conn: sa.Connection, emails: Mapping[int, str], lock: bool = False) -> dict[int, tuple[str, bool]]:
    """Each lead's consent and suppression as they are at this instant (read again right before DATA),
    for `emails` {lead id: address}. A lead missing from the answer was erased. With `lock`, the leads'
    rows stay locked until the transaction ends (PostgreSQL), so two workers cannot both send a lead's
    last email of the day."""
    ids = sorted(emails)
    if not ids:
        return {}
    mark = _placeholder(conn)
    lock_clause = " ORDER BY id FOR UPDATE" if lock and conn.dialect.name == "postgresql" else ""
    rows = conn.exec_driver_sql(
        f"SELECT id, consent_status FROM leads WHERE id IN ({_marks(mark, len(ids))}){lock_clause}", tuple(ids)  # noqa: S608
    ).all()
    hashes = {lead_id: email_hash(emails[lead_id]) for lead_id, _ in rows}
    suppressed: set[str] = set()
    if hashes:
        found = conn.exec_driver_sql(
            f"SELECT email_hash FROM suppressions WHERE email_hash IN ({_marks(mark, len(hashes))})",  # noqa: S608
            tuple(hashes.values()),
        )
        suppressed = {h for (h,) in found}
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


def mark_sending(conn: sa.Connection, ids: Sequence[int], now: datetime) -> set[int]:
    """Queued/deferred -> sending, all in one statement. Only the returned ids may be sent: a message
    that someone else got to first is not among them. `sent_at` is when DATA began."""
    if not ids:
        return set()
    mark = _placeholder(conn)
    at = _bind(conn, "sent_at")(now)
    result = conn.exec_driver_sql(
        f"UPDATE outbox SET status = 'sending', claimed_at = {mark}, sent_at = {mark}, attempts = attempts + 1"  # noqa: S608
        f" WHERE id IN ({_marks(mark, len(ids))}) AND status IN ('queued', 'deferred') RETURNING id",
        (at, at, *ids),
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


def finish(
    conn: sa.Connection,
    message_id: int,
    status: str,
    now: datetime,
    *,
    expect: tuple[str, ...] = PENDING,
    **fields: Any,
) -> bool:
    """Record an outcome, only if the message is still in one of the `expect`ed states. A worker whose
    lease ran out may learn its outcome after another worker sent the message: its stale verdict
    must not turn `sent` back into something that is retried or reported wrongly."""
    values: dict[str, Any] = {"status": status, **fields}
    if status == "sent":
        values["sent_at"] = now
    result = conn.execute(
        sa.update(outbox).where(outbox.c.id == message_id, outbox.c.status.in_(expect)).values(**values)
    )
    return result.rowcount == 1


def defer(
    conn: sa.Connection,
    message_id: int,
    until: datetime,
    error: str,
    count_attempt: bool,
    *,
    expect: tuple[str, ...] = PENDING,
) -> bool:
    values: dict[str, Any] = {
        "status": "deferred",
        "next_attempt_at": until,
        "claimed_at": None,
        "last_error": error[:2000],
    }
    if count_attempt:
        values["attempts"] = outbox.c.attempts + 1
    result = conn.execute(
        sa.update(outbox).where(outbox.c.id == message_id, outbox.c.status.in_(expect)).values(**values)
    )
    return result.rowcount == 1


def sweep_stale_sending(conn: sa.Connection, older_than: datetime) -> int:
    """Messages left in `sending` by a worker that died: the server may or may not have them. They become
    `unknown` for an operator to decide; never sent again automatically (at most once)."""
    result = conn.execute(
        sa.update(outbox)
        .where(outbox.c.status == "sending", outbox.c.claimed_at < older_than)
        .values(status="unknown", last_error="worker stopped between DATA and the server's reply")
    )
    return int(result.rowcount or 0)
