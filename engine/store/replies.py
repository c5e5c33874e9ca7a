"""What replies to a message's reply address do, in the caller's transaction: one row each in
`bounce_reports` (kind `reply` or `auto_reply`, so the lead's timeline shows them beside what else came
back), and for a person's answer to a message the engine sent, one `email_replied` event that the lead's
funnels hear on the next tick.

A reply whose token names no message (forged, or signed with a key no longer held) is kept with its raw
message for an operator, never put on a guessed lead. The same reply handed over twice is one row and one
event; the row also remembers whether the reply was forwarded, so a second copy is forwarded only if the
first was not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.core.bounce_outcome import NOT_FAILURE
from engine.core.own_events import EMAIL_REPLIED, engine_id
from engine.core.replies import Reply
from engine.store import leads as store
from engine.store import tables

FORWARDED = ", forwarded"  # the suffix of a row's action once its reply reached the sender's inbox


@dataclass(frozen=True)
class Recorded:
    action: str  # replied, auto-reply recorded, kept for an operator, duplicate
    outbox_id: int | None
    lead_id: int | None
    forwarded: bool  # an earlier copy was forwarded already


def record_reply(
    conn: sa.Connection, reply: Reply, outbox_id: int | None, raw: bytes, source: str, now: datetime
) -> Recorded:
    """`outbox_id` is what the reply's token names once its signature is checked (None: no message)."""
    o = tables.outbox
    message = None
    if outbox_id is not None:
        message = conn.execute(
            sa.select(o.c.id, o.c.lead_id, o.c.funnel_id, o.c.step).where(o.c.id == outbox_id)
        ).first()
    b = tables.bounce_reports
    row: dict[str, Any] = {
        "report_key": reply.key,
        "recipient_key": "",
        "source": source[:16],
        "kind": "auto_reply" if reply.automatic else "reply",
        "failure_class": NOT_FAILURE,
        "diagnostic": reply.automatic,
        "outbox_id": message.id if message is not None else None,
        "lead_id": message.lead_id if message is not None else None,
        "matched_by": "token" if message is not None else None,
        "received_at": now,
        "raw": raw if message is None else None,  # for the operator who decides what it was
    }
    if not store.insert_ignoring(conn, b, ("report_key", "recipient_key"), row):
        earlier = conn.execute(
            sa.select(b.c.action).where(b.c.report_key == reply.key, b.c.recipient_key == "")
        ).scalar()
        return Recorded("duplicate", row["outbox_id"], row["lead_id"], str(earlier or "").endswith(FORWARDED))
    if message is None:
        action = "kept for an operator"
    elif reply.automatic:
        action = "auto-reply recorded"
    else:
        action = "replied"
        properties = {"funnel": message.funnel_id, "step": message.step, "message": message.id}
        event = store.NewEvent(
            engine_id("reply", message.id, reply.key[:32]), message.lead_id, EMAIL_REPLIED, now, properties, "reply"
        )
        store.record_events(conn, [event], now=now)
    _set_action(conn, reply.key, action)
    return Recorded(action, row["outbox_id"], row["lead_id"], False)


def mark_forwarded(conn: sa.Connection, key: str) -> None:
    """The reply reached the sender's inbox: a later copy of it is not forwarded again."""
    b = tables.bounce_reports
    action = conn.execute(sa.select(b.c.action).where(b.c.report_key == key, b.c.recipient_key == "")).scalar()
    if action is not None and not str(action).endswith(FORWARDED):
        _set_action(conn, key, str(action) + FORWARDED)


def _set_action(conn: sa.Connection, key: str, action: str) -> None:
    b = tables.bounce_reports
    conn.execute(sa.update(b).where(b.c.report_key == key, b.c.recipient_key == "").values(action=action))


def keep_for_operator(conn: sa.Connection, key: str, raw: bytes, why: str) -> None:
    """The relay refused the forward for good: the reply is kept whole, for an operator to pass on."""
    b = tables.bounce_reports
    conn.execute(
        sa.update(b)
        .where(b.c.report_key == key, b.c.recipient_key == "")
        .values(raw=raw, action="kept, forward refused", diagnostic=why[:500])
    )
