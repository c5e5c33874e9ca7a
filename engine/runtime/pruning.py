"""Retention at work: `funnel run` prunes every `retention.every_minutes`, `funnel db prune` by hand.

A run rolls up the leads that have settled, deletes each kind of record past its age, then forgets the
inactive leads if asked to; each batch (`retention.batch_size` rows) is its own transaction, so the
engine's ticks interleave with a long prune and the SQLite WAL stays small. SQLite reuses the pages
freed for new rows, so the file stops growing once retention holds; `funnel db vacuum` gives them back
to the file system.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from engine.settings import RetentionSettings
from engine.store import retention
from engine.store.database import Connection, DBAPIError, Engine, describe_failure

log = logging.getLogger(__name__)

REPORTED = ("events", "outbox", "transitions")  # kinds whose rows the report counts


class DryRun(Exception):
    """Raised inside a dry run's transaction so that it rolls back."""


def prune(engine: Engine, settings: RetentionSettings, now: datetime, dry_run: bool = False) -> dict[str, int]:
    """Prune what `settings` says is past its age, as of `now`: the number of leads rolled up and
    forgotten and of rows deleted, by kind. `dry_run`: the same work in one transaction rolled back,
    so the figures are exactly what a prune would do now."""
    if not dry_run:
        return _prune(settings, now, lambda step: _batches(engine, step, settings.batch_size))
    found: dict[str, int] = {}
    try:
        with engine.begin() as conn:
            found = _prune(settings, now, lambda step: _all(conn, step, settings.batch_size))
            raise DryRun
    except DryRun:
        return found


Step = Callable[[Connection], int]


def _prune(settings: RetentionSettings, now: datetime, run: Callable[[Step], int]) -> dict[str, int]:
    ages = settings.ages()
    batch = settings.batch_size
    done: dict[str, int] = {}
    reported = [days for kind, days in ages.items() if kind in REPORTED and days is not None]
    if reported:
        quiet_since = now - timedelta(days=min(reported))
        done["leads rolled up"] = run(lambda conn: retention.roll_up_settled(conn, quiet_since, now, batch))
    for kind, days in ages.items():
        if days is not None:
            before = now - timedelta(days=days)
            done[kind] = run(partial(_delete, kind=kind, before=before, batch=batch))
    if settings.forget_inactive_days is not None:
        quiet_since = now - timedelta(days=settings.forget_inactive_days)
        done["leads forgotten"] = run(lambda conn: retention.forget_inactive(conn, quiet_since, now, batch))
    return done


def _delete(conn: Connection, kind: str, before: datetime, batch: int) -> int:
    return retention.delete(conn, kind, before, batch)


def _batches(engine: Engine, step: Step, batch: int) -> int:
    """Run `step` in one transaction after another until it does less than a full batch."""
    total = 0
    while True:
        with engine.begin() as conn:
            n = step(conn)
        total += n
        if n < batch:
            return total


def _all(conn: Connection, step: Step, batch: int) -> int:
    total = 0
    while (n := step(conn)) >= batch:
        total += n
    return total + n


def run_once(engine: Engine, settings: RetentionSettings, clock: Callable[[], datetime]) -> None:
    """One prune of `funnel run`, said in one line; a failure is said and waits for the next run."""
    started = time.monotonic()
    try:
        done = prune(engine, settings, clock())
    except DBAPIError as exc:
        cause = describe_failure(engine, exc) or str(exc.orig)
        log.warning("retention: prune stopped by the database (%s); the next run goes on", cause)
        return
    log.info("retention: %s in %.1f s", said(done), time.monotonic() - started)


def said(done: dict[str, int]) -> str:
    if not any(done.values()):
        return "nothing past its age"
    return ", ".join(f"{n:,} {kind}" for kind, n in done.items() if n)
