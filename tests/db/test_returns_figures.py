"""The store's figures of what came back after the relay's 250, the same on SQLite and PostgreSQL: the
report's soft bounces and complaints per email and the leads each funnel lost to bounces and complaints,
the exits that are not counted twice, the metrics' counts, and the digest's day. The history is built by
the worker, the mailer and the bounce processor with real reports (tests/bounce_history.py)."""

from __future__ import annotations

from datetime import UTC, date
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine

from engine.core.report_rows import Engagement, ExitRow
from engine.store import digests, metric_counts, report_queries
from engine.store.digests import Returns
from tests import bounce_history


def test_the_figures_of_what_came_back(db: Engine, tmp_path: Path) -> None:
    bounce_history.build(db, tmp_path)
    everything = report_queries.Scope()
    with db.connect() as conn:
        outcomes = sorted(report_queries.report_outcomes(conn, everything), key=lambda e: (e.step, e.kind))
        losses = sorted(report_queries.losses(conn, everything), key=lambda r: (r.funnel, r.stage, r.reason))
        exits = report_queries.exits(conn, everything)
        reports = metric_counts.bounce_reports_after(conn, 0)
        later = metric_counts.bounce_reports_after(conn, max(last for *_, last in reports))
        suppressions = metric_counts.suppressions_after(conn, 0)
        day1 = digests.gather(conn, date(2026, 11, 23), ZoneInfo("UTC")).returns
        day2 = digests.gather_returns(conn, *digests.window(date(2026, 11, 24), ZoneInfo("UTC")))
        cohort = report_queries.losses(conn, report_queries.Scope("guide", bounce_history.T0.astimezone(UTC)))
    assert outcomes == [
        Engagement("guide", "hello", "complained", 1),
        Engagement("guide", "hello", "soft bounced", 1),
        Engagement("guide", "tips", "complained", 1),
    ]
    assert losses == [
        ExitRow("guide", "nurture", "complained", "complaint", False, "tips", 1),
        ExitRow("guide", "welcome", "bounced", "bounce", False, "hello", 2),  # the relay's refusal, a report
        ExitRow("guide", "welcome", "complained", "complaint", False, "hello", 1),
        ExitRow("news", "reading", "complained", "complaint", False, None, 2),  # its exit rule, on the event
    ]
    assert [r for r in cohort if r.funnel == "guide"] == [r for r in losses if r.funnel == "guide"]
    assert exits == []  # both complainers' exits are losses, counted once
    by_class = {(source, klass, matched): n for source, klass, matched, n, _ in reports}
    assert by_class == {
        ("ingest", "address_gone", True): 1,
        ("ingest", "address_gone", False): 1,  # the address nobody has: kept for an operator
        ("ingest", "mailbox_trouble", True): 1,
        ("ingest", "sender_fault", True): 1,
        ("ingest", "complaint", True): 2,
    }
    assert later == []
    assert sorted((reason, n) for reason, n, _ in suppressions) == [("bounced", 2), ("complained", 2)]
    assert day1 == Returns(hard_bounces=3, soft_bounces=1, complaints=1, delivered=4, kept=1, kept_new=1)
    assert day2 == Returns(hard_bounces=0, soft_bounces=0, complaints=1, delivered=4, kept=1, kept_new=0)
