"""Editing a live funnel: leads keep their place by id; removed steps and stages hand them on."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from engine.core import journey
from engine.core.definition import Funnel
from engine.core.journey import Cause, Lead, RecordTransition, SendEmail
from engine.core.versions import migrate_enrollment
from engine.core.yamlfile import load_yaml_text

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
LEAD = Lead("sam@example.com")

BEFORE = """
id: f
name: F
entry: {triggers: [{manual: true}]}
stages:
  - id: first
    steps:
      - {id: hello, send: hello}
      - {id: pause, wait: 2d}
      - {id: tip, send: tip}
      - {id: pause-2, wait: 2d}
      - {id: offer, send: offer}
  - id: second
    steps:
      - {id: welcome, send: welcome}
  - id: third
    steps:
      - {id: thanks, send: thanks}
    on_end: stay
"""


def funnel(text: str) -> Funnel:
    return Funnel.model_validate(load_yaml_text(text))


def waiting_at_pause() -> tuple[Funnel, journey.Enrollment]:
    old = funnel(BEFORE)
    decision = journey.enroll(old, LEAD, T0, Cause("manual"))
    assert decision.enrollment is not None and decision.enrollment.step == "pause"
    return old, decision.enrollment


def sends(decision: journey.Decision) -> list[str]:
    return [c.step for c in decision.commands if isinstance(c, SendEmail)]


def test_an_unchanged_place_is_kept_and_only_the_version_moves() -> None:
    old, state = waiting_at_pause()
    new = funnel(BEFORE.replace("name: F", "name: F renamed"))
    migration = migrate_enrollment(state, new, old)
    assert migration.change == "kept"
    assert migration.enrollment == replace(state, version=new.version)


def test_a_removed_wait_hands_the_lead_to_the_next_step_at_once() -> None:
    old, state = waiting_at_pause()
    new = funnel(BEFORE.replace("      - {id: pause, wait: 2d}\n", ""))
    edit_time = T0 + timedelta(hours=5)
    migration = migrate_enrollment(state, new, old, edit_time)
    assert migration.change == "step-removed" and migration.enrollment.step == "tip"
    decision = journey.on_clock(new, LEAD, migration.enrollment, edit_time)
    assert sends(decision) == ["tip"]
    assert [c.at for c in decision.commands if isinstance(c, SendEmail)] == [edit_time]


def test_removing_the_rest_of_a_sequence_follows_on_end() -> None:
    old, state = waiting_at_pause()
    cut = BEFORE.index("      - {id: pause, wait: 2d}")
    rest = BEFORE.index("  - id: second")
    new = funnel(BEFORE[:cut] + BEFORE[rest:])
    migration = migrate_enrollment(state, new, old, T0)
    assert migration.change == "step-removed" and migration.enrollment.phase == "ended"
    decision = journey.on_clock(new, LEAD, migration.enrollment, T0)
    moves = [(c.from_stage, c.to_stage, c.cause.kind) for c in decision.commands if isinstance(c, RecordTransition)]
    assert moves == [("first", "second", "sequence_end"), ("second", "third", "sequence_end")]
    assert sends(decision) == ["welcome", "thanks"]


def test_a_removed_stage_moves_the_lead_to_the_next_surviving_stage_and_says_why() -> None:
    old = funnel(BEFORE)
    state = journey.enroll(old, LEAD, T0, Cause("manual")).enrollment
    assert state is not None
    in_first = replace(state, stage="first")
    start = BEFORE.index("  - id: first")
    end = BEFORE.index("  - id: second")
    new = funnel(BEFORE[:start] + BEFORE[end:])
    migration = migrate_enrollment(in_first, new, old, T0)
    assert migration.change == "stage-removed" and migration.enrollment.stage == "second"
    assert migration.transition is not None
    assert (migration.transition.from_stage, migration.transition.to_stage) == ("first", "second")
    assert migration.transition.cause == Cause("edit", new.version)
    assert sends(journey.on_clock(new, LEAD, migration.enrollment, T0)) == ["welcome", "thanks"]


def test_a_renamed_step_keeps_the_lead_in_place_and_its_sent_email_counts() -> None:
    old = funnel(BEFORE)
    state = journey.enroll(old, LEAD, T0, Cause("manual")).enrollment
    assert state is not None and "hello" in state.sent
    edited = BEFORE.replace("{id: hello,", "{id: greeting,").replace("{id: pause,", "{id: first-pause,")
    new = funnel(edited + "renamed:\n  steps: {hello: greeting, pause: first-pause}\n")
    migration = migrate_enrollment(state, new, old, T0)
    assert migration.change == "renamed"
    assert migration.enrollment.step == "first-pause" and "greeting" in migration.enrollment.sent
    later = journey.on_clock(new, LEAD, migration.enrollment, T0 + timedelta(days=2))
    assert sends(later) == ["tip"]
    # Were the lead sent back to the renamed first step, the email it already got would not go again.
    again = journey.on_clock(new, LEAD, replace(migration.enrollment, step="greeting", phase="ready"), T0)
    assert "greeting" not in sends(again)


SPLIT = """
id: s
name: S
entry: {triggers: [{manual: true}]}
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
      - {id: weekly-done, branch: {if: {has_tag: x}, then: {goto: summary}, else: {goto: summary}}}
      - {id: daily-wait, wait: 1d}
      - {id: daily-tip, send: daily}
      - {id: daily-wait-2, wait: 1d}
      - {id: daily-tip-2, send: daily-2}
      - {id: summary, send: summary}
    on_end: stay
goal: {event: bought}
"""


def test_split_paths_are_each_arms_own_steps_and_not_where_they_meet() -> None:
    from engine.core.definition import SplitStep
    from engine.core.experiments import split_paths

    f = funnel(SPLIT)
    stage = f.stage("nurture")
    split = stage.steps[0]
    assert isinstance(split, SplitStep)
    assert split_paths(stage, split) == {
        "weekly": ("weekly-wait", "weekly-tip", "weekly-done"),
        "daily": ("daily-wait", "daily-tip", "daily-wait-2", "daily-tip-2"),
        "none": (),
    }


def _at(f: Funnel, step: str) -> journey.Enrollment:
    return journey.Enrollment(f.id, f.version, "active", "nurture", step, "waiting", T0, T0, T0, T0)


def test_a_lead_on_a_removed_arms_path_goes_where_the_paths_meet_never_into_another_arm() -> None:
    old = funnel(SPLIT)
    # The weekly arm and its steps are gone. By the file's order alone the next step still there after
    # weekly-tip would be daily-wait: another arm's path, another treatment.
    text = SPLIT.replace("            - {id: weekly, goto: weekly-wait}\n", "")
    cut = text.index("      - {id: weekly-wait, wait: 7d}")
    new = funnel(text[:cut] + text[text.index("      - {id: daily-wait, wait: 1d}") :])
    migration = migrate_enrollment(_at(old, "weekly-tip"), new, old, T0)
    assert (migration.change, migration.enrollment.step) == ("arm-step-removed", "summary")
    # The engine runs on from there: the summary goes out, no daily email.
    decision = journey.on_clock(new, LEAD, migration.enrollment, T0)
    assert sends(decision) == ["summary"]


def test_a_removed_step_of_a_kept_arm_goes_on_along_the_same_path() -> None:
    old = funnel(SPLIT)
    # weekly-wait removed: the next step in file order is weekly-tip, its own path's.
    new = funnel(
        SPLIT.replace("      - {id: weekly-wait, wait: 7d}\n", "").replace("goto: weekly-wait", "goto: weekly-tip")
    )
    assert migrate_enrollment(_at(old, "weekly-wait"), new, old, T0).enrollment.step == "weekly-tip"
    # weekly-done removed: the daily path follows it in the file; the weekly lead skips it.
    new = funnel(
        SPLIT.replace(
            "      - {id: weekly-done, branch: {if: {has_tag: x}, then: {goto: summary}, else: {goto: summary}}}\n", ""
        )
    )
    old_state = _at(old, "weekly-done")
    migration = migrate_enrollment(old_state, new, old, T0)
    assert (migration.change, migration.enrollment.step) == ("arm-step-removed", "summary")
    # A step outside every path keeps the plain rule.
    plain = funnel(
        SPLIT.replace("      - {id: summary, send: summary}\n", "").replace("goto: summary", "goto: daily-tip-2")
    )
    assert migrate_enrollment(_at(old, "summary"), plain, old, T0).change == "step-removed"


def test_a_step_two_paths_share_is_still_the_leads_own() -> None:
    # weekly's path runs on into daily-tip (no goto past it): daily-tip is on both arms' paths.
    text = (
        SPLIT.replace(
            "      - {id: weekly-done, branch: {if: {has_tag: x}, then: {goto: summary}, else: {goto: summary}}}\n", ""
        )
        .replace("      - {id: daily-wait, wait: 1d}\n", "")
        .replace("goto: daily-wait", "goto: daily-tip")
    )
    old = funnel(text)
    new = funnel(
        text.replace("      - {id: weekly-tip, send: weekly}\n", "")
        .replace("      - {id: weekly-wait, wait: 7d}\n", "")
        .replace("goto: weekly-wait", "goto: daily-tip")
    )
    migration = migrate_enrollment(_at(old, "weekly-wait"), new, old, T0)
    assert (migration.change, migration.enrollment.step) == ("arm-step-removed", "daily-tip")
