"""Experiments in the database, on SQLite and PostgreSQL: each arm's leads whose metric window has closed
and the ones that converted within it, for every kind of metric; a decision written once, and on
PostgreSQL, two workers deciding at the same moment on two connections write one decision."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.core import journey
from engine.core.definition import Funnel, Metric
from engine.core.experiments import AssignArm, choose
from engine.core.journey import Cause
from engine.runtime.experiment_rounds import ExperimentRounds, experiments_of
from engine.runtime.worker import Worker
from engine.store import experiment_decisions as decisions
from engine.store import leads as store
from engine.store import tables
from engine.store.database import create_engine_for
from engine.store.decisions import apply_decisions

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=4)
STATE = journey.Enrollment(
    funnel="guide", version="v1", status="active", stage="nurture", step=None, phase="ready", due=T0,
    wake_at=None, entered_at=T0, stage_entered_at=T0,
)  # fmt: skip


def assigned(db: Engine, email: str, arm: str, at: datetime = T0, promoted: bool = False, split: bool = False) -> int:
    """A lead assigned an arm of `subject` (variant send at `welcome`) or `pace` (split at `pace`)."""
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, email, attributes={}, tags=[], now=at)
        command = (
            AssignArm("pace", "pace", arm, at, None, False, promoted)
            if split
            else AssignArm("welcome", "subject", arm, at, f"guide/{arm}", False, promoted)
        )
        decision = journey.Decision(
            STATE, journey.Lead(email), (journey.RecordTransition(None, "nurture", Cause("event", "e"), at), command)
        )
        apply_decisions(conn, [(lead_id, decision)], at)
    return lead_id


def event(db: Engine, lead_id: int, name: str, at: datetime, **properties: str) -> None:
    with db.begin() as conn:
        conn.execute(
            sa.insert(tables.events).values(
                event_id=f"{name}-{lead_id}-{at.isoformat()}-{len(properties)}", lead_id=lead_id, name=name,
                properties=properties, occurred_at=at, received_at=at, processed_at=at, source="test",
            )
        )  # fmt: skip


def click(db: Engine, lead_id: int, at: datetime, step: str = "welcome", link: str = "guide") -> None:
    event(db, lead_id, "email_clicked", at, funnel="guide", step=step, link=link)


def tallies(
    db: Engine, metric: Metric, experiment: str = "subject", step: str = "welcome"
) -> dict[str, tuple[int, int]]:
    with db.connect() as conn:
        found = decisions.tallies(conn, "guide", step, experiment, metric, NOW)
    return {arm: (t.leads, t.conversions) for arm, t in found.items()}


def test_clicks_in_the_variants_own_email_within_the_window_of_leads_whose_window_closed(db: Engine) -> None:
    a = assigned(db, "a@example.com", "plain")
    click(db, a, T0 + timedelta(hours=1))  # counted
    click(db, a, T0 + timedelta(hours=2))  # the same lead: one conversion
    b = assigned(db, "b@example.com", "plain")
    click(db, b, T0 + timedelta(days=3, minutes=1))  # after its window
    c = assigned(db, "c@example.com", "teaser")
    click(db, c, T0 + timedelta(hours=1), step="other")  # another email's link
    f = assigned(db, "f@example.com", "teaser")
    click(db, f, T0 + timedelta(days=3))  # the window's last moment
    g = assigned(db, "g@example.com", "teaser", at=T0 + timedelta(hours=5))
    click(db, g, T0 + timedelta(hours=4))  # before its assignment
    d = assigned(db, "d@example.com", "teaser", at=T0 + timedelta(days=2))  # window still open at NOW
    click(db, d, T0 + timedelta(days=2, hours=1))
    e = assigned(db, "e@example.com", "teaser", promoted=True)  # sent there by a promotion
    click(db, e, T0 + timedelta(hours=1))
    assert tallies(db, Metric(click="*", within=timedelta(days=3))) == {"plain": (2, 1), "teaser": (3, 1)}
    assert tallies(db, Metric(click="other", within=timedelta(days=3))) == {"plain": (2, 0), "teaser": (3, 0)}
    # A day's window: d's has closed too (and it clicked within it), f's click came too late.
    assert tallies(db, Metric(click="guide", within=timedelta(days=1))) == {"plain": (2, 1), "teaser": (4, 1)}


def test_a_split_counts_clicks_in_any_email_a_goal_a_stage_and_an_event(db: Engine) -> None:
    a = assigned(db, "a@example.com", "daily", split=True)
    click(db, a, T0 + timedelta(hours=1), step="daily-tip")
    b = assigned(db, "b@example.com", "weekly", split=True)
    c = assigned(db, "c@example.com", "weekly", split=True)
    with db.begin() as conn:
        conn.execute(
            sa.insert(tables.goals).values(lead_id=b, funnel_id="guide", goal="bought", at=T0 + timedelta(hours=3),
                                           within_window=True)
        )  # fmt: skip
        conn.execute(
            sa.insert(tables.goals).values(lead_id=c, funnel_id="other", goal="bought", at=T0 + timedelta(hours=3),
                                           within_window=True)
        )  # fmt: skip
        conn.execute(
            sa.insert(tables.stage_transitions).values(
                lead_id=c, funnel_id="guide", version="v1", from_stage="nurture", to_stage="customer",
                cause_kind="event", at=T0 + timedelta(days=1),
            )
        )  # fmt: skip
    event(db, a, "purchase_completed", T0 + timedelta(days=2))
    within = timedelta(days=3)
    assert tallies(db, Metric(click="*", within=within), "pace", "pace") == {"daily": (1, 1), "weekly": (2, 0)}
    assert tallies(db, Metric(goal=True, within=within), "pace", "pace") == {"daily": (1, 0), "weekly": (2, 1)}
    assert tallies(db, Metric(stage="customer", within=within), "pace", "pace") == {"daily": (1, 0), "weekly": (2, 1)}
    assert tallies(db, Metric(event="purchase_completed", within=within), "pace", "pace") == {
        "daily": (1, 1),
        "weekly": (2, 0),
    }
    assert tallies(db, Metric(event="purchase_completed", within=timedelta(days=1)), "pace", "pace") == {
        "daily": (1, 0),
        "weekly": (2, 0),
    }


def test_a_decision_is_written_once(db: Engine) -> None:
    with db.begin() as conn:
        first = decisions.record(conn, "guide", "subject", "teaser", "auto", T0, "engine", "winner", {"a": 1})
    with db.begin() as conn:
        second = decisions.record(conn, "guide", "subject", "plain", "manual", NOW, "olivia", "I like it", {})
        third = decisions.record(conn, "guide", "other", None, "stopped", NOW, "olivia", "ended", {})
    with db.connect() as conn:
        rows = decisions.settled(conn)
        promoted = decisions.promoted(conn)
    assert (first, second, third) == (True, False, True)
    assert [(r.experiment, r.arm, r.how, r.decided_at, r.decided_by, r.figures) for r in rows] == [
        ("subject", "teaser", "auto", T0, "engine", {"a": 1}),
        ("other", None, "stopped", NOW, "olivia", {}),
    ]
    assert promoted == {"guide": {"subject": "teaser"}}


@pytest.mark.postgres
def test_two_connections_deciding_at_once_write_one_decision(postgres_url: str) -> None:
    one, two = create_engine_for(postgres_url), create_engine_for(postgres_url)
    results: dict[str, bool] = {}
    try:
        with one.begin() as conn:
            results["one"] = decisions.record(conn, "guide", "subject", "teaser", "auto", T0, "engine", "w", {})

            def other() -> None:
                with two.begin() as conn2:
                    results["two"] = decisions.record(conn2, "guide", "subject", "plain", "manual", T0, "o", "m", {})

            racing = threading.Thread(target=other)
            racing.start()
            time.sleep(0.3)
            assert racing.is_alive()  # waits on the first's uncommitted row
        racing.join(10)
        with one.connect() as conn:
            rows = decisions.settled(conn)
    finally:
        one.dispose()
        two.dispose()
    assert results == {"one": True, "two": False}
    assert [(r.arm, r.how) for r in rows] == [("teaser", "auto")]


FUNNEL = {
    "id": "guide",
    "name": "Guide",
    "entry": {"triggers": [{"event": "signed_up"}]},
    "stages": [
        {
            "id": "nurture",
            "steps": [
                {
                    "id": "welcome",
                    "send": "guide/plain",
                    "experiment": {
                        "id": "subject",
                        "arms": [{"id": "plain"}, {"id": "teaser", "send": "guide/teaser"}],
                        "metric": {"click": "*", "within": "3d"},
                        "decide": {"min_per_arm": 4, "promote": "auto"},
                    },
                }
            ],
        }
    ],
}


@pytest.mark.postgres
def test_two_workers_deciding_at_the_same_moment_record_one_decision_and_agree(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    funnel = Funnel.model_validate(FUNNEL)
    seed = create_engine_for(postgres_url)
    for i in range(12):
        lead = assigned(seed, f"p{i}@example.com", "plain" if i % 2 else "teaser")
        if i % 2 == 0:
            click(seed, lead, T0 + timedelta(hours=1))
    seed.dispose()
    engines = [create_engine_for(postgres_url) for _ in range(2)]
    rounds = [ExperimentRounds(e, {"guide": funnel}) for e in engines]
    start = threading.Barrier(2)

    def decide(r: ExperimentRounds) -> None:
        start.wait()
        r.round(NOW)

    caplog.set_level(logging.INFO, "engine.experiments")
    try:
        threads = [threading.Thread(target=decide, args=(r,)) for r in rounds]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        with engines[0].connect() as conn:
            rows = decisions.settled(conn)
    finally:
        for e in engines:
            e.dispose()
    assert [(r.arm, r.how, r.figures["arms"]) for r in rows] == [
        ("teaser", "auto", {"plain": {"leads": 6, "conversions": 0}, "teaser": {"leads": 6, "conversions": 6}})
    ]
    assert [r.arms_for("guide") for r in rounds] == [{"subject": "teaser"}, {"subject": "teaser"}]
    logged = [m for m in caplog.messages if "decided (auto)" in m]
    assert len(logged) == 1 and "guide/subject" in logged[0] and "new leads get teaser" in logged[0]


def test_a_worker_that_read_the_decisions_before_another_decided_gives_a_later_lead_the_winner(db: Engine) -> None:
    """Each worker keeps the decided arms in memory; it reads them again when it claims work, so a lead
    signing up after a decision recorded elsewhere (another worker, an operator) gets the winner."""
    funnel = Funnel.model_validate(FUNNEL)
    ((step, experiment),) = experiments_of(funnel)
    addresses = (f"n{i}@example.com" for i in range(100))
    address = next(a for a in addresses if choose(experiment, a, "guide", step, {}).arm.id == "plain")
    worker = Worker(db, {"guide": funnel})
    worker.tick(NOW)  # its round reads the decisions: none yet
    assert worker.experiments.arms_for("guide") == {}
    with db.begin() as conn:  # decided elsewhere, after that read
        assert decisions.record(conn, "guide", "subject", "teaser", "manual", NOW, "olivia", "brand voice", {})
        lead_id = store.upsert_lead(conn, address, now=NOW)
        store.record_events(conn, [store.NewEvent("s1", lead_id, "signed_up", NOW)], now=NOW)
    assert worker.process_events(NOW).events == 1
    with db.connect() as conn:
        sent = conn.execute(sa.select(tables.outbox.c.template)).scalars().all()
        (properties,) = conn.execute(
            sa.select(tables.events.c.properties).where(tables.events.c.name == "experiment_assigned")
        ).scalars()
    assert sent == ["guide/teaser"]
    assert (properties["arm"], properties.get("promoted")) == ("teaser", True)
