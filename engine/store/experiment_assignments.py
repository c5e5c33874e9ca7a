"""Who is in which experiment arm, read from the `experiment_assigned` events the journey records: the
leads of each arm (for the journey map), and the leads still in the funnel per arm and per place (for
`funnel plan`, which says what an edit does to them).

A lead that re-entered the funnel may have been assigned twice; for `funnel plan` its latest assignment
is the one that holds.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from engine.core.own_events import EXPERIMENT_ASSIGNED
from engine.store import tables
from engine.store.experiment_decisions import FORGOTTEN


@dataclass(frozen=True, slots=True)
class ArmPlace:
    """How many active leads assigned to one arm wait at one place of the funnel."""

    version: str  # the definition their enrollment runs on
    experiment: str
    step: str  # the experiment's step (a variant send or a split)
    arm: str
    stage: str  # where the lead is now
    at_step: str | None
    phase: str
    leads: int


def _assigned(funnel: str) -> sa.Select[Any]:
    ev = tables.events
    return (
        sa.select(ev.c.lead_id, ev.c.properties)
        # A literal, so that PostgreSQL plans with the partial index on assignments.
        .where(ev.c.name == sa.literal_column(f"'{EXPERIMENT_ASSIGNED}'"))
        .where(ev.c.properties["funnel"].as_string() == funnel)
        .order_by(ev.c.occurred_at, ev.c.id)
    )


def leads_per_arm(conn: sa.Connection, funnel: str) -> dict[tuple[str, str], int]:
    """(experiment, arm) -> the leads ever assigned to it, promoted ones included, counted by the
    database (a lead re-entering after a promotion may count in two arms: it was in both)."""
    ev = tables.events
    experiment = ev.c.properties["experiment"].as_string()
    arm = ev.c.properties["arm"].as_string()
    stmt = (
        sa.select(experiment, arm, sa.func.count(sa.distinct(ev.c.lead_id)))
        .where(ev.c.name == sa.literal_column(f"'{EXPERIMENT_ASSIGNED}'"))
        .where(ev.c.properties["funnel"].as_string() == funnel)
        .group_by(experiment, arm)
    )
    found = Counter({(str(e), str(a)): int(n) for e, a, n in conn.execute(stmt)})
    # The leads retention erased are counted without them (`engine.store.rollups`).
    r = tables.report_rollups
    rolled = sa.select(r.c.key, r.c.count).where(r.c.funnel_id == funnel, r.c.kind == FORGOTTEN)
    for key, n in conn.execute(rolled):
        experiment_id, _, arm_id, *_ = json.loads(key)
        found[(str(experiment_id), str(arm_id))] += int(n)
    return dict(found)


def in_flight(conn: sa.Connection, funnel: str) -> list[ArmPlace]:
    """The funnel's active leads that were assigned an arm, counted per arm and per place."""
    e = tables.enrollments
    stmt = _assigned(funnel).add_columns(e.c.version, e.c.stage, e.c.step, e.c.phase)
    stmt = stmt.join(e, sa.and_(e.c.lead_id == tables.events.c.lead_id, e.c.funnel_id == funnel))
    stmt = stmt.where(e.c.status == "active")
    places: dict[tuple[int, str], tuple[str, str, str, str, str, str | None, str]] = {}
    for lead_id, properties, version, stage, step, phase in conn.execute(stmt):
        experiment = str(properties.get("experiment"))
        places[(lead_id, experiment)] = (
            version,
            experiment,
            str(properties.get("step")),
            str(properties.get("arm")),
            stage,
            step,
            phase,
        )
    counted = Counter(places.values())
    ordered = sorted(counted.items(), key=lambda kv: repr(kv[0]))
    return [ArmPlace(v, x, step, arm, stage, at, phase, n) for (v, x, step, arm, stage, at, phase), n in ordered]


__all__ = ["ArmPlace", "in_flight", "leads_per_arm"]
