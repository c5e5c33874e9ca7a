"""When a marketing email may go out, by the rules that hold across every funnel: quiet hours and a
daily cap per lead, both in the lead's own time zone.

Pure: the caller passes the instant, the lead's zone and when the lead's earlier marketing emails went
out. A rule never drops an email; it only says from when it may be sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from engine.core.localtime import at_local, local_date


@dataclass(frozen=True, slots=True)
class TimingRules:
    quiet_start: time | None = None
    quiet_end: time | None = None
    max_per_day: int | None = None

    @classmethod
    def parse(cls, quiet_hours: str | None, max_per_day: int | None) -> TimingRules:
        """`quiet_hours` as "HH:MM-HH:MM" local; a range that crosses midnight (21:00-08:00) is the usual one."""
        if not quiet_hours:
            return cls(max_per_day=max_per_day)
        start, _, end = quiet_hours.partition("-")
        return cls(time.fromisoformat(start), time.fromisoformat(end), max_per_day)

    @property
    def active(self) -> bool:
        return self.quiet_start is not None or self.max_per_day is not None


def earliest_send(now: datetime, tz: ZoneInfo, rules: TimingRules, sent: Sequence[datetime] = ()) -> datetime:
    """`now` if a marketing email may go out now, else the first instant it may.

    `sent` holds when the lead's earlier marketing emails were handed to the server, in any funnel."""
    instant = now
    # Each rule can only push the instant later; the cap's next day may start inside quiet hours, and the
    # end of quiet hours may fall on a day already full: a few rounds settle it.
    for _ in range(8):
        moved = _after_cap(_after_quiet(instant, tz, rules), tz, rules, sent)
        if moved == instant:
            return instant
        instant = moved
    return instant


def _after_quiet(instant: datetime, tz: ZoneInfo, rules: TimingRules) -> datetime:
    start, end = rules.quiet_start, rules.quiet_end
    if start is None or end is None or start == end:
        return instant
    local = instant.astimezone(tz)
    clock, day = local.time().replace(tzinfo=None), local.date()
    if start < end:
        quiet_until = at_local(day, end, tz) if start <= clock < end else None
    elif clock >= start:
        quiet_until = at_local(day + timedelta(days=1), end, tz)
    elif clock < end:
        quiet_until = at_local(day, end, tz)
    else:
        quiet_until = None
    # A spring-forward gap can put the end's instant at or before `instant`: then it is over already.
    return quiet_until if quiet_until is not None and quiet_until > instant else instant


def _after_cap(instant: datetime, tz: ZoneInfo, rules: TimingRules, sent: Sequence[datetime]) -> datetime:
    if rules.max_per_day is None:
        return instant
    day = local_date(instant, tz)
    if sum(1 for s in sent if local_date(s, tz) == day) < rules.max_per_day:
        return instant
    return at_local(day + timedelta(days=1), time(0), tz)
