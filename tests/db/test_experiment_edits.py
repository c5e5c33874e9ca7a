"""Editing a live experiment, run by the real engine on a real database: `funnel plan`'s lines for the
edit (from the assignments in the database) say where the assigned leads go, and after the engine
publishes the edit and ticks, they are there; no lead gets another arm's email or a step's email twice."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from engine.authoring.experiment_plan import experiment_plan
from engine.authoring.plan import plan
from engine.core.definition import Funnel
from engine.core.experiments import assign, lead_key
from engine.core.yamlfile import load_yaml_text
from engine.runtime.worker import Worker
from engine.store import experiment_assignments
from engine.store import leads as store

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
LEADS = [f"lead{i}@example.com" for i in range(24)]

SPLIT = """
id: s
name: S
entry: {triggers: [{event: signed_up}]}
stages:
  - id: nurture
    steps:
      - id: pace
        split:
          id: nurture-pace
          arms:
            - {id: weekly, goto: weekly-wait}
            - {id: daily, goto: daily-wait}
            - {id: none, holdout: true, goto: summary}
          metric: {goal: true, within: 30d}
          decide: {min_per_arm: 100, promote: manual}
      - {id: weekly-wait, wait: 7d}
      - {id: weekly-tip, send: weekly}
      - {id: daily-wait, wait: 1d}
      - {id: daily-tip, send: daily}
      - {id: daily-wait-2, wait: 1d}
      - {id: daily-tip-2, send: daily-2}
      - {id: summary, send: summary}
    on_end: stay
goal: {event: bought}
"""

VARIANT = """
id: v
name: V
entry: {triggers: [{event: signed_up}]}
stages:
  - id: nurture
    steps:
      - id: welcome
        send: drip/welcome
        experiment:
          id: subject
          arms:
            - {id: plain}
            - {id: teaser, send: drip/teaser}
          metric: {click: "*", within: 3d}
          decide: {min_per_arm: 100, promote: auto}
      - {id: later, wait: 3d}
      - {id: tip, send: drip/tip}
    on_end: stay
"""


def funnel(text: str) -> Funnel:
    return Funnel.model_validate(load_yaml_text(text))


def sign_up(db: Engine, worker: Worker) -> dict[str, int]:
    ids = {}
    with db.begin() as conn:
        for i, address in enumerate(LEADS):
            ids[address] = store.upsert_lead(conn, address, now=T0)
            store.record_events(conn, [store.NewEvent(f"signup-{i}", ids[address], "signed_up", T0, {})], now=T0)
    worker.run_until_idle(T0)
    return ids


def test_a_removed_split_arm_sends_its_leads_where_the_plan_says(db: Engine) -> None:
    old = funnel(SPLIT)
    worker = Worker(db, {old.id: old})
    worker.publish(T0)
    ids = sign_up(db, worker)
    arms = {
        a: assign(lead_key(a), "s", "pace", "nurture-pace", [("weekly", 1), ("daily", 1), ("none", 1)]) for a in LEADS
    }
    assert set(arms.values()) == {"weekly", "daily", "none"}  # these addresses cover every arm
    one_day = T0 + timedelta(days=1, minutes=1)
    worker.run_until_idle(one_day)  # daily leads got their first tip and wait again

    # The edit: the weekly arm and its steps are gone. By the file's order alone, a weekly lead would
    # go on into the daily path.
    text = SPLIT.replace("            - {id: weekly, goto: weekly-wait}\n", "")
    cut = text.index("      - {id: weekly-wait, wait: 7d}")
    new = funnel(text[:cut] + text[text.index("      - {id: daily-wait, wait: 1d}") :])
    with db.connect() as conn:
        assigned = experiment_assignments.in_flight(conn, "s")
        positions = store.positions(conn, "s")
        per_arm = experiment_assignments.leads_per_arm(conn, "s")
    assert per_arm == Counter(("nurture-pace", arm) for arm in arms.values())  # what the journey map shows
    lines = experiment_plan(assigned, {old.version: old}, new)
    weekly = [a for a, arm in arms.items() if arm == "weekly"]
    (line,) = [x for x in lines if x.arm == "weekly"]
    assert (line.change, line.leads) == ("arm-removed", len(weekly))
    assert line.says == (
        "arm removed; on its path at weekly-wait: step gone: they go on at nurture / summary (arm-step-removed)"
    )
    where = {(p.stage, p.step): (p.change, p.goes_to, p.leads) for p in plan(positions, {old.version: old}, new)}
    assert where[("nurture", "weekly-wait")] == ("arm-step-removed", "nurture / summary", len(weekly))

    edited = Worker(db, {new.id: new})
    later = one_day + timedelta(minutes=5)
    edited.publish(later)
    edited.run_until_idle(later)
    with db.connect() as conn:
        sent = {a: Counter(m.step for m in store.get_outbox(conn, ids[a], "s")) for a in LEADS}
        places = {a: store.get_enrollment(conn, ids[a], "s") for a in LEADS}
    for address, arm in arms.items():
        assert max(sent[address].values()) == 1, "never a step's email twice"
        place = places[address]
        assert place is not None and place.version == new.version
        if arm == "weekly":
            assert set(sent[address]) == {"summary"}, "on to where the paths meet, no daily email"
            assert place.step is None  # the summary went out, and the stage stays
        elif arm == "daily":
            assert set(sent[address]) == {"daily-tip"} and place.step == "daily-wait-2"
        else:
            assert set(sent[address]) == {"summary"}


def test_a_removed_variant_arm_sends_nothing_again_as_the_plan_says(db: Engine) -> None:
    old = funnel(VARIANT)
    worker = Worker(db, {old.id: old})
    worker.publish(T0)
    ids = sign_up(db, worker)
    arms = {a: assign(lead_key(a), "v", "welcome", "subject", [("plain", 1), ("teaser", 1)]) for a in LEADS}
    new = funnel(VARIANT.replace("- {id: teaser, send: drip/teaser}", "- {id: bold, send: drip/bold}"))
    with db.connect() as conn:
        assigned = experiment_assignments.in_flight(conn, "v")
    lines = experiment_plan(assigned, {old.version: old}, new)
    (line,) = [x for x in lines if x.change == "arm-removed"]
    assert (line.arm, line.leads) == ("teaser", Counter(arms.values())["teaser"])
    assert "nothing is sent again at this step" in line.says

    edited = Worker(db, {new.id: new})
    later = T0 + timedelta(days=3, minutes=1)
    edited.publish(later)
    edited.run_until_idle(later)
    with db.connect() as conn:
        sent = {a: [(m.step, m.template) for m in store.get_outbox(conn, ids[a], "v")] for a in LEADS}
    for address, arm in arms.items():
        welcome = "drip/teaser" if arm == "teaser" else "drip/welcome"
        assert sent[address] == [("welcome", welcome), ("tip", "drip/tip")]
