"""An experiment's figures in words and as data, for the states the database tests do not reach: while
`running` (past the minimum, short of a planned horizon) the lifts are shown and marked as not a decision;
while `collecting` no lift is shown at all."""

from __future__ import annotations

from typing import Any, cast

from rich.console import Console

from engine.cli.experiments import print_experiment
from engine.core.definition import Experiment
from engine.core.experiment_stats import ArmCounts, Rule, decide
from engine.views.experiment_figures import ArmFigures, ExperimentFigures, as_dict, csv_rows

EXPERIMENT = Experiment.model_validate(
    {
        "id": "subject",
        "arms": [{"id": "plain"}, {"id": "teaser", "send": "drip/teaser"}],
        "metric": {"click": "*", "within": "3d"},
        "decide": {"min_per_arm": 100, "promote": "auto"},
    }
)


def figures(counts: list[ArmCounts], planned: int) -> ExperimentFigures:
    decision = decide(counts, "plain", Rule(alpha=0.05, min_per_arm=100, planned_per_arm=planned))
    compared = {c.arm: c for c in decision.comparisons}
    arms = [
        ArmFigures(c.arm, c.arm == "plain", c.leads + 7, 0, c.leads, c.conversions, c.rate, compared.get(c.arm))
        for c in counts
    ]
    return ExperimentFigures("ab", "welcome", EXPERIMENT, decision.state, decision.reason, decision.horizon, arms, None)


def printed(e: ExperimentFigures) -> str:
    console = Console(record=True, width=160)
    print_experiment(console, e)
    return console.export_text()


def test_while_running_the_lift_is_shown_and_marked_as_not_a_decision() -> None:
    running = figures([ArmCounts("plain", 200, 20), ArmCounts("teaser", 210, 42)], planned=3841)
    assert running.state == "running" and running.not_a_decision
    data = as_dict(running)
    assert (data["state"], data["not_a_decision"], data["horizon"], data["decision"]) == ("running", True, 3841, None)
    plain, teaser = cast(list[dict[str, Any]], data["arms"])
    assert (plain["lift"], teaser["lift"], teaser["relative_lift"]) == (None, 0.1, 1.0)
    assert teaser["lift_low"] < 0.1 < teaser["lift_high"]
    text = printed(running)
    assert "+10.00 pts (+100.0%)" in text and "not a decision" in text and "decision: none yet" in text
    rows = {(item, figure): value for _, _, item, figure, value in csv_rows(running)}
    assert rows[("subject", "not_a_decision")] is True and rows[("subject/teaser", "assigned")] == 217
    assert ("subject", "decision_how") not in rows


def test_while_collecting_no_lift_is_shown() -> None:
    collecting = figures([ArmCounts("plain", 99, 20), ArmCounts("teaser", 210, 42)], planned=3841)
    assert collecting.state == "collecting" and not collecting.not_a_decision
    assert [a["lift"] for a in cast(list[dict[str, Any]], as_dict(collecting)["arms"])] == [None, None]
    text = printed(collecting)
    assert "not a decision" not in text and "pts" not in text and "collecting: 1 arm(s) below" in text
