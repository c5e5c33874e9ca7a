"""What a decided experiment does to new leads. Pure: the experiment's rule and the test's decision in,
the arm new leads go to out (docs/experiments.md, "Deciding and promoting").

- `winner` with `promote: auto`: the winner.
- `no_winner` with `promote: auto`: `if_no_winner` says: `keep_control`, the control; `best_observed`,
  the arm with the highest observed rate (the first listed among equal rates); `keep_split`, no arm (new
  leads go on being assigned by weight, and the experiment is over: nothing is decided again).
- `promote: manual`: nothing automatic; the state is shown and an operator promotes or stops.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from engine.core.definition import Experiment, Funnel, SendStep, SplitStep
from engine.core.experiment_stats import ArmCounts, Decision, Rule, planned_per_arm


def experiments_of(funnel: Funnel) -> Iterator[tuple[str, Experiment]]:
    """(step id, experiment) of each experiment of the funnel, in file order."""
    for stage in funnel.stages:
        for step in stage.steps:
            if isinstance(step, SendStep) and step.experiment is not None:
                yield step.id, step.experiment
            elif isinstance(step, SplitStep):
                yield step.id, step.split


def control(experiment: Experiment) -> str:
    """The arm the others are compared with: the holdout of a split that has one, else the first arm."""
    return next((arm.id for arm in experiment.arms if arm.holdout), experiment.arms[0].id)


def rule(experiment: Experiment) -> Rule:
    """The file's rule; a stated baseline and minimum detectable effect plan the horizon (never below
    `min_per_arm`), for as many comparisons to the control as the experiment has."""
    d = experiment.decide
    planned = None
    if d.baseline is not None and d.min_detectable_effect is not None:
        comparisons = len(experiment.arms) - 1
        planned = planned_per_arm(d.baseline, d.min_detectable_effect, d.alpha, d.power, comparisons)
    return Rule(alpha=d.alpha, min_per_arm=d.min_per_arm, planned_per_arm=planned)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the engine records on its own: `arm` for new leads (None: on by weight) and why."""

    arm: str | None
    reason: str


def automatic(experiment: Experiment, decision: Decision, counts: Sequence[ArmCounts]) -> Outcome | None:
    """The outcome the engine records by itself now, or None (still running, or `promote: manual`)."""
    if experiment.decide.promote != "auto" or decision.state not in ("winner", "no_winner"):
        return None
    if decision.state == "winner":
        return Outcome(decision.winner, f"{decision.reason}; new leads get {decision.winner}")
    choice = experiment.decide.if_no_winner
    if choice == "keep_split":
        return Outcome(None, f"{decision.reason}; if_no_winner: keep_split, new leads keep being split by weight")
    if choice == "best_observed":
        order = [arm.id for arm in experiment.arms]
        best = max(sorted(counts, key=lambda c: order.index(c.arm)), key=lambda c: c.rate)
        return Outcome(best.arm, f"{decision.reason}; if_no_winner: best_observed, new leads get {best.arm}")
    arm = control(experiment)
    return Outcome(arm, f"{decision.reason}; if_no_winner: keep_control, new leads get {arm}")
