"""Database size over months, with retention and without: does it reach a plateau?

    python benchmarks/retention.py [--days 180] [--per-day 10] [--seed 1]

The real engine (the Worker and the send pipeline's own steps, as `funnel demo-month` runs them) on a
virtual clock, on SQLite, with the example funnel: `--per-day` leads sign up every day for `--days`
days, get their emails, open, click, buy or unsubscribe. The same months run twice from the same seed:
once with retention off (today's default), once with it set short (events, emails, transitions and
webhook deliveries 30 days; leads out of every funnel and inactive for 30 days forgotten) and pruned once
a virtual day by the same code `funnel run` prunes with (`engine.runtime.pruning.prune`). Every 10
virtual days it records the bytes the database uses (pages in use: SQLite reuses freed pages, so the
file stops at its peak once retention holds) and the file's size.

Prints a table and, last, one JSON line: `days`, `leads`, `used_mb` and `file_mb` by 10 days for each
run (with retention, also `for_ever_mb_retention`: what the tables kept for ever by design use, the daily
rollups the reports read and the suppression hashes), `bytes_per_lead` without retention, `plateau_mb`
(the leads' data, everything but those tables, over the last third of the run with retention),
`plateau_growth_pct` (its growth over that third: near 0 when it has levelled off) and
`for_ever_bytes_per_day` (how much the tables kept for ever grow a virtual day over that third).

A lead leaves the example funnel within about three months (the longest stay: a sales-ready lead who
never buys, let go after 60 days in conversion), and is forgotten 30 days later: from about day 120 on,
as many leads go as come, so the run's last third shows the plateau from 180 days on.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.authoring.funnel_lookup import find_funnels  # noqa: E402
from engine.runtime.month import DemoMonth, screen_for  # noqa: E402
from engine.runtime.pruning import prune  # noqa: E402
from engine.settings import RetentionSettings, Settings  # noqa: E402
from engine.store.database import create_engine_for, upgrade  # noqa: E402

START = datetime(2026, 1, 5, tzinfo=UTC)
SHORT = RetentionSettings(
    events_days=30,
    outbox_days=30,
    transitions_days=30,
    webhook_deliveries_days=30,
    forget_inactive_days=30,
)


# Kept for ever by design: the daily rollups the reports read once raw rows go, and the suppression
# hashes that keep a forgotten or unsubscribed address from being mailed again.
FOR_EVER = ("report_rollups", "suppressions")


def sizes(path: Path) -> tuple[float, float, float]:
    """(MB in use, MB of file, MB in use by the tables kept for ever) of a SQLite database and its WAL."""
    with sqlite3.connect(path) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        marks = ",".join("?" * len(FOR_EVER))
        (kept,) = db.execute(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN"
            f" (SELECT name FROM sqlite_master WHERE tbl_name IN ({marks}))",
            FOR_EVER,
        ).fetchone()
    wal = path.with_name(path.name + "-wal")
    on_disk = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    return (pages - free) * page / 1e6, on_disk / 1e6, kept / 1e6


class Months(DemoMonth):
    """The demo month's engine and leads, with a prune a virtual day and a size every 10 days."""

    def __init__(self, *args: object, path: Path, retention: RetentionSettings | None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.path, self.retention = path, retention
        self.next_day = START + timedelta(days=1)
        self.by_ten: list[tuple[int, float, float, float]] = []
        self.prune_s = 0.0

    def _tick(self, now: datetime) -> int:
        while now >= self.next_day:
            day = (self.next_day - START).days
            if self.retention is not None:
                started = time.perf_counter()
                prune(self.engine, self.retention, self.next_day)
                self.prune_s += time.perf_counter() - started
            if day % 10 == 0:
                self.by_ten.append((day, *sizes(self.path)))
            self.next_day += timedelta(days=1)
        return super()._tick(now)


def one(days: int, per_day: int, seed: int, retention: RetentionSettings | None) -> Months:
    settings = Settings()
    funnel = next(f for f in find_funnels(["funnels"], Path("funnels"), settings.emails_dir).funnels)
    folder = Path(tempfile.mkdtemp(prefix="retention-"))
    path = folder / "funnel.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = create_engine_for(url)
    run = Months(
        engine, funnel, screen_for(settings, funnel), _links(settings, funnel), seed, path=path, retention=retention
    )
    run.run(days * per_day, START, days)
    engine.dispose()
    return run


def _links(settings: Settings, funnel: object) -> dict[str, tuple[str, ...]]:
    from engine.authoring.simulation import email_links

    return email_links(funnel, settings.emails_dir)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--per-day", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    leads = args.days * args.per_day
    started = time.perf_counter()
    kept = one(args.days, args.per_day, args.seed, None)
    pruned = one(args.days, args.per_day, args.seed, SHORT)
    print(f"{leads:,} leads over {args.days} virtual days ({args.per_day} a day), SQLite")
    print(f"{'day':>5} {'no retention: used MB':>22} {'file MB':>8} {'retention: used MB':>19}"
          f" {'of it kept for ever':>20} {'file MB':>8}")  # fmt: skip
    for (day, used, size, _), (_, used_r, size_r, ever) in zip(kept.by_ten, pruned.by_ten, strict=False):
        print(f"{day:>5} {used:>22.2f} {size:>8.2f} {used_r:>19.2f} {ever:>20.2f} {size_r:>8.2f}")
    tail = [(day, used - ever, ever) for day, used, _, ever in pruned.by_ten if day >= args.days * 2 / 3]
    plateau = sum(t[1] for t in tail) / len(tail) if tail else 0.0
    growth = (tail[-1][1] - tail[0][1]) / tail[0][1] * 100 if len(tail) > 1 and tail[0][1] else 0.0
    span = tail[-1][0] - tail[0][0] if len(tail) > 1 else 0
    ever_per_day = (tail[-1][2] - tail[0][2]) * 1e6 / span if span else 0.0
    end_used = kept.by_ten[-1][1] if kept.by_ten else 0.0
    print(
        f"without retention: {end_used * 1e6 / leads:,.0f} bytes a lead; with it, the leads' data levels off at "
        f"{plateau:.2f} MB ({growth:+.1f} % over the last third), and what is kept for ever grows "
        f"{ever_per_day:,.0f} bytes a virtual day"
    )
    took = time.perf_counter() - started
    print(f"pruning took {pruned.prune_s:.1f} s over {args.days} prunes; the whole run {took:.0f} s")
    print(
        json.dumps(
            {
                "days": args.days,
                "leads": leads,
                "used_mb": [round(u, 2) for _, u, _, _ in kept.by_ten],
                "file_mb": [round(f, 2) for _, _, f, _ in kept.by_ten],
                "used_mb_retention": [round(u, 2) for _, u, _, _ in pruned.by_ten],
                "for_ever_mb_retention": [round(e, 2) for _, _, _, e in pruned.by_ten],
                "file_mb_retention": [round(f, 2) for _, _, f, _ in pruned.by_ten],
                "bytes_per_lead": round(end_used * 1e6 / leads),
                "plateau_mb": round(plateau, 2),
                "plateau_growth_pct": round(growth, 1),
                "for_ever_bytes_per_day": round(ever_per_day),
                "prune_s": round(pruned.prune_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
