"""The daily digest for ops: yesterday's transitions, conversions (goals), bounces and the `unknown`
messages waiting for a decision, emailed at `digest.at` in `digest.timezone` by an APScheduler cron job
of `funnel run`.

`compose` is pure; the figures and the day's row are read and written by `engine.store.digests`. `send`
takes the day's row in `ops_digests` before the email goes, so with several engines running (or a job
fired twice) the digest goes once; a failure is recorded on the row and logged, and the digest for that
day is not tried again (ops can read the same figures with `funnel report`).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from html import escape
from zoneinfo import ZoneInfo

import aiosmtplib
from apscheduler.triggers.cron import CronTrigger

from engine.core.redaction import pseudonymise
from engine.mail.mailer import client_options
from engine.mail.mime import build_mime
from engine.settings import Settings
from engine.store.database import Engine
from engine.store.digests import Figures, Returns, gather, record_failed, record_sent, take_day

log = logging.getLogger("engine.digest")
# Complaints per delivered message. Gmail and Yahoo hold bulk senders under 0.1% and block or junk them
# past 0.3% (their 2024 sender requirements): the digest warns past the first, naming the second.
COMPLAINT_RATE_WARN = 0.001
COMPLAINT_RATE_BLOCKED = 0.003


def trigger(settings: Settings) -> CronTrigger:
    """When the digest job fires: every day at `digest.at` in `digest.timezone`."""
    hour, minute = (int(part) for part in settings.digest.at.split(":"))
    return CronTrigger(hour=hour, minute=minute, timezone=ZoneInfo(settings.digest.timezone))


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
    if figures.alarms:
        subject = f"ALARM ({len(figures.alarms)} domain(s) refuse the sender) - {subject}"
    lines = [subject, ""]
    for alarm in figures.alarms:
        state = "still on" if alarm.ended_at is None else f"over {alarm.ended_at:%Y-%m-%d %H:%M} UTC"
        lines.append(
            f"ALARM: {alarm.domain} refuses the sender: {alarm.reports} reports of the sender's fault since "
            f"{alarm.raised_at:%Y-%m-%d %H:%M} UTC, {state} (funnel bounces alarms)"
        )
    if figures.alarms:
        lines.append("")
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
    lines += returns_lines(figures.returns)
    text = "\n".join(lines) + "\n"
    html = '<pre style="font: 14px/1.5 monospace">' + escape(text) + "</pre>"
    return subject, text, html


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def returns_lines(r: Returns) -> list[str]:
    """What came back in the day, and the complaint rate against what the mailbox providers allow."""
    counts = (
        f"{_plural(r.hard_bounces, 'hard bounce')}, {_plural(r.soft_bounces, 'soft bounce')}, "
        f"{_plural(r.complaints, 'complaint')}"
    )
    limits = f"providers block bulk senders past {COMPLAINT_RATE_BLOCKED:.1%}"
    if r.delivered:
        rate = r.complaints / r.delivered
        judged = (
            f"WARN: past {COMPLAINT_RATE_WARN:.1%}; {limits}"
            if rate > COMPLAINT_RATE_WARN
            else f"under {COMPLAINT_RATE_WARN:.1%}; {limits}"
        )
        said = f"complaint rate {rate:.2%} of {r.delivered} delivered ({judged})"
    elif r.complaints:
        said = f"complaint rate: none delivered that day (WARN: complaints with nothing delivered; {limits})"
    else:
        said = "complaint rate: none delivered that day"
    return [
        f"Bounces and complaints: {counts}; {said}",
        f"Bounce reports waiting for an operator: {r.kept} ({r.kept_new} new; `funnel bounces unknown` lists them)",
    ]


async def send(engine: Engine, settings: Settings, now: datetime, host: str, port: int) -> str:
    """Send yesterday's digest (in the digest's zone) once; returns what happened, for the log."""
    digest = settings.digest
    if not digest.to:
        return "no recipients"
    zone = ZoneInfo(digest.timezone)
    day = (now.astimezone(zone) - timedelta(days=1)).date()
    with engine.begin() as conn:
        figures = gather(conn, day, zone) if take_day(conn, day, now) else None
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
            record_failed(conn, day, str(exc))
        log.error("daily digest for %s failed: %s", day, pseudonymise(str(exc), *digest.to))
        return f"digest for {day} failed"
    with engine.begin() as conn:
        record_sent(conn, day, now)
    return f"digest for {day} sent"
