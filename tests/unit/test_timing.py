"""Quiet hours and the daily cap across funnels, in the lead's zone, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.localtime import local_date, zone
from engine.core.timing import TimingRules, earliest_send

BERLIN = zone("Europe/Berlin")
NIGHTS = TimingRules.parse("21:00-08:00", None)
ONE_A_DAY = TimingRules.parse(None, 1)
BOTH = TimingRules.parse("21:00-08:00", 1)


def utc(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def test_no_rules_send_now() -> None:
    assert earliest_send(utc(6, 1, 23), BERLIN, TimingRules()) == utc(6, 1, 23)
    assert not TimingRules().active
    assert BOTH.active


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(6, 1, 12), utc(6, 1, 12)),  # 14:00 in Berlin: fine
        (utc(6, 1, 19), utc(6, 2, 6)),  # 21:00 local: quiet until 08:00 local (06:00 UTC in summer)
        (utc(6, 1, 23), utc(6, 2, 6)),  # 01:00 local, the next day
        (utc(6, 2, 5, 59), utc(6, 2, 6)),
        (utc(6, 2, 6), utc(6, 2, 6)),  # 08:00 sharp is allowed
        (utc(1, 5, 6, 30), utc(1, 5, 7)),  # winter: 07:30 local waits for 08:00 local = 07:00 UTC
        (utc(3, 28, 22), utc(3, 29, 6)),  # spring forward night: 08:00 CEST
        (utc(10, 24, 22), utc(10, 25, 7)),  # fall back night: 08:00 CET
    ],
)
def test_quiet_hours_defer_to_their_local_end(now: datetime, expected: datetime) -> None:
    assert earliest_send(now, BERLIN, NIGHTS) == expected


def test_quiet_hours_inside_one_day() -> None:
    lunch = TimingRules.parse("12:00-13:30", None)
    assert earliest_send(utc(6, 1, 10, 15), BERLIN, lunch) == utc(6, 1, 11, 30)
    assert earliest_send(utc(6, 1, 9), BERLIN, lunch) == utc(6, 1, 9)
    assert earliest_send(utc(6, 1, 11, 30), BERLIN, lunch) == utc(6, 1, 11, 30)


def test_cap_defers_to_the_next_local_day() -> None:
    sent = [utc(6, 1, 7)]  # 09:00 Berlin
    assert earliest_send(utc(6, 1, 12), BERLIN, ONE_A_DAY, sent) == utc(6, 1, 22)  # local midnight
    # With quiet hours too, the next day's first allowed minute is 08:00 local.
    assert earliest_send(utc(6, 1, 12), BERLIN, BOTH, sent) == utc(6, 2, 6)


def test_cap_counts_the_local_day_not_the_utc_day() -> None:
    # 23:30 UTC on June 1st is already June 2nd in Berlin: yesterday's email does not count.
    sent = [utc(6, 1, 7)]
    assert earliest_send(utc(6, 1, 23, 30), BERLIN, ONE_A_DAY, sent) == utc(6, 1, 23, 30)
    two = TimingRules.parse(None, 2)
    assert earliest_send(utc(6, 1, 12), BERLIN, two, sent) == utc(6, 1, 12)
    assert earliest_send(utc(6, 1, 12), BERLIN, two, [*sent, utc(6, 1, 9)]) == utc(6, 1, 22)


instants = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)
zones = st.sampled_from(["Europe/Berlin", "America/Los_Angeles", "Asia/Kolkata", "Australia/Lord_Howe", "UTC"])
rules = st.builds(
    TimingRules.parse,
    st.one_of(
        st.none(),
        st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 23), st.integers(0, 59)).map(
            lambda t: f"{t[0]:02}:{t[1]:02}-{t[2]:02}:{t[3]:02}"
        ),
    ),
    st.one_of(st.none(), st.integers(1, 3)),
)


def _allowed(instant: datetime, tz_name: str, r: TimingRules, sent: list[datetime]) -> bool:
    return earliest_send(instant, zone(tz_name), r, sent) == instant


@given(instants, zones, rules, st.lists(st.integers(-48 * 60, 0), max_size=5))
def test_earliest_send_is_allowed_and_never_early(
    now: datetime, tz_name: str, r: TimingRules, ago_minutes: list[int]
) -> None:
    tz = zone(tz_name)
    sent = [now + timedelta(minutes=m) for m in ago_minutes]
    when = earliest_send(now, tz, r, sent)
    assert when >= now
    # The answer is itself allowed: not quiet, and the day is not full.
    assert _allowed(when, tz_name, r, sent)
    if r.quiet_start is not None and r.quiet_end is not None and r.quiet_start != r.quiet_end:
        clock = when.astimezone(tz).time()
        start, end = r.quiet_start, r.quiet_end
        quiet = (start <= clock < end) if start < end else (clock >= start or clock < end)
        # A spring-forward gap may swallow the end of quiet hours: then the first instant after it counts.
        assert not quiet or when.astimezone(tz).utcoffset() != (when - timedelta(hours=1)).astimezone(tz).utcoffset()
    if r.max_per_day is not None:
        day = local_date(when, tz)
        assert sum(1 for s in sent if local_date(s, tz) == day) < r.max_per_day
    # Nothing earlier was allowed: the minute before the answer (when it is after now) is not.
    if when - timedelta(minutes=1) >= now:
        assert not _allowed(when - timedelta(minutes=1), tz_name, r, sent)
