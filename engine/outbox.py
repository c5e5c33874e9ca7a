"""The outbox queries of the send pipeline: lease a batch, mark one message `sending` right before DATA,
record the outcome. A lease is not a send: a worker that dies holding a lease loses nothing, the lease
expires and another worker takes the message. A message in `sending` whose worker died is `unknown`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.store import email_hash
from engine.tables import leads, outbox, suppressions

LEASE = timedelta(minutes=2)
# Not handed to the SMTP server yet: the only states a worker may act on before DATA.
PENDING = ("queued", "deferred")


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
        )
        for r in rows
    ]


def consent_now(conn: sa.Connection, lead_id: int) -> tuple[str | None, bool]:
    """The lead's consent and suppression as they are at this instant (checked again right before DATA)."""
    row = conn.execute(sa.select(leads.c.email, leads.c.consent_status).where(leads.c.id == lead_id)).first()
    if row is None:
        return None, True
    hit = conn.execute(
        sa.select(suppressions.c.id).where(suppressions.c.email_hash == email_hash(row.email))
    ).first()
    return row.consent_status, hit is not None


def mark_sending(conn: sa.Connection, message_id: int, now: datetime, smtp_message_id: str) -> bool:
    """Queued/deferred -> sending. False if someone else got there first (then this worker must not send)."""
    result = conn.execute(
        sa.update(outbox)
        .where(outbox.c.id == message_id, outbox.c.status.in_(PENDING))
        .values(status="sending", claimed_at=now, attempts=outbox.c.attempts + 1, message_id=smtp_message_id)
    )
    return result.rowcount == 1


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
