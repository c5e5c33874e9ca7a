"""Which arm of an experiment a lead gets. Pure and deterministic: no clock, no randomness.

A lead's arm is a hash of (lead key, funnel id, step id, the experiment's salt) read as a number in
[0, 1), placed on the arms' cumulative weights in the order the file lists them. So:

- the same lead always lands in the same arm: in `funnel simulate`, in `funnel test`, in the engine,
  across a restart and across any edit that keeps the funnel id, the step id, the salt, the arms and
  their weights (other steps, other experiments, templates and the metric do not matter);
- the arm's id does not enter the hash, but the order of the arms does: reordering arms moves leads
  (their intervals move), renaming an arm does not. Adding an arm moves the leads whose number leaves
  their arm's interval: appended last with weight w to arms of total weight W, it takes w / (W + w) of
  new assignments and shifts the old boundaries too (a third equal arm added to two equal arms moves half
  of the leads: a third into the new arm, a sixth from the first arm to the second);
- a new salt reassigns everyone.

Once an experiment is decided and promoted, `promoted` (experiment id -> winning arm) sends new
assignments to the winner; a lead already assigned keeps its arm, because the core assigns a lead once,
when it runs the step, and never asks again.

A split's arms are paths of steps of its stage (`split_paths`): what a lead on one arm's path may get and
a lead on another may not. An edit of the funnel uses them so that a lead is never moved into another
arm's path (engine.core.versions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from engine.core.addresses import lookup_key
from engine.core.definition import (
    Arm,
    BranchStep,
    ExitStep,
    Experiment,
    MoveStep,
    Outcome,
    SplitStep,
    Stage,
    WaitForStep,
)

_SCALE = float(1 << 64)


def unit_hash(lead_key: str, funnel_id: str, step_id: str, salt: str) -> float:
    """A uniform number in [0, 1) from the parts: the first 8 bytes of SHA-256 of them, joined by NUL."""
    digest = hashlib.sha256("\0".join((lead_key, funnel_id, step_id, salt)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign(lead_key: str, funnel_id: str, step_id: str, salt: str, arms: Sequence[tuple[str, float]]) -> str:
    """The arm (by id) whose cumulative weight interval holds the lead's hash."""
    if not arms:
        raise ValueError("expected at least one arm, found none")
    total = sum(weight for _, weight in arms)
    point = unit_hash(lead_key, funnel_id, step_id, salt) * total
    edge = 0.0
    for arm_id, weight in arms:
        edge += weight
        if point < edge:
            return arm_id
    return arms[-1][0]  # rounding at the very top of the last interval


def lead_key(lead_id: str) -> str:
    """What identifies a lead in the hash: its address as the engine stores and looks it up
    (`addresses.lookup_key`), so the engine, `funnel simulate` and `funnel test` agree however a scenario
    writes it."""
    return lookup_key(lead_id)


@dataclass(frozen=True, slots=True)
class Assignment:
    experiment: str
    arm: Arm
    promoted: bool  # the arm came from a promotion, not from the hash


def choose(
    experiment: Experiment, lead_id: str, funnel_id: str, step_id: str, promoted: Mapping[str, str]
) -> Assignment:
    """The arm a lead assigned now gets: the promoted winner if there is one (and it is still an arm),
    else the arm its hash falls in."""
    by_id = {arm.id: arm for arm in experiment.arms}
    winner = promoted.get(experiment.id)
    if winner is not None and winner in by_id:
        return Assignment(experiment.id, by_id[winner], True)
    arm_id = assign(
        lead_key(lead_id), funnel_id, step_id, experiment.hash_salt, [(a.id, a.weight) for a in experiment.arms]
    )
    return Assignment(experiment.id, by_id[arm_id], False)


@dataclass(frozen=True, slots=True)
class AssignArm:
    """A command: record that the lead entered an experiment's arm (the lead's timeline shows it; the
    metric's window starts at `at`). `template` is the arm's email for a variant send."""

    step: str
    experiment: str
    arm: str
    at: datetime
    template: str | None = None
    holdout: bool = False
    promoted: bool = False


def split_paths(stage: Stage, split: SplitStep) -> dict[str, tuple[str, ...]]:
    """Per arm (by id), the steps of its path in the stage's order: the steps its `goto` leads to and not
    every arm's does. The steps every arm reaches are where the paths meet, no arm's own; a holdout's
    path is usually empty (its `goto` is where the paths meet)."""
    reach = {arm.id: _reachable(stage, arm.goto) for arm in split.split.arms}
    common = frozenset.intersection(*reach.values()) if reach else frozenset()
    order = [s.id for s in stage.steps]
    return {arm: tuple(s for s in order if s in steps and s not in common) for arm, steps in reach.items()}


def splits_of(stage: Stage) -> list[SplitStep]:
    return [step for step in stage.steps if isinstance(step, SplitStep)]


def _reachable(stage: Stage, start: str | None) -> frozenset[str]:
    """The steps of the stage a lead starting at `start` may run, following the sequence and `goto`s."""
    order = [s.id for s in stage.steps]
    by_id = {s.id: s for s in stage.steps}
    seen: set[str] = set()
    todo = [start] if start is not None else []
    while todo:
        current = todo.pop()
        if current in seen or current not in by_id:
            continue
        seen.add(current)
        index = order.index(current)
        following = order[index + 1] if index + 1 < len(order) else None
        todo += [t for t in _ways(by_id[current], following) if t is not None]
    return frozenset(seen)


def _ways(step: object, following: str | None) -> list[str | None]:
    def go(outcome: Outcome) -> str | None:
        if outcome.goto is not None:
            return outcome.goto
        return following if outcome.move_to is None and outcome.exit is None else None

    if isinstance(step, BranchStep):
        return [go(step.branch.then), go(step.branch.else_)]
    if isinstance(step, WaitForStep):
        return [go(step.wait_for.on_event), go(step.wait_for.on_timeout)]
    if isinstance(step, SplitStep):
        return [arm.goto for arm in step.split.arms]
    if isinstance(step, MoveStep | ExitStep):
        return []
    return [following]
