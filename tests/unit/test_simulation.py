"""The simulator: deterministic, and its figures agree with what each lead's timeline says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine.authoring.simulation import EmailReaction, EventMix, LeadAction, simulate
from engine.core.definition import Funnel
from engine.core.journey import RecordTransition, SendEmail
from engine.core.yamlfile import load_yaml_text

FUNNEL = """
id: sim
name: Sim
timezone: Europe/London
send_window: {days: [mon, tue, wed, thu, fri], start: "09:00", end: "17:00"}
entry:
  triggers: [{event: form_submitted}]
stages:
  - id: inquiry
    steps:
      - {id: deliver, send: report, transactional: true}
      - {id: pause, wait: 2d}
      - {id: nurture, send: nurture}
      - {id: pause-2, wait: 2d}
  - id: conversion
    steps:
      - {id: invite, send: invite}
    on_end: stay
  - id: onboarding
    steps:
      - {id: welcome, send: welcome}
    on_end: stay
transitions:
  - {id: clicked, from: [inquiry], to: conversion, on: {event: email_clicked, where: {link: pricing}}}
goal: {event: purchase_completed, move_to: onboarding}
"""


def funnel() -> Funnel:
    return Funnel.model_validate(load_yaml_text(FUNNEL))


def test_same_seed_same_figures_and_other_seed_differs() -> None:
    a = simulate(funnel(), leads=300, days=20, seed=7)
    b = simulate(funnel(), leads=300, days=20, seed=7)
    c = simulate(funnel(), leads=300, days=20, seed=8)
    assert a.final == b.final and a.emails == b.emails and a.stage_by_day == b.stage_by_day
    assert (a.final, a.emails) != (c.final, c.emails)


def test_without_behaviour_every_lead_walks_the_sequence() -> None:
    result = simulate(funnel(), leads=50, days=20, mix=EventMix())
    assert result.final == {"conversion": 50}
    assert result.emails == {"deliver": 50, "nurture": 50, "invite": 50}
    # Each day's counts cover every lead that has signed up (all sign up on day 1).
    assert all(sum(day.values()) == 50 for day in result.stage_by_day)
    assert result.conversion()[0] == ("inquiry", "conversion", 1.0)


def test_buying_leads_reach_onboarding_and_counts_match() -> None:
    mix = EventMix(per_lead=[LeadAction(event="purchase_completed", probability=1.0, before=timedelta(days=3))])
    result = simulate(funnel(), leads=40, days=10, mix=mix)
    assert result.goals == 40
    assert result.final == {"onboarding": 40}
    assert result.emails["welcome"] == 40


def test_clicks_on_pricing_move_leads_early_and_sample_timeline_agrees() -> None:
    mix = EventMix(per_email=[EmailReaction(event="email_clicked", probability=1.0, properties={"link": "pricing"})])
    result = simulate(funnel(), leads=20, days=10, mix=mix, sample_lead=5)
    # The delivery email is clicked within a day, before the nurture email is due.
    assert result.emails["nurture"] == 0
    assert result.final == {"conversion": 20}
    assert result.sample is not None
    commands = list(result.sample.commands())
    moves = [c for c in commands if isinstance(c, RecordTransition)]
    assert [(m.from_stage, m.to_stage, m.cause.kind) for m in moves] == [
        (None, "inquiry", "event"),
        ("inquiry", "conversion", "event"),
    ]
    invite = next(c for c in commands if isinstance(c, SendEmail) and c.step == "invite")
    local = invite.at.astimezone(__import__("zoneinfo").ZoneInfo(result.sample.lead.timezone or "UTC"))
    assert local.weekday() < 5 and 9 <= local.hour < 17


def test_days_are_counted_from_the_start() -> None:
    start = datetime(2026, 3, 2, tzinfo=UTC)
    result = simulate(funnel(), leads=10, days=3, start=start, mix=EventMix())
    assert len(result.stage_by_day) == 3
    assert result.stage_by_day[0] == {"inquiry": 10}
