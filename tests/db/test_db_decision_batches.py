"""The one decision writer: any sequence of decisions, written in batches of any size, leaves the same
rows in every table, and a batch costs the same statements whatever its size (every kind of command is
written set-based, none one decision at a time)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from engine.core import journey
from engine.core.journey import Cause
from engine.store import tables
from engine.store.decisions import apply_decisions

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=30)
EMAILS = ("a@example.com", "b@example.com", "c@example.com")
FUNNELS = ("guide", "webinar")
STEPS = ("welcome", "tips", "offer")
STAGES = ("new", "nurture", "won")

# The tables a decision writes, each with the columns that say what a row is (never its id, which a
# sequence hands out) and how its rows are told apart: their unique key, or for the append-only stage
# transitions the order they were written in.
WRITTEN = (tables.enrollments, tables.stage_transitions, tables.outbox, tables.webhook_calls, tables.goals)


# --------------------------------------------------------------------------------------------------
# Decisions, at random
# --------------------------------------------------------------------------------------------------

times = st.integers(0, 60 * 24 * 20).map(lambda minutes: T0 + timedelta(minutes=minutes))
optional_times = st.none() | times


@st.composite
def enrollments(draw: st.DrawFn, funnel: str) -> journey.Enrollment:
    exited = draw(st.booleans())
    entered = draw(times)
    return journey.Enrollment(
        funnel=funnel,
        version=draw(st.sampled_from(("v1", "v2"))),
        status="exited" if exited else "active",
        stage=draw(st.sampled_from(STAGES)),
        step=None if exited else draw(st.sampled_from(STEPS)),
        phase=draw(st.sampled_from(("ready", "waiting", "ended"))),
        due=entered,
        wake_at=None if exited else draw(optional_times),
        entered_at=entered,
        stage_entered_at=entered,
        sent=frozenset(draw(st.lists(st.sampled_from(STEPS), max_size=3))),
        spent_timers=frozenset(draw(st.lists(st.sampled_from(("t1", "t2")), max_size=2))),
        goal_reached_at=draw(optional_times),
        exit_reason=draw(st.sampled_from(("gave-up", "unsubscribed"))) if exited else None,
        exited_at=draw(times) if exited else None,
    )


def commands() -> st.SearchStrategy[journey.Command]:
    words = st.sampled_from(("x", "y", "z"))
    return st.one_of(
        st.builds(journey.SendEmail, st.sampled_from(STEPS), st.just("guide/welcome"), st.sampled_from(STAGES),
                  times, st.booleans()),
        st.builds(journey.SkipEmail, st.sampled_from(STEPS), st.just("guide/tips"), st.sampled_from(STAGES), times,
                  st.sampled_from(("late", "no-consent", "already-sent"))),
        # Entering (from None), moving, leaving (to None): leaving by unsubscribing skips what is queued.
        st.builds(journey.RecordTransition, st.none() | st.sampled_from(STAGES), st.none() | st.sampled_from(STAGES),
                  st.builds(Cause, st.sampled_from(("event", "timeout", "manual")), st.none() | words), times,
                  st.none() | st.sampled_from(("unsubscribed", "gave-up"))),
        st.builds(journey.CallWebhook, st.sampled_from(("hook-1", "hook-2")), st.just("https://crm.example/hook"),
                  st.dictionaries(words, st.integers(0, 9), max_size=2), times),
        st.builds(journey.UpdateLead, st.just("update"), st.dictionaries(words, st.integers(0, 9) | words, max_size=2),
                  st.lists(words, max_size=2).map(tuple), st.lists(words, max_size=2).map(tuple),
                  st.lists(words, max_size=2).map(tuple), st.integers(-5, 5), times),
        st.builds(journey.GoalReached, st.sampled_from(("booked", "bought")), times, st.booleans()),
    )  # fmt: skip


@st.composite
def decisions(draw: st.DrawFn) -> tuple[int, journey.Decision]:
    lead = draw(st.integers(0, len(EMAILS) - 1))
    state = draw(enrollments(draw(st.sampled_from(FUNNELS))))
    # A step's send or skip repeated, as a replayed or re-entered decision makes it.
    made = draw(st.lists(commands(), max_size=5))
    repeated = draw(st.lists(st.sampled_from(made), max_size=2)) if made else []
    return lead, journey.Decision(state, journey.Lead(EMAILS[lead]), (*made, *repeated))


# --------------------------------------------------------------------------------------------------
# Writing them, and what they wrote
# --------------------------------------------------------------------------------------------------


def _fresh_leads(db: Engine) -> dict[str, int]:
    """Every table a decision writes emptied, and the leads made again as they start."""
    with db.begin() as conn:
        for table in (*WRITTEN, tables.leads):
            conn.execute(sa.delete(table))
        return {
            email: conn.execute(
                sa.insert(tables.leads)
                .values(
                    email=email, attributes={"plan": "free", "x": 1}, tags=["x"], score=3, consent_status="subscribed"
                )
                .values(created_at=T0, updated_at=T0)
                .returning(tables.leads.c.id)
            ).scalar_one()
            for email in EMAILS
        }


def _write_in_batches(db: Engine, items: Sequence[tuple[int, journey.Decision]], size: int) -> None:
    ids = _fresh_leads(db)
    batch = [(ids[EMAILS[lead]], decision) for lead, decision in items]
    for start in range(0, len(batch), size):
        with db.begin() as conn:
            apply_decisions(conn, batch[start : start + size], NOW)


def _rows(db: Engine) -> dict[str, list[tuple[Any, ...]]]:
    found: dict[str, list[tuple[Any, ...]]] = {}
    with db.connect() as conn:
        emails = dict(conn.execute(sa.select(tables.leads.c.id, tables.leads.c.email)).all())
        for table in WRITTEN:
            columns = [c for c in table.c if c.name != "id"]
            rows = conn.execute(sa.select(*columns).order_by(table.c.id)).all()
            named = [tuple(emails[v] if c.name == "lead_id" else v for c, v in zip(columns, row, strict=True))
                     for row in rows]  # fmt: skip
            # Rows with a unique key are compared by it; transitions in the order they were written.
            found[table.name] = named if table is tables.stage_transitions else sorted(named, key=repr)
        leads = tables.leads
        found["leads"] = sorted(
            (r.email, r.attributes, sorted(r.tags), r.score, r.updated_at) for r in conn.execute(sa.select(leads))
        )
    return found


@given(items=st.lists(decisions(), min_size=1, max_size=10))
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_decisions_in_batches_of_any_size_leave_the_same_rows(
    db: Engine, items: list[tuple[int, journey.Decision]]
) -> None:
    _write_in_batches(db, items, 1)
    one_by_one = _rows(db)
    assert sum(map(len, one_by_one.values())) > len(EMAILS)  # the decisions wrote something
    for size in range(2, len(items) + 1):
        _write_in_batches(db, items, size)
        assert _rows(db) == one_by_one, f"batches of {size}"


def test_what_a_batch_writes_is_what_its_decisions_say(db: Engine) -> None:
    """Every kind of row, spelled out once: a skip that a later send takes over, a send that stays, a lead
    update as a delta, a webhook and a goal each once, and leaving by unsubscribing skips what waits."""
    ids = _fresh_leads(db)
    a, b = ids[EMAILS[0]], ids[EMAILS[1]]
    state = journey.Enrollment("guide", "v1", "active", "new", "tips", "waiting", T0, T0, T0, T0)
    left = journey.Enrollment("guide", "v1", "exited", "new", None, "ready", T0, None, T0, T0,
                              exit_reason="unsubscribed", exited_at=T0)  # fmt: skip
    update = journey.UpdateLead("u", {"plan": "trial"}, ("x",), ("warm",), ("x",), 2, T0)
    hook = journey.CallWebhook("hook-1", "https://crm.example/hook", {"n": 1}, T0)
    batch = [
        (a, journey.Decision(state, journey.Lead(EMAILS[0]), (
            journey.RecordTransition(None, "new", Cause("event", "e1"), T0),
            journey.SkipEmail("welcome", "guide/welcome", "new", T0, "no-consent"),
            journey.SendEmail("welcome", "guide/welcome", "new", T0 + timedelta(hours=1)),
            journey.SendEmail("tips", "guide/tips", "new", T0, transactional=True),
            update, hook, journey.GoalReached("booked", T0, True),
        ))),
        (a, journey.Decision(state, journey.Lead(EMAILS[0]), (update, hook, journey.GoalReached("booked", T0, False)))),
        (b, journey.Decision(state, journey.Lead(EMAILS[1]), (
            journey.SendEmail("welcome", "guide/welcome", "new", T0),
        ))),
        (b, journey.Decision(left, journey.Lead(EMAILS[1]), (
            journey.RecordTransition("new", None, Cause("event", "unsub"), T0, "unsubscribed"),
        ))),
    ]  # fmt: skip
    with db.begin() as conn:
        written = apply_decisions(conn, batch, NOW)
    assert (written.queued, written.transitions) == (3, 2)
    rows = _rows(db)
    assert [(r[0], r[1], r[2], r[6]) for r in rows["outbox"]] == [
        (EMAILS[0], "guide", "tips", "queued"),
        (EMAILS[0], "guide", "welcome", "queued"),
        (EMAILS[1], "guide", "welcome", "skipped"),  # the lead left by unsubscribing: not sent
    ]
    assert [(r[0], r[1]) for r in rows["enrollments"]] == [(EMAILS[0], "guide"), (EMAILS[1], "guide")]
    assert rows["enrollments"][1][3] == "exited"
    assert [(r[0], r[3], r[4]) for r in rows["stage_transitions"]] == [
        (EMAILS[0], None, "new"),
        (EMAILS[1], "new", None),
    ]
    assert [(r[0], r[2]) for r in rows["webhook_calls"]] == [(EMAILS[0], "hook-1")]
    assert [(r[0], r[2], r[4]) for r in rows["goals"]] == [(EMAILS[0], "booked", True)]
    assert rows["leads"][0] == (EMAILS[0], {"plan": "trial"}, ["warm"], 7, NOW)


# --------------------------------------------------------------------------------------------------
# Set-based: the statements a batch costs do not grow with it
# --------------------------------------------------------------------------------------------------


@contextmanager
def _statements(db: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(db, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sa.event.remove(db, "before_cursor_execute", count)


def _lead_in_everything(lead_id: int, email: str) -> list[tuple[int, journey.Decision]]:
    """One lead's decisions with every kind of command: entering with a send, a skip, an update and a
    webhook; a goal; leaving by unsubscribing; entering again."""
    active = journey.Enrollment("guide", "v1", "active", "new", "tips", "waiting", T0, T0, T0, T0)
    left = journey.Enrollment("guide", "v1", "exited", "new", None, "ready", T0, None, T0, T0,
                              exit_reason="unsubscribed", exited_at=T0)  # fmt: skip
    lead = journey.Lead(email)
    return [
        (lead_id, journey.Decision(active, lead, (
            journey.RecordTransition(None, "new", Cause("event", "e1"), T0),
            journey.SendEmail("welcome", "guide/welcome", "new", T0),
            journey.SkipEmail("tips", "guide/tips", "new", T0, "late"),
            journey.UpdateLead("u", {"plan": "trial"}, (), ("warm",), (), 1, T0),
            journey.CallWebhook("hook-1", "https://crm.example/hook", {}, T0),
        ))),
        (lead_id, journey.Decision(active, lead, (journey.GoalReached("booked", T0, True),))),
        (lead_id, journey.Decision(left, lead, (
            journey.RecordTransition("new", None, Cause("event", "unsub"), T0, "unsubscribed"),
        ))),
        (lead_id, journey.Decision(active, lead, (
            journey.RecordTransition(None, "new", Cause("event", "e2"), T0),
            journey.SendEmail("tips", "guide/tips", "new", T0),
        ))),
    ]  # fmt: skip


def _statements_for(db: Engine, leads: int) -> list[str]:
    with db.begin() as conn:
        ids = [
            conn.execute(
                sa.insert(tables.leads)
                .values(email=f"lead{i}-{leads}@example.com", attributes={}, tags=[], score=0)
                .values(consent_status="subscribed", created_at=T0, updated_at=T0)
                .returning(tables.leads.c.id)
            ).scalar_one()
            for i in range(leads)
        ]
    batch = [item for i, lead_id in enumerate(ids) for item in _lead_in_everything(lead_id, f"lead{i}@example.com")]
    with _statements(db) as seen, db.begin() as conn:
        apply_decisions(conn, batch, NOW)
    return seen


def test_a_batch_costs_the_same_statements_whatever_its_size(db: Engine) -> None:
    few = _statements_for(db, 2)
    many = _statements_for(db, 40)
    assert len(many) == len(few), "\n".join(many)
    with db.connect() as conn:
        skipped = conn.execute(sa.select(sa.func.count()).where(tables.outbox.c.status == "skipped")).scalar_one()
    # Each lead's unsubscribing skipped its queued welcome; its late tips was taken over by the re-entry's send.
    assert skipped == 2 + 40


def test_a_decision_without_an_enrollment_is_refused_with_where_it_is(db: Engine) -> None:
    ids = _fresh_leads(db)
    lead = ids[EMAILS[0]]
    state = journey.Enrollment("guide", "v1", "active", "new", "tips", "waiting", T0, T0, T0, T0)
    send = journey.SendEmail("welcome", "guide/welcome", "new", T0)
    batch = [
        (lead, journey.Decision(state, journey.Lead(EMAILS[0]), (send,))),
        (lead, journey.Decision(None, journey.Lead(EMAILS[0]), ())),
    ]
    with pytest.raises(ValueError, match=r"decision 2 of 2 .* has no enrollment"), db.begin() as conn:
        apply_decisions(conn, batch, NOW)
