"""One lead, all of it: the timeline that answers "why is this lead in this stage?" (invariant 9), the
export of everything held about the lead (GDPR art. 15 and 20), and erasure (art. 17).

Every table that holds a row about a lead has a `lead_id` that cascades on delete; export and erasure
go by that, so a table added later is exported and erased without a change here. Only the suppression
survives erasure: a hash of the address, so it is never mailed again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.store import leads as store
from engine.store import tables

# Within one instant, the cause before its effects: the event, then the move, then the emails.
_ORDER = {"consent": 0, "event": 1, "transition": 2, "goal": 3, "email": 4, "webhook": 5}


@dataclass(frozen=True, slots=True)
class Entry:
    at: datetime
    kind: str  # consent | event | transition | goal | email | webhook
    funnel: str | None
    what: str  # one line for people


@dataclass(frozen=True)
class Place:
    """Where the lead is in one funnel, and why."""

    funnel: str
    status: str
    stage: str
    step: str | None
    since: datetime
    why: str
    exit_reason: str | None


@dataclass(frozen=True)
class Timeline:
    email: str
    lead: Mapping[str, Any]
    places: Sequence[Place]
    entries: Sequence[Entry]
    suppressed: str | None  # the reason, if the address is suppressed


def _properties(props: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(props.items()) if v is not None)


def describe_cause(kind: str, ref: str | None, event: tuple[str, Mapping[str, Any]] | None = None) -> str:
    """A transition's cause for people. `event`: (name, properties) of the event the ref names."""
    happened = None
    if event is not None:
        name, props = event
        happened = f"event {name} ({_properties(props)})" if props else f"event {name}"
    match kind:
        case "event" | "entry":
            return happened or (f"event {ref}" if kind == "event" else f"entry ({ref})")
        case "exit_rule":
            return f"exit rule on {happened or f'event {ref}'}"
        case "goal":
            return f"goal reached: {happened or f'event {ref}'}"
        case "timeout":
            return f"timeout of {ref}"
        case "sequence_end":
            return f"end of stage {ref}'s steps"
        case "step":
            return f"step {ref}"
        case "guard":
            return f"step limit reached at {ref}"
        case "edit":
            return f"funnel edit ({ref})"
        case "manual":
            return f"manual ({ref})" if ref else "manual"
    return f"{kind} ({ref})" if ref else kind


def merge(entries: Iterable[Entry]) -> list[Entry]:
    """All of a lead's entries in time order; within one instant, causes before effects."""
    return sorted(entries, key=lambda e: (e.at, _ORDER.get(e.kind, 9)))


def _rows(conn: sa.Connection, table: sa.Table, lead_id: int) -> list[dict[str, Any]]:
    stmt = sa.select(table).where(table.c.lead_id == lead_id).order_by(*table.primary_key)
    return [dict(r._mapping) for r in conn.execute(stmt)]


def _suppression(conn: sa.Connection, address: str) -> dict[str, Any] | None:
    s = tables.suppressions
    row = conn.execute(sa.select(s.c.reason, s.c.created_at).where(s.c.email_hash == store.email_hash(address))).first()
    return dict(row._mapping) if row is not None else None


def read(conn: sa.Connection, address: str) -> Timeline | None:
    """The lead's story, for an address as an entry took it (`engine.core.addresses`) or as it is stored."""
    lead_id = store.find_lead_id(conn, address)
    if lead_id is None:
        return None
    lead = dict(conn.execute(sa.select(tables.leads).where(tables.leads.c.id == lead_id)).one()._mapping)
    events = _rows(conn, tables.events, lead_id)
    by_event_id = {e["event_id"]: (e["name"], e["properties"]) for e in events}
    transitions = _rows(conn, tables.stage_transitions, lead_id)
    entries = [
        *(_event(e) for e in events),
        *(_transition(t, by_event_id) for t in transitions),
        *(_email(o) for o in _rows(conn, tables.outbox, lead_id)),
        *(_consent(c) for c in _rows(conn, tables.consent_records, lead_id)),
        *(_goal(g) for g in _rows(conn, tables.goals, lead_id)),
        *(_webhook(w) for w in _rows(conn, tables.webhook_calls, lead_id)),
    ]
    last: dict[str, dict[str, Any]] = {}
    for t in transitions:
        last[t["funnel_id"]] = t
    places = []
    for e in _rows(conn, tables.enrollments, lead_id):
        moved = last.get(e["funnel_id"])
        why = "no recorded transition"
        if moved is not None:
            why = describe_cause(moved["cause_kind"], moved["cause_ref"], by_event_id.get(moved["cause_ref"]))
        since = e["exited_at"] if e["status"] == "exited" and e["exited_at"] else e["stage_entered_at"]
        places.append(Place(e["funnel_id"], e["status"], e["stage"], e["step"], since, why, e["exit_reason"]))
    suppressed = _suppression(conn, address)
    return Timeline(lead["email"], lead, places, merge(entries), suppressed["reason"] if suppressed else None)


def _event(e: Mapping[str, Any]) -> Entry:
    props = _properties(e["properties"])
    funnel = e["properties"].get("funnel") if isinstance(e["properties"].get("funnel"), str) else None
    source = f" from {e['source']}" if e["source"] else ""
    return Entry(e["occurred_at"], "event", funnel, f"event {e['name']}" + (f" ({props})" if props else "") + source)


def _transition(t: Mapping[str, Any], events: Mapping[str, tuple[str, Mapping[str, Any]]]) -> Entry:
    before = t["from_stage"] or "(enters)"
    after = t["to_stage"] or f"(exits: {t['exit_reason'] or 'exited'})"
    cause = describe_cause(t["cause_kind"], t["cause_ref"], events.get(t["cause_ref"]))
    return Entry(t["at"], "transition", t["funnel_id"], f"{before} -> {after}, because {cause}")


OUTCOMES = {"sent": "delivered", "sending": "being sent", "queued": "waiting", "deferred": "deferred"}


def _email(o: Mapping[str, Any]) -> Entry:
    outcome = OUTCOMES.get(o["status"], o["status"])
    detail = o["skip_reason"] if o["status"] == "skipped" else o["last_error"]
    at = o["sent_at"] or o["due_at"]
    kind = " (transactional)" if o["transactional"] else ""
    text = f"email {o['step']}: {o['template']}{kind}, {outcome}" + (f": {detail}" if detail else "")
    return Entry(at, "email", o["funnel_id"], text)


def _consent(c: Mapping[str, Any]) -> Entry:
    where = ", ".join(
        f"{label} {c[key]}" for key, label in (("form_id", "form"), ("text_version", "text"), ("ip", "from")) if c[key]
    )
    return Entry(
        c["at"], "consent", None, f"consent {c['action']} via {c['source']}" + (f" ({where})" if where else "")
    )


def _goal(g: Mapping[str, Any]) -> Entry:
    window = "within its window" if g["within_window"] else "after its window"
    return Entry(g["at"], "goal", g["funnel_id"], f"goal {g['goal']} reached, {window}")


def _webhook(w: Mapping[str, Any]) -> Entry:
    return Entry(w["created_at"], "webhook", w["funnel_id"], f"webhook {w['step']} to {w['url']}: {w['status']}")


# --------------------------------------------------------------------------------------------------
# Export and erasure
# --------------------------------------------------------------------------------------------------


def lead_tables() -> list[sa.Table]:
    """Every table with rows about one lead (by `lead_id`), in dependency order."""
    return [t for t in tables.metadata.sorted_tables if "lead_id" in t.c]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def export(conn: sa.Connection, address: str, now: datetime) -> dict[str, Any] | None:
    """Everything held about the lead, as JSON-able data: its row, and its rows in every other table."""
    lead_id = store.find_lead_id(conn, address)
    if lead_id is None:
        return None
    lead = dict(conn.execute(sa.select(tables.leads).where(tables.leads.c.id == lead_id)).one()._mapping)
    rows = {table.name: _rows(conn, table, lead_id) for table in lead_tables()}
    data: dict[str, Any] = {"exported_at": now, "lead": lead, **rows, "suppression": _suppression(conn, address)}
    return {key: _plain(value) for key, value in data.items()}


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
    store.suppress(conn, address, "erased", now=now)
    if lead_id is None:
        return None
    counts = held(conn, lead_id)
    conn.execute(sa.delete(tables.leads).where(tables.leads.c.id == lead_id))
    return counts
