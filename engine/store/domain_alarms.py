"""Alarms about receiving domains that refuse the sender (docs/bounces.md, "The sender's-fault alarm").

Reports of the sender's fault (a blocklisting, a policy or authentication refusal) never cost a lead,
so they are counted per receiving domain instead: when `bounces.sender_fault_alarm` of them arrive from
one domain within `bounces.sender_fault_window_minutes`, one `domain_alarms` row is written, once, and
said once as a WARNING. While it is open, each further report from that domain adds to it and moves
its end to that report plus the window; a full window without one ends it (`end_due`, said once as an
INFO), and so does an operator (`clear`). With `bounces.pause_domain_on_alarm`, marketing email to an
open alarm's domain is deferred (`engine.store.screen`) and released when the alarm ends.

Every function works in the caller's transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from engine.core.bounce_outcome import SENDER_FAULT
from engine.settings import BounceSettings
from engine.store import tables
from engine.store.leads import insert_ignoring

log = logging.getLogger("engine.bounces")


@dataclass(frozen=True, slots=True)
class Alarm:
    id: int
    domain: str
    raised_at: datetime
    reports: int
    last_report_at: datetime
    ends_at: datetime
    ended_at: datetime | None
    cleared_by: str | None
    clear_reason: str | None

    def active(self, now: datetime) -> bool:
        return self.ended_at is None and self.ends_at > now


def pause_reason(domain: str) -> str:
    """The reason a message held for a paused domain carries while it waits (and how it is found again)."""
    return f"paused: {domain} refuses the sender (sender's-fault alarm)"


def _columns() -> tuple[sa.Column[object], ...]:
    a = tables.domain_alarms.c
    return (a.id, a.domain, a.raised_at, a.reports, a.last_report_at, a.ends_at, a.ended_at, a.cleared_by,
            a.clear_reason)  # fmt: skip


# Built once: every report of the sender's fault asks for the domain's open alarm, and counts into it.
_OPEN = sa.select(*_columns()).where(tables.domain_alarms.c.open_key == sa.bindparam("domain"))
_OPEN_LOCKED = _OPEN.with_for_update()
_ONE_MORE = (
    sa.update(tables.domain_alarms)
    .where(tables.domain_alarms.c.id == sa.bindparam("alarm_id"))
    .values(
        reports=tables.domain_alarms.c.reports + 1,
        last_report_at=sa.bindparam("now", type_=tables.domain_alarms.c.last_report_at.type),
        ends_at=sa.bindparam("ends", type_=tables.domain_alarms.c.ends_at.type),
    )
)


def _open(conn: sa.Connection, domain: str) -> Alarm | None:
    stmt = _OPEN_LOCKED if conn.dialect.name == "postgresql" else _OPEN
    row = conn.execute(stmt, {"domain": domain}).first()
    return Alarm(*row) if row is not None else None


def count_report(conn: sa.Connection, domain: str, now: datetime, settings: BounceSettings) -> Alarm | None:
    """One more report of the sender's fault from `domain` (already in `bounce_reports`). Returns the
    alarm when this report raised it, else None."""
    window = timedelta(minutes=settings.sender_fault_window_minutes)
    a = tables.domain_alarms
    current = _open(conn, domain)
    if current is not None and current.ends_at <= now:
        _end(conn, current, current.ends_at)  # over before this report came: this one counts afresh
        current = None
    if current is not None:
        conn.execute(_ONE_MORE, {"alarm_id": current.id, "now": now, "ends": now + window})
        return None
    # Reports before the domain's last alarm ended (an operator cleared it) were heard already.
    ended = conn.execute(sa.select(sa.func.max(a.c.ended_at)).where(a.c.domain == domain)).scalar()
    since = max(now - window, ended) if ended is not None else now - window
    b = tables.bounce_reports
    counted = int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(b)
            .where(b.c.recipient_domain == domain, b.c.failure_class == SENDER_FAULT, b.c.received_at > since)
        ).scalar()
        or 0
    )
    if counted < settings.sender_fault_alarm:
        return None
    values = {"domain": domain, "open_key": domain, "raised_at": now, "reports": counted, "last_report_at": now,
              "ends_at": now + window}  # fmt: skip
    if not insert_ignoring(conn, a, ("open_key",), values):
        # Another report from the domain raised it at the same instant: this one adds to it.
        conn.execute(sa.update(a).where(a.c.open_key == domain).values(reports=a.c.reports + 1, ends_at=now + window))
        return None
    raised = _open(conn, domain)
    log.warning(
        "ALARM: %d reports in %d minutes say %s refuses this sender (blocklisting, policy, authentication): "
        "its leads are kept%s; see `funnel bounces alarms`",
        counted, settings.sender_fault_window_minutes, domain,
        ", its marketing email is held until the alarm ends" if settings.pause_domain_on_alarm else "",
    )  # fmt: skip
    return raised


def _end(conn: sa.Connection, alarm: Alarm, at: datetime, by: str | None = None, reason: str | None = None) -> int:
    """Close the alarm and release the marketing email held for its domain; the number released."""
    a = tables.domain_alarms
    conn.execute(
        sa.update(a).where(a.c.id == alarm.id).values(open_key=None, ended_at=at, cleared_by=by, clear_reason=reason)
    )
    released = release_held(conn, alarm.domain, at)
    how = (
        f"cleared by {by} ({reason})"
        if by
        else f"no report of the sender's fault from it for {alarm.ends_at - alarm.last_report_at}"
    )
    log.info(
        "alarm over: %s, raised at %s after %d reports: %s; %d held email(s) released",
        alarm.domain, alarm.raised_at.isoformat(timespec="seconds"), alarm.reports, how, released,
    )  # fmt: skip
    return released


def release_held(conn: sa.Connection, domain: str, now: datetime) -> int:
    """Messages deferred for this domain's alarm are due again now."""
    o = tables.outbox
    result = conn.execute(
        sa.update(o)
        .where(o.c.status == "deferred", o.c.last_error == pause_reason(domain))
        .values(next_attempt_at=now, last_error=None)
    )
    return int(result.rowcount or 0)


def ending(conn: sa.Connection, now: datetime) -> list[Alarm]:
    """Open alarms whose end has come (read-only: an idle engine asks this every tick)."""
    a = tables.domain_alarms
    stmt = sa.select(*_columns()).where(a.c.open_key.is_not(None), a.c.ends_at <= now).order_by(a.c.id)
    return [Alarm(*row) for row in conn.execute(stmt)]


def end_due(conn: sa.Connection, now: datetime) -> list[Alarm]:
    """End every open alarm whose end has come; the alarms ended."""
    done = []
    for alarm in ending(conn, now):
        current = _open(conn, alarm.domain)
        if current is not None and current.id == alarm.id and current.ends_at <= now:
            _end(conn, current, current.ends_at)
            done.append(current)
    return done


def clear(conn: sa.Connection, domain: str, now: datetime, by: str, reason: str) -> Alarm | None:
    """An operator ends the domain's open alarm (the sender was delisted, authentication fixed); None
    when there is none. Reports from the domain after this count afresh toward a new alarm."""
    current = _open(conn, domain.lower())
    if current is None or not current.active(now):
        if current is not None:
            _end(conn, current, current.ends_at)
        return None
    _end(conn, current, now, by[:100], reason)
    return current


def active(conn: sa.Connection, now: datetime) -> list[Alarm]:
    """Alarms in force now, oldest first."""
    a = tables.domain_alarms
    stmt = sa.select(*_columns()).where(a.c.open_key.is_not(None), a.c.ends_at > now).order_by(a.c.raised_at, a.c.id)
    return [Alarm(*row) for row in conn.execute(stmt)]


def paused(conn: sa.Connection, now: datetime) -> dict[str, datetime]:
    """{domain: when its alarm ends as things stand} for every alarm in force."""
    return {alarm.domain: alarm.ends_at for alarm in active(conn, now)}


def listing(conn: sa.Connection, since: datetime | None = None, limit: int = 100) -> list[Alarm]:
    """Alarms raised since then (all when None) and any still open, newest first."""
    a = tables.domain_alarms
    stmt = sa.select(*_columns()).order_by(a.c.raised_at.desc(), a.c.id.desc()).limit(limit)
    if since is not None:
        stmt = stmt.where(sa.or_(a.c.raised_at >= since, a.c.open_key.is_not(None), a.c.ended_at >= since))
    return [Alarm(*row) for row in conn.execute(stmt)]


def sender_fault_reports(conn: sa.Connection) -> int:
    """Reports of the sender's fault ever recorded (kept until their lead is erased)."""
    b = tables.bounce_reports
    stmt = sa.select(sa.func.count()).select_from(b).where(b.c.failure_class == SENDER_FAULT)
    return int(conn.execute(stmt).scalar_one())
