"""An outage as a state change (`engine.runtime.outages`): one ERROR when it starts, at most one WARNING a minute
while it lasts, one INFO when it is over; nothing while all is well."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from engine.runtime.outages import Outage

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_an_outage_is_said_when_it_starts_each_minute_it_lasts_and_when_it_ends() -> None:
    relay = Outage("relay smtp.example.com:587", "every minute")
    assert relay.recovered(T0) is None  # working all along: nothing to say
    first = relay.failed("relay smtp.example.com:587: Connection refused", T0)
    assert first is not None and first.level == logging.ERROR
    assert first.text == "relay smtp.example.com:587: Connection refused; retrying every minute"
    assert relay.failed("relay smtp.example.com:587: Connection refused", T0 + timedelta(seconds=59)) is None
    reminder = relay.failed("relay smtp.example.com:587: timed out", T0 + timedelta(seconds=61))
    assert reminder is not None and reminder.level == logging.WARNING
    assert reminder.text == "relay smtp.example.com:587: timed out; still failing after 1 minute 1 second, failures: 3"
    assert relay.failed("relay smtp.example.com:587: timed out", T0 + timedelta(seconds=100)) is None
    back = relay.recovered(T0 + timedelta(seconds=130))
    assert back is not None and back.level == logging.INFO
    assert back.text == "relay smtp.example.com:587 working again after 2 minutes 10 seconds, failures: 4"
    assert relay.recovered(T0 + timedelta(seconds=140)) is None
    again = relay.failed("relay smtp.example.com:587: Connection refused", T0 + timedelta(seconds=150))
    assert again is not None and again.level == logging.ERROR  # a new outage


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 200)), max_size=200))
def test_one_line_per_change_of_state_and_at_most_one_a_minute_between(events: list[tuple[bool, int]]) -> None:
    outage = Outage("database", "every tick")
    now, down = T0, False
    said: list[tuple[datetime, int]] = []
    for failed, seconds in events:
        now += timedelta(seconds=seconds)
        line = outage.failed("database: disk full", now) if failed else outage.recovered(now)
        if failed != down:  # the state changes: always said, as an ERROR going down, an INFO coming back
            assert line is not None and line.level == (logging.ERROR if failed else logging.INFO)
        elif not failed:
            assert line is None  # working, and it was: nothing to say
        if line is not None:
            said.append((now, line.level))
        down = failed
    for (at, _), (later, level) in pairwise(said):
        if level == logging.WARNING:
            assert later - at >= timedelta(minutes=1)
