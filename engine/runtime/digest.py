"""The daily digest for ops: yesterday's transitions, conversions (goals), bounces and the `unknown`
messages waiting for a decision, emailed at `digest.at` in `digest.timezone` by an APScheduler cron job
of `funnel run`.

`compose` is pure. `send` takes the day's row in `ops_digests` before the email goes, so with several
engines running (or a job fired twice) the digest goes once; a failure is recorded on the row and logged,
and the digest for that day is not tried again (ops can read the same figures with `funnel report`).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from html import escape
from zoneinfo import ZoneInfo

import aiosmtplib
import sqlalchemy as sa
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy.dialects import postgresql, sqlite

from engine.core.redaction import pseudonymise
from engine.mail.mailer import client_options
from engine.mail.mime import build_mime
from engine.settings import Settings
from engine.store import tables

log = logging.getLogger("engine.digest")


@dataclass
class Figures:
    day: date
    transitions: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # funnel, from, to
    goals: Counter[tuple[str, str]] = field(default_factory=Counter)  # funnel, goal
    bounced: Counter[str] = field(default_factory=Counter)  # funnel
    unknown_new: int = 0
    unknown_open: int = 0


def trigger(settings: Settings) -> CronTrigger:
    """When the digest job fires: every day at `digest.at` in `digest.timezone`."""
    hour, minute = (int(part) for part in settings.digest.at.split(":"))
    return CronTrigger(hour=hour, minute=minute, timezone=ZoneInfo(settings.digest.timezone))


def window(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The local day as a range of UTC instants (23 or 25 hours long on DST days)."""
    start = datetime.combine(day, time(0), zone).astimezone(UTC)
    return start, datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)


def gather(conn: sa.Connection, day: date, zone: ZoneInfo) -> Figures:
    start, end = window(day, zone)
    figures = Figures(day)
    t, g, o = tables.stage_transitions, tables.goals, tables.outbox
    for funnel, from_stage, to_stage, n in conn.execute(
        sa.select(t.c.funnel_id, t.c.from_stage, t.c.to_stage, sa.func.count())
        .where(t.c.at >= start, t.c.at < end)
        .group_by(t.c.funnel_id, t.c.from_stage, t.c.to_stage)
    ):
        figures.transitions[(funnel, from_stage or "", to_stage or "")] = int(n)
    for funnel, goal, n in conn.execute(
        sa.select(g.c.funnel_id, g.c.goal, sa.func.count())
        .where(g.c.at >= start, g.c.at < end)
        .group_by(g.c.funnel_id, g.c.goal)
    ):
        figures.goals[(funnel, goal)] = int(n)
    for funnel, n in conn.execute(
        sa.select(o.c.funnel_id, sa.func.count())
        .where(o.c.status == "bounced", o.c.sent_at >= start, o.c.sent_at < end)
        .group_by(o.c.funnel_id)
    ):
        figures.bounced[funnel] = int(n)
    figures.unknown_open = int(
        conn.execute(sa.select(sa.func.count()).select_from(o).where(o.c.status == "unknown")).scalar_one()
    )
    figures.unknown_new = int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(o)
            .where(o.c.status == "unknown", o.c.sent_at >= start, o.c.sent_at < end)
        ).scalar_one()
    )
    return figures


def compose(figures: Figures, dashboard_url: str) -> tuple[str, str, str]:
    """(subject, text, html) of the digest. Counts only: no lead's address is in it."""
    entered = sum(n for (_, f, _), n in figures.transitions.items() if not f)
    moved = sum(n for (_, f, to), n in figures.transitions.items() if f and to)
    exited = sum(n for (_, _, to), n in figures.transitions.items() if not to)
    goals = sum(figures.goals.values())
    bounced = sum(figures.bounced.values())
    subject = (
        f"Funnels on {figures.day.isoformat()}: {entered} entered, {moved} moved, {goals} converted, "
        f"{bounced} bounced, {figures.unknown_open} unknown"
    )
    lines = [subject, ""]
    if figures.transitions:
        lines.append("Stage transitions:")
        for (funnel, from_stage, to_stage), n in sorted(figures.transitions.items()):
            lines.append(f"  {funnel}: {from_stage or '(entry)'} -> {to_stage or '(exit)'}: {n}")
    else:
        lines.append("No stage transitions.")
    lines.append(f"Exits: {exited}")
    lines.append("Conversions (goals reached):" if figures.goals else "No goal reached.")
    for (funnel, goal), n in sorted(figures.goals.items()):
        lines.append(f"  {funnel}: {goal}: {n}")
    for funnel, n in sorted(figures.bounced.items()):
        lines.append(f"Bounced in {funnel}: {n}")
    lines.append(
        f"Messages with an unknown outcome: {figures.unknown_new} new, {figures.unknown_open} waiting for a "
        f"decision ({dashboard_url})"
    )
    text = "\n".join(lines) + "\n"
    html = '<pre style="font: 14px/1.5 monospace">' + escape(text) + "</pre>"
    return subject, text, html


async def send(engine: sa.Engine, settings: Settings, now: datetime, host: str, port: int) -> str:
    """Send yesterday's digest (in the digest's zone) once; returns what happened, for the log."""
    digest = settings.digest
    if not digest.to:
        return "no recipients"
    zone = ZoneInfo(digest.timezone)
    day = (now.astimezone(zone) - timedelta(days=1)).date()
    with engine.begin() as conn:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        taken = conn.execute(
            insert(tables.ops_digests)
            .values(day=day.isoformat(), status="sending", at=now)
            .on_conflict_do_nothing(index_elements=["day"])
        ).rowcount
        figures = gather(conn, day, zone) if taken else None
    if figures is None:
        return f"digest for {day} already taken"
    subject, text, html = compose(figures, f"{settings.base_url.rstrip('/')}/ops/outbox")
    sender = settings.sender
    domain = sender.address.rpartition("@")[2] or "localhost"
    payload = build_mime(
        from_name=f"{sender.name} funnels",
        from_address=sender.address,
        to=", ".join(digest.to),
        subject=subject,
        date=now,
        message_id=f"<digest-{day.isoformat()}-{uuid.uuid4().hex[:12]}@{domain}>",
        reply_to=None,
        list_unsubscribe=None,
        extra_headers=[("X-Funnel", "ops/digest")],
        text=text,
        html=html,
    )
    try:
        options = client_options(settings.smtp)
        await aiosmtplib.send(
            payload, sender=sender.address, recipients=list(digest.to), hostname=host, port=port, **options
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        with engine.begin() as conn:
            d = tables.ops_digests
            conn.execute(sa.update(d).where(d.c.day == day.isoformat()).values(status="failed", error=str(exc)))
        log.error("daily digest for %s failed: %s", day, pseudonymise(str(exc), *digest.to))
        return f"digest for {day} failed"
    with engine.begin() as conn:
        d = tables.ops_digests
        conn.execute(sa.update(d).where(d.c.day == day.isoformat()).values(status="sent", at=now))
    return f"digest for {day} sent"
