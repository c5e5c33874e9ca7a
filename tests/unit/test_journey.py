"""The journey core, example by example: each step kind, transitions, goal, exits, re-entry, causes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.core import journey
from engine.core.definition import Funnel
from engine.core.journey import (
    CallWebhook,
    Cause,
    Command,
    Decision,
    Enrollment,
    Event,
    GoalReached,
    Lead,
    RecordTransition,
    SendEmail,
    SkipEmail,
    UpdateLead,
)
from engine.core.own_events import FUNNEL_UNSUBSCRIBED, LEAD_UPDATED, MANUAL_ENROLL, OPERATOR

MONDAY = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)  # 10:00 in Berlin (CEST)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def make_funnel(stages: list[dict[str, Any]], **extra: Any) -> Funnel:
    data: dict[str, Any] = {
        "id": "demo",
        "name": "Demo",
        "entry": {"triggers": [{"event": "form_submitted"}]},
        "stages": stages,
    }
    data.update(extra)
    return Funnel.model_validate(data)


def one_stage(*steps: dict[str, Any], on_end: Any = "stay", **extra: Any) -> Funnel:
    return make_funnel([{"id": "inquiry", "steps": list(steps), "on_end": on_end}], **extra)


@dataclass
class Journey:
    """A lead going through a funnel: keeps the state and every command, like the store would."""

    funnel: Funnel
    lead: Lead = field(default_factory=lambda: Lead("ada@example.com"))
    state: Enrollment | None = None
    log: list[Command] = field(default_factory=list)
    last: tuple[Command, ...] = ()
    n: int = 0

    def _take(self, decision: Decision) -> tuple[Command, ...]:
        self.state, self.lead, self.last = decision.enrollment, decision.lead, decision.commands
        self.log.extend(decision.commands)
        return decision.commands

    def enter(self, at: datetime = MONDAY) -> tuple[Command, ...]:
        return self._take(journey.enroll(self.funnel, self.lead, at, Cause("event", "entry"), self.state))

    def tick(self, at: datetime) -> tuple[Command, ...]:
        assert self.state is not None
        return self._take(journey.on_clock(self.funnel, self.lead, self.state, at))

    def event(self, name: str, at: datetime, **properties: Any) -> tuple[Command, ...]:
        assert self.state is not None
        self.n += 1
        event = Event(f"ev-{self.n}", name, at, properties)
        return self._take(journey.on_event(self.funnel, self.lead, self.state, event))

    @property
    def current(self) -> Enrollment:
        assert self.state is not None
        return self.state

    def sent(self) -> list[str]:
        return [c.step for c in self.log if isinstance(c, SendEmail)]

    def moves(self) -> list[tuple[str | None, str | None, str]]:
        return [(c.from_stage, c.to_stage, str(c.cause)) for c in self.log if isinstance(c, RecordTransition)]


def send(step_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "send": step_id, **extra}


# --------------------------------------------------------------------------------------------------
# Entry
# --------------------------------------------------------------------------------------------------


def test_entry_records_the_transition_from_nowhere_and_runs_the_first_steps() -> None:
    j = Journey(make_funnel([{"id": "inquiry", "steps": [send("welcome")]}, {"id": "conversion", "on_end": "stay"}]))
    commands = j.enter()
    assert commands[0] == RecordTransition(None, "inquiry", Cause("event", "entry"), MONDAY)
    assert commands[1] == SendEmail("welcome", "welcome", "inquiry", MONDAY)
    assert commands[2] == RecordTransition("inquiry", "conversion", Cause("sequence_end", "inquiry"), MONDAY)
    assert j.current.status == "active" and j.current.entered_at == MONDAY


def test_entry_stage_can_be_named() -> None:
    funnel = make_funnel(
        [{"id": "inquiry", "on_end": "stay"}, {"id": "conversion", "on_end": "stay"}],
        entry={"triggers": [{"event": "form_submitted"}], "stage": "conversion"},
    )
    j = Journey(funnel)
    j.enter()
    assert j.current.stage == "conversion"
    assert j.moves() == [(None, "conversion", "event:entry")]


def test_entry_trigger_matches_events_with_filters_and_conditions_on_any_news_of_the_lead() -> None:
    funnel = one_stage(
        entry={
            "triggers": [
                {"event": "form_submitted", "where": {"form": ["report", "guide"]}},
                {"condition": {"attr": "plan", "equals": "trial"}},
            ]
        }
    )
    lead = Lead("ada@example.com")
    assert journey.entry_trigger(funnel, lead, Event("e1", "form_submitted", MONDAY, {"form": "guide"})) == Cause(
        "event", "e1"
    )
    assert journey.entry_trigger(funnel, lead, Event("e2", "form_submitted", MONDAY, {"form": "other"})) is None
    assert journey.entry_trigger(funnel, lead, Event("e3", "page_viewed", MONDAY)) is None
    assert journey.entry_trigger(funnel, lead, None) is None
    trial = Lead("bob@example.com", attributes={"plan": "trial"})
    assert journey.entry_trigger(funnel, trial, None) == Cause("entry", "condition")
    # A condition trigger is judged whenever the engine hears of the lead: a change of its fields, any event.
    assert journey.entry_trigger(funnel, trial, Event("e4", LEAD_UPDATED, MONDAY)) == Cause("entry", "condition")
    assert journey.entry_trigger(funnel, trial, Event("e5", "page_viewed", MONDAY)) == Cause("entry", "condition")
    assert journey.entry_trigger(funnel, lead, Event("e6", LEAD_UPDATED, MONDAY)) is None
    # ... but never on the lead opting out.
    assert journey.entry_trigger(funnel, trial, Event("e7", "unsubscribed", MONDAY)) is None
    assert journey.entry_trigger(funnel, trial, Event("e8", FUNNEL_UNSUBSCRIBED, MONDAY)) is None


def test_a_manual_enrollment_enters_only_the_named_funnel_and_only_if_it_takes_manual_entries() -> None:
    manual = one_stage(entry={"triggers": [{"event": "form_submitted"}, {"manual": True}]})
    events_only = one_stage(entry={"triggers": [{"event": "form_submitted"}]})
    lead = Lead("ada@example.com")
    by_olivia = Event("m1", MANUAL_ENROLL, MONDAY, {"funnel": manual.id, "by": "olivia"}, OPERATOR)
    assert journey.entry_trigger(manual, lead, by_olivia) == Cause("manual", "olivia")
    assert journey.entry_trigger(events_only, lead, by_olivia) is None
    other = Event("m2", MANUAL_ENROLL, MONDAY, {"funnel": "another-funnel", "by": "olivia"}, OPERATOR)
    assert journey.entry_trigger(manual, lead, other) is None


@pytest.mark.parametrize("source", ["api", "shop", "cli", "form", None])
def test_a_manual_enrollment_from_anyone_but_an_operator_is_not_one(source: str | None) -> None:
    # The entries refuse the name from outside; should such an event be in the table all the same (recorded
    # before they did), the core still does not take it for an operator's act.
    manual = one_stage(entry={"triggers": [{"manual": True}]})
    forged = Event("m3", MANUAL_ENROLL, MONDAY, {"funnel": manual.id, "by": "olivia"}, source)
    assert journey.entry_trigger(manual, Lead("ada@example.com"), forged) is None


# --------------------------------------------------------------------------------------------------
# Sends and waits
# --------------------------------------------------------------------------------------------------


def drip(**extra: Any) -> Funnel:
    return one_stage(send("a"), {"id": "w1", "wait": "1d"}, send("b"), {"id": "w2", "wait": "1d"}, send("c"), **extra)


def test_a_wait_asks_for_the_clock_and_the_next_send_goes_at_its_end() -> None:
    j = Journey(drip())
    j.enter()
    assert j.sent() == ["a"]
    assert j.current.wake_at == MONDAY + DAY
    assert j.tick(MONDAY + DAY - timedelta(seconds=1)) == ()
    assert j.tick(MONDAY + DAY) == (SendEmail("b", "b", "inquiry", MONDAY + DAY),)
    assert j.current.wake_at == MONDAY + 2 * DAY


def test_after_downtime_due_steps_run_in_order_at_their_logical_time() -> None:
    j = Journey(drip(allowed_lateness="3d"))
    j.enter()
    commands = j.tick(MONDAY + 2 * DAY + 5 * HOUR)
    assert commands == (
        SendEmail("b", "b", "inquiry", MONDAY + DAY),
        SendEmail("c", "c", "inquiry", MONDAY + 2 * DAY),
    )


def test_after_downtime_sends_due_longer_ago_than_allowed_are_skipped_as_late() -> None:
    j = Journey(drip(allowed_lateness="1d"))
    j.enter()
    commands = j.tick(MONDAY + 2 * DAY + 5 * HOUR)
    assert commands == (
        SkipEmail("b", "b", "inquiry", MONDAY + DAY, "late"),  # 1d5h late
        SendEmail("c", "c", "inquiry", MONDAY + 2 * DAY),  # 5h late: still sent
    )
    assert j.sent() == ["a", "c"]


def test_a_long_downtime_runs_every_round_of_a_waiting_loop() -> None:
    # Regression: the loop guard once counted every step of a catch-up, so a lead in a daily loop was
    # exited with 'step-limit' after a few weeks of downtime.
    funnel = one_stage(
        {"id": "tick", "webhook": {"url": "https://crm.example.com/daily"}},
        {"id": "night", "wait": "1d"},
        {"id": "again", "branch": {"if": {"not": {"has_tag": "stop"}}, "then": {"goto": "tick"}}},
    )
    j = Journey(funnel)
    j.enter()
    j.tick(MONDAY + 150 * DAY)
    assert j.current.status == "active"
    hooks = [c.at for c in j.log if isinstance(c, CallWebhook)]
    assert hooks == [MONDAY + n * DAY for n in range(151)]


# --------------------------------------------------------------------------------------------------
# Send windows
# --------------------------------------------------------------------------------------------------

WEEKDAYS_9_TO_5 = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}
SATURDAY_NOON_BERLIN = datetime(2026, 6, 6, 10, 0, tzinfo=UTC)
MONDAY_9_BERLIN = datetime(2026, 6, 8, 7, 0, tzinfo=UTC)


def test_a_send_outside_the_window_waits_for_it_to_open_in_the_funnel_zone() -> None:
    j = Journey(one_stage(send("a"), timezone="Europe/Berlin", send_window=WEEKDAYS_9_TO_5))
    assert not any(isinstance(c, SendEmail) for c in j.enter(SATURDAY_NOON_BERLIN))
    assert j.current.wake_at == MONDAY_9_BERLIN
    assert j.tick(MONDAY_9_BERLIN) == (SendEmail("a", "a", "inquiry", MONDAY_9_BERLIN),)


def test_a_send_window_is_read_in_the_lead_zone() -> None:
    funnel = one_stage(send("a"), timezone="Europe/Berlin", send_window=WEEKDAYS_9_TO_5)
    j = Journey(funnel, Lead("ada@example.com", timezone="America/Los_Angeles"))
    j.enter(SATURDAY_NOON_BERLIN)
    monday_9_los_angeles = datetime(2026, 6, 8, 16, 0, tzinfo=UTC)
    assert j.current.wake_at == monday_9_los_angeles
    j.tick(monday_9_los_angeles + HOUR)
    assert j.last == (SendEmail("a", "a", "inquiry", monday_9_los_angeles),)


def test_a_send_inside_the_window_goes_at_once() -> None:
    j = Journey(one_stage(send("a"), timezone="Europe/Berlin", send_window=WEEKDAYS_9_TO_5))
    j.enter(MONDAY)
    assert j.sent() == ["a"]


def test_a_transactional_send_ignores_the_window() -> None:
    j = Journey(one_stage(send("a", transactional=True), timezone="Europe/Berlin", send_window=WEEKDAYS_9_TO_5))
    j.enter(SATURDAY_NOON_BERLIN)
    assert j.last[-1] == SendEmail("a", "a", "inquiry", SATURDAY_NOON_BERLIN, transactional=True)


def test_a_window_deferred_send_is_judged_late_from_the_window_opening() -> None:
    j = Journey(one_stage(send("a"), timezone="Europe/Berlin", send_window=WEEKDAYS_9_TO_5, allowed_lateness="2h"))
    j.enter(SATURDAY_NOON_BERLIN)
    assert j.tick(MONDAY_9_BERLIN + 3 * HOUR) == (SkipEmail("a", "a", "inquiry", MONDAY_9_BERLIN, "late"),)


# --------------------------------------------------------------------------------------------------
# wait_until, wait_for
# --------------------------------------------------------------------------------------------------


def test_wait_until_resolves_the_next_allowed_weekday_in_the_lead_zone() -> None:
    funnel = one_stage({"id": "tue", "wait_until": {"time": "09:30", "days": ["tue"]}}, send("a"))
    j = Journey(funnel, Lead("ada@example.com", timezone="Asia/Kolkata"))
    j.enter(MONDAY)  # 13:30 in Kolkata
    tuesday = datetime(2026, 6, 2, 4, 0, tzinfo=UTC)  # 09:30 IST
    assert j.current.wake_at == tuesday
    j.tick(tuesday)
    assert j.last == (SendEmail("a", "a", "inquiry", tuesday),)


def waiting(on_event: dict[str, Any], on_timeout: dict[str, Any]) -> Funnel:
    return make_funnel(
        [
            {
                "id": "inquiry",
                "steps": [
                    send("ask"),
                    {
                        "id": "reply",
                        "wait_for": {
                            "event": "email_clicked",
                            "where": {"link": "pricing"},
                            "timeout": "3d",
                            "on_event": on_event,
                            "on_timeout": on_timeout,
                        },
                    },
                    send("after"),
                ],
                "on_end": "stay",
            },
            {"id": "conversion", "on_end": "stay"},
        ]
    )


def test_wait_for_follows_on_event_when_the_event_matches() -> None:
    j = Journey(waiting({"move_to": "conversion"}, {"exit": "no-reply"}))
    j.enter()
    assert j.event("email_clicked", MONDAY + HOUR, link="docs") == ()
    assert j.event("email_opened", MONDAY + HOUR) == ()
    j.event("email_clicked", MONDAY + 2 * HOUR, link="pricing")
    assert j.last == (RecordTransition("inquiry", "conversion", Cause("event", "ev-3"), MONDAY + 2 * HOUR),)


def test_wait_for_follows_on_timeout_when_nothing_comes() -> None:
    j = Journey(waiting({"move_to": "conversion"}, {"exit": "no-reply"}))
    j.enter()
    assert j.current.wake_at == MONDAY + 3 * DAY
    j.tick(MONDAY + 4 * DAY)
    assert j.last == (
        RecordTransition("inquiry", None, Cause("timeout", "reply"), MONDAY + 3 * DAY, exit_reason="no-reply"),
    )
    assert j.current.status == "exited" and j.current.wake_at is None


@pytest.mark.parametrize(
    ("outcome", "expected_sent", "expected_status"),
    [({}, ["ask", "after"], "active"), ({"goto": "ask"}, ["ask"], "active"), ({"exit": "x"}, ["ask"], "exited")],
)
def test_wait_for_outcomes_continue_goto_or_exit(
    outcome: dict[str, Any], expected_sent: list[str], expected_status: str
) -> None:
    j = Journey(waiting(outcome, {}))
    j.enter()
    j.event("email_clicked", MONDAY + HOUR, link="pricing")
    assert j.sent() == expected_sent
    assert j.current.status == expected_status


def test_wait_for_goto_back_to_a_sent_step_records_it_as_already_sent() -> None:
    j = Journey(waiting({"goto": "ask"}, {}))
    j.enter()
    j.event("email_clicked", MONDAY + HOUR, link="pricing")
    assert j.last == (SkipEmail("ask", "ask", "inquiry", MONDAY + HOUR, "already-sent"),)
    assert j.current.step == "reply" and j.current.wake_at == MONDAY + HOUR + 3 * DAY


def test_wait_for_timeout_continue_runs_the_next_step() -> None:
    j = Journey(waiting({}, {}))
    j.enter()
    j.tick(MONDAY + 3 * DAY)
    assert j.last == (SendEmail("after", "after", "inquiry", MONDAY + 3 * DAY),)


# --------------------------------------------------------------------------------------------------
# branch, update, move_to, webhook, exit
# --------------------------------------------------------------------------------------------------


def branching() -> Funnel:
    return make_funnel(
        [
            {
                "id": "inquiry",
                "steps": [
                    {"id": "vip-check", "branch": {"if": {"has_tag": "vip"}, "then": {"move_to": "vip"}}},
                    send("regular"),
                ],
                "on_end": "stay",
            },
            {"id": "vip", "steps": [send("vip-welcome")], "on_end": "stay"},
        ]
    )


def test_branch_then_and_else() -> None:
    vip = Journey(branching(), Lead("ada@example.com", tags=frozenset({"vip"})))
    vip.enter()
    assert vip.sent() == ["vip-welcome"]
    assert vip.moves()[-1] == ("inquiry", "vip", "step:vip-check")
    regular = Journey(branching())
    regular.enter()
    assert regular.sent() == ["regular"] and regular.current.stage == "inquiry"


def test_an_update_is_commanded_and_visible_to_a_later_branch() -> None:
    funnel = one_stage(
        {"id": "mark", "update": {"add_tags": ["vip"], "set": {"plan": "pro"}, "score": 5}},
        {
            "id": "check",
            "branch": {
                "if": {"all": [{"has_tag": "vip"}, {"attr": "plan", "equals": "pro"}, {"attr": "score", "gte": 5}]},
                "then": {"exit": "promoted"},
            },
        },
        send("never"),
    )
    j = Journey(funnel)
    j.enter()
    assert j.log[1] == UpdateLead("mark", {"plan": "pro"}, (), ("vip",), (), 5, MONDAY)
    assert j.current.exit_reason == "promoted"
    assert j.lead.tags == {"vip"} and j.lead.score == 5 and j.lead.attributes == {"plan": "pro"}


def test_update_unsets_and_removes_tags() -> None:
    funnel = one_stage({"id": "clean", "update": {"unset": ["plan"], "remove_tags": ["cold"], "score": -2}})
    j = Journey(funnel, Lead("ada@example.com", attributes={"plan": "x", "a": 1}, tags=frozenset({"cold", "b"})))
    j.enter()
    assert j.lead.attributes == {"a": 1} and j.lead.tags == {"b"} and j.lead.score == -2


def test_move_to_step_changes_stage_with_a_step_cause() -> None:
    funnel = make_funnel(
        [
            {"id": "inquiry", "steps": [{"id": "go", "move_to": "conversion"}, send("skipped")]},
            {"id": "conversion", "steps": [send("offer")], "on_end": "stay"},
        ]
    )
    j = Journey(funnel)
    j.enter()
    assert j.moves() == [(None, "inquiry", "event:entry"), ("inquiry", "conversion", "step:go")]
    assert j.sent() == ["offer"]


def test_webhook_is_a_command_with_its_payload() -> None:
    j = Journey(one_stage({"id": "crm", "webhook": {"url": "https://crm.example.com/x", "payload": {"a": 1}}}))
    j.enter()
    assert CallWebhook("crm", "https://crm.example.com/x", {"a": 1}, MONDAY) in j.log


def test_exit_step_leaves_with_its_reason() -> None:
    j = Journey(one_stage({"id": "bye", "exit": "not-a-fit"}, send("never")))
    j.enter()
    assert j.current.status == "exited" and j.current.exit_reason == "not-a-fit"
    assert j.moves()[-1] == ("inquiry", None, "step:bye")
    assert j.current.exited_at == MONDAY and j.sent() == []
    assert j.tick(MONDAY + 30 * DAY) == () and j.event("email_clicked", MONDAY + 31 * DAY) == ()


# --------------------------------------------------------------------------------------------------
# on_end
# --------------------------------------------------------------------------------------------------


def three(on_end: Any) -> Funnel:
    return make_funnel(
        [
            {"id": "one", "steps": [send("s1")], "on_end": on_end},
            {"id": "two", "steps": [send("s2")], "on_end": "stay"},
            {"id": "three", "steps": [send("s3")]},
        ]
    )


@pytest.mark.parametrize(
    ("on_end", "stage", "status", "sent"),
    [
        ("next", "two", "active", ["s1", "s2"]),
        ("stay", "one", "active", ["s1"]),
        ("exit", "one", "exited", ["s1"]),
        ({"move_to": "three"}, "three", "exited", ["s1", "s3"]),
    ],
)
def test_on_end(on_end: Any, stage: str, status: str, sent: list[str]) -> None:
    j = Journey(three(on_end))
    j.enter()
    assert (j.current.stage, j.current.status, j.sent()) == (stage, status, sent)


def test_the_last_stage_ending_with_next_exits_completed() -> None:
    j = Journey(three({"move_to": "three"}))
    j.enter()
    assert j.moves() == [
        (None, "one", "event:entry"),
        ("one", "three", "sequence_end:one"),
        ("three", None, "sequence_end:three"),
    ]
    assert j.current.exit_reason == "completed"


def test_stay_waits_for_events_only() -> None:
    j = Journey(three("stay"))
    j.enter()
    assert j.current.step is None and j.current.wake_at is None


# --------------------------------------------------------------------------------------------------
# Transitions
# --------------------------------------------------------------------------------------------------


def with_transitions(*transitions: dict[str, Any], **extra: Any) -> Funnel:
    return make_funnel(
        [
            {"id": "inquiry", "steps": [{"id": "w", "wait": "10d"}, send("late-nurture")], "on_end": "stay"},
            {"id": "comparison", "steps": [send("compare")], "on_end": "stay"},
            {"id": "conversion", "steps": [send("offer")], "on_end": "stay"},
        ],
        transitions=list(transitions),
        **extra,
    )


def test_an_event_transition_honours_its_filter() -> None:
    funnel = with_transitions(
        {"id": "clicked", "to": "conversion", "on": {"event": "email_clicked", "where": {"link": ["pricing", "buy"]}}}
    )
    j = Journey(funnel)
    j.enter()
    assert j.event("email_clicked", MONDAY + HOUR, link="docs") == ()
    assert j.event("email_clicked", MONDAY + HOUR) == ()
    j.event("email_clicked", MONDAY + 2 * HOUR, link="buy")
    assert j.last == (
        RecordTransition("inquiry", "conversion", Cause("event", "ev-3"), MONDAY + 2 * HOUR),
        SendEmail("offer", "offer", "conversion", MONDAY + 2 * HOUR),
    )
    assert j.current.stage_entered_at == MONDAY + 2 * HOUR


def test_an_event_transition_only_fires_from_its_stages() -> None:
    funnel = with_transitions(
        {"id": "compare", "from": ["inquiry"], "to": "comparison", "on": {"event": "email_clicked"}},
        {"id": "buy", "from": ["comparison"], "to": "conversion", "on": {"event": "demo_booked"}},
    )
    j = Journey(funnel)
    j.enter()
    assert j.event("demo_booked", MONDAY + HOUR) == ()
    j.event("email_clicked", MONDAY + 2 * HOUR)
    assert j.current.stage == "comparison"
    assert j.event("email_clicked", MONDAY + 3 * HOUR) == ()  # not from comparison
    j.event("demo_booked", MONDAY + 4 * HOUR)
    assert j.current.stage == "conversion"


def test_an_event_transition_with_a_condition() -> None:
    funnel = with_transitions(
        {"id": "hot", "to": "conversion", "on": {"event": "email_clicked"}, "if": {"attr": "score", "gt": 10}}
    )
    cold = Journey(funnel, Lead("a@example.com", score=3))
    cold.enter()
    assert cold.event("email_clicked", MONDAY + HOUR) == ()
    hot = Journey(funnel, Lead("b@example.com", score=11))
    hot.enter()
    hot.event("email_clicked", MONDAY + HOUR)
    assert hot.current.stage == "conversion"


def test_an_after_transition_counts_time_in_the_stage() -> None:
    funnel = with_transitions({"id": "stale", "from": ["inquiry"], "to": "comparison", "after": "3d"})
    j = Journey(funnel)
    j.enter()
    assert j.current.wake_at == MONDAY + 3 * DAY
    j.tick(MONDAY + 3 * DAY + 5 * HOUR)
    assert j.last == (
        RecordTransition("inquiry", "comparison", Cause("timeout", "stale"), MONDAY + 3 * DAY),
        SendEmail("compare", "compare", "comparison", MONDAY + 3 * DAY),
    )


def test_a_guarded_after_transition_is_judged_once_when_due() -> None:
    funnel = with_transitions(
        {"id": "stale", "from": ["inquiry"], "to": "comparison", "after": "3d", "if": {"has_tag": "engaged"}}
    )
    j = Journey(funnel)
    j.enter()
    assert j.tick(MONDAY + 3 * DAY) == ()
    assert j.current.spent_timers == {"stale"}
    # Becoming engaged later does not fire it: it was judged when due.
    j.lead = Lead("ada@example.com", tags=frozenset({"engaged"}))
    j.tick(MONDAY + 4 * DAY)
    assert j.current.stage == "inquiry"


def test_a_guarded_after_transition_judged_false_does_not_end_a_wait_early() -> None:
    # Regression: the step's wake used to be overwritten by the earliest timer, so the 10d wait ended
    # at the 3d stage timeout once its guard failed.
    funnel = with_transitions(
        {"id": "stale", "from": ["inquiry"], "to": "comparison", "after": "3d", "if": {"has_tag": "engaged"}}
    )
    j = Journey(funnel)
    j.enter()
    j.tick(MONDAY + 3 * DAY)
    assert j.current.wake_at == MONDAY + 10 * DAY
    assert j.tick(MONDAY + 5 * DAY) == ()
    assert j.tick(MONDAY + 10 * DAY) == (SendEmail("late-nurture", "late-nurture", "inquiry", MONDAY + 10 * DAY),)


def test_a_stage_timeout_at_the_same_instant_as_a_step_wins() -> None:
    funnel = with_transitions({"id": "stale", "from": ["inquiry"], "to": "comparison", "after": "10d"})
    j = Journey(funnel)
    j.enter()
    j.tick(MONDAY + 10 * DAY)
    assert j.sent() == ["compare"]


# --------------------------------------------------------------------------------------------------
# Goal and exit rules, and the order in which an event is handled
# --------------------------------------------------------------------------------------------------


def test_goal_within_its_window_and_after() -> None:
    funnel = with_transitions(goal={"event": "purchase_completed", "within": "7d"})
    on_time = Journey(funnel)
    on_time.enter()
    assert on_time.event("purchase_completed", MONDAY + 7 * DAY) == (
        GoalReached("goal", MONDAY + 7 * DAY, within_window=True),
    )
    late = Journey(funnel)
    late.enter()
    late.event("purchase_completed", MONDAY + 8 * DAY)
    assert late.last == (GoalReached("goal", MONDAY + 8 * DAY, within_window=False),)
    assert late.event("purchase_completed", MONDAY + 9 * DAY) == ()  # reached once


def test_goal_moves_the_lead() -> None:
    j = Journey(with_transitions(goal={"event": "purchase_completed", "move_to": "conversion"}))
    j.enter()
    j.event("purchase_completed", MONDAY + HOUR)
    assert j.last[1] == RecordTransition("inquiry", "conversion", Cause("goal", "ev-1"), MONDAY + HOUR)
    assert j.sent() == ["offer"]


def test_goal_exits_the_lead() -> None:
    j = Journey(with_transitions(goal={"event": "purchase_completed", "exit": True}))
    j.enter()
    j.event("purchase_completed", MONDAY + HOUR)
    assert j.current.exit_reason == "goal-reached"
    assert j.moves()[-1] == ("inquiry", None, "goal:ev-1")


def test_an_exit_rule_removes_the_lead() -> None:
    funnel = with_transitions(exits=[{"event": "unsubscribed", "reason": "opted-out"}])
    j = Journey(funnel)
    j.enter()
    j.event("unsubscribed", MONDAY + HOUR)
    assert j.last == (
        RecordTransition("inquiry", None, Cause("exit_rule", "ev-1"), MONDAY + HOUR, exit_reason="opted-out"),
    )


def everything_on_click(**extra: Any) -> Funnel:
    return make_funnel(
        [
            {
                "id": "inquiry",
                "steps": [
                    {
                        "id": "wait-click",
                        "wait_for": {"event": "email_clicked", "timeout": "3d", "on_event": {"exit": "by-wait"}},
                    }
                ],
            },
            {"id": "comparison", "on_end": "stay"},
            {"id": "conversion", "on_end": "stay"},
        ],
        **{"transitions": [{"id": "clicked", "to": "comparison", "on": {"event": "email_clicked"}}], **extra},
    )


def test_event_order_exit_rules_before_goal_before_transitions_before_wait_for() -> None:
    goal = {"event": "email_clicked", "move_to": "conversion"}
    exits = [{"event": "email_clicked", "reason": "by-rule"}]
    j = Journey(everything_on_click(goal=goal, exits=exits))
    j.enter()
    j.event("email_clicked", MONDAY + HOUR)
    assert j.current.exit_reason == "by-rule" and not any(isinstance(c, GoalReached) for c in j.log)

    j = Journey(everything_on_click(goal=goal))
    j.enter()
    j.event("email_clicked", MONDAY + HOUR)
    assert j.current.stage == "conversion" and j.moves()[-1][2] == "goal:ev-1"

    j = Journey(everything_on_click())
    j.enter()
    j.event("email_clicked", MONDAY + HOUR)
    assert j.current.stage == "comparison" and j.current.status == "active"

    j = Journey(everything_on_click(transitions=[]))
    j.enter()
    j.event("email_clicked", MONDAY + HOUR)
    assert j.current.exit_reason == "by-wait"


def test_a_goal_without_a_move_lets_the_transitions_run_too() -> None:
    j = Journey(everything_on_click(goal={"event": "email_clicked"}))
    j.enter()
    j.event("email_clicked", MONDAY + HOUR)
    assert isinstance(j.last[0], GoalReached) and j.current.stage == "comparison"


def test_an_event_first_runs_what_fell_due_before_it() -> None:
    j = Journey(drip())
    j.enter()
    j.event("email_opened", MONDAY + DAY + HOUR)
    assert j.last == (SendEmail("b", "b", "inquiry", MONDAY + DAY),)


# --------------------------------------------------------------------------------------------------
# Consent
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transactional", [False, True])
def test_without_consent_sends_are_skipped_and_the_journey_goes_on(transactional: bool) -> None:
    funnel = one_stage(send("a", transactional=transactional), {"id": "w", "wait": "1d"}, send("b"))
    j = Journey(funnel, Lead("ada@example.com", consent="unsubscribed"))
    j.enter()
    j.tick(MONDAY + DAY)
    assert [c for c in j.log if isinstance(c, SendEmail | SkipEmail)] == [
        SkipEmail("a", "a", "inquiry", MONDAY, "no-consent"),
        SkipEmail("b", "b", "inquiry", MONDAY + DAY, "no-consent"),
    ]


# --------------------------------------------------------------------------------------------------
# Re-entry
# --------------------------------------------------------------------------------------------------


def reentering(reentry: str, cooldown: str | None = None) -> Funnel:
    entry: dict[str, Any] = {"triggers": [{"event": "form_submitted"}], "reentry": reentry}
    if cooldown:
        entry["cooldown"] = cooldown
    return one_stage(send("welcome"), {"id": "w", "wait": "1d"}, send("follow-up"), on_end="exit", entry=entry)


def test_may_reenter_rules() -> None:
    never, after_exit, cooldown = reentering("never"), reentering("after_exit"), reentering("after_exit", "30d")
    j = Journey(after_exit)
    j.enter()
    active = j.current
    j.tick(MONDAY + DAY)
    exited = j.current
    assert exited.status == "exited" and exited.exited_at == MONDAY + DAY
    assert journey.may_reenter(never, None, MONDAY)
    assert not journey.may_reenter(never, exited, MONDAY + 100 * DAY)
    assert not journey.may_reenter(after_exit, active, MONDAY + 100 * DAY)
    assert journey.may_reenter(after_exit, exited, MONDAY + DAY)
    assert not journey.may_reenter(cooldown, exited, MONDAY + 30 * DAY)
    assert journey.may_reenter(cooldown, exited, MONDAY + 31 * DAY)


def test_reentry_never_sends_a_step_again() -> None:
    j = Journey(reentering("after_exit"))
    j.enter()
    j.tick(MONDAY + DAY)
    j.enter(MONDAY + 10 * DAY)
    j.tick(MONDAY + 11 * DAY)
    assert j.sent() == ["welcome", "follow-up"]
    assert [c.step for c in j.log if isinstance(c, SkipEmail) and c.reason == "already-sent"] == [
        "welcome",
        "follow-up",
    ]
    assert j.current.entered_at == MONDAY + 10 * DAY
    assert [m for m in j.moves() if m[0] is None or m[1] is None] == [
        (None, "inquiry", "event:entry"),
        ("inquiry", None, "sequence_end:inquiry"),
        (None, "inquiry", "event:entry"),
        ("inquiry", None, "sequence_end:inquiry"),
    ]


# --------------------------------------------------------------------------------------------------
# Transitions are recorded with their cause; manual moves
# --------------------------------------------------------------------------------------------------


def test_every_stage_change_is_recorded_with_its_cause() -> None:
    funnel = make_funnel(
        [
            {"id": "inquiry", "steps": [{"id": "w", "wait": "1d"}]},
            {"id": "comparison", "steps": [{"id": "go", "move_to": "conversion"}]},
            {"id": "conversion", "on_end": "stay"},
            {"id": "onboarding", "on_end": "stay"},
            {"id": "advocacy", "on_end": "stay"},
        ],
        transitions=[
            {"id": "bought", "from": ["conversion"], "to": "onboarding", "on": {"event": "purchase_completed"}},
            {"id": "settled", "from": ["onboarding"], "to": "advocacy", "after": "30d"},
        ],
        exits=[{"event": "unsubscribed", "reason": "opted-out"}],
    )
    j = Journey(funnel)
    j.enter()
    j.tick(MONDAY + DAY)
    j.event("purchase_completed", MONDAY + 2 * DAY)
    j.tick(MONDAY + 40 * DAY)
    j._take(journey.move(funnel, j.lead, j.current, "conversion", MONDAY + 41 * DAY, "ops:alice"))
    j.event("unsubscribed", MONDAY + 42 * DAY)
    assert [(c.from_stage, c.to_stage, c.cause, c.at) for c in j.log if isinstance(c, RecordTransition)] == [
        (None, "inquiry", Cause("event", "entry"), MONDAY),
        ("inquiry", "comparison", Cause("sequence_end", "inquiry"), MONDAY + DAY),
        ("comparison", "conversion", Cause("step", "go"), MONDAY + DAY),
        ("conversion", "onboarding", Cause("event", "ev-1"), MONDAY + 2 * DAY),
        ("onboarding", "advocacy", Cause("timeout", "settled"), MONDAY + 32 * DAY),
        ("advocacy", "conversion", Cause("manual", "ops:alice"), MONDAY + 41 * DAY),
        ("conversion", None, Cause("exit_rule", "ev-2"), MONDAY + 42 * DAY),
    ]


# --------------------------------------------------------------------------------------------------
# The loop guard
# --------------------------------------------------------------------------------------------------


def test_a_goto_loop_without_a_wait_is_stopped() -> None:
    funnel = one_stage(
        {"id": "a", "update": {"score": 1}},
        {"id": "b", "branch": {"if": {"attr": "score", "gte": 0}, "then": {"goto": "a"}}},
    )
    j = Journey(funnel)
    j.enter()
    assert j.current.exit_reason == "step-limit"
    assert j.moves()[-1][2].startswith("guard")
    assert 0 < j.lead.score < journey.MAX_STEPS_PER_DECISION


def test_stages_without_steps_moving_in_a_circle_are_stopped() -> None:
    funnel = make_funnel([{"id": "ping", "on_end": {"move_to": "pong"}}, {"id": "pong", "on_end": {"move_to": "ping"}}])
    j = Journey(funnel)
    j.enter()
    assert j.current.exit_reason == "step-limit"


def test_instant_stage_timeouts_in_a_circle_are_stopped() -> None:
    funnel = make_funnel(
        [{"id": "ping", "on_end": "stay"}, {"id": "pong", "on_end": "stay"}],
        transitions=[
            {"id": "to-pong", "from": ["ping"], "to": "pong", "after": "0s"},
            {"id": "to-ping", "from": ["pong"], "to": "ping", "after": "0s"},
        ],
    )
    j = Journey(funnel)
    j.enter()
    j.tick(MONDAY)
    assert j.current.exit_reason == "step-limit"
