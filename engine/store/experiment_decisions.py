"""Experiments in the database: per arm, the leads whose metric window has closed and the ones of them that
converted within it (read from the `experiment_assigned` events the decision writer records), the test's
state on those counts (`state`, what the worker decides on and what every report shows), and each
experiment's decision, written once: the unique key on (funnel, experiment) makes the first writer win,
whether a worker deciding at the horizon or an operator promoting or stopping it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from engine.core.definition import Experiment, Metric
from engine.core.experiment_outcome import control, rule
from engine.core.experiment_stats import ArmCounts, Decision, decide
from engine.core.own_events import EXPERIMENT_ASSIGNED
from engine.store import tables

CLICKED = "email_clicked"
# Built once, not per call: a fresh alias is new column objects that SQLAlchemy's statement cache keeps.
_SUCCESS = tables.events.alias("success")
Experiments = Mapping[str, Sequence[tuple[str, Experiment]]]  # funnel id -> (step id, experiment)


@dataclass(frozen=True, slots=True)
class Tally:
    """One arm: leads assigned by the hash whose window has closed, and those that converted within it."""

    leads: int = 0
    conversions: int = 0


@dataclass(frozen=True, slots=True)
class Settled:
    """A recorded decision: `arm` is where new leads go (None: on by weight)."""

    funnel: str
    experiment: str
    arm: str | None
    how: str
    decided_at: datetime
    decided_by: str
    reason: str
    figures: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Assigned:
    """One arm: every lead given it so far, window closed or not: by the hash, or by a decision."""

    by_hash: int = 0
    promoted: int = 0


def counts(conn: sa.Connection, funnel: str, step: str, experiment: Experiment, now: datetime) -> list[ArmCounts]:
    """Every arm's counts for the test, in the file's order (an arm with no lead yet at 0)."""
    found = tallies(conn, funnel, step, experiment.id, experiment.metric, now)
    return [
        ArmCounts(arm.id, found.get(arm.id, Tally()).leads, found.get(arm.id, Tally()).conversions)
        for arm in experiment.arms
    ]


def state(
    conn: sa.Connection, funnel: str, step: str, experiment: Experiment, now: datetime
) -> tuple[list[ArmCounts], Decision]:
    """The counts and the test's state on them now (`engine.core.experiment_stats.decide`)."""
    found = counts(conn, funnel, step, experiment, now)
    return found, decide(found, control(experiment), rule(experiment))


def assigned(conn: sa.Connection, funnel: str, step: str, experiment: str) -> dict[str, Assigned]:
    """Per arm (by id), the leads assigned to it so far, whether their window has closed or not."""
    ev = tables.events
    rows = conn.execute(
        sa.select(ev.c.properties).where(
            ev.c.name == sa.literal_column(f"'{EXPERIMENT_ASSIGNED}'"),
            ev.c.properties["funnel"].as_string() == funnel,
            ev.c.properties["experiment"].as_string() == experiment,
        )
    ).scalars()
    by_hash: dict[str, int] = {}
    promoted: dict[str, int] = {}
    for properties in rows:
        if properties.get("step") != step:
            continue
        arm = str(properties.get("arm"))
        into = promoted if properties.get("promoted") else by_hash
        into[arm] = into.get(arm, 0) + 1
    for f in forgotten(conn, funnel, step, experiment):
        into = promoted if f.promoted else by_hash
        into[f.arm] = into.get(f.arm, 0) + f.count
    return {arm: Assigned(by_hash.get(arm, 0), promoted.get(arm, 0)) for arm in {*by_hash, *promoted}}


def tallies(
    conn: sa.Connection, funnel: str, step: str, experiment: str, metric: Metric, now: datetime
) -> dict[str, Tally]:
    """Per arm (by id), the experiment's leads whose window (`metric.within` after their assignment) has
    closed by `now`, and how many of them met the metric within it. Leads sent to an arm by a promotion
    are not counted: they were not assigned at random."""
    ev = tables.events
    first = _first_success(metric, funnel, step)
    rows = conn.execute(
        sa.select(ev.c.properties, ev.c.occurred_at, first.label("first")).where(
            # A literal, so that PostgreSQL plans with the partial index on assignments.
            ev.c.name == sa.literal_column(f"'{EXPERIMENT_ASSIGNED}'"),
            ev.c.properties["funnel"].as_string() == funnel,
            ev.c.properties["experiment"].as_string() == experiment,
            ev.c.occurred_at <= now - metric.within,
        )
    ).all()
    leads: dict[str, int] = {}
    converted: dict[str, int] = {}
    for properties, assigned_at, success in rows:
        if properties.get("promoted") or properties.get("step") != step:
            continue
        arm = str(properties.get("arm"))
        leads[arm] = leads.get(arm, 0) + 1
        if success is not None and success <= assigned_at + metric.within:
            converted[arm] = converted.get(arm, 0) + 1
    for f in forgotten(conn, funnel, step, experiment):
        if not f.promoted and (f.closes is None or f.closes <= now):
            leads[f.arm] = leads.get(f.arm, 0) + f.count
            converted[f.arm] = converted.get(f.arm, 0) + (f.count if f.converted else 0)
    return {arm: Tally(n, converted.get(arm, 0)) for arm, n in leads.items()}


@dataclass(frozen=True, slots=True)
class Forgotten:
    """Assignments of leads erased by retention (`engine.store.rollups`), counted without them: arm,
    whether a decision sent them there, whether they converted within the window, and when the window
    closes if it had not at their erasure (None: closed)."""

    arm: str
    promoted: bool
    converted: bool
    closes: datetime | None
    count: int


FORGOTTEN = "experiment"  # their kind in `report_rollups`


def forgotten(conn: sa.Connection, funnel: str, step: str, experiment: str) -> list[Forgotten]:
    r = tables.report_rollups
    found = conn.execute(
        sa.select(r.c.key, sa.func.sum(r.c.count))
        .where(r.c.funnel_id == funnel, r.c.kind == FORGOTTEN)
        .group_by(r.c.key)
    ).all()
    out = []
    for key, n in found:
        of, at_step, arm, promoted, converted, closes = json.loads(key)
        if (of, at_step) == (experiment, step):
            out.append(Forgotten(arm, promoted, converted, datetime.fromisoformat(closes) if closes else None, int(n)))
    return out


def forgotten_keys(
    conn: sa.Connection,
    lead_ids: Sequence[int],
    experiments: Mapping[str, Sequence[tuple[str, Experiment]]],
    at: datetime,
) -> list[tuple[str, str, list[Any]]]:
    """(funnel, day of assignment, key) of each assignment of these leads, for `forgotten` to count once
    the leads are erased; their outcomes are written (`stamp_outcomes`) before."""
    ev, o = tables.events, tables.experiment_outcomes
    rows = conn.execute(
        sa.select(ev.c.properties, ev.c.occurred_at, o.c.converted_at)
        .select_from(ev.join(o, o.c.assignment_id == ev.c.id))
        .where(ev.c.lead_id.in_(lead_ids), ev.c.name == sa.literal_column(f"'{EXPERIMENT_ASSIGNED}'"))
    ).all()
    keys = []
    for properties, assigned_at, converted_at in rows:
        funnel, step, name = properties.get("funnel"), properties.get("step"), properties.get("experiment")
        experiment = next((x for s, x in experiments.get(str(funnel), ()) if (s, x.id) == (step, name)), None)
        if experiment is None:
            continue  # no longer in the funnel: nothing shows it
        closes = assigned_at + experiment.metric.within
        converted = converted_at is not None and converted_at <= closes
        still_open = closes.isoformat() if closes > at else None
        key = [name, step, str(properties.get("arm")), bool(properties.get("promoted")), converted, still_open]
        keys.append((str(funnel), assigned_at.date().isoformat(), key))
    return keys


def _first_success(metric: Metric, funnel: str, step: str) -> Any:
    """The time of the lead's first success at or after its assignment (correlated with the assignment):
    the outcome written when its lead was rolled up, if it was (its evidence may be pruned), else what
    the goals, transitions and events say."""
    assigned, o = tables.events, tables.experiment_outcomes
    stamped = sa.select(o.c.converted_at).where(o.c.assignment_id == assigned.c.id).correlate(assigned)
    return sa.case(
        (sa.exists(stamped), stamped.scalar_subquery()),
        else_=_evidence(metric, funnel, step),
    )


def stamp_outcomes(conn: sa.Connection, lead_ids: Sequence[int], experiments: Experiments) -> int:
    """Write the outcome of these leads' assignments not written yet, for the experiments of each
    funnel (`experiments`: funnel id -> (step id, Experiment)); how many were written."""
    ev, o = tables.events, tables.experiment_outcomes
    written = 0
    for funnel, found in experiments.items():
        for step, experiment in found:
            first = _evidence(experiment.metric, funnel, step)
            rows = conn.execute(
                sa.select(ev.c.id, first).where(
                    ev.c.lead_id.in_(lead_ids),
                    ev.c.name == sa.literal_column(f"'{EXPERIMENT_ASSIGNED}'"),
                    ev.c.properties["funnel"].as_string() == funnel,
                    ev.c.properties["experiment"].as_string() == experiment.id,
                    ev.c.properties["step"].as_string() == step,
                    ~sa.exists().where(o.c.assignment_id == ev.c.id),
                )
            ).all()
            if rows:
                conn.execute(o.insert(), [{"assignment_id": i, "converted_at": at} for i, at in rows])
                written += len(rows)
    return written


def _evidence(metric: Metric, funnel: str, step: str) -> Any:
    """The first success at or after the assignment in the goals, transitions and events."""
    assigned = tables.events
    if metric.goal is not None:
        g = tables.goals
        return _earliest(
            g.c.at, g.c.lead_id == assigned.c.lead_id, g.c.funnel_id == funnel, g.c.at >= assigned.c.occurred_at
        )
    if metric.stage is not None:
        t = tables.stage_transitions
        return _earliest(
            t.c.at, t.c.lead_id == assigned.c.lead_id, t.c.funnel_id == funnel, t.c.to_stage == metric.stage,
            t.c.at >= assigned.c.occurred_at,
        )  # fmt: skip
    other = _SUCCESS
    where = [other.c.lead_id == assigned.c.lead_id, other.c.occurred_at >= assigned.c.occurred_at]
    if metric.event is not None:
        where.append(other.c.name == metric.event)
    else:
        where.append(other.c.name == CLICKED)
        if metric.click != "*":
            where.append(other.c.properties["link"].as_string() == metric.click)
    return _earliest(other.c.occurred_at, *where, click_in=(funnel, step) if metric.click else None, events=other)


def _earliest(column: Any, *where: Any, click_in: tuple[str, str] | None = None, events: Any = None) -> Any:
    conditions = list(where)
    if click_in is not None:
        # A variant send counts the clicks in its own email; a split, clicks in any email after it. Both
        # carry the step: a split's assignment is of the split step, whose clicks no email has, so a split
        # is told by its assignment having no template.
        assigned = tables.events
        own = sa.and_(
            events.c.properties["funnel"].as_string() == click_in[0],
            events.c.properties["step"].as_string() == click_in[1],
        )
        conditions.append(sa.or_(assigned.c.properties["template"].as_string().is_(None), own))
    return sa.select(sa.func.min(column)).where(*conditions).correlate(tables.events).scalar_subquery()


def record(
    conn: sa.Connection,
    funnel: str,
    experiment: str,
    arm: str | None,
    how: str,
    at: datetime,
    by: str,
    reason: str,
    figures: dict[str, Any],
) -> bool:
    """Record the experiment's decision unless one is recorded already (then nothing changes): whether
    this one was written. Two writers at once: the unique key lets one in, the other writes nothing."""
    d = tables.experiment_decisions
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(d)
        .values(
            funnel_id=funnel,
            experiment=experiment,
            arm=arm,
            how=how,
            decided_at=at,
            decided_by=by[:200],
            reason=reason,
            figures=figures,
        )
        .on_conflict_do_nothing(index_elements=["funnel_id", "experiment"])
        .returning(d.c.id)
    )
    return conn.execute(stmt).scalar_one_or_none() is not None


def settled(conn: sa.Connection, funnel: str | None = None) -> list[Settled]:
    """The decisions recorded, of one funnel or all, in the order they were made."""
    d = tables.experiment_decisions
    stmt = sa.select(
        d.c.funnel_id, d.c.experiment, d.c.arm, d.c.how, d.c.decided_at, d.c.decided_by, d.c.reason, d.c.figures
    ).order_by(d.c.id)
    if funnel is not None:
        stmt = stmt.where(d.c.funnel_id == funnel)
    return [Settled(*row) for row in conn.execute(stmt)]


def promoted(conn: sa.Connection) -> dict[str, dict[str, str]]:
    """Funnel id -> experiment id -> the arm new leads get, for every decided experiment that names one."""
    out: dict[str, dict[str, str]] = {}
    for s in settled(conn):
        if s.arm is not None:
            out.setdefault(s.funnel, {})[s.experiment] = s.arm
    return out
