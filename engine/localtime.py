"""Local wall-clock maths: send windows and "next Tuesday 09:00" in a lead's time zone.

Everything here takes and returns aware UTC datetimes; local time exists only inside.
A local time that does not exist (spring forward) is read with the offset before the change, which
lands just after the gap; a local time that happens twice (fall back) is the first occurrence, and a
wait never fires twice on the same local date.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

WEEKDAY_INDEX = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def at_local(day: date, clock: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of a local date and clock time (fold=0: first occurrence, gaps shift forward)."""
    return datetime.combine(day, clock, tzinfo=tz).astimezone(UTC)


def local_date(instant: datetime, tz: ZoneInfo) -> date:
    return instant.astimezone(tz).date()


def next_local_time(after: datetime, clock: time, days: Sequence[str] | None, tz: ZoneInfo) -> datetime:
    """The first instant strictly after `after` whose local date is an allowed weekday and whose local
    wall time is `clock`. At most one instant per local date, so DST never makes it fire twice."""
    allowed = {WEEKDAY_INDEX[d] for d in days} if days else None
    day = local_date(after, tz)
    for _ in range(15):
        if allowed is None or day.weekday() in allowed:
            candidate = at_local(day, clock, tz)
            if candidate > after:
                return candidate
        day += timedelta(days=1)
    raise AssertionError("an allowed weekday occurs within any 15 days")


def in_window(instant: datetime, days: Sequence[str], start: time, end: time, tz: ZoneInfo) -> bool:
    local = instant.astimezone(tz)
    if WEEKDAY_INDEX_BY_NUMBER[local.weekday()] not in days:
        return False
    day = local.date()
    return at_local(day, start, tz) <= instant < at_local(day, end, tz)


def window_open_at(instant: datetime, days: Sequence[str], start: time, end: time, tz: ZoneInfo) -> datetime:
    """`instant` itself if it lies in the send window, else the next moment the window opens."""
    allowed = {WEEKDAY_INDEX[d] for d in days}
    day = local_date(instant, tz)
    for _ in range(15):
        if day.weekday() in allowed:
            opens, closes = at_local(day, start, tz), at_local(day, end, tz)
            if instant < opens:
                return opens
            if instant < closes:
                return instant
        day += timedelta(days=1)
    raise AssertionError("an allowed weekday occurs within any 15 days")


WEEKDAY_INDEX_BY_NUMBER = {v: k for k, v in WEEKDAY_INDEX.items()}
