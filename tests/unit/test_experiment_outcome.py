"""What a decided experiment does to new leads: the winner, or what `if_no_winner` says; nothing for a
manual experiment or one still running; the control of a split with a holdout is the holdout."""

from __future__ import annotations

import pytest

from engine.core.definition import Experiment
from engine.core.experiment_outcome import automatic, control, rule
from engine.core.experiment_stats import ArmCounts, decide


def experiment(promote: str = "auto", if_no_winner: str = "keep_control", holdout: bool = False) -> Experiment:
    arms = [{"id": "a", "goto": "x"}, {"id": "b", "goto": "y"}, {"id": "c", "goto": "z", "holdout": holdout}]
    return Experiment.model_validate(
        {
            "id": "e",
            "arms": arms,
            "metric": {"click": "*", "within": "3d"},
            "decide": {"min_per_arm": 100, "promote": promote, "if_no_winner": if_no_winner},
        }
    )


def outcome(exp: Experiment, rates: tuple[int, int, int], leads: int = 1000) -> tuple[str | None, str] | None:
    counts = [ArmCounts(arm, leads, n) for arm, n in zip(("a", "b", "c"), rates, strict=True)]
    found = automatic(exp, decide(counts, control(exp), rule(exp)), counts)
    return None if found is None else (found.arm, found.reason)


def test_a_winner_is_promoted() -> None:
    arm, reason = outcome(experiment(), (100, 160, 100)) or (None, "")
    assert arm == "b" and reason.startswith("winner: b") and reason.endswith("new leads get b")


@pytest.mark.parametrize(
    ("choice", "arm"), [("keep_control", "a"), ("best_observed", "b"), ("keep_split", None)]
)  # fmt: skip
def test_no_winner_follows_if_no_winner(choice: str, arm: str | None) -> None:
    found = outcome(experiment(if_no_winner=choice), (100, 104, 104))
    assert found is not None and found[0] == arm and f"if_no_winner: {choice}" in found[1]


def test_the_control_of_a_split_with_a_holdout_is_the_holdout() -> None:
    assert control(experiment(holdout=True)) == "c"
    found = outcome(experiment(holdout=True), (100, 100, 100))
    assert found is not None and found[0] == "c"


def test_nothing_is_recorded_while_running_or_for_a_manual_experiment() -> None:
    assert outcome(experiment(), (10, 16, 10), leads=50) is None  # collecting
    assert outcome(experiment(promote="manual"), (100, 160, 100)) is None


def test_a_stated_baseline_and_effect_plan_the_horizon() -> None:
    def planned(**decide: object) -> int:
        exp = Experiment.model_validate(
            {
                "id": "e",
                "arms": [{"id": "a", "send": "t/a"}, {"id": "b", "send": "t/b"}],
                "metric": {"click": "*", "within": "3d"},
                "decide": {"min_per_arm": 100, "promote": "auto", **decide},
            }
        )
        return rule(exp).horizon

    # docs/experiments.md's table: 5 % baseline, +1 point, alpha 0.05, power 0.8, two arms: 8,158 per arm.
    assert planned(baseline=0.05, min_detectable_effect=0.01) == 8158
    assert planned(baseline=0.10, min_detectable_effect=0.02) == 3841
    assert planned() == 100
    # Never below the stated minimum.
    assert planned(baseline=0.2, min_detectable_effect=0.5, min_per_arm=5000) == 5000
    for bad, words in [
        ({"baseline": 0.05}, "both baseline and min_detectable_effect"),
        ({"baseline": 0.7, "min_detectable_effect": 0.4}, "below 1"),
    ]:
        with pytest.raises(ValueError, match=words):
            planned(**bad)
