"""Each experiment's figures as `funnel report`, `funnel experiment show` and the dashboard show them: per
arm the leads assigned, the leads counted (window closed), conversions, rate and the lift over the control
with its interval; the test's state with its reason; and once decided, when, how, by whom, why and where
new leads go. One reading for all three, so that they give the same numbers.

The counts and the test are `engine.store.experiment_decisions.state`'s, the very call the worker decides
on; this module only puts them together with the assignments and the recorded decision, and says them
in words and as JSON and CSV values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from engine.core.definition import Experiment, Funnel
from engine.core.durations import format_duration
from engine.core.experiment_outcome import control, experiments_of
from engine.core.experiment_stats import Comparison, State
from engine.store import experiment_decisions as store
from engine.store import report_queries
from engine.store.database import Connection
from engine.store.experiment_decisions import Settled

# The states in which the lifts and their intervals are not the test's result (docs/experiments.md).
NOT_A_DECISION: tuple[State, ...] = ("running",)


@dataclass(frozen=True, slots=True)
class ArmFigures:
    arm: str
    control: bool
    assigned: int  # given this arm by the hash so far, window closed or not
    promoted: int  # sent to this arm by a decision: not counted, not assigned at random
    leads: int  # counted: assigned by the hash, window closed
    conversions: int  # of those, converted within the window
    rate: float
    comparison: Comparison | None  # against the control; None for the control, and while collecting


@dataclass(frozen=True)
class ExperimentFigures:
    funnel: str
    step: str
    experiment: Experiment
    state: State
    reason: str
    horizon: int
    arms: Sequence[ArmFigures]
    decided: Settled | None

    @property
    def id(self) -> str:
        return self.experiment.id

    @property
    def kind(self) -> str:
        return "variant send" if self.experiment.arms[0].goto is None else "split"

    @property
    def control(self) -> str:
        return control(self.experiment)

    @property
    def metric(self) -> str:
        m = self.experiment.metric
        return f"{m.kind}: {'true' if m.goal else getattr(m, m.kind)}"

    @property
    def within(self) -> str:
        return format_duration(self.experiment.metric.within)

    @property
    def not_a_decision(self) -> bool:
        """The lifts shown are for reading only: looked at before the horizon, they would cover less often
        than they say."""
        return self.state in NOT_A_DECISION


def read(conn: Connection, funnel: Funnel, now: datetime) -> list[ExperimentFigures]:
    """The funnel's experiments in file order, counted as of `now` (none: an empty list)."""
    found = list(experiments_of(funnel))
    if not found:
        return []
    decided = {s.experiment: s for s in store.settled(conn, funnel.id)}
    return [_one(conn, funnel.id, step, experiment, now, decided.get(experiment.id)) for step, experiment in found]


def _one(
    conn: Connection, funnel: str, step: str, experiment: Experiment, now: datetime, decided: Settled | None
) -> ExperimentFigures:
    counts, decision = store.state(conn, funnel, step, experiment, now)
    assigned = store.assigned(conn, funnel, step, experiment.id)
    compared = {c.arm: c for c in decision.comparisons}
    arms = [
        ArmFigures(
            arm=c.arm,
            control=c.arm == control(experiment),
            assigned=assigned.get(c.arm, store.Assigned()).by_hash,
            promoted=assigned.get(c.arm, store.Assigned()).promoted,
            leads=c.leads,
            conversions=c.conversions,
            rate=c.rate,
            comparison=compared.get(c.arm),
        )
        for c in counts
    ]
    return ExperimentFigures(funnel, step, experiment, decision.state, decision.reason, decision.horizon, arms, decided)


def published(conn: Connection, funnel_ids: Iterable[str]) -> dict[str, Funnel]:
    """The definition the engine runs (the newest published) of each funnel that has one of this shape."""
    out = {}
    for funnel_id in sorted(set(funnel_ids)):
        stored = report_queries.newest_definition(conn, funnel_id)
        try:
            if stored is not None:
                out[funnel_id] = Funnel.model_validate(stored)
        except ValidationError:
            continue  # published by an engine of another shape: nothing to count it by
    return out


def read_published(conn: Connection, funnel_ids: Iterable[str], now: datetime) -> dict[str, list[ExperimentFigures]]:
    """Funnel id -> its experiments' figures, for the funnels whose published definition has any."""
    out = {}
    for funnel_id, funnel in published(conn, funnel_ids).items():
        found = read(conn, funnel, now)
        if found:
            out[funnel_id] = found
    return out


# --------------------------------------------------------------------------------------------------
# In words
# --------------------------------------------------------------------------------------------------


def new_leads_words(s: Settled) -> str:
    return f"new leads get {s.arm}" if s.arm is not None else "new leads are split by weight"


def decided_words(s: Settled) -> str:
    return f"decided ({s.how}) {s.decided_at.isoformat(timespec='minutes')} by {s.decided_by}: {new_leads_words(s)}"


def points(value: float) -> str:
    """A difference of rates in percentage points: 0.03 is '+3.00 pts'."""
    return f"{value * 100:+.2f} pts"


def lift_words(c: Comparison) -> str:
    relative = "" if c.relative_lift is None else f" ({c.relative_lift:+.1%})"
    return points(c.lift) + relative


def interval_words(c: Comparison) -> str:
    return f"{c.low * 100:+.2f} to {c.high * 100:+.2f} pts"


# --------------------------------------------------------------------------------------------------
# As data
# --------------------------------------------------------------------------------------------------


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _arm_dict(a: ArmFigures) -> dict[str, object]:
    c = a.comparison
    return {
        "arm": a.arm,
        "control": a.control,
        "assigned": a.assigned,
        "promoted": a.promoted,
        "leads": a.leads,
        "conversions": a.conversions,
        "rate": _rounded(a.rate),
        "lift": _rounded(c.lift) if c else None,
        "relative_lift": _rounded(c.relative_lift) if c else None,
        "lift_low": _rounded(c.low) if c else None,
        "lift_high": _rounded(c.high) if c else None,
        "adjusted_p": _rounded(c.adjusted_p) if c else None,
    }


def _decision_dict(s: Settled) -> dict[str, object]:
    return {
        "at": s.decided_at.isoformat(),
        "how": s.how,
        "by": s.decided_by,
        "why": s.reason,
        "arm": s.arm,
        "new_leads": new_leads_words(s),
    }


def _head_dict(e: ExperimentFigures) -> dict[str, object]:
    rule = e.experiment.decide
    return {
        "experiment": e.id,
        "step": e.step,
        "kind": e.kind,
        "metric": e.metric,
        "within": e.within,
        "control": e.control,
        "alpha": rule.alpha,
        "min_per_arm": rule.min_per_arm,
        "horizon": e.horizon,
        "promote": rule.promote,
        "state": e.state,
        "reason": e.reason,
        "not_a_decision": e.not_a_decision,
    }


def as_dict(e: ExperimentFigures) -> dict[str, object]:
    """One experiment as plain JSON-able data: `decision` is null until it is decided."""
    return {
        **_head_dict(e),
        "arms": [_arm_dict(a) for a in e.arms],
        "decision": _decision_dict(e.decided) if e.decided else None,
    }


def csv_rows(e: ExperimentFigures) -> list[tuple[str, str, str, str, object]]:
    """Long form as `funnel report --csv` has it: (funnel, section, item, figure, value); the experiment's
    item is its id, an arm's is `experiment/arm`."""
    head = {k: v for k, v in _head_dict(e).items() if k != "experiment"}
    if e.decided is not None:
        head |= {f"decision_{k}": v for k, v in _decision_dict(e.decided).items()}
    out: list[tuple[str, str, str, str, object]] = [
        (e.funnel, "experiment", e.id, figure, "" if value is None else value) for figure, value in head.items()
    ]
    for a in e.arms:
        for figure, value in _arm_dict(a).items():
            if figure != "arm":
                out.append((e.funnel, "experiment arm", f"{e.id}/{a.arm}", figure, "" if value is None else value))
    return out
