"""Local wall-clock maths against real zone data, across the 2026 DST changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from engine.core.localtime import at_local, in_window, next_local_time, window_open_at, zone

BERLIN = zone("Europe/Berlin")
LOS_ANGELES = zone("America/Los_Angeles")
KOLKATA = zone("Asia/Kolkata")
EVERY_DAY = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --------------------------------------------------------------------------------------------------
# at_local: gaps and overlaps
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "clock", "tz", "expected"),
    [
        (date(2026, 6, 1), time(9, 0), BERLIN, utc(2026, 6, 1, 7, 0)),  # CEST
        (date(2026, 1, 5), time(9, 0), BERLIN, utc(2026, 1, 5, 8, 0)),  # CET
        (date(2026, 1, 5), time(9, 0), KOLKATA, utc(2026, 1, 5, 3, 30)),
        (date(2026, 7, 5), time(9, 0), KOLKATA, utc(2026, 7, 5, 3, 30)),  # no DST
        # Spring forward: 02:00-03:00 does not exist; any time in it resolves to the end of the gap.
        (date(2026, 3, 29), time(2, 30), BERLIN, utc(2026, 3, 29, 1, 0)),
        (date(2026, 3, 29), time(2, 0), BERLIN, utc(2026, 3, 29, 1, 0)),
        (date(2026, 3, 29), time(3, 0), BERLIN, utc(2026, 3, 29, 1, 0)),
        (date(2026, 3, 29), time(1, 59), BERLIN, utc(2026, 3, 29, 0, 59)),
        (date(2026, 3, 8), time(2, 30), LOS_ANGELES, utc(2026, 3, 8, 10, 0)),
        # Fall back: 02:00-03:00 (Berlin) and 01:00-02:00 (Los Angeles) happen twice; the first counts.
        (date(2026, 10, 25), time(2, 30), BERLIN, utc(2026, 10, 25, 0, 30)),
        (date(2026, 11, 1), time(1, 30), LOS_ANGELES, utc(2026, 11, 1, 8, 30)),
        (date(2026, 11, 1), time(2, 30), LOS_ANGELES, utc(2026, 11, 1, 10, 30)),
    ],
)
def test_at_local(day: date, clock: time, tz: ZoneInfo, expected: datetime) -> None:
    assert at_local(day, clock, tz, fold=0) == expected


def test_at_local_last_occurrence_in_an_overlap() -> None:
    assert at_local(date(2026, 10, 25), time(2, 30), BERLIN, fold=1) == utc(2026, 10, 25, 1, 30)
    assert at_local(date(2026, 11, 1), time(1, 30), LOS_ANGELES, fold=1) == utc(2026, 11, 1, 9, 30)
    # Outside an overlap both folds are the same instant, and in a gap both are the gap's end.
    assert at_local(date(2026, 6, 1), time(9, 0), BERLIN, fold=1) == utc(2026, 6, 1, 7, 0)
    assert at_local(date(2026, 3, 29), time(2, 30), BERLIN, fold=1) == utc(2026, 3, 29, 1, 0)


# --------------------------------------------------------------------------------------------------
# next_local_time
# --------------------------------------------------------------------------------------------------


def test_next_local_time_later_today_or_tomorrow() -> None:
    monday_8 = utc(2026, 6, 1, 6, 0)  # 08:00 CEST
    assert next_local_time(monday_8, time(9, 0), None, BERLIN) == utc(2026, 6, 1, 7, 0)
    assert next_local_time(utc(2026, 6, 1, 7, 0), time(9, 0), None, BERLIN) == utc(2026, 6, 2, 7, 0)  # strictly after
    assert next_local_time(utc(2026, 6, 1, 8, 0), time(9, 0), None, BERLIN) == utc(2026, 6, 2, 7, 0)


def test_next_local_time_on_allowed_weekdays_in_the_local_date() -> None:
    # Monday 23:30 in Kolkata is still Monday 18:00 UTC: the local date decides the weekday.
    late_monday = utc(2026, 6, 1, 18, 0)
    assert next_local_time(late_monday, time(9, 0), ["tue"], KOLKATA) == utc(2026, 6, 2, 3, 30)
    assert next_local_time(late_monday, time(9, 0), ["mon"], KOLKATA) == utc(2026, 6, 8, 3, 30)
    # Sunday evening in Los Angeles is Monday in UTC.
    sunday_evening = utc(2026, 6, 1, 2, 0)
    assert next_local_time(sunday_evening, time(9, 0), ["mon"], LOS_ANGELES) == utc(2026, 6, 1, 16, 0)


@pytest.mark.parametrize(
    ("tz", "dst_day"),
    [
        (BERLIN, date(2026, 3, 29)),
        (BERLIN, date(2026, 10, 25)),
        (LOS_ANGELES, date(2026, 3, 8)),
        (LOS_ANGELES, date(2026, 11, 1)),
    ],
)
@pytest.mark.parametrize("clock", [time(0, 0), time(1, 30), time(2, 0), time(2, 30), time(3, 0), time(9, 0)])
def test_next_local_time_fires_once_per_local_date_across_dst(tz: ZoneInfo, dst_day: date, clock: time) -> None:
    instant = datetime.combine(dst_day - timedelta(days=3), time(12, 0), tzinfo=UTC)
    fired = []
    for _ in range(7):
        instant = next_local_time(instant, clock, None, tz)
        fired.append(instant)
    dates = [f.astimezone(tz).date() for f in fired]
    assert dates == [dates[0] + timedelta(days=n) for n in range(7)]
    assert dst_day in dates
    for f in fired:
        local = f.astimezone(tz)
        # The wall time itself, or on a spring-forward day the end of the gap it fell into.
        assert local.time() == clock or (local.date() == dst_day and local.time() == time(3, 0))


# --------------------------------------------------------------------------------------------------
# Send windows
# --------------------------------------------------------------------------------------------------

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")


def test_window_open_at_inside_before_after_and_on_closed_days() -> None:
    nine, five = time(9, 0), time(17, 0)
    monday_10 = utc(2026, 6, 1, 8, 0)
    assert window_open_at(monday_10, WEEKDAYS, nine, five, BERLIN) == monday_10
    assert window_open_at(utc(2026, 6, 1, 5, 0), WEEKDAYS, nine, five, BERLIN) == utc(2026, 6, 1, 7, 0)
    # 17:00 is closed (end exclusive): tomorrow 09:00.
    assert window_open_at(utc(2026, 6, 1, 15, 0), WEEKDAYS, nine, five, BERLIN) == utc(2026, 6, 2, 7, 0)
    # Friday evening and Saturday wait for Monday.
    assert window_open_at(utc(2026, 6, 5, 18, 0), WEEKDAYS, nine, five, BERLIN) == utc(2026, 6, 8, 7, 0)
    assert window_open_at(utc(2026, 6, 6, 10, 0), WEEKDAYS, nine, five, BERLIN) == utc(2026, 6, 8, 7, 0)
    # The same UTC instant is inside the window in one zone and outside in another.
    assert window_open_at(monday_10, WEEKDAYS, nine, five, LOS_ANGELES) == utc(2026, 6, 1, 16, 0)


def test_in_window_agrees_with_window_open_at() -> None:
    nine, five = time(9, 0), time(17, 0)
    instant = utc(2026, 3, 26, 0, 0)
    while instant < utc(2026, 4, 3):
        opens = window_open_at(instant, WEEKDAYS, nine, five, BERLIN)
        assert in_window(instant, WEEKDAYS, nine, five, BERLIN) == (opens == instant)
        assert in_window(opens, WEEKDAYS, nine, five, BERLIN)
        instant += timedelta(minutes=20)


@pytest.mark.parametrize(
    ("tz", "day", "start", "end"),
    [
        (BERLIN, date(2026, 3, 29), time(2, 30), time(4, 0)),  # opens in the gap
        (BERLIN, date(2026, 3, 29), time(1, 0), time(2, 30)),  # closes in the gap
        (BERLIN, date(2026, 10, 25), time(2, 30), time(4, 0)),  # opens in the repeated hour
        (BERLIN, date(2026, 10, 25), time(1, 30), time(2, 20)),  # closes in the repeated hour
        (BERLIN, date(2026, 10, 25), time(2, 10), time(2, 40)),  # all of it in the repeated hour
        (LOS_ANGELES, date(2026, 3, 8), time(2, 0), time(2, 59)),  # all of it in the gap: closed
        (LOS_ANGELES, date(2026, 11, 1), time(1, 30), time(9, 0)),
        (KOLKATA, date(2026, 3, 29), time(2, 30), time(4, 0)),
    ],
)
def test_a_window_holds_only_instants_whose_wall_time_is_inside(
    tz: ZoneInfo, day: date, start: time, end: time
) -> None:
    # Minute by minute through the DST day: whatever in_window accepts has a local wall time in
    # [start, end), and every instant the window opens at is one in_window accepts.
    instant = datetime.combine(day - timedelta(days=1), time(12, 0), tzinfo=UTC)
    accepted = 0
    while instant < datetime.combine(day + timedelta(days=1), time(12, 0), tzinfo=UTC):
        if in_window(instant, EVERY_DAY, start, end, tz):
            accepted += 1
            assert start <= instant.astimezone(tz).time() < end, instant
        opens = window_open_at(instant, EVERY_DAY, start, end, tz)
        assert opens >= instant
        assert in_window(opens, EVERY_DAY, start, end, tz)
        instant += timedelta(minutes=1)
    assert accepted > 0


def test_a_window_in_the_spring_forward_gap_opens_at_its_end_and_closes_at_once() -> None:
    # 02:00-02:59 does not exist on 2026-03-08 in Los Angeles: that day has no such window.
    before = utc(2026, 3, 8, 9, 0)  # 01:00 PST
    assert window_open_at(before, EVERY_DAY, time(2, 0), time(2, 59), LOS_ANGELES) == utc(2026, 3, 9, 9, 0)
    # A window opening in the gap opens where the gap ends (03:00 PDT).
    assert window_open_at(before, EVERY_DAY, time(2, 30), time(9, 0), LOS_ANGELES) == utc(2026, 3, 8, 10, 0)


def test_a_window_opening_in_the_repeated_hour_opens_at_its_last_occurrence() -> None:
    before = utc(2026, 10, 24, 22, 0)  # 00:00 CEST
    assert window_open_at(before, EVERY_DAY, time(2, 30), time(4, 0), BERLIN) == utc(2026, 10, 25, 1, 30)
