"""Durations: parsed as marketers write them, and said in words, one way, wherever people read them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.durations import format_duration, in_words, parse_duration, stay_in_words


@given(st.integers(min_value=0, max_value=100 * 365 * 86400))
def test_the_file_spelling_reads_back(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize(
    ("delta", "words"),
    [
        (timedelta(0), "0 seconds"),
        (timedelta(seconds=-5), "0 seconds"),
        (timedelta(seconds=1), "1 second"),
        (timedelta(seconds=130), "2 minutes 10 seconds"),
        (timedelta(hours=1), "1 hour"),
        (timedelta(days=1, hours=12), "1 day 12 hours"),
        (timedelta(weeks=4), "28 days"),
        (timedelta(days=2, minutes=1, seconds=1), "2 days 1 minute 1 second"),
    ],
)
def test_a_duration_in_words(delta: timedelta, words: str) -> None:
    assert in_words(delta) == words


def test_at_most_the_largest_units_asked_for() -> None:
    delta = timedelta(days=2, hours=4, minutes=13, seconds=9)
    assert [in_words(delta, units=n) for n in (1, 2, 3)] == ["2 days", "2 days 4 hours", "2 days 4 hours 13 minutes"]
    assert in_words(timedelta(days=1, minutes=13), units=2) == "1 day"
    assert in_words(timedelta(minutes=3, seconds=7), units=1) == "3 minutes"


def test_a_stay_in_a_report() -> None:
    assert [stay_in_words(m) for m in (None, 0, 45, 60, 190, 1440, 1440 * 2 + 243)] == [
        "-", "under a minute", "45 minutes", "1 hour", "3 hours 10 minutes", "1 day", "2 days 4 hours",
    ]  # fmt: skip
