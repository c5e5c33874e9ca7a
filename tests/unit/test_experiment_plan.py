"""`funnel plan` on edits of live experiments: one line per thing the edit does to an experiment, with the
assigned leads in flight it concerns, and for a split's leads the place engine.core.versions sends them."""

from __future__ import annotations

from engine.authoring.experiment_plan import ExperimentLine, experiment_plan
from engine.core.definition import Funnel
from engine.core.yamlfile import load_yaml_text
from engine.store.experiment_assignments import ArmPlace
from tests.unit.test_versions import SPLIT

VARIANT = """
id: v
name: V
entry: {triggers: [{manual: true}]}
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
"""


def funnel(text: str) -> Funnel:
    return Funnel.model_validate(load_yaml_text(text))


def variant_places(f: Funnel) -> list[ArmPlace]:
    return [
        ArmPlace(f.version, "subject", "welcome", "plain", "nurture", "later", "waiting", 4),
        ArmPlace(f.version, "subject", "welcome", "teaser", "nurture", "later", "waiting", 3),
    ]


def sentences(lines: list[ExperimentLine]) -> list[tuple[str, str]]:
    return [(line.change, line.sentence) for line in lines]


def test_an_unchanged_experiment_says_its_leads_keep_their_arm() -> None:
    old = funnel(VARIANT)
    new = funnel(VARIANT.replace("id: tip, send: drip/tip", "id: tip, send: drip/other-tip"))
    lines = experiment_plan(variant_places(old), {old.version: old}, new)
    assert sentences(lines) == [("unchanged", "leads already assigned keep their arm (7 leads assigned in flight)")]
    assert lines[0].leads == 7


def test_removing_a_variant_arm_counts_its_leads_and_says_nothing_is_sent_again() -> None:
    old = funnel(VARIANT)
    new = funnel(
        VARIANT.replace(
            "            - {id: teaser, send: drip/teaser}\n", "            - {id: bold, send: drip/bold}\n"
        )
    )
    lines = experiment_plan(variant_places(old), {old.version: old}, new)
    assert ("arm-added", "arm bold added (50% of new leads): leads already assigned keep their arm") in sentences(lines)
    removed = next(line for line in lines if line.change == "arm-removed")
    assert (removed.arm, removed.leads) == ("teaser", 3)
    assert removed.sentence.startswith("3 leads assigned to arm teaser: arm removed; they already have its email")
    assert "drip/teaser" in removed.sentence and "nothing is sent again at this step" in removed.sentence


def test_changed_weights_keep_assigned_leads_and_split_new_ones_by_the_new_weights() -> None:
    old = funnel(VARIANT)
    new = funnel(VARIANT.replace("- {id: plain}", "- {id: plain, weight: 4}"))
    lines = experiment_plan(variant_places(old), {old.version: old}, new)
    assert sentences(lines) == [
        (
            "weights-changed",
            "weights plain/teaser 50/50 -> 80/20: leads already assigned keep their arm, new leads split"
            " plain/teaser 80/20 (7 leads assigned in flight)",
        )
    ]
    assert lines[0].leads == 7


def test_a_new_salt_or_id_is_a_new_experiment_and_a_lost_winner_is_said() -> None:
    old = funnel(VARIANT)
    salted = funnel(VARIANT.replace("id: subject", "id: subject\n          salt: round-2"))
    (line,) = experiment_plan(variant_places(old), {old.version: old}, salted)
    assert (line.change, line.leads) == ("salt-changed", 7)
    assert line.says == "salt subject -> round-2: leads already assigned keep their arm; new leads are assigned afresh"
    renamed = funnel(VARIANT.replace("id: subject", "id: subject-2"))
    (line,) = experiment_plan(variant_places(old), {old.version: old}, renamed)
    assert line.change == "id-changed" and "a decision on subject does not carry over" in line.sentence
    dropped = funnel(
        VARIANT.replace(
            "            - {id: teaser, send: drip/teaser}\n", "            - {id: bold, send: drip/bold}\n"
        )
    )
    lines = experiment_plan(variant_places(old), {old.version: old}, dropped, {"subject": "teaser"})
    lost = next(line for line in lines if line.change == "decision-lost")
    assert lost.says == "the decision sent new leads to teaser, now removed: new leads are split by weight again"


def test_removing_the_variant_experiment_keeps_the_step_and_its_own_template() -> None:
    old = funnel(VARIANT)
    text = VARIANT
    start = text.index("        experiment:")
    plain = funnel(text[:start] + text[text.index("      - {id: later") :])
    lines = experiment_plan(variant_places(old), {old.version: old}, plain)
    assert sentences(lines) == [
        ("experiment-removed", "variant send removed: new leads get drip/welcome"),
        (
            "experiment-removed",
            "4 leads assigned to arm plain: the experiment is removed; they keep the email they got",
        ),
        (
            "experiment-removed",
            "3 leads assigned to arm teaser: the experiment is removed; they keep the email they got",
        ),
    ]


def test_a_removed_split_arm_says_where_its_leads_go_by_the_engines_own_rule() -> None:
    old = funnel(SPLIT)
    text = SPLIT.replace("            - {id: weekly, goto: weekly-wait}\n", "")
    cut = text.index("      - {id: weekly-wait, wait: 7d}")
    new = funnel(text[:cut] + text[text.index("      - {id: daily-wait, wait: 1d}") :])
    places = [
        ArmPlace(old.version, "nurture-pace", "pace", "weekly", "nurture", "weekly-wait", "waiting", 3),
        ArmPlace(old.version, "nurture-pace", "pace", "weekly", "nurture", "summary", "waiting", 2),
        ArmPlace(old.version, "nurture-pace", "pace", "daily", "nurture", "daily-wait", "waiting", 5),
    ]
    lines = experiment_plan(places, {old.version: old}, new)
    assert sentences(lines) == [
        (
            "arm-removed",
            "3 leads assigned to arm weekly: arm removed; on its path at weekly-wait: step gone: they go on at"
            " nurture / summary (arm-step-removed)",
        ),
        (
            "arm-removed",
            "2 leads assigned to arm weekly: arm removed; past its path (at nurture / summary):"
            " nothing changes for them",
        ),
    ]


def test_reordered_arms_are_said_apart_from_weights() -> None:
    old = funnel(VARIANT)
    new = funnel(
        VARIANT.replace(
            "            - {id: plain}\n            - {id: teaser, send: drip/teaser}\n",
            "            - {id: teaser, send: drip/teaser}\n            - {id: plain}\n",
        )
    )
    (line,) = experiment_plan(variant_places(old), {old.version: old}, new)
    assert (line.change, line.leads) == ("arms-reordered", 7)
    assert line.says.startswith("arms reordered plain/teaser -> teaser/plain: leads already assigned keep their arm")
