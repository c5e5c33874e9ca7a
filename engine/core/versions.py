"""Editing a live funnel: where a lead in flight goes when the definition changes under it.

Pure. Leads keep their place by stage and step id. A removed step hands the lead to the next step of
its stage that still exists (by the old order when the old definition is known); a removed stage hands
it to the next stage of the old order that still exists, else the new funnel's entry stage. Waits in
progress keep their start: an edited wait duration counts from when the lead began waiting.

A lead inside a split arm's path whose step was removed goes on along its own path (the path's next
step still there), else where the paths meet: never into another arm's path, whose emails are another
treatment (docs/experiments.md, "Editing a live experiment"). An experiment's assignments need nothing
else here: a variant send assigns when it queues its email, and a lead keeps the arm it was given.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from engine.core.definition import Funnel
from engine.core.experiments import split_paths, splits_of
from engine.core.journey import Cause, Enrollment, RecordTransition


@dataclass(frozen=True)
class Migration:
    enrollment: Enrollment
    change: str  # "kept", "renamed", "step-removed", "arm-step-removed" (on a split arm's path), "stage-removed"
    detail: str = ""
    transition: RecordTransition | None = None  # a stage change made by the edit, to be recorded


def _surviving_step(old: Funnel | None, new: Funnel, stage: str, step: str) -> str | None:
    new_steps = [s.id for s in new.stage(stage).steps]
    if old is not None and stage in old.stage_ids():
        old_steps = [s.id for s in old.stage(stage).steps]
        if step in old_steps:
            for later in old_steps[old_steps.index(step) + 1 :]:
                if later in new_steps:
                    return later
            return None
    return new_steps[0] if new_steps else None


def _surviving_stage(old: Funnel | None, new: Funnel, stage: str) -> str:
    new_ids = new.stage_ids()
    if old is not None and stage in old.stage_ids():
        old_ids = old.stage_ids()
        for later in old_ids[old_ids.index(stage) + 1 :]:
            if later in new_ids:
                return later
    return new.entry.stage or new_ids[0]


def migrate_enrollment(
    state: Enrollment, new: Funnel, old: Funnel | None = None, now: datetime | None = None
) -> Migration:
    """`now`: when the edit is applied; a lead moved by it carries on from then (not from when its old
    step began, which could make its next email look late)."""
    resume = max(state.due, now) if now is not None else state.due
    if state.version == new.version:
        return Migration(state, "kept")
    renamed = _apply_renames(state, new)
    if state.status != "active":
        return Migration(replace(renamed, version=new.version), "kept")
    migration = _place(renamed, new, old, resume)
    if renamed is not state and migration.change == "kept":
        where = f"{renamed.stage} / {renamed.step or '(end)'}"
        return Migration(migration.enrollment, "renamed", where)
    return migration


def _apply_renames(state: Enrollment, new: Funnel) -> Enrollment:
    if new.renamed is None:
        return state
    stages, steps = new.renamed.stages, new.renamed.steps
    stage = stages.get(state.stage, state.stage)
    step = steps.get(state.step, state.step) if state.step is not None else None
    sent = frozenset(steps.get(s, s) for s in state.sent)
    if (stage, step, sent) == (state.stage, state.step, state.sent):
        return state
    return replace(state, stage=stage, step=step, sent=sent)


def _place(state: Enrollment, new: Funnel, old: Funnel | None, resume: datetime) -> Migration:
    stage_ids = new.stage_ids()
    if state.stage not in stage_ids:
        target = _surviving_stage(old, new, state.stage)
        first = new.stage(target).steps[0].id if new.stage(target).steps else None
        moved = replace(
            state,
            version=new.version,
            stage=target,
            step=first,
            phase="ready" if first else "ended",
            due=resume,
            wake_at=resume,
            stage_entered_at=resume,
            spent_timers=frozenset(),
        )
        record = RecordTransition(state.stage, target, Cause("edit", new.version), resume)
        return Migration(moved, "stage-removed", f"{state.stage} -> {target}", record)
    if state.step is None:
        return Migration(replace(state, version=new.version), "kept")
    try:
        new.step(state.stage, state.step)
        return Migration(replace(state, version=new.version), "kept")
    except KeyError:
        pass
    on_path = _arm_path(old, state.stage, state.step)
    if on_path is None:
        nxt = _surviving_step(old, new, state.stage, state.step)
        change = "step-removed"
    else:
        nxt = _path_step(on_path, new, state.stage)
        change = "arm-step-removed"
    moved = replace(state, version=new.version, step=nxt, phase="ready" if nxt else "ended", due=resume, wake_at=resume)
    return Migration(moved, change, f"{state.step} -> {nxt or 'end of stage'}")


@dataclass(frozen=True)
class _OnPath:
    split: str  # the split step's id
    arm: str
    later: tuple[str, ...]  # the old stage's steps after the lead's, other arms' paths left out


def _arm_path(old: Funnel | None, stage: str, step: str) -> _OnPath | None:
    """The split arm whose path held `step` in the old definition, if one did."""
    if old is None or stage not in old.stage_ids():
        return None
    old_stage = old.stage(stage)
    order = [s.id for s in old_stage.steps]
    if step not in order:
        return None
    for split in splits_of(old_stage):
        paths = split_paths(old_stage, split)
        for arm, path in paths.items():
            if step in path:
                # A step two arms' paths share (one falls into the other's) is the lead's own too.
                others = {s for a, p in paths.items() if a != arm for s in p} - set(path)
                later = tuple(s for s in order[order.index(step) + 1 :] if s not in others)
                return _OnPath(split.id, arm, later)
    return None


def _path_step(on_path: _OnPath, new: Funnel, stage: str) -> str | None:
    """The first step after the lead's, of its own path or where the paths meet, that the new definition
    has and that is not on another arm's path there."""
    new_stage = new.stage(stage)
    others: set[str] = set()
    own: set[str] = set()
    for split in splits_of(new_stage):
        for arm, path in split_paths(new_stage, split).items():
            (own if (split.id, arm) == (on_path.split, on_path.arm) else others).update(path)
    others -= own
    present = {s.id for s in new_stage.steps}
    return next((s for s in on_path.later if s in present and s not in others), None)
