"""Writing a decision (`engine.store.decisions`): one transaction writes the state, the transitions and the
outbox, and the database keeps at most one email per (lead, funnel, step)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.core import journey
from engine.core.definition import Funnel
from engine.core.journey import Cause
from engine.store import leads as store
from engine.store import tables
from engine.store.decisions import Written, apply_decisions

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

STATE = journey.Enrollment(
    funnel="guide",
    version="v1",
    status="active",
    stage="nurture",
    step="wait-2d",
    phase="waiting",
    due=T0,
    wake_at=T0 + timedelta(days=2),
    entered_at=T0,
    stage_entered_at=T0,
    sent=frozenset({"welcome"}),
    spent_timers=frozenset({"nudge"}),
)


def _decision(*commands: journey.Command, state: journey.Enrollment = STATE) -> journey.Decision:
    return journey.Decision(state, journey.Lead("d@example.com"), tuple(commands))


def _apply(conn: sa.Connection, lead_id: int, *decisions: journey.Decision, now: datetime = T0) -> Written:
    return apply_decisions(conn, [(lead_id, d) for d in decisions], now)


def _lead(db: Engine) -> int:
    with db.begin() as conn:
        return store.upsert_lead(conn, "d@example.com", attributes={"plan": "free"}, tags=["x"], now=T0)


def test_a_decision_is_written_whole(db: Engine) -> None:
    lead_id = _lead(db)
    decision = _decision(
        journey.RecordTransition(None, "nurture", Cause("event", "evt-1"), T0),
        journey.SendEmail("welcome", "guide/welcome", "nurture", T0),
        journey.SkipEmail("tips", "guide/tips", "nurture", T0, "late"),
        journey.CallWebhook("notify-crm", "https://crm.example/hook", {"lead": "d@example.com"}, T0),
        journey.UpdateLead("tag-it", {"plan": "trial"}, ("gone",), ("warm",), ("x",), 5, T0),
        journey.GoalReached("booked", T0, True),
    )
    with db.begin() as conn:
        assert _apply(conn, lead_id, decision) == Written(queued=1, transitions=1)
    with db.connect() as conn:
        assert store.get_enrollment(conn, lead_id, "guide") == STATE
        assert store.get_enrollments(conn, lead_id) == [STATE]
        outbox = {m.step: m for m in store.get_outbox(conn, lead_id)}
        lead = store.get_lead(conn, lead_id)
        (transition,) = store.get_transitions(conn, lead_id, "guide")
        webhook = conn.execute(sa.select(tables.webhook_calls)).one()
        goal = conn.execute(sa.select(tables.goals)).one()
    assert (outbox["welcome"].status, outbox["welcome"].due_at, outbox["welcome"].next_attempt_at) == (
        "queued",
        T0,
        T0,
    )
    assert (outbox["tips"].status, outbox["tips"].skip_reason) == ("skipped", "late")
    assert lead is not None
    assert (dict(lead.attributes), lead.tags, lead.score) == ({"plan": "trial"}, frozenset({"warm"}), 5)
    assert (transition.from_stage, transition.to_stage, transition.cause, transition.version) == (
        None,
        "nurture",
        Cause("event", "evt-1"),
        "v1",
    )
    assert (webhook.url, webhook.payload, webhook.status) == (
        "https://crm.example/hook",
        {"lead": "d@example.com"},
        "queued",
    )
    assert (goal.goal, goal.within_window) == ("booked", True)


def test_the_same_send_applied_twice_leaves_one_message(db: Engine) -> None:
    lead_id = _lead(db)
    send = journey.SendEmail("welcome", "guide/welcome", "nurture", T0)
    with db.begin() as conn:
        first = _apply(conn, lead_id, _decision(send))
    with db.begin() as conn:
        second = _apply(conn, lead_id, _decision(send), now=T0 + timedelta(minutes=1))
    assert (first.queued, second.queued) == (1, 0)
    with db.connect() as conn:
        assert [(m.step, m.created_at) for m in store.get_outbox(conn, lead_id)] == [("welcome", T0)]


def test_the_database_itself_refuses_a_second_message_for_a_step(db: Engine) -> None:
    lead_id = _lead(db)
    row = {
        "lead_id": lead_id,
        "funnel_id": "guide",
        "step": "welcome",
        "template": "t",
        "stage": "s",
        "transactional": False,
        "status": "queued",
        "due_at": T0,
        "attempts": 0,
        "created_at": T0,
    }
    with db.begin() as conn:
        conn.execute(sa.insert(tables.outbox).values(**row))
    with pytest.raises(sa.exc.IntegrityError), db.begin() as conn:
        conn.execute(sa.insert(tables.outbox).values(**{**row, "status": "sent"}))


def test_a_rolled_back_decision_leaves_no_trace(db: Engine) -> None:
    lead_id = _lead(db)
    decision = _decision(
        journey.RecordTransition(None, "nurture", Cause("entry", "condition"), T0),
        journey.SendEmail("welcome", "guide/welcome", "nurture", T0),
    )
    with pytest.raises(RuntimeError, match="crash"), db.begin() as conn:
        _apply(conn, lead_id, decision)
        raise RuntimeError("crash before commit")
    with db.connect() as conn:
        assert store.get_enrollment(conn, lead_id, "guide") is None
        assert store.get_outbox(conn, lead_id) == []
        assert store.get_transitions(conn, lead_id) == []


def test_a_recorded_skip_gives_way_to_a_later_send_but_a_send_never_to_a_skip(db: Engine) -> None:
    lead_id = _lead(db)
    with db.begin() as conn:
        _apply(conn, lead_id, _decision(journey.SkipEmail("a", "t/a", "s", T0, "no-consent")))
        _apply(conn, lead_id, _decision(journey.SendEmail("b", "t/b", "s", T0)))
    later = T0 + timedelta(days=30)
    with db.begin() as conn:
        applied = _apply(
            conn,
            lead_id,
            _decision(journey.SendEmail("a", "t/a", "s", later), journey.SkipEmail("b", "t/b", "s", later, "late")),
            now=later,
        )
    assert applied.queued == 1
    with db.connect() as conn:
        rows = {m.step: (m.status, m.due_at, m.skip_reason) for m in store.get_outbox(conn, lead_id)}
    assert rows == {"a": ("queued", later, None), "b": ("queued", T0, None)}


def test_an_updated_enrollment_replaces_the_row(db: Engine) -> None:
    lead_id = _lead(db)
    exited = replace(
        STATE,
        status="exited",
        step=None,
        phase="ready",
        wake_at=None,
        exit_reason="goal-reached",
        exited_at=T0 + timedelta(days=1),
        goal_reached_at=T0 + timedelta(days=1),
    )
    with db.begin() as conn:
        _apply(conn, lead_id, _decision())
        _apply(conn, lead_id, _decision(state=exited), now=T0 + timedelta(days=1))
    with db.connect() as conn:
        assert store.get_enrollments(conn, lead_id) == [exited]


def test_lead_updates_are_deltas_on_the_current_row(db: Engine) -> None:
    lead_id = _lead(db)
    bump = journey.UpdateLead("bump", {}, (), ("a",), (), 3, T0)
    with db.begin() as conn:
        _apply(conn, lead_id, _decision(bump))
        _apply(conn, lead_id, _decision(replace(bump, add_tags=("b",))))
    with db.connect() as conn:
        lead = store.get_lead(conn, lead_id)
    assert lead is not None and (lead.score, lead.tags) == (6, frozenset({"x", "a", "b"}))


def test_a_real_journey_decision_round_trips(db: Engine) -> None:
    funnel = Funnel.model_validate(
        {
            "id": "guide",
            "name": "Guide",
            "entry": {"triggers": [{"event": "signed_up"}]},
            "stages": [{"id": "new", "steps": [{"id": "welcome", "send": "welcome"}, {"id": "pause", "wait": "2d"}]}],
        }
    )
    lead_id = _lead(db)
    decision = journey.enroll(funnel, journey.Lead("d@example.com"), T0, Cause("event", "evt-1"))
    with db.begin() as conn:
        assert store.save_funnel_version(conn, funnel, now=T0) is True
        assert store.save_funnel_version(conn, funnel, now=T0) is False
        _apply(conn, lead_id, decision)
    with db.connect() as conn:
        assert store.get_enrollment(conn, lead_id, "guide") == decision.enrollment
        assert store.get_funnel_definition(conn, "guide", funnel.version) == funnel.model_dump(
            mode="json", by_alias=True
        )
        assert [m.step for m in store.get_outbox(conn, lead_id)] == ["welcome"]
