"""The journey map's experiments: a split step (an experiment, not an ordinary branch: its arms are paths,
with their shares and the holdout) and a variant send (its arms are templates and subject lines), with,
where the map shows live figures, the leads assigned to each arm and the experiment's decision.

Pure: the definition, the subjects and the live figures in; views out, for every drawing alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from engine.core.definition import Experiment, Metric, SendStep, SplitStep, Stage
from engine.core.durations import in_words
from engine.core.experiments import split_paths


@dataclass(frozen=True, slots=True)
class Decided:
    """An experiment's recorded decision: `arm` is what new leads get (None: on by weight)."""

    arm: str | None
    how: str  # auto, manual, stopped
    at: datetime
    by: str


@dataclass(frozen=True, slots=True)
class ArmView:
    id: str
    weight: float
    share: float  # of the leads assigned by the hash, 0..1
    control: bool  # what the others are compared with: the holdout of a split that has one, else the first
    holdout: bool = False
    template: str | None = None  # a variant send's arm: its template
    subject: str | None = None
    goto: str | None = None  # a split's arm: where its path starts
    path: tuple[str, ...] = ()  # a split's arm: the steps of its own path
    leads: int | None = None  # with live figures: the leads ever assigned to it
    winner: bool = False  # the decision sends new leads here


ExperimentKind = Literal["split", "variant send"]


@dataclass(frozen=True, slots=True)
class ExperimentView:
    id: str
    kind: ExperimentKind
    stage: str
    step: str
    metric: str  # what it counts, in words
    arms: tuple[ArmView, ...]
    decided: Decided | None = None
    live: bool = False

    @property
    def state(self) -> str:
        """The decision in words: not decided, or how, when and what new leads get."""
        d = self.decided
        if d is None:
            return "not decided yet" if self.live else ""
        then = f"new leads get {d.arm}" if d.arm is not None else "new leads are split by weight"
        return f"decided ({d.how}) {d.at:%Y-%m-%d} by {d.by}: {then}"


def metric_words(metric: Metric) -> str:
    within = in_words(metric.within)
    if metric.goal is not None:
        return f"the funnel's goal within {within}"
    if metric.event is not None:
        return f"{metric.event} within {within}"
    if metric.click is not None:
        return f"a click on {'any link' if metric.click == '*' else 'link ' + metric.click} within {within}"
    return f"reaching stage {metric.stage} within {within}"


def _control(experiment: Experiment) -> str:
    holdout = next((a.id for a in experiment.arms if a.holdout), None)
    return holdout or experiment.arms[0].id


def experiment_views(
    stage: Stage,
    subjects: Mapping[str, str],
    assigned: Mapping[tuple[str, str], int] | None,
    decided: Mapping[str, Decided],
) -> tuple[ExperimentView, ...]:
    """The stage's experiments in step order; `assigned` ((experiment, arm) -> leads) None without live
    figures."""
    views = []
    for step in stage.steps:
        if isinstance(step, SendStep) and step.experiment is not None:
            views.append(_view(step.experiment, "variant send", stage, step.id, subjects, assigned, decided, step))
        elif isinstance(step, SplitStep):
            views.append(_view(step.split, "split", stage, step.id, subjects, assigned, decided, step))
    return tuple(views)


def _view(
    e: Experiment,
    kind: ExperimentKind,
    stage: Stage,
    step_id: str,
    subjects: Mapping[str, str],
    assigned: Mapping[tuple[str, str], int] | None,
    decided: Mapping[str, Decided],
    step: SendStep | SplitStep,
) -> ExperimentView:
    total = sum(a.weight for a in e.arms)
    paths = split_paths(stage, step) if isinstance(step, SplitStep) else {}
    decision = decided.get(e.id)
    control = _control(e)
    arms = []
    for arm in e.arms:
        template = (arm.send or step.send) if isinstance(step, SendStep) else None
        arms.append(
            ArmView(
                id=arm.id,
                weight=arm.weight,
                share=arm.weight / total,
                control=arm.id == control,
                holdout=arm.holdout,
                template=template,
                subject=subjects.get(template) if template is not None else None,
                goto=arm.goto,
                path=paths.get(arm.id, ()),
                leads=None if assigned is None else assigned.get((e.id, arm.id), 0),
                winner=decision is not None and decision.arm == arm.id,
            )
        )
    return ExperimentView(
        e.id, kind, stage.id, step_id, metric_words(e.metric), tuple(arms), decision, assigned is not None
    )


def arm_words(arm: ArmView) -> str:
    """`weekly 50% (control)`, `none 25% (holdout)`, with the leads when live: `weekly 50% (control): 12 leads`."""
    marks = [m for m, on in (("control", arm.control), ("holdout", arm.holdout), ("winner", arm.winner)) if on]
    text = f"{arm.id} {arm.share:.0%}" + (f" ({', '.join(marks)})" if marks else "")
    if arm.leads is not None:
        text += f": {arm.leads} lead{'' if arm.leads == 1 else 's'}"
    return text


__all__ = ["ArmView", "Decided", "ExperimentView", "arm_words", "experiment_views", "metric_words"]
