"""An experiment assignment (`AssignArm`) written by the one decision writer: an `experiment_assigned`
event of the lead, already processed (no journey reacts to it), that the lead's timeline shows; the same
assignment written twice stays one row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.core import journey
from engine.core.experiments import AssignArm
from engine.core.journey import Cause
from engine.store import experiment_decisions, tables
from engine.store import leads as store
from engine.store.decisions import apply_decisions
from engine.views import lead_timeline

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
STATE = journey.Enrollment(
    funnel="guide",
    version="v1",
    status="active",
    stage="nurture",
    step=None,
    phase="ready",
    due=T0,
    wake_at=None,
    entered_at=T0,
    stage_entered_at=T0,
    sent=frozenset({"welcome"}),
)


def test_an_assignment_lands_in_the_leads_timeline_once(db: Engine) -> None:
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, "d@example.com", attributes={}, tags=[], now=T0)
    decision = journey.Decision(
        STATE,
        journey.Lead("d@example.com"),
        (
            journey.RecordTransition(None, "nurture", Cause("event", "evt-1"), T0),
            AssignArm("welcome", "subject", "question", T0, "guide/welcome-question"),
            journey.SendEmail("welcome", "guide/welcome-question", "nurture", T0),
        ),
    )
    for _ in range(2):
        with db.begin() as conn:
            apply_decisions(conn, [(lead_id, decision)], T0)
    with db.connect() as conn:
        rows = conn.execute(sa.select(tables.events).where(tables.events.c.lead_id == lead_id)).mappings().all()
        timeline = lead_timeline.read(conn, "d@example.com")
    (row,) = rows
    assert (row["name"], row["source"], row["occurred_at"], row["processed_at"]) == (
        "experiment_assigned",
        "engine",
        T0,
        T0,
    )
    assert row["event_id"] == f"experiment:{lead_id}:guide:welcome:subject"
    assert row["properties"] == {
        "funnel": "guide",
        "step": "welcome",
        "experiment": "subject",
        "arm": "question",
        "template": "guide/welcome-question",
    }
    assert timeline is not None
    texts = [e.what for e in timeline.entries]
    assert texts.count("put in arm question of experiment subject at step welcome (email guide/welcome-question)") == 1
    assert not any("experiment_assigned" in t for t in texts)  # told in words, not as a raw event


def test_a_holdout_and_a_decision_that_keeps_the_split_read_in_words(db: Engine) -> None:
    later = T0 + timedelta(days=1)
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, "h@example.com", attributes={}, tags=[], now=T0)
        store.upsert_lead(conn, "other@example.com", attributes={}, tags=[], now=T0)
    decision = journey.Decision(
        STATE, journey.Lead("h@example.com"), (AssignArm("pace", "pace", "none", T0, None, True),)
    )
    with db.begin() as conn:
        apply_decisions(conn, [(lead_id, decision)], T0)
        experiment_decisions.record(conn, "guide", "pace", None, "auto", later, "engine", "no_winner: keep_split", {})
        experiment_decisions.record(conn, "guide", "subject", "plain", "manual", later, "olivia", "brand", {})
    with db.connect() as conn:
        timeline = lead_timeline.read(conn, "h@example.com")
        other = lead_timeline.read(conn, "other@example.com")
    assert timeline is not None and other is not None
    assert [(e.at, e.kind, e.funnel, e.what) for e in timeline.entries] == [
        (T0, "experiment", "guide", "put in arm none of experiment pace at step pace (the holdout)"),
        (
            later,
            "experiment",
            "guide",
            "experiment pace decided (auto) by engine: new leads go on being split by weight; why: no_winner: "
            "keep_split; "
            "this lead keeps its arm none",
        ),
    ]  # the decision of `subject`, an experiment it was not in, is not there
    assert other.entries == []
