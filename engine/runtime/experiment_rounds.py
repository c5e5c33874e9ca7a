"""Deciding experiments while the engine runs: each tick the worker asks for the arms new leads get
(`promoted`), and at most once a minute per experiment not yet decided its counts are read and the
fixed-horizon test (`engine.core.experiment_stats`) is asked for its state. At `winner` or `no_winner`
with `promote: auto` the outcome is recorded once (`engine.store.experiment_decisions`: the first writer
wins, however many workers decide at once) and logged; with `promote: manual` it is logged once and left
to an operator (`funnel experiment promote`). Leads already assigned keep their arm: the journey assigns a
lead once.

Several workers share one database and each keeps the decided arms in memory, so each reads them again
in the transaction that claims its work (`refresh`), after the claim: an event recorded after a decision
was committed, by any worker or an operator, is decided with that decision in view, never with a map read
before it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from engine.core.definition import Experiment, Funnel
from engine.core.experiment_outcome import automatic, experiments_of
from engine.core.experiment_stats import ArmCounts, Decision
from engine.store import experiment_decisions as store
from engine.store.database import Engine

log = logging.getLogger("engine.experiments")

EVERY = timedelta(minutes=1)
NOTHING: Mapping[str, str] = {}


def figures(found: list[ArmCounts], decision: Decision) -> dict[str, Any]:
    """What a decision keeps of the moment: each arm's counts and the test's state and reason."""
    return {
        "state": decision.state,
        "horizon": decision.horizon,
        "arms": {c.arm: {"leads": c.leads, "conversions": c.conversions} for c in found},
        "test": decision.reason,
    }


class ExperimentRounds:
    def __init__(self, engine: Engine, funnels: Mapping[str, Funnel]) -> None:
        self.engine = engine
        self.watched = [
            (funnel, step, experiment) for funnel in funnels.values() for step, experiment in experiments_of(funnel)
        ]
        self.promoted: dict[str, dict[str, str]] = {}
        self.decided: set[tuple[str, str]] = set()
        self.looked: dict[tuple[str, str], datetime] = {}
        self.told: set[tuple[str, str]] = set()  # manual experiments whose state was logged

    def arms_for(self, funnel: str) -> Mapping[str, str]:
        return self.promoted.get(funnel, NOTHING)

    def round(self, now: datetime) -> None:
        """Read the decisions (an operator's too), then decide what is due. Nothing at all for funnels
        without experiments."""
        if not self.watched:
            return
        with self.engine.connect() as conn:
            self.refresh(conn)
        for funnel, step, experiment in self.watched:
            key = (funnel.id, experiment.id)
            last = self.looked.get(key)
            if key in self.decided or key in self.told or (last is not None and now - last < EVERY):
                continue
            self.looked[key] = now
            self._look(funnel, step, experiment, now)

    def refresh(self, conn: Any) -> None:
        """Read the recorded decisions again (one small query; nothing for funnels without experiments)."""
        if not self.watched:
            return
        decided = store.settled(conn)
        self.decided = {(s.funnel, s.experiment) for s in decided}
        self.promoted = {}
        for s in decided:
            if s.arm is not None:
                self.promoted.setdefault(s.funnel, {})[s.experiment] = s.arm

    def _look(self, funnel: Funnel, step: str, experiment: Experiment, now: datetime) -> None:
        key = (funnel.id, experiment.id)
        # Counted on a read connection: on SQLite a write transaction would hold the one writer meanwhile.
        with self.engine.connect() as conn:
            found, decision = store.state(conn, funnel.id, step, experiment, now)
        outcome = automatic(experiment, decision, found)
        if outcome is None:
            if decision.state in ("winner", "no_winner"):
                self.told.add(key)
                log.info(
                    "experiment %s/%s %s (promote: manual): an operator decides with `funnel experiment promote` "
                    "or `stop`: %s", funnel.id, experiment.id, decision.state, decision.reason,
                )  # fmt: skip
            return
        with self.engine.begin() as conn:
            written = store.record(
                conn, funnel.id, experiment.id, outcome.arm, "auto", now, "engine", outcome.reason,
                figures(found, decision),
            )  # fmt: skip
            self.refresh(conn)  # another worker's decision, if it came first, is the one that holds
        if written:
            log.info("experiment %s/%s decided (auto): %s", funnel.id, experiment.id, outcome.reason)
