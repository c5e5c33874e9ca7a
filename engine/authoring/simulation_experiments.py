"""`funnel simulate` and experiments: each arm's own behaviour, and each arm's leads and conversions.

A lead's arm is a pure function of its address (engine.core.experiments), so the simulation knows it
before driving the lead and can give it its arm's event mix from the start: the arm's entries replace
the base entries for the same (event, step) and add the others. A lead counts in an arm's figures once
the journey assigns it (an `AssignArm`), and converts when the experiment's metric happens within the
metric's window after that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from engine.authoring.virtualclock import LeadRun
from engine.core.definition import Experiment, Funnel
from engine.core.experiment_outcome import experiments_of
from engine.core.experiments import AssignArm, choose
from engine.core.journey import NOTHING_PROMOTED, GoalReached, RecordTransition

T = TypeVar("T")


def funnel_experiments(funnel: Funnel) -> dict[str, tuple[str, Experiment]]:
    """Experiment id -> (its step id, the experiment), in file order."""
    return {experiment.id: (step, experiment) for step, experiment in experiments_of(funnel)}


def lead_arms(funnel: Funnel, lead_id: str) -> dict[str, str]:
    """Experiment id -> the arm this lead gets if it reaches the experiment's step."""
    return {
        exp_id: choose(experiment, lead_id, funnel.id, step_id, NOTHING_PROMOTED).arm.id
        for exp_id, (step_id, experiment) in funnel_experiments(funnel).items()
    }


def merged(base: Iterable[T], overrides: Iterable[T]) -> list[T]:
    """`base` with each entry replaced by the override of the same (event, step), others appended."""

    def key(entry: Any) -> tuple[str, str | None]:
        return entry.event, getattr(entry, "step", None)

    replaced = {key(o): o for o in overrides}
    out = [replaced.pop(key(b), b) for b in base]
    return out + list(replaced.values())


@dataclass
class ArmFigures:
    leads: int = 0
    conversions: int = 0


@dataclass
class ExperimentFigures:
    """Per experiment, per arm (in the file's order): leads assigned and leads that met the metric."""

    arms: dict[str, dict[str, ArmFigures]] = field(default_factory=dict)

    @classmethod
    def empty(cls, funnel: Funnel) -> ExperimentFigures:
        return cls(
            {
                exp_id: {arm.id: ArmFigures() for arm in experiment.arms}
                for exp_id, (_, experiment) in funnel_experiments(funnel).items()
            }
        )

    def add(self, funnel: Funnel, run: LeadRun) -> None:
        experiments = funnel_experiments(funnel)
        for c in run.commands():
            if isinstance(c, AssignArm) and c.experiment in experiments:
                figures = self.arms[c.experiment][c.arm]
                figures.leads += 1
                figures.conversions += int(converted(experiments[c.experiment][1], c, run))

    def summary(self) -> dict[str, dict[str, dict[str, int]]]:
        return {
            exp: {arm: {"leads": f.leads, "conversions": f.conversions} for arm, f in arms.items()}
            for exp, arms in self.arms.items()
        }


def converted(experiment: Experiment, assigned: AssignArm, run: LeadRun) -> bool:
    """Whether the experiment's metric happened to this lead within its window after `assigned`."""
    metric = experiment.metric
    start, end = assigned.at, assigned.at + metric.within

    def inside(at: datetime) -> bool:
        return start <= at <= end

    for m in run.moments:
        c, e = m.command, m.event
        if metric.goal is not None and isinstance(c, GoalReached) and inside(c.at):
            return True
        reached = isinstance(c, RecordTransition) and c.to_stage is not None and c.to_stage == metric.stage
        if reached and c is not None and inside(c.at):
            return True
        if e is None or not inside(e.at):
            continue
        if metric.event is not None and e.name == metric.event:
            return True
        if (
            metric.click is not None
            and e.name == "email_clicked"
            and _click_counts(metric.click, assigned, e.properties)
        ):
            return True
    return False


def _click_counts(link: str, assigned: AssignArm, properties: Mapping[str, Any]) -> bool:
    # A variant send's metric counts clicks in its own email; a split's, clicks in any email after it.
    if assigned.template is not None and properties.get("step") != assigned.step:
        return False
    return link == "*" or properties.get("link") == link
