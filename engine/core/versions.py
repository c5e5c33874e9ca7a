"""Editing a live funnel: where a lead in flight goes when the definition changes under it.

Pure. Leads keep their place by stage and step id. A removed step hands the lead to the next step of
its stage that still exists (by the old order when the old definition is known); a removed stage hands
it to the next stage of the old order that still exists, else the new funnel's entry stage. Waits in
progress keep their start: an edited wait duration counts from when the lead began waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from engine.core.definition import Funnel
from engine.core.journey import Cause, Enrollment, RecordTransition


@dataclass(frozen=True)
class Migration:
    enrollment: Enrollment
    change: str  # "kept", "renamed", "step-removed", "stage-removed"
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
    nxt = _surviving_step(old, new, state.stage, state.step)
    moved = replace(state, version=new.version, step=nxt, phase="ready" if nxt else "ended", due=resume, wake_at=resume)
    return Migration(moved, "step-removed", f"{state.step} -> {nxt or 'end of stage'}")
