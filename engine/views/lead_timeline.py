"""One lead, all of it: the timeline that answers "why is this lead in this stage?" (invariant 9), the
export of everything held about the lead (GDPR art. 15 and 20), and erasure (art. 17).

What the database holds about the lead (its row, and its rows in every table with a `lead_id`) is read,
counted and erased by `engine.store.lead_data`; this module tells it as a story, and exports it as
JSON-able data. Only the suppression survives erasure: a hash of the address, so it is never mailed again.

Experiments are told in words: the lead's assignment (an `experiment_assigned` event), and, once the
experiment is decided, its decision at the decision's time. The decision is one row per experiment
(`engine.store.experiment_decisions`), not a row per lead: it is read for the experiments the lead was in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from engine.core.own_events import EXPERIMENT_ASSIGNED
from engine.store import experiment_decisions, lead_data
from engine.store import leads as store
from engine.store.database import Connection
from engine.store.experiment_decisions import Settled

# Counting and erasing what is held about a lead are the store's; `erase` is named here too, beside
# the export, for the callers that ask this module about a lead.
from engine.store.lead_data import erase as erase
from engine.store.lead_data import held as held

_TIMELINE_TABLES = (
    "events",
    "stage_transitions",
    "outbox",
    "consent_records",
    "goals",
    "webhook_calls",
    "enrollments",
    "bounce_reports",
)

# Within one instant, the cause before its effects: the event, then the move, then the arm the lead is
# put in, then the email of that arm.
_ORDER = {
    "report": 0, "consent": 1, "event": 2, "transition": 3, "goal": 4, "experiment": 5, "email": 6, "webhook": 7
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Entry:
    at: datetime
    kind: str  # report | consent | event | transition | goal | experiment | email | webhook
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


def read(conn: Connection, address: str) -> Timeline | None:
    """The lead's story, for an address as an entry took it (`engine.core.addresses`) or as it is stored."""
    lead_id = store.find_lead_id(conn, address)
    if lead_id is None:
        return None
    lead = lead_data.lead(conn, lead_id)
    found = lead_data.rows(conn, lead_id, _TIMELINE_TABLES)
    events = found["events"]
    by_event_id = {e["event_id"]: (e["name"], e["properties"]) for e in events}
    transitions = found["stage_transitions"]
    assigned = [e for e in events if e["name"] == EXPERIMENT_ASSIGNED]
    entries = [
        *(_event(e) for e in events if e["name"] != EXPERIMENT_ASSIGNED),
        *(_assignment(e) for e in assigned),
        *_decisions(assigned, decisions_of(conn, assigned)),
        *(_transition(t, by_event_id) for t in transitions),
        *(_email(o) for o in found["outbox"]),
        *(_consent(c) for c in found["consent_records"]),
        *(_goal(g) for g in found["goals"]),
        *(_webhook(w) for w in found["webhook_calls"]),
        *(_report(r) for r in found["bounce_reports"]),
    ]
    last: dict[str, dict[str, Any]] = {}
    for t in transitions:
        last[t["funnel_id"]] = t
    places = []
    for e in found["enrollments"]:
        moved = last.get(e["funnel_id"])
        why = "no recorded transition"
        if moved is not None:
            why = describe_cause(moved["cause_kind"], moved["cause_ref"], by_event_id.get(moved["cause_ref"]))
        since = e["exited_at"] if e["status"] == "exited" and e["exited_at"] else e["stage_entered_at"]
        places.append(Place(e["funnel_id"], e["status"], e["stage"], e["step"], since, why, e["exit_reason"]))
    suppressed = lead_data.suppression(conn, address)
    return Timeline(lead["email"], lead, places, merge(entries), suppressed["reason"] if suppressed else None)


def _event(e: Mapping[str, Any]) -> Entry:
    props = _properties(e["properties"])
    funnel = e["properties"].get("funnel") if isinstance(e["properties"].get("funnel"), str) else None
    source = f" from {e['source']}" if e["source"] else ""
    return Entry(e["occurred_at"], "event", funnel, f"event {e['name']}" + (f" ({props})" if props else "") + source)


def _assignment(e: Mapping[str, Any]) -> Entry:
    p = e["properties"]
    notes = [
        *([f"email {p['template']}"] if p.get("template") else []),
        *(["the holdout"] if p.get("holdout") else []),
        *(["the promoted arm: the experiment was decided before"] if p.get("promoted") else []),
    ]
    what = f"put in arm {p.get('arm')} of experiment {p.get('experiment')} at step {p.get('step')}"
    return Entry(e["occurred_at"], "experiment", p.get("funnel"), what + (f" ({'; '.join(notes)})" if notes else ""))


def decisions_of(conn: Connection, assigned: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Settled]:
    """The decisions of the experiments these assignments are in, by (funnel, experiment)."""
    keys = {(a["properties"].get("funnel"), a["properties"].get("experiment")) for a in assigned}
    if not keys:
        return {}
    return {(s.funnel, s.experiment): s for s in experiment_decisions.settled(conn) if (s.funnel, s.experiment) in keys}


_HOW = {"auto": "decided (auto)", "manual": "promoted (manual)", "stopped": "stopped"}


def _decisions(assigned: Sequence[Mapping[str, Any]], decided: Mapping[tuple[str, str], Settled]) -> list[Entry]:
    """For each experiment the lead was assigned in and that is decided, one entry at the decision's time:
    how, where new leads go, by whom, why, and what it means for this lead's arm."""
    entries = []
    for a in assigned:
        p = a["properties"]
        s = decided.get((p.get("funnel"), p.get("experiment")))
        if s is None:
            continue
        goes = f"new leads get {s.arm}" if s.arm is not None else "new leads go on being split by weight"
        if p.get("promoted") or a["occurred_at"] >= s.decided_at:
            mine = f"this lead reached it after the decision, in arm {p.get('arm')}"
        else:
            mine = f"this lead keeps its arm {p.get('arm')}"
        how = _HOW.get(s.how, s.how)
        what = f"experiment {s.experiment} {how} by {s.decided_by}: {goes}; why: {s.reason}; {mine}"
        entries.append(Entry(s.decided_at, "experiment", s.funnel, what))
    return entries


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
    # The language it was written in (its translation's), once composed for sending.
    written = f" in {o['language']}" if o.get("language") else ""
    text = f"email {o['step']}: {o['template']}{written}{kind}, {outcome}" + (f": {detail}" if detail else "")
    return Entry(at, "email", o["funnel_id"], text)


def _consent(c: Mapping[str, Any]) -> Entry:
    if c["action"] == "lifted":
        why = (c["fields"] or {}).get("reason") or "the lead confirmed its signup"
        change = (
            f", consent {c['status_before']} -> {c['status_after']}" if c["status_before"] != c["status_after"] else ""
        )
        return Entry(c["at"], "consent", None, f"bounce lifted via {c['source']}: {why}{change}")
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


def _report(r: Mapping[str, Any]) -> Entry:
    """What came back after the relay's 250 (a bounce, a delay, a complaint, an auto-reply): from where,
    its class and code, which message it matched and how, what it did, and the remote server's words."""
    code = f" {r['status']}" if r["status"] else ""
    matched = f"message {r['outbox_id']} by {r['matched_by']}" if r["outbox_id"] else "no message matched"
    if r["kind"] == "reply" or (r["kind"] == "auto_reply" and r["diagnostic"]):
        # An answer to the message's reply address (`engine.store.replies`): a person's, or a machine's.
        who = "a reply" if r["kind"] == "reply" else f"an auto-reply ({r['diagnostic']})"
        return Entry(r["received_at"], "report", None, f"{who} via {r['source']} to {matched} ({r['action']})")
    said = f": {r['diagnostic']}" if r["diagnostic"] else ""
    what = f"{r['kind']} report via {r['source']}, {r['failure_class'] or 'unclassed'}{code} ({matched}; {r['action']})"
    return Entry(r["received_at"], "report", None, what + said)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):  # a bounce report's raw message
        return value.decode("utf-8", "replace")
    return value


def export(conn: Connection, address: str, now: datetime) -> dict[str, Any] | None:
    """Everything held about the lead, as JSON-able data: its row, and its rows in every other table; the
    decisions of the experiments it was in; and its timeline in words."""
    lead_id = store.find_lead_id(conn, address)
    found = read(conn, address)
    if lead_id is None or found is None:
        return None
    lead = lead_data.lead(conn, lead_id)
    rows = lead_data.rows(conn, lead_id, lead_data.lead_table_names())
    assigned = [e for e in rows["events"] if e["name"] == EXPERIMENT_ASSIGNED]
    data: dict[str, Any] = {
        "exported_at": now,
        "lead": lead,
        **rows,
        "suppression": lead_data.suppression(conn, address),
        # Not rows of the lead's own (one row per experiment), but they decide what its experiments did next.
        "experiment_decisions": [asdict(s) for s in decisions_of(conn, assigned).values()],
        # The lead's story in words, as `funnel lead show` tells it.
        "timeline": [{"at": e.at, "kind": e.kind, "funnel": e.funnel, "what": e.what} for e in found.entries],
    }
    return {key: _plain(value) for key, value in data.items()}
