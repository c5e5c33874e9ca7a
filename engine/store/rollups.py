"""The report's figures of leads whose raw rows are about to be pruned, summed into `report_rollups`.

Before any row the report counts is deleted (`engine.store.retention`), its lead is rolled up whole: per
funnel, UTC day of entry and language, the report's own queries run over that lead's raw rows
(`report_queries.raw_rows`), and what they count is added to the rollup of that group. The lead's
enrollments then carry `rolled_up_at`: the report counts their rows stamped until then in the rollups
and the rest (what came later, a re-entry's) in the raw tables, so every row is counted once, whether
it was pruned yet or not.

Every count the report keeps is of rows, or of distinct leads per group of one funnel; the leads of two
rollups never overlap, so sums of rollups are the figures one query over their rows gave. A lead is
rolled up only once it has ended every enrollment and gone quiet (see `retention.settled`): a lead that
opened an email again after its rollup would count a second time among that email's openers.

Its experiment assignments are kept (the lead keeps its arm); each gets its outcome written
(`experiment_decisions.stamp_outcomes`), so the experiment's counts no longer need the transitions and
events that showed it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite

from engine.core.definition import Experiment, Funnel
from engine.core.experiment_outcome import experiments_of
from engine.core.report_rows import entries
from engine.store import experiment_decisions, report_queries, tables
from engine.store.experiment_decisions import FORGOTTEN
from engine.store.report_queries import NO_LANGUAGE, Scope

GROUP = ("funnel_id", "day", "language", "kind", "key")


def roll_up(conn: sa.Connection, lead_ids: Sequence[int], at: datetime, with_stages: bool = False) -> int:
    """Add these leads' raw figures to the rollups and mark their enrollments rolled up at `at`; the
    number of rollup rows written or added to. `with_stages`: their enrollments are about to go too (an
    erasure), so where they stand is rolled up as well."""
    if not lead_ids:
        return 0
    e, lead = tables.enrollments, tables.leads
    found = conn.execute(
        sa.select(e.c.lead_id, e.c.funnel_id, e.c.entered_at, lead.c.language)
        .select_from(e.join(lead, lead.c.id == e.c.lead_id))
        .where(e.c.lead_id.in_(lead_ids))
    ).all()
    groups: dict[tuple[str, str, str], list[int]] = {}
    for lead_id, funnel_id, entered_at, language in found:
        groups.setdefault((funnel_id, entered_at.date().isoformat(), language or NO_LANGUAGE), []).append(lead_id)
    values: list[dict[str, Any]] = []
    for (funnel_id, day, language), leads in groups.items():
        scope = Scope(funnel=funnel_id, leads=tuple(leads), rolled=True)
        rows = report_queries.raw_rows(conn, scope, with_exits=True)
        if not with_stages:
            rows = replace(rows, stage_counts=())  # the enrollments stay: the raw table counts them
        values += [
            {"funnel_id": funnel_id, "day": day, "language": language, "kind": kind, "key": _key(key), "count": n}
            for kind, key, n in entries(rows)
        ]
    experiments = _experiments(conn, {funnel_id for funnel_id, _, _ in groups})
    experiment_decisions.stamp_outcomes(conn, lead_ids, experiments)
    if with_stages:  # their assignments go too: the experiments count them without them
        values += [
            {
                "funnel_id": f,
                "day": day,
                "language": NO_LANGUAGE,
                "kind": FORGOTTEN,
                "key": _key(tuple(key)),
                "count": 1,
            }
            for f, day, key in experiment_decisions.forgotten_keys(conn, lead_ids, experiments, at)
        ]
    for start in range(0, len(values), 500):
        _add(conn, values[start : start + 500])
    conn.execute(sa.update(e).where(e.c.lead_id.in_(lead_ids)).values(rolled_up_at=at))
    return len(values)


def _experiments(conn: sa.Connection, funnel_ids: set[str]) -> dict[str, list[tuple[str, Experiment]]]:
    """The experiments of each funnel's published definition (the one the engine runs)."""
    found = {}
    for funnel_id in sorted(funnel_ids):
        stored = report_queries.newest_definition(conn, funnel_id)
        try:
            funnel = Funnel.model_validate(stored) if stored is not None else None
        except ValidationError:
            continue  # published by an engine of another shape: its experiments are not this one's
        if funnel is not None:
            found[funnel_id] = list(experiments_of(funnel))
    return found


def _key(key: tuple[Any, ...]) -> str:
    return json.dumps(list(key), separators=(",", ":"), ensure_ascii=False)


def _add(conn: sa.Connection, values: list[dict[str, Any]]) -> None:
    """Insert the rows, or add their counts to the rows of the same group: one row per group, ever."""
    if not values:
        return
    r = tables.report_rollups
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for value in values:  # one statement may not touch a row twice (PostgreSQL's ON CONFLICT)
        group = tuple(value[c] for c in GROUP)
        if group in merged:
            merged[group]["count"] += value["count"]
        else:
            merged[group] = dict(value)
    insert = postgresql.insert(r) if conn.dialect.name == "postgresql" else sqlite.insert(r)
    stmt = insert.values(list(merged.values()))
    conn.execute(
        stmt.on_conflict_do_update(index_elements=list(GROUP), set_={"count": r.c.count + stmt.excluded.count})
    )
