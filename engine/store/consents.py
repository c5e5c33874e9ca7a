"""Consent records (what a lead agreed to, where and when: the proof a regulator or a mailbox provider
may ask for) and the double opt-in confirmation email, queued in the outbox like any other email."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.core import signup
from engine.core.own_events import FUNNEL_UNSUBSCRIBED, UNSUBSCRIBED, engine_id
from engine.store import leads as store
from engine.store import tables

CONFIRM_STAGE = "opt-in"


@dataclass(frozen=True, slots=True)
class ConsentAct:
    action: str  # given | requested | confirmed | withdrawn | lifted (a bounce)
    source: str
    form_id: str | None = None
    text_version: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    fields: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    at: datetime
    text_version: str | None
    fields: dict[str, Any]


def record(
    conn: sa.Connection,
    lead_id: int,
    act: ConsentAct,
    at: datetime,
    status: tuple[str | None, str | None] = (None, None),
) -> int:
    """Write one consent act; `status` is the lead's consent status (before, after) the act."""
    c = tables.consent_records
    values = {
        "lead_id": lead_id,
        "action": act.action,
        "source": act.source[:200],
        "form_id": act.form_id,
        "text_version": act.text_version,
        "ip": act.ip[:45] if act.ip else None,
        "user_agent": act.user_agent[:300] if act.user_agent else None,
        "fields": dict(act.fields or {}),
        "status_before": status[0],
        "status_after": status[1],
        "at": at,
    }
    return int(conn.execute(sa.insert(c).values(values).returning(c.c.id)).scalar_one())


def latest_request(conn: sa.Connection, lead_id: int, form_id: str) -> Request | None:
    c = tables.consent_records
    row = conn.execute(
        sa.select(c.c.id, c.c.at, c.c.text_version, c.c.fields)
        .where(c.c.lead_id == lead_id, c.c.form_id == form_id, c.c.action == "requested")
        .order_by(c.c.id.desc())
        .limit(1)
    ).first()
    return Request(row.id, row.at, row.text_version, dict(row.fields)) if row is not None else None


def get_request(conn: sa.Connection, lead_id: int, form_id: str, request_id: int) -> Request | None:
    c = tables.consent_records
    row = conn.execute(
        sa.select(c.c.id, c.c.at, c.c.text_version, c.c.fields).where(
            c.c.id == request_id, c.c.lead_id == lead_id, c.c.form_id == form_id, c.c.action == "requested"
        )
    ).first()
    return Request(row.id, row.at, row.text_version, dict(row.fields)) if row is not None else None


def confirmations_to(conn: sa.Connection, lead_id: int, since: datetime) -> int:
    """Confirmation emails asked for this lead since then, from every form."""
    c = tables.consent_records
    stmt = sa.select(sa.func.count()).where(c.c.lead_id == lead_id, c.c.action == "requested", c.c.at >= since)
    return int(conn.execute(stmt).scalar_one())


def confirmations_from(conn: sa.Connection, ip: str | None, since: datetime) -> int:
    """Confirmation emails that posts from this client IP asked for since then (an index on (ip, at)
    keeps it cheap); 0 for an unknown client."""
    if ip is None:
        return 0
    c = tables.consent_records
    stmt = sa.select(sa.func.count()).where(c.c.ip == ip[:45], c.c.at >= since, c.c.action == "requested")
    return int(conn.execute(stmt).scalar_one())


def is_confirmed(conn: sa.Connection, lead_id: int, request_id: int) -> bool:
    """Whether this request was confirmed already (the confirmation names its request in `fields`)."""
    c = tables.consent_records
    rows = conn.execute(sa.select(c.c.fields).where(c.c.lead_id == lead_id, c.c.action == "confirmed")).scalars()
    return any(fields.get("request") == request_id for fields in rows)


def history(conn: sa.Connection, lead_id: int) -> list[dict[str, Any]]:
    """Every consent act of a lead, oldest first."""
    c = tables.consent_records
    rows = conn.execute(sa.select(c).where(c.c.lead_id == lead_id).order_by(c.c.id))
    return [dict(row._mapping) for row in rows]


def queue_confirmation(
    conn: sa.Connection, lead_id: int, form_id: str, request_id: int, template: str, at: datetime
) -> None:
    """The confirmation email of one request, in the outbox as funnel `form:<id>`, step `confirm-<request>`:
    one per request (the outbox's unique key), transactional (it may go to a `pending` lead, never to a
    suppressed one), composed with its signed link by `engine.mail.composer`."""
    funnel_id, step = signup.confirmation_key(form_id, request_id)
    conn.execute(
        sa.insert(tables.outbox).values(
            lead_id=lead_id,
            funnel_id=funnel_id,
            step=step,
            template=template,
            stage=CONFIRM_STAGE,
            transactional=True,
            status="queued",
            due_at=at,
            attempts=0,
            next_attempt_at=at,
            created_at=at,
        )
    )


def lead_consent(conn: sa.Connection, address: str) -> tuple[int | None, str | None]:
    """(lead id, consent status), or (None, None) for an address with no lead."""
    lead_id = store.find_lead_id(conn, address)
    if lead_id is None:
        return None, None
    lead = store.get_lead(conn, lead_id, for_update=True)
    return lead_id, lead.consent if lead is not None else None


def change_status(
    conn: sa.Connection, lead_id: int, address: str, current: str, new: str, act: ConsentAct, at: datetime
) -> bool:
    """Set the lead's consent status and write the act with the change; nothing when it is already so.
    The caller has decided the change is allowed (`engine.core.signup`). True if the status changed."""
    if new == current:
        return False
    store.upsert_lead(conn, address, consent=new, consent_source=act.source, now=at)
    record(conn, lead_id, act, at, (current, new))
    return True


def opted_out_from(conn: sa.Connection, lead_id: int, opt_out: str = "unsubscribed") -> str | None:
    """The status the lead had when it last took `opt_out` (unsubscribed, complained), as its consent
    records say; None when no record says (an opt-out that came in with an import, or from before
    records kept statuses)."""
    c = tables.consent_records
    found = conn.execute(
        sa.select(c.c.status_before)
        .where(
            c.c.lead_id == lead_id,
            c.c.status_after == opt_out,
            c.c.status_before.is_not(None),
            c.c.status_before != opt_out,
        )
        .order_by(c.c.id.desc())
        .limit(1)
    ).scalar()
    return str(found) if found is not None else None


def unsubscribe(conn: sa.Connection, address: str, act: ConsentAct, at: datetime) -> None:
    """No more marketing email to this address, from any funnel, effective at once (the mailer reads
    consent again right before DATA). The lead's funnels hear of it as an `unsubscribed` event (a funnel's
    exit rule records why the lead left). An address with no lead any more (erased) is suppressed."""
    lead_id, current = lead_consent(conn, address)
    if lead_id is None:
        store.suppress(conn, address, "unsubscribed", now=at)
        return
    if current is None or current == "unsubscribed":
        return  # a second click changes nothing
    store.upsert_lead(conn, address, consent="unsubscribed", consent_source=act.source, now=at)
    record_id = record(conn, lead_id, act, at, (current, "unsubscribed"))
    event = store.NewEvent(
        engine_id("unsubscribe", record_id), lead_id, UNSUBSCRIBED, at, {"via": act.source}, "unsubscribe"
    )
    store.record_events(conn, [event], now=at)


def leave_funnel(conn: sa.Connection, lead_id: int, funnel_id: str, act: ConsentAct, at: datetime) -> None:
    """The lead leaves one funnel: its waiting emails are skipped now, and the funnel records the exit
    (reason `unsubscribed`) when the worker handles the `funnel_unsubscribed` event."""
    record_id = record(conn, lead_id, act, at)
    store.cancel_marketing(conn, lead_id, funnel_id, "unsubscribed")
    event = store.NewEvent(
        engine_id("funnel-unsubscribe", record_id),
        lead_id,
        FUNNEL_UNSUBSCRIBED,
        at,
        {"funnel": funnel_id},
        "preferences",
    )
    store.record_events(conn, [event], now=at)


def may_resubscribe(conn: sa.Connection, address: str) -> bool:
    """Whether the preference page may start marketing email again for this address: it unsubscribed,
    or complained (reported our email as spam), after being subscribed (not while its signup was still
    unconfirmed), and is suppressed for nothing else. The page's signed link proves the address, and
    pressing its button is the lead's own act: the one thing that lifts a complaint."""
    lead_id, current = lead_consent(conn, address)
    if lead_id is None or current not in signup.RESTARTABLE:
        return False
    if suppression_reason(conn, address) not in (None, *(("complained",) if current == "complained" else ())):
        return False
    return signup.may_restart(opted_out_from(conn, lead_id, current))


def resubscribe(conn: sa.Connection, address: str, act: ConsentAct, at: datetime) -> bool:
    """Marketing email again, asked for from the preference page (its signed link proves the address).
    Not for a bounced address (its confirmed signup or an operator lifts that), one suppressed for
    another reason, nor a lead that never confirmed its signup (only its confirmation subscribes it).
    A complaint lifted this way takes its suppression with it."""
    lead_id, current = lead_consent(conn, address)
    if lead_id is None or current is None or not may_resubscribe(conn, address):
        return False
    if current == "complained":
        s = tables.suppressions
        conn.execute(sa.delete(s).where(s.c.email_hash == store.email_hash(address), s.c.reason == "complained"))
    return change_status(conn, lead_id, address, current, "subscribed", act, at)


# Built once: every soft bounce asks it.
_LAST_LIFT = sa.select(sa.func.max(tables.consent_records.c.at)).where(
    tables.consent_records.c.lead_id == sa.bindparam("lead_id"), tables.consent_records.c.action == "lifted"
)


def last_lift(conn: sa.Connection, lead_id: int) -> datetime | None:
    """When the lead's bounce was last lifted (by an operator or its confirmed signup), if ever."""
    return conn.execute(_LAST_LIFT, {"lead_id": lead_id}).scalar()


def suppression_reason(conn: sa.Connection, address: str) -> str | None:
    s = tables.suppressions
    found = conn.execute(sa.select(s.c.reason).where(s.c.email_hash == store.email_hash(address))).scalar()
    return str(found) if found is not None else None


@dataclass(frozen=True, slots=True)
class Lift:
    lead_id: int
    before: str
    after: str


def lift_refusal(conn: sa.Connection, address: str) -> str | None:
    """Why a bounce may not be lifted for this address (`engine.core.signup.lift_refusal`), or None."""
    _, current = lead_consent(conn, address)
    return signup.lift_refusal(current, suppression_reason(conn, address))


def lift_bounce(conn: sa.Connection, address: str, act: ConsentAct, at: datetime) -> Lift | None:
    """The address may be mailed again: its bounce suppression goes, a `bounced` status returns to what
    it was before the bounce, and a `lifted` consent record says who did it, why and when. Soft bounces
    count afresh from here. None (nothing changes) when `lift_refusal` says no."""
    lead_id, current = lead_consent(conn, address)
    if lead_id is None or current is None or lift_refusal(conn, address) is not None:
        return None
    s = tables.suppressions
    conn.execute(sa.delete(s).where(s.c.email_hash == store.email_hash(address), s.c.reason == signup.BOUNCED))
    after = signup.status_after_lift(current, _status_before_bounce(conn, lead_id))
    if after != current:
        store.upsert_lead(conn, address, consent=after, consent_source=act.source, now=at)
    record(conn, lead_id, act, at, (current, after))
    return Lift(lead_id, current, after)


def _status_before_bounce(conn: sa.Connection, lead_id: int) -> str | None:
    c = tables.consent_records
    found = conn.execute(
        sa.select(c.c.status_before)
        .where(c.c.lead_id == lead_id, c.c.status_after == signup.BOUNCED, c.c.status_before != signup.BOUNCED)
        .order_by(c.c.id.desc())
        .limit(1)
    ).scalar()
    return str(found) if found is not None else None
