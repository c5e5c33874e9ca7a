"""`funnel plan`: before an edited funnel goes live, what it does to the leads in flight.

Pure: takes where leads wait now (counts per funnel version, stage and step), the definitions those
versions were (as recorded by the engine), and the edited definition; says for each place whether it
is unchanged, changed, or gone, and where its leads will go (engine.core.versions decides, the same code the
engine runs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from engine.core.definition import Funnel
from engine.core.journey import Enrollment
from engine.core.versions import migrate_enrollment
from engine.store.leads import Position

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PlanLine:
    funnel: str
    stage: str
    step: str | None
    leads: int
    change: str  # unchanged | step-changed | renamed | step-removed | arm-step-removed | stage-removed
    goes_to: str  # "stays" or "stage / step"


def _step_definition(funnel: Funnel | None, stage: str, step: str | None) -> object | None:
    if funnel is None or step is None:
        return None
    try:
        return dict(funnel.step(stage, step)[1].model_dump())
    except KeyError:
        return None


def plan(positions: Sequence[Position], old: Mapping[str, Funnel | None], new: Funnel) -> list[PlanLine]:
    """One line per place where leads of `new.id` wait; `old` maps versions to their definitions."""
    lines: dict[tuple[str, str | None, str], PlanLine] = {}
    for p in positions:
        if p.funnel_id != new.id:
            continue
        before = old.get(p.version)
        state = Enrollment(
            funnel=p.funnel_id,
            version=p.version,
            status="active",
            stage=p.stage,
            step=p.step,
            phase="waiting" if p.phase == "waiting" else "ready",
            due=_EPOCH,
            wake_at=_EPOCH,
            entered_at=_EPOCH,
            stage_entered_at=_EPOCH,
        )
        migration = migrate_enrollment(state, new, before)
        change = migration.change
        if change == "kept":
            same = _step_definition(before, p.stage, p.step) == _step_definition(new, p.stage, p.step)
            change = "unchanged" if same or before is None else "step-changed"
        after = migration.enrollment
        goes_to = "stays" if change in ("unchanged", "step-changed") else f"{after.stage} / {after.step or '(end)'}"
        key = (p.stage, p.step, change)
        previous = lines.get(key)
        leads = p.leads + (previous.leads if previous else 0)
        lines[key] = PlanLine(new.id, p.stage, p.step, leads, change, goes_to)
    return sorted(
        lines.values(),
        key=lambda line: (new.stage_ids().index(line.stage) if line.stage in new.stage_ids() else -1, line.step or ""),
    )
