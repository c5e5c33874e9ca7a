"""`funnel plan` for experiments: what an edit of a live experiment does to the leads already assigned an
arm, and to the leads still to come.

Pure. In: the assigned leads still in the funnel, per arm and per place (engine.store.experiment_assignments),
the definitions their enrollments run on, the edited definition and the arms decided experiments promote.
Where a lead on a split arm's path goes is asked of engine.core.versions, the code the engine runs on
the edit; what a variant send does is the journey's own rule: a lead is assigned when its email is
queued, once, so an assigned lead has its email and the edit sends it nothing again at that step.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from engine.core.definition import Experiment, Funnel, SendStep, SplitStep
from engine.core.experiments import split_paths
from engine.core.journey import Enrollment
from engine.core.versions import migrate_enrollment
from engine.store.experiment_assignments import ArmPlace

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ExperimentLine:
    """One thing the edit does to one experiment (`arm` None: to the experiment as a whole); `leads`: the
    assigned leads in flight it concerns (of `arm`, or of every arm)."""

    funnel: str
    experiment: str
    step: str
    arm: str | None
    leads: int
    change: str  # unchanged | experiment-added | experiment-removed | id-changed | salt-changed |
    # weights-changed | arms-reordered | arm-added | arm-removed | decision-lost
    says: str

    @property
    def sentence(self) -> str:
        if self.arm is not None:
            return f"{_leads(self.leads)} assigned to arm {self.arm}: {self.says}"
        return f"{self.says} ({_leads(self.leads)} assigned in flight)" if self.leads else self.says


@dataclass(frozen=True)
class _Placed:
    stage: str
    step: str  # the experiment's step
    experiment: Experiment
    split: bool


def _experiments(funnel: Funnel) -> Iterator[_Placed]:
    for stage in funnel.stages:
        for step in stage.steps:
            if isinstance(step, SendStep) and step.experiment is not None:
                yield _Placed(stage.id, step.id, step.experiment, False)
            elif isinstance(step, SplitStep):
                yield _Placed(stage.id, step.id, step.split, True)


def _leads(n: int) -> str:
    return f"{n} lead" if n == 1 else f"{n} leads"


def _shares(arms: Sequence[tuple[str, float]]) -> str:
    total = sum(w for _, w in arms)
    return "/".join(f"{100 * w / total:.3g}" for _, w in arms)


def experiment_plan(
    assigned: Sequence[ArmPlace],
    old: Mapping[str, Funnel | None],
    new: Funnel,
    promoted: Mapping[str, str] | None = None,
) -> list[ExperimentLine]:
    """What the edit `new` does to its experiments, against every definition leads of `new.id` run on.
    `promoted`: experiment id -> the arm a decision sends new leads to."""
    decided = promoted or {}
    lines: dict[tuple[str, str, str | None, str, str], int] = {}

    def add(p: _Placed, arm: str | None, leads: int, change: str, says: str) -> None:
        key = (p.experiment.id, p.step, arm, change, says)
        lines[key] = lines.get(key, 0) + leads

    versions = {v: f for v, f in old.items() if f is not None and f.id == new.id and v != new.version}
    now = {p.experiment.id: p for p in _experiments(new)}
    at_step = {(p.stage, p.step): p for p in now.values()}
    seen: set[str] = set()
    for version, before in versions.items():
        mine = [a for a in assigned if a.version == version]
        for p in _experiments(before):
            seen.update((p.experiment.id, f"{p.stage}/{p.step}"))
            places = [a for a in mine if a.experiment == p.experiment.id]
            after = now.get(p.experiment.id)
            if after is None:
                for line in _gone(p, at_step.get((p.stage, p.step)), places, before, new):
                    add(*line)
                continue
            for line in _edited(p, after, places, before, new, decided.get(p.experiment.id)):
                add(*line)
    for p in now.values():
        if versions and p.experiment.id not in seen and f"{p.stage}/{p.step}" not in seen:
            add(p, None, 0, "experiment-added", _added_words(p))
    out = [ExperimentLine(new.id, e, step, arm, n, change, says) for (e, step, arm, change, says), n in lines.items()]
    return sorted(out, key=lambda line: (line.experiment, line.arm or "", line.change))


Line = tuple[_Placed, str | None, int, str, str]


def _added_words(p: _Placed) -> str:
    return (
        f"experiment added at step {p.step}: leads that reach it from now on are assigned an arm;"
        " leads already past it are not"
    )


def _gone(p: _Placed, successor: _Placed | None, places: Sequence[ArmPlace], before: Funnel, new: Funnel) -> list[Line]:
    """The experiment's id is gone: renamed (another experiment on the same step), or removed."""
    total = sum(a.leads for a in places)
    if successor is not None:
        says = (
            f"experiment id {p.experiment.id} -> {successor.experiment.id}: a new experiment on step {p.step};"
            " leads already assigned keep their arm, new leads are assigned afresh by the new id's hash,"
            f" counted apart, and a decision on {p.experiment.id} does not carry over"
        )
        return [(p, None, total, "id-changed", says)]
    out: list[Line] = []
    if p.split:
        for arm, place, leads, where in _split_places(p, places, before, new):
            out.append((p, arm, leads, "experiment-removed", f"the split is removed; {place}: {where}"))
        out.append((p, None, 0, "experiment-removed", "split removed: new leads take no arm's path"))
        return out
    for arm, leads in _per_arm(places).items():
        out.append((p, arm, leads, "experiment-removed", "the experiment is removed; they keep the email they got"))
    step = _send_step(new, p)
    then = f"new leads get {step.send}" if step is not None else f"step {p.step} is removed too"
    out.append((p, None, 0, "experiment-removed", f"variant send removed: {then}"))
    return out


def _edited(
    p: _Placed, after: _Placed, places: Sequence[ArmPlace], before: Funnel, new: Funnel, winner: str | None
) -> list[Line]:
    old_e, new_e = p.experiment, after.experiment
    out: list[Line] = []
    if old_e.hash_salt != new_e.hash_salt:
        says = (
            f"salt {old_e.hash_salt} -> {new_e.hash_salt}: leads already assigned keep their arm;"
            " new leads are assigned afresh"
        )
        out.append((p, None, sum(a.leads for a in places), "salt-changed", says))
    old_arms = [(a.id, a.weight) for a in old_e.arms]
    new_arms = [(a.id, a.weight) for a in new_e.arms]
    new_ids = {a for a, _ in new_arms}
    kept_before = [(a, w) for a, w in old_arms if a in new_ids]
    kept_after = [(a, w) for a, w in new_arms if a in dict(old_arms)]
    order_before, order_after = [a for a, _ in kept_before], [a for a, _ in kept_after]
    leads_kept = sum(a.leads for a in places if a.arm in new_ids)
    if order_before != order_after:
        says = (
            f"arms reordered {'/'.join(order_before)} -> {'/'.join(order_after)}: leads already assigned keep"
            " their arm; new leads are placed by the new order (the hash's intervals move)"
        )
        out.append((p, None, leads_kept, "arms-reordered", says))
    was = dict(old_arms)
    before_shares = _shares([(a, was[a]) for a in order_after]) if kept_after else ""
    if kept_after and before_shares != _shares(kept_after):
        says = (
            f"weights {'/'.join(order_after)} {before_shares} -> {_shares(kept_after)}: leads already assigned"
            f" keep their arm, new leads split {'/'.join(a for a, _ in new_arms)} {_shares(new_arms)}"
        )
        out.append((p, None, leads_kept, "weights-changed", says))
    for arm, weight in new_arms:
        if arm not in dict(old_arms):
            share = 100 * weight / sum(w for _, w in new_arms)
            says = f"arm {arm} added ({share:.3g}% of new leads): leads already assigned keep their arm"
            out.append((p, None, 0, "arm-added", says))
    removed = [a for a, _ in old_arms if a not in new_ids]
    if p.split:
        for arm, place, leads, where in _split_places(p, places, before, new):
            if arm in removed:
                out.append((p, arm, leads, "arm-removed", f"arm removed; {place}: {where}"))
        for arm in removed:
            if arm not in _per_arm(places):
                out.append((p, arm, 0, "arm-removed", "arm removed; no lead in flight is on it"))
    else:
        counts = _per_arm(places)
        template = {a.id: a.send or _own(before, p) for a in old_e.arms}
        for arm in removed:
            says = (
                f"arm removed; they already have its email ({template[arm]}, sent or queued: keep the template"
                " until the queue has gone out), and nothing is sent again at this step"
            )
            out.append((p, arm, counts.get(arm, 0), "arm-removed", says))
    if winner is not None and winner not in new_ids:
        says = f"the decision sent new leads to {winner}, now removed: new leads are split by weight again"
        out.append((p, winner, 0, "decision-lost", says))
    if not out and places:
        out.append((p, None, sum(a.leads for a in places), "unchanged", "leads already assigned keep their arm"))
    return out


def _per_arm(places: Sequence[ArmPlace]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in places:
        counts[a.arm] = counts.get(a.arm, 0) + a.leads
    return counts


def _own(funnel: Funnel, p: _Placed) -> str:
    step = _send_step(funnel, p)
    return step.send if step is not None else "?"


def _send_step(funnel: Funnel, p: _Placed) -> SendStep | None:
    try:
        step = funnel.step(p.stage, p.step)[1]
    except KeyError:
        return None
    return step if isinstance(step, SendStep) else None


def _split_places(
    p: _Placed, places: Sequence[ArmPlace], before: Funnel, new: Funnel
) -> Iterator[tuple[str, str, int, str]]:
    """Per arm and place, (arm, where its leads are, how many, where the edit sends them), asking
    engine.core.versions as the engine does."""
    stage = before.stage(p.stage)
    split = before.step(p.stage, p.step)[1]
    paths = split_paths(stage, split)
    for a in places:
        on_path = a.stage == p.stage and a.at_step in paths.get(a.arm, ())
        place = f"on its path at {a.at_step}" if on_path else f"past its path (at {a.stage} / {a.at_step or '(end)'})"
        state = Enrollment(
            funnel=new.id,
            version=a.version,
            status="active",
            stage=a.stage,
            step=a.at_step,
            phase="waiting" if a.phase == "waiting" else "ready",
            due=_EPOCH,
            wake_at=_EPOCH,
            entered_at=_EPOCH,
            stage_entered_at=_EPOCH,
        )
        moved = migrate_enrollment(state, new, before)
        if moved.change == "kept":
            where = "its steps are still there: they go on along it" if on_path else "nothing changes for them"
        else:
            e = moved.enrollment
            where = f"step gone: they go on at {e.stage} / {e.step or '(end)'} ({moved.change})"
        yield a.arm, place, a.leads, where


__all__ = ["ExperimentLine", "experiment_plan"]
