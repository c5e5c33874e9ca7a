"""The minute summary (`engine.runtime.summary`): one INFO line a minute with the counts when something
happened, nothing in a quiet minute, a heartbeat after an idle hour."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from engine.runtime.outages import Backlog
from engine.runtime.summary import Counts, Summary

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_a_minute_of_work_is_one_line_with_its_counts() -> None:
    summary = Summary(T0)
    summary.add(Counts(events=3, enrolled=1, transitions=2, sent=4))
    assert summary.due(T0 + timedelta(seconds=30)) is None
    summary.add(Counts(sent=1, deferred=2, unknown=1))
    line = summary.due(T0 + timedelta(seconds=60))
    assert line is not None and line.level == logging.INFO
    assert line.text == (
        "in the last 1 minute: events=3 enrolled=1 transitions=2 sent=5 deferred=2 failed=0 unknown=1 skipped=0"
    )
    assert summary.due(T0 + timedelta(seconds=125)) is None  # a quiet minute says nothing


def test_an_idle_engine_says_so_once_an_hour() -> None:
    summary = Summary(T0)
    lines = [summary.due(T0 + timedelta(seconds=5 * i)) for i in range(1, 2 * 720 + 1)]  # two hours of ticks
    said = [line for line in lines if line is not None]
    assert [line.text for line in said] == ["idle: nothing to do in the last 1 hour"] * 2


def test_a_stop_says_the_counts_in_hand() -> None:
    summary = Summary(T0)
    summary.add(Counts(sent=2))
    line = summary.flush(T0 + timedelta(seconds=12))
    assert line is not None and line.text.startswith("in the last 12 seconds: events=0")
    assert summary.flush(T0 + timedelta(seconds=13)) is None


def test_a_backlog_in_words() -> None:
    now = T0 + timedelta(minutes=3, seconds=4)
    assert Backlog(1234, T0).words(now) == "1,234 messages waiting, the oldest for 3 minutes 4 seconds"
    assert Backlog(0, None).words(now) == "no messages waiting"
    assert Backlog(2, None, "deliveries").words(now) == "2 deliveries waiting"
