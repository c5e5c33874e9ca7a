"""Experiments: assignment by a stable hash (engine.core.experiments), and the journey taking each lead
down its arm: a variant send queues the arm's template, a split moves the lead to its arm's path, a
holdout skips the split's paths, and a promoted winner takes new assignments only."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.authoring.validation import load_funnels
from engine.core import journey
from engine.core.definition import Funnel
from engine.core.experiments import AssignArm, assign, choose, lead_key, unit_hash
from engine.core.journey import Cause, Lead, SendEmail

ROOT = Path(__file__).resolve().parents[2]
MONDAY = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
EXPERIMENT = {
    "id": "subject",
    "arms": [{"id": "a"}, {"id": "b", "send": "demo/welcome-b"}],
    "metric": {"click": "*", "within": "3d"},
    "decide": {"alpha": 0.05, "min_per_arm": 100, "promote": "auto"},
}


def funnel(*steps: dict[str, Any]) -> Funnel:
    return Funnel.model_validate(
        {
            "id": "demo",
            "name": "Demo",
            "entry": {"triggers": [{"event": "form_submitted"}]},
            "stages": [{"id": "inquiry", "steps": list(steps), "on_end": "stay"}],
        }
    )


VARIANT = funnel({"id": "welcome", "send": "demo/welcome", "experiment": EXPERIMENT})
SPLIT = funnel(
    {
        "id": "pace",
        "split": {
            "id": "pace",
            "arms": [
                {"id": "fast", "goto": "fast-email", "weight": 2},
                {"id": "slow", "goto": "slow-wait", "weight": 1},
                {"id": "none", "holdout": True, "goto": "after", "weight": 1},
            ],
            "metric": {"goal": True, "within": "30d"},
            "decide": {"alpha": 0.05, "min_per_arm": 100, "promote": "manual", "if_no_winner": "keep_split"},
        },
    },
    {"id": "fast-email", "send": "demo/fast"},
    {"id": "fast-done", "exit": "fast-path"},
    {"id": "slow-wait", "wait": "2d"},
    {"id": "slow-email", "send": "demo/slow"},
    {"id": "slow-done", "exit": "slow-path"},
    {"id": "after", "send": "demo/after"},
)


def run(f: Funnel, email: str, promoted: dict[str, str] | None = None) -> list[journey.Command]:
    lead = Lead(email)
    decision = journey.enroll(f, lead, MONDAY, Cause("event", "e1"), promoted=promoted or {})
    commands = list(decision.commands)
    if decision.enrollment is not None and decision.wake_at is not None:
        later = journey.on_clock(f, lead, decision.enrollment, decision.wake_at, promoted=promoted or {})
        commands += later.commands
    return commands


# -- assignment ---------------------------------------------------------------------------------------


def test_the_same_parts_give_the_same_arm_and_each_part_counts() -> None:
    arms = [("a", 1.0), ("b", 1.0)]
    first = assign("ada@example.com", "demo", "welcome", "s1", arms)
    assert all(assign("ada@example.com", "demo", "welcome", "s1", arms) == first for _ in range(3))
    base = unit_hash("ada@example.com", "demo", "welcome", "s1")
    others = [
        unit_hash("bob@example.com", "demo", "welcome", "s1"),
        unit_hash("ada@example.com", "other", "welcome", "s1"),
        unit_hash("ada@example.com", "demo", "other", "s1"),
        unit_hash("ada@example.com", "demo", "welcome", "s2"),
    ]
    assert all(0 <= h < 1 for h in [base, *others]) and base not in others


def test_the_lead_key_is_the_address_as_the_engine_stores_it() -> None:
    assert lead_key("  Ada@Example.COM ") == lead_key("ada@example.com")
    experiment = VARIANT.stages[0].steps[0].experiment
    assert experiment is not None
    picks = {choose(experiment, e, "demo", "welcome", {}).arm.id for e in ("Ada@Example.com", "ada@example.com")}
    assert len(picks) == 1


@settings(max_examples=25, deadline=None)
@given(weights=st.lists(st.floats(min_value=0.1, max_value=10), min_size=2, max_size=5), salt=st.text(max_size=8))
def test_shares_follow_the_weights_within_sampling_error(weights: list[float], salt: str) -> None:
    n = 6000
    arms = [(f"arm{i}", w) for i, w in enumerate(weights)]
    counts = Counter(assign(f"lead-{i}@x.example", "f", "s", salt, arms) for i in range(n))
    total = sum(weights)
    for arm_id, weight in arms:
        p = weight / total
        sigma = (n * p * (1 - p)) ** 0.5
        assert abs(counts[arm_id] - n * p) <= 5 * sigma + 1, (arm_id, counts[arm_id], n * p)


def test_renaming_an_arm_moves_nobody_reordering_does_and_adding_one_moves_the_documented_share() -> None:
    leads = [f"lead-{i}@x.example" for i in range(20000)]

    def arms_of(arms: list[tuple[str, float]]) -> list[str]:
        return [assign(k, "f", "s", "salt", arms) for k in leads]

    two = arms_of([("a", 1), ("b", 1)])
    renamed = arms_of([("control", 1), ("b", 1)])
    assert [x.replace("control", "a") for x in renamed] == two
    reordered = arms_of([("b", 1), ("a", 1)])
    assert sum(x != y for x, y in zip(two, reordered, strict=True)) > 0.9 * len(leads)
    three = arms_of([("a", 1), ("b", 1), ("c", 1)])
    moved = sum(x != y for x, y in zip(two, three, strict=True)) / len(leads)
    # Old intervals a [0, 1/2), b [1/2, 1); new a [0, 1/3), b [1/3, 2/3), c [2/3, 1): 1/6 + 1/3 move.
    assert abs(moved - 0.5) < 0.02
    assert abs(three.count("c") / len(leads) - 1 / 3) < 0.02


def test_a_promoted_winner_takes_new_assignments_and_an_unknown_one_is_ignored() -> None:
    experiment = VARIANT.stages[0].steps[0].experiment
    assert experiment is not None
    leads = [f"lead-{i}@x.example" for i in range(200)]
    assert {choose(experiment, k, "demo", "welcome", {"subject": "b"}).arm.id for k in leads} == {"b"}
    hashed = {choose(experiment, k, "demo", "welcome", {"subject": "gone"}).arm.id for k in leads}
    assert hashed == {"a", "b"}
    assert choose(experiment, leads[0], "demo", "welcome", {"subject": "b"}).promoted


# -- the journey ----------------------------------------------------------------------------------------


def _arm_of(commands: list[journey.Command]) -> AssignArm:
    (assigned,) = [c for c in commands if isinstance(c, AssignArm)]
    return assigned


def test_a_variant_send_queues_the_arms_template_and_records_the_arm() -> None:
    templates: Counter[str] = Counter()
    for i in range(400):
        commands = run(VARIANT, f"lead-{i}@x.example")
        (send,) = [c for c in commands if isinstance(c, SendEmail)]
        assigned = _arm_of(commands)
        assert send.step == "welcome" and send.template == assigned.template
        assert assigned.template == ("demo/welcome" if assigned.arm == "a" else "demo/welcome-b")
        assert (assigned.experiment, assigned.step, assigned.at, assigned.holdout) == (
            "subject",
            "welcome",
            MONDAY,
            False,
        )
        assert commands.index(assigned) < commands.index(send)
        templates[send.template] += 1
    assert 150 < templates["demo/welcome"] < 250 and templates["demo/welcome"] + templates["demo/welcome-b"] == 400


def test_the_same_lead_gets_the_same_arm_again_and_a_lead_without_consent_is_not_assigned() -> None:
    first = _arm_of(run(VARIANT, "ada@example.com"))
    assert all(_arm_of(run(VARIANT, "ada@example.com")) == first for _ in range(3))
    lead = Lead("ada@example.com", consent="unsubscribed")
    decision = journey.enroll(VARIANT, lead, MONDAY, Cause("event", "e1"))
    assert not [c for c in decision.commands if isinstance(c, AssignArm | SendEmail)]


def test_after_promotion_new_leads_get_the_winner_and_a_lead_assigned_before_keeps_its_arm() -> None:
    # A lead waits for the send window at the variant send, is assigned when the email goes out; the
    # experiment is promoted later: a lead already sent its arm gets nothing more from the step.
    waits = funnel({"id": "pause", "wait": "1d"}, {"id": "welcome", "send": "demo/welcome", "experiment": EXPERIMENT})
    leads = [f"lead-{i}@x.example" for i in range(60)]
    before = {k: _arm_of(run(waits, k)).arm for k in leads}
    assert set(before.values()) == {"a", "b"}
    after = {k: _arm_of(run(waits, k, {"subject": "b"})) for k in leads}
    assert {a.arm for a in after.values()} == {"b"} and all(a.promoted for a in after.values())
    in_a = next(k for k, arm in before.items() if arm == "a")
    decision = journey.enroll(waits, Lead(in_a), MONDAY, Cause("event", "e1"))
    assert decision.enrollment is not None
    sent = journey.on_clock(waits, Lead(in_a), decision.enrollment, MONDAY + timedelta(days=1))
    assert _arm_of(list(sent.commands)).arm == "a"
    assert sent.enrollment is not None
    later = journey.on_clock(waits, Lead(in_a), sent.enrollment, MONDAY + timedelta(days=9), promoted={"subject": "b"})
    assert not later.commands and sent.enrollment.sent == {"welcome"}


def test_a_split_moves_each_lead_down_its_arms_path_and_the_holdout_skips_the_paths() -> None:
    seen: Counter[str] = Counter()
    for i in range(600):
        commands = run(SPLIT, f"lead-{i}@x.example")
        assigned = _arm_of(commands)
        sent = [c.step for c in commands if isinstance(c, SendEmail)]
        exits = [c.exit_reason for c in commands if isinstance(c, journey.RecordTransition) and c.to_stage is None]
        seen[assigned.arm] += 1
        if assigned.arm == "fast":
            assert (sent, exits) == (["fast-email"], ["fast-path"])
        elif assigned.arm == "slow":
            (slow,) = [c for c in commands if isinstance(c, SendEmail)]
            assert (sent, exits, slow.at) == (["slow-email"], ["slow-path"], MONDAY + timedelta(days=2))
        else:
            assert assigned.holdout and sent == ["after"] and exits == [] and assigned.template is None
    assert 240 < seen["fast"] < 360 and 100 < seen["slow"] < 200 and 100 < seen["none"] < 200


# -- the format -----------------------------------------------------------------------------------------

FUNNEL = """\
id: exp
name: Experiments
entry:
  triggers:
    - event: form_submitted
stages:
  - id: inquiry
    steps:
      - id: welcome
        send: lead-magnet/report-delivery
        experiment:
          id: subject
          arms:
            - {id: a}
            - {id: b, send: lead-magnet/hidden-costs}
          metric: {click: report, within: 3d}
          decide: {alpha: 0.05, min_per_arm: 100, promote: auto}
      - id: pace
        split:
          id: pace
          arms:
            - {id: fast, goto: later}
            - {id: none, holdout: true, goto: later}
          metric: {stage: done, within: 30d}
          decide: {alpha: 0.05, min_per_arm: 100, promote: manual, if_no_winner: best_observed}
      - id: later
        send: lead-magnet/benefits-of-recycling
  - id: done
goal: {event: call_booked}
"""


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "exp.yaml"
    path.write_text(text, encoding="utf-8")
    return [str(e).removeprefix(f"{path}:") for e in load_funnels([path], emails_dir=ROOT / "emails").errors]


def test_a_funnel_with_a_variant_send_and_a_split_loads(tmp_path: Path) -> None:
    assert errors_of(tmp_path, FUNNEL) == []


def test_shape_errors_name_line_and_column(tmp_path: Path) -> None:
    one_arm = FUNNEL.replace("            - {id: b, send: lead-magnet/hidden-costs}\n", "")
    assert errors_of(tmp_path, one_arm) == [
        "14:13: stage 'inquiry' step 'welcome' experiment.arms: expected at least two arms, found 1"
    ]
    twice = FUNNEL.replace("{id: b, send: lead-magnet/hidden-costs}", "{id: a, send: lead-magnet/hidden-costs}")
    assert errors_of(tmp_path, twice) == [
        "14:13: stage 'inquiry' step 'welcome' experiment.arms: expected unique arm ids, found 'a' twice"
    ]
    zero = FUNNEL.replace("{id: fast, goto: later}", "{id: fast, goto: later, weight: 0}")
    (error,) = errors_of(tmp_path, zero)
    where = "22:47: stage 'inquiry' step 'pace' split.arms[0].weight"
    assert error == f"{where}: expected a positive weight such as 1 or 0.5, found 0"


def test_graph_errors_name_line_and_column(tmp_path: Path) -> None:
    cases = {
        "{id: b, send: lead-magnet/hidden-costs}": (
            "{id: b, send: lead-magnet/nope}",
            "15:29",
            "'lead-magnet/nope' not found",
        ),
        "{click: report, within: 3d}": ("{click: pricing, within: 3d}", "16:27", "unknown link 'pricing'"),
        "{stage: done, within: 30d}": ("{stage: gone, within: 30d}", "24:27", "unknown stage 'gone'"),
        "{id: a}\n": ("{id: a, holdout: true}\n", "14:23", "a holdout in a variant send is meaningless"),
        "          id: pace\n": ("          id: subject\n", "20:15", "experiment id 'subject' is also used"),
        "{id: fast, goto: later}": ("{id: fast, goto: nowhere}", "22:32", "unknown step 'nowhere'"),
    }
    for old, (new, where, words) in cases.items():
        (error,) = errors_of(tmp_path, FUNNEL.replace(old, new, 1))
        assert error.startswith(where + ":") and words in error, (new, error)
    event = FUNNEL.replace("{stage: done, within: 30d}", "{event: call_bookd, within: 30d}")
    (error,) = errors_of(tmp_path, event)
    assert error.startswith("24:27:") and "unknown event 'call_bookd'" in error and "call_booked" in error


def test_a_funnel_without_experiments_keeps_its_version() -> None:
    plain = funnel({"id": "welcome", "send": "demo/welcome"})
    assert "experiment" not in plain.model_dump(mode="json")["stages"][0]["steps"][0]
