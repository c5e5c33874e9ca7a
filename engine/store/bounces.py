"""The one writer of what reports say: each outcome matched to its message and acted on, in the
caller's transaction (invariant 15).

A report is matched to the message it is about by the original Message-ID it returns, else by the
recipient's most recent message; what matches nothing, or cannot be classed, is kept with its raw
report for an operator, never guessed. Then, by class (docs/bounces.md):

- address gone: the message `bounced`, the address suppressed at once;
- mailbox trouble: a soft bounce; the address is suppressed once `soft_limit` messages to it have
  soft-bounced within `soft_window_days` (reports of one message count once), with no open, click or
  reply of the lead (and no lift of a bounce) since the first of them;
- the sender's fault: the message `failed`, the lead kept; counted per receiving domain, and the
  count passing `sender_fault_alarm` within the window raises an alarm (`engine.store.domain_alarms`);
- complaint: an opt-out at once (consent `complained`, suppressed), and a `complained` event that the
  lead's funnels hear on the next tick, so their exit rules fire;
- not a failure: recorded, nothing changes.

A report received twice is one row: its second copy changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.core.bounce_outcome import ADDRESS_GONE, COMPLAINT, MAILBOX_TROUBLE, SENDER_FAULT, Outcome
from engine.core.own_events import COMPLAINED, engine_id
from engine.core.return_paths import read_token
from engine.settings import BounceSettings
from engine.store import consents, domain_alarms, tables
from engine.store import leads as store

log = logging.getLogger("engine.bounces")
# What shows the address reads its mail: soft bounces count anew after it.
ENGAGED = ("email_opened", "email_clicked", "email_replied")
# Statuses a report may overturn: the relay took the message, or nobody knows whether it did.
HANDED_OVER = ("sent", "unknown", "sending")


@dataclass(frozen=True)
class Applied:
    outcome: Outcome
    outbox_id: int | None
    lead_id: int | None
    action: str  # suppressed, soft bounce, complained, failed, recorded, kept for an operator, duplicate


def record_outcomes(
    conn: sa.Connection,
    outcomes: Sequence[Outcome],
    now: datetime,
    settings: BounceSettings,
    keys: Sequence[str] = (),
) -> list[Applied]:
    """`keys` are the engine's signing keys: a return path's VERP token is read with any of them."""
    return [_record(conn, outcome, now, settings, keys) for outcome in outcomes]


def _record(
    conn: sa.Connection, outcome: Outcome, now: datetime, settings: BounceSettings, keys: Sequence[str]
) -> Applied:
    recipient = outcome.recipient.lower() if outcome.recipient else None
    digest = store.email_hash(recipient) if recipient else None
    message, matched_by = _match(
        conn, read_token(outcome.token, keys) if outcome.token else None, outcome.message_id, recipient
    )
    lead_id = message.lead_id if message is not None else (store.find_lead_id(conn, recipient) if recipient else None)
    if message is not None and recipient is None:
        recipient = _address_of(conn, message.lead_id)
        digest = store.email_hash(recipient) if recipient else None
    row: dict[str, Any] = {
        "report_key": outcome.report_key[:64],
        "recipient_key": digest or "",
        "recipient_hash": digest,
        "recipient_domain": recipient.rpartition("@")[2][:255] if recipient else None,
        "source": outcome.source[:16],
        "kind": outcome.kind[:16],
        "failure_class": outcome.failure_class,
        "status": (outcome.status or "")[:16] or None,
        "diagnostic": outcome.diagnostic,
        "outbox_id": message.id if message is not None else None,
        "lead_id": lead_id,
        "matched_by": matched_by,
        "received_at": now,
    }
    if message is None or outcome.failure_class is None:
        row["raw"] = outcome.raw  # for the operator who decides what it was
    if not store.insert_ignoring(conn, tables.bounce_reports, ("report_key", "recipient_key"), row):
        return Applied(outcome, message.id if message else None, lead_id, "duplicate")
    action = _act(conn, outcome, message, recipient, lead_id, now, settings)
    conn.execute(_SET_ACTION, {"key": row["report_key"], "rkey": row["recipient_key"], "action": action})
    return Applied(outcome, message.id if message else None, lead_id, action)


# The statements every report runs, built once (building one costs about as much as running it).
_b, _o = tables.bounce_reports, tables.outbox
_SET_ACTION = (
    sa.update(_b)
    .where(_b.c.report_key == sa.bindparam("key"), _b.c.recipient_key == sa.bindparam("rkey"))
    .values(action=sa.bindparam("action"))
)
_BY_ID = sa.select(_o.c.id, _o.c.lead_id, _o.c.status).where(_o.c.id == sa.bindparam("id"))
_BY_MESSAGE_ID = sa.select(_o.c.id, _o.c.lead_id, _o.c.status).where(_o.c.message_id == sa.bindparam("mid")).limit(1)
_FINISH = (
    sa.update(_o)
    .where(_o.c.id == sa.bindparam("outbox_id"), _o.c.status.in_(HANDED_OVER))
    .values(status=sa.bindparam("new_status"), last_error=sa.bindparam("reason"))
)


@dataclass(frozen=True)
class _Message:
    id: int
    lead_id: int
    status: str


def _match(
    conn: sa.Connection, outbox_id: int | None, message_id: str | None, recipient: str | None
) -> tuple[_Message | None, str | None]:
    """By the return path's signed token, else the returned Message-ID, else the recipient's latest message."""
    o = tables.outbox
    columns = (o.c.id, o.c.lead_id, o.c.status)
    if outbox_id is not None:
        found = conn.execute(_BY_ID, {"id": outbox_id}).first()
        if found is not None:
            return _Message(*found), "token"
    if message_id:
        found = conn.execute(_BY_MESSAGE_ID, {"mid": message_id.strip()}).first()
        if found is not None:
            return _Message(*found), "message-id"
    if recipient:
        lead_id = store.find_lead_id(conn, recipient)
        if lead_id is not None:
            found = conn.execute(
                sa.select(*columns)
                .where(o.c.lead_id == lead_id, o.c.sent_at.is_not(None))
                .order_by(o.c.sent_at.desc(), o.c.id.desc())
                .limit(1)
            ).first()
            if found is not None:
                return _Message(*found), "recipient"
    return None, None


def _address_of(conn: sa.Connection, lead_id: int) -> str | None:
    found = conn.execute(sa.select(tables.leads.c.email).where(tables.leads.c.id == lead_id)).scalar()
    return str(found) if found is not None else None


def _act(
    conn: sa.Connection,
    outcome: Outcome,
    message: _Message | None,
    recipient: str | None,
    lead_id: int | None,
    now: datetime,
    settings: BounceSettings,
) -> str:
    klass = outcome.failure_class
    if message is None or klass is None:
        return "kept for an operator"
    reason = " ".join(x for x in (outcome.status, outcome.diagnostic) if x)[:500] or klass
    if klass == ADDRESS_GONE:
        _finish(conn, message, "bounced", f"{outcome.source} report: {reason}")
        if recipient:
            store.suppress(conn, recipient, "bounced", now=now)
        return "suppressed"
    if klass == MAILBOX_TROUBLE:
        if recipient and _soft_bounces(conn, recipient, lead_id, now, settings) >= settings.soft_limit:
            store.suppress(conn, recipient, "bounced", now=now)
            return "suppressed after soft bounces"
        return "soft bounce"
    if klass == SENDER_FAULT:
        _finish(conn, message, "failed", f"{outcome.source} report, the sender's fault: {reason}")
        if recipient:
            domain_alarms.count_report(conn, recipient.rpartition("@")[2], now, settings)
        return "failed, lead kept"
    if klass == COMPLAINT:
        _complaint(conn, outcome, recipient, lead_id, now)
        return "complained"
    return "recorded"


def _finish(conn: sa.Connection, message: _Message, status: str, reason: str) -> None:
    conn.execute(_FINISH, {"outbox_id": message.id, "new_status": status, "reason": reason})


_ENGAGED_SINCE = sa.select(sa.func.max(tables.events.c.occurred_at)).where(
    tables.events.c.lead_id == sa.bindparam("lead_id"), tables.events.c.name.in_(ENGAGED)
)
# Messages, not reports: a relay or a provider may report one message delayed again at each retry
# (SendGrid posts a deferral per attempt), and those retries say one thing once.
_SOFT_COUNT = (
    sa.select(sa.func.count(sa.distinct(sa.func.coalesce(_b.c.outbox_id, -_b.c.id))))
    .select_from(_b)
    .where(
        _b.c.recipient_hash == sa.bindparam("digest"),
        _b.c.failure_class == MAILBOX_TROUBLE,
        _b.c.received_at >= sa.bindparam("since", type_=_b.c.received_at.type),
    )
)


def _soft_bounces(
    conn: sa.Connection, recipient: str, lead_id: int | None, now: datetime, settings: BounceSettings
) -> int:
    since = now - timedelta(days=settings.soft_window_days)
    if lead_id is not None:
        engaged = conn.execute(_ENGAGED_SINCE, {"lead_id": lead_id}).scalar()
        if engaged is not None and engaged > since:
            since = engaged
        lifted = consents.last_lift(conn, lead_id)  # a lifted bounce starts the count afresh
        if lifted is not None and lifted >= since:
            since = lifted + timedelta(microseconds=1)
    counted = conn.execute(_SOFT_COUNT, {"digest": store.email_hash(recipient), "since": since}).scalar()
    return int(counted or 0)


def _complaint(
    conn: sa.Connection, outcome: Outcome, recipient: str | None, lead_id: int | None, now: datetime
) -> None:
    if recipient is None:
        return
    store.suppress(conn, recipient, "complained", now=now)
    if lead_id is None:
        return
    current = conn.execute(sa.select(tables.leads.c.consent_status).where(tables.leads.c.id == lead_id)).scalar()
    act = consents.ConsentAct("withdrawn", f"complaint ({outcome.source})")
    if current != "complained":
        consents.change_status(conn, lead_id, recipient, str(current), "complained", act, now)
    event = store.NewEvent(
        engine_id("complaint", outcome.report_key[:40]), lead_id, COMPLAINED, now, {"via": outcome.source}, "complaint"
    )
    store.record_events(conn, [event], now=now)


def _kept() -> sa.ColumnElement[bool]:
    """What is kept for an operator: a report that matched no message, or that could not be classed."""
    b = tables.bounce_reports
    return sa.or_(b.c.outbox_id.is_(None), b.c.failure_class.is_(None))


def unknown(conn: sa.Connection, limit: int = 100) -> list[sa.Row[tuple[object, ...]]]:
    """Reports that matched no message or could not be classed, newest first."""
    b = tables.bounce_reports
    return list(
        conn.execute(
            sa.select(b.c.id, b.c.received_at, b.c.source, b.c.kind, b.c.failure_class, b.c.status, b.c.diagnostic)
            .where(_kept())
            .order_by(b.c.received_at.desc(), b.c.id.desc())
            .limit(limit)
        )
    )


# --------------------------------------------------------------------------------------------------
# Kept reports as the dashboard shows them (`/ops/bounces`): read only, nothing here changes a report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeptReport:
    """A kept report as the dashboard lists it. The recipient is its domain only (the report row keeps
    no address in clear); `lead_id` and `lead_email` are the lead the recipient is, when the engine knows
    it. Every text here but `lead_email` came in the report: untrusted."""

    id: int
    received_at: datetime
    source: str
    kind: str
    failure_class: str | None
    status: str | None
    recipient_domain: str | None
    diagnostic: str | None
    outbox_id: int | None
    lead_id: int | None
    lead_email: str | None
    raw_size: int

    @property
    def why(self) -> str:
        """Why it was kept: 'unmatched', 'unclassed', or both."""
        return ", ".join(
            w for w, yes in (("unmatched", self.outbox_id is None), ("unclassed", self.failure_class is None)) if yes
        )


@dataclass(frozen=True, slots=True)
class KeptDetail:
    report: KeptReport
    report_key: str
    matched_by: str | None
    action: str | None
    raw_head: bytes  # the raw message's first bytes, up to the cap asked for; all of it stays in the database


def _kept_select() -> sa.Select[Any]:
    b, leads = tables.bounce_reports, tables.leads
    return (
        sa.select(
            b.c.id,
            b.c.received_at,
            b.c.source,
            b.c.kind,
            b.c.failure_class,
            b.c.status,
            b.c.recipient_domain,
            b.c.diagnostic,
            b.c.outbox_id,
            b.c.lead_id,
            leads.c.email,
            sa.func.coalesce(sa.func.length(b.c.raw), 0),
        )
        .select_from(b.outerjoin(leads, leads.c.id == b.c.lead_id))
        .where(_kept())
    )


def kept_count(conn: sa.Connection) -> int:
    """How many reports are kept for an operator, all of them."""
    b = tables.bounce_reports
    return int(conn.execute(sa.select(sa.func.count()).select_from(b).where(_kept())).scalar() or 0)


def kept(conn: sa.Connection, limit: int = 50, offset: int = 0) -> list[KeptReport]:
    """Kept reports, newest first: `limit` of them after the first `offset`."""
    b = tables.bounce_reports
    stmt = _kept_select().order_by(b.c.received_at.desc(), b.c.id.desc()).limit(limit).offset(offset)
    return [KeptReport(*row) for row in conn.execute(stmt)]


def kept_report(conn: sa.Connection, report_id: int, raw_cap: int) -> KeptDetail | None:
    """One kept report with its raw message's first `raw_cap` bytes (read so in the database: a report
    of megabytes does not cross to the app for a page that shows a part of it). None when there is no
    such report, or it is not kept (it matched a message and was classed: it holds no raw message)."""
    b = tables.bounce_reports
    head = sa.func.substr(b.c.raw, 1, raw_cap)
    found = conn.execute(
        _kept_select().add_columns(b.c.report_key, b.c.matched_by, b.c.action, head).where(b.c.id == report_id)
    ).first()
    if found is None:
        return None
    *listed, report_key, matched_by, action, raw_head = found
    return KeptDetail(KeptReport(*listed), str(report_key), matched_by, action, bytes(raw_head or b""))
