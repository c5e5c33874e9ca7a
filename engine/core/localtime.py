"""Local wall-clock maths: send windows and "next Tuesday 09:00" in a lead's time zone.

Everything here takes and returns aware UTC datetimes; local time exists only inside.
A local time that does not exist (spring forward) resolves to the end of the gap, the first instant
whose wall time has reached it; a local time that happens twice (fall back) is its first occurrence
for waits, and a wait never fires twice on the same local date. A send window is the instants whose
local wall time lies in [start, end), so on a fall-back day it opens at the last occurrence of start.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo, available_timezones

WEEKDAY_INDEX = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@cache
def known_zones() -> frozenset[str]:
    """The IANA zone names this machine's time zone database holds."""
    return frozenset(available_timezones())


def is_zone(name: object) -> bool:
    """Whether `name` is an IANA zone name such as Europe/London (not a file path `ZoneInfo` would
    also open, such as posix/Europe/London)."""
    return isinstance(name, str) and name in known_zones()


def at_local(day: date, clock: time, tz: ZoneInfo, fold: int = 0) -> datetime:
    """The UTC instant of a local date and clock time: its first occurrence (fold=0) or its last
    (fold=1) when the clock goes back; the end of the gap when the clock skipped it."""
    wall = datetime.combine(day, clock, tzinfo=tz)
    first = wall.astimezone(UTC)
    second = wall.replace(fold=1).astimezone(UTC)
    if second < first:
        # A gap: fold=1 reads the wall time with the offset after the change and lands before the gap,
        # fold=0 with the offset before it and overshoots the gap's end by the gap's length.
        return _offset_change(second, first, tz)
    return first if fold == 0 else second


def _offset_change(before: datetime, after: datetime, tz: ZoneInfo) -> datetime:
    """The instant in (before, after] where the UTC offset changes to after's (zones change on whole
    seconds)."""
    target = after.astimezone(tz).utcoffset()
    while after - before > timedelta(seconds=1):
        mid = before + timedelta(seconds=(after - before).total_seconds() // 2)
        if mid.astimezone(tz).utcoffset() == target:
            after = mid
        else:
            before = mid
    return after


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


def window_on(day: date, start: time, end: time, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """A day's send window as UTC instants [opens, closes): only instants whose wall time is in
    [start, end), even when the clock goes back through the window's edges."""
    opens = at_local(day, start, tz, fold=1)
    closes = at_local(day, end, tz)
    if closes < opens:
        closes = at_local(day, end, tz, fold=1)
    return opens, closes


def in_window(instant: datetime, days: Sequence[str], start: time, end: time, tz: ZoneInfo) -> bool:
    local = instant.astimezone(tz)
    if WEEKDAY_INDEX_BY_NUMBER[local.weekday()] not in days:
        return False
    opens, closes = window_on(local.date(), start, end, tz)
    return opens <= instant < closes


def window_open_at(instant: datetime, days: Sequence[str], start: time, end: time, tz: ZoneInfo) -> datetime:
    """`instant` itself if it lies in the send window, else the next moment the window opens."""
    allowed = {WEEKDAY_INDEX[d] for d in days}
    day = local_date(instant, tz)
    for _ in range(15):
        if day.weekday() in allowed:
            opens, closes = window_on(day, start, end, tz)
            # A window that lies wholly in a spring-forward gap is empty that day.
            if instant < opens < closes:
                return opens
            if opens <= instant < closes:
                return instant
        day += timedelta(days=1)
    raise AssertionError("an allowed weekday occurs within any 15 days")


WEEKDAY_INDEX_BY_NUMBER = {v: k for k, v in WEEKDAY_INDEX.items()}
