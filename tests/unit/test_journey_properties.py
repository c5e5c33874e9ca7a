"""Properties of the journey core over random funnels, leads and input streams (with downtime)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core import journey
from engine.core.definition import Funnel, SendStep
from engine.core.journey import (
    CallWebhook,
    Cause,
    Decision,
    Enrollment,
    Event,
    Lead,
    RecordTransition,
    SendEmail,
    SkipEmail,
)
from engine.core.localtime import zone
from tests.strategies import (
    Input,
    entry_event,
    funnels,
    input_streams,
    leads,
    start_times,
)

PROPERTIES = settings(max_examples=150, deadline=None, database=None)


@dataclass(frozen=True)
class Turn:
    """One call into the core: when, with what state, and what it decided."""

    at: datetime
    before: Enrollment | None
    decision: Decision


def run(funnel: Funnel, lead: Lead, start: datetime, stream: list[Input]) -> list[Turn]:
    """Drive the core like the engine does: enroll, then each input in time order; re-entry when the
    entry event comes back after an exit and the funnel allows it."""
    turns = [Turn(start, None, journey.enroll(funnel, lead, start, Cause("event", "e0")))]
    now = start
    for i, item in enumerate(stream, start=1):
        decision = turns[-1].decision
        state, lead = decision.enrollment, decision.lead
        assert state is not None
        now += item.gap
        if item.kind == "wake" and state.wake_at is not None and state.wake_at > now:
            now = state.wake_at
        if item.kind in ("tick", "wake"):
            new = journey.on_clock(funnel, lead, state, now)
        elif item.kind == "enter" and state.status == "exited":
            if not journey.may_reenter(funnel, state, now):
                continue
            new = journey.enroll(funnel, lead, now, Cause("event", f"e{i}"), previous=state)
        else:
            event = (
                entry_event(f"e{i}", now)
                if item.kind == "enter"
                else Event(f"e{i}", item.name, now, dict(item.properties))
            )
            new = journey.on_event(funnel, lead, state, event)
        turns.append(Turn(now, state, new))
    return turns


def commands(turns: list[Turn]) -> list[journey.Command]:
    return [c for t in turns for c in t.decision.commands]


scenarios = st.tuples(funnels(), leads(), start_times(), input_streams())


@PROPERTIES
@given(scenarios)
def test_a_lead_is_in_exactly_one_stage_and_transitions_chain(
    scenario: tuple[Funnel, Lead, datetime, list[Input]],
) -> None:
    funnel, lead, start, stream = scenario
    current: str | None = None
    for turn in run(funnel, lead, start, stream):
        state = turn.decision.enrollment
        assert state is not None
        if turn.before is not None and turn.before.status == "exited":
            reentered = [c for c in turn.decision.commands if isinstance(c, RecordTransition)][:1]
            if not (reentered and reentered[0].from_stage is None):
                assert turn.decision.commands == (), "an exited lead gets no commands"
        for c in turn.decision.commands:
            if isinstance(c, RecordTransition):
                assert c.from_stage == current, f"{c} recorded while the lead was in {current}"
                assert c.from_stage is not None or c.to_stage is not None
                current = c.to_stage
        if state.status == "active":
            assert state.stage in funnel.stage_ids()
            assert state.stage == current
            if state.step is not None:
                assert funnel.step(state.stage, state.step) is not None
        else:
            assert current is None
            assert state.exit_reason is not None
            assert state.wake_at is None


@PROPERTIES
@given(scenarios)
def test_a_step_email_is_commanded_at_most_once(scenario: tuple[Funnel, Lead, datetime, list[Input]]) -> None:
    funnel, lead, start, stream = scenario
    sent = [c.step for c in commands(run(funnel, lead, start, stream)) if isinstance(c, SendEmail)]
    assert [step for step, n in Counter(sent).items() if n > 1] == []


@PROPERTIES
@given(scenarios)
def test_time_never_goes_back(scenario: tuple[Funnel, Lead, datetime, list[Input]]) -> None:
    funnel, lead, start, stream = scenario
    last = start
    for turn in run(funnel, lead, start, stream):
        wake = turn.decision.wake_at
        assert wake is None or wake >= turn.at, f"wake {wake} before input {turn.at}"
        for c in turn.decision.commands:
            assert c.at >= last, f"{c} before an earlier command at {last}"
            assert c.at <= turn.at, f"{c} after the input time {turn.at}"
            last = c.at


@PROPERTIES
@given(scenarios)
def test_sends_land_in_the_send_window_and_in_time(
    scenario: tuple[Funnel, Lead, datetime, list[Input]],
) -> None:
    funnel, lead, start, stream = scenario
    window = funnel.send_window
    tz = zone(lead.timezone or funnel.timezone)
    for turn in run(funnel, lead, start, stream):
        for c in turn.decision.commands:
            if isinstance(c, SendEmail):
                assert turn.at - c.at <= funnel.allowed_lateness
                _, step = funnel.step(c.stage, c.step)
                assert isinstance(step, SendStep)
                assert c.transactional == step.transactional
                if window is not None and not step.transactional:
                    local = c.at.astimezone(tz)
                    assert local.strftime("%a").lower() in window.days, f"{c.at} is {local:%A} in {tz}"
                    assert window.start <= local.time().replace(tzinfo=None) < window.end, (
                        f"{c.at} is {local:%H:%M} in {tz}, outside {window.start}-{window.end}"
                    )
            if isinstance(c, SkipEmail) and c.reason == "late":
                assert turn.at - c.at > funnel.allowed_lateness
            if isinstance(c, SendEmail):
                assert lead.consent == "subscribed"


@PROPERTIES
@given(scenarios)
def test_the_same_inputs_give_the_same_outputs(scenario: tuple[Funnel, Lead, datetime, list[Input]]) -> None:
    funnel, lead, start, stream = scenario
    first = [t.decision for t in run(funnel, lead, start, stream)]
    # A fresh model: nothing memoised on the funnel may change the answers.
    again = Funnel.model_validate(funnel.model_dump(by_alias=True))
    assert [t.decision for t in run(again, lead, start, stream)] == first


# --------------------------------------------------------------------------------------------------
# A daily loop across DST changes
# --------------------------------------------------------------------------------------------------

DST_CASES = [
    ("Europe/Berlin", date(2026, 3, 29)),
    ("Europe/Berlin", date(2026, 10, 25)),
    ("America/Los_Angeles", date(2026, 3, 8)),
    ("America/Los_Angeles", date(2026, 11, 1)),
]


def daily_funnel(clock: str, tz: str) -> Funnel:
    return Funnel.model_validate(
        {
            "id": "daily",
            "name": "Daily",
            "timezone": tz,
            "allowed_lateness": "400d",
            "entry": {"triggers": [{"event": "form_submitted"}]},
            "stages": [
                {
                    "id": "daily",
                    "steps": [
                        {"id": "digest", "send": "digest"},
                        {"id": "ping", "webhook": {"url": "https://crm.example.com/daily"}},
                        {"id": "night", "wait_until": {"time": clock}},
                        {
                            "id": "again",
                            "branch": {"if": {"not": {"has_tag": "stop"}}, "then": {"goto": "digest"}},
                        },
                    ],
                }
            ],
        }
    )


def first_reaching(instant: datetime, clock: time, tz: ZoneInfo) -> bool:
    """Whether `instant` is the first moment of its local date whose wall time reaches `clock`: the
    clock time itself, its first occurrence when repeated, or the end of the gap when skipped."""
    local = instant.astimezone(tz)
    before = (instant - timedelta(minutes=1)).astimezone(tz)
    return local.time() >= clock and (before.date() < local.date() or before.time() < clock)


@pytest.mark.parametrize(("tz", "dst_day"), DST_CASES)
@settings(max_examples=40, deadline=None, database=None)
@given(
    clock=st.sampled_from((time(2, 30), time(2, 0), time(1, 30), time(3, 0), time(0, 0))),
    ticks=st.lists(
        st.sampled_from((timedelta(minutes=20), timedelta(hours=1), timedelta(hours=7), timedelta(days=2))),
        min_size=1,
        max_size=40,
    ),
    offset=st.integers(0, 24 * 60),
)
def test_a_daily_wait_until_fires_once_per_local_date_across_dst(
    tz: str, dst_day: date, clock: time, ticks: list[timedelta], offset: int
) -> None:
    funnel = daily_funnel(f"{clock:%H:%M}", tz)
    zone_info = zone(tz)
    start = datetime.combine(dst_day, time(), tzinfo=UTC) - timedelta(days=3, minutes=offset)
    lead = Lead("ada@example.com")
    decision = journey.enroll(funnel, lead, start, Cause("event", "e0"))
    out = list(decision.commands)
    now = start
    for gap in [*ticks, timedelta(days=6)]:
        now += gap
        assert decision.enrollment is not None
        decision = journey.on_clock(funnel, lead, decision.enrollment, now)
        out.extend(decision.commands)
    state = decision.enrollment
    assert state is not None and state.status == "active" and state.wake_at is not None

    pings = [c.at for c in out if isinstance(c, CallWebhook)]
    assert pings[0] == start  # at entry
    loop = pings[1:]
    dates = [p.astimezone(zone_info).date() for p in loop]
    assert all(first_reaching(p, clock, zone_info) for p in loop), loop
    # One per local date, no date skipped, the DST change day included.
    assert dates == [dates[0] + timedelta(days=n) for n in range(len(dates))]
    assert dst_day in dates
    assert dates[0] - start.astimezone(zone_info).date() <= timedelta(days=1)
    # Nothing due is left behind: the next wake is the next date's occurrence, after `now`.
    assert state.wake_at > now >= loop[-1]
    assert first_reaching(state.wake_at, clock, zone_info)
    assert state.wake_at.astimezone(zone_info).date() == dates[-1] + timedelta(days=1)
    # The email itself goes once; every later round records it as already sent.
    assert [c.step for c in out if isinstance(c, SendEmail)] == ["digest"]
    skipped = [c for c in out if isinstance(c, SkipEmail)]
    assert len(skipped) == len(loop) and all(c.reason == "already-sent" for c in skipped)
