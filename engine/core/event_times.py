"""When an event happened, as the engine takes it. Pure: the caller says what time it is.

An event is sent once it has happened, so its time is never after the engine's clock. The clocks of the
systems that send events run a little apart from ours, so a time up to `CLOCK_SKEW` ahead is taken as
now; further ahead, the event is refused with the engine's time, instead of being applied at once as if
it were now (the worker never moves a lead past its clock). The same rule holds for `POST /v1/events`,
signed hooks and `funnel event --at`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

CLOCK_SKEW = timedelta(minutes=5)


def future_problem(occurred_at: datetime, now: datetime) -> str | None:
    """Why an event said to have happened at `occurred_at` cannot be taken at `now`, or None."""
    if occurred_at - now <= CLOCK_SKEW:
        return None
    skew = f"{CLOCK_SKEW.total_seconds() / 60:g} minutes"
    return (
        f"{occurred_at.isoformat(timespec='seconds')} is after the engine's time {now.isoformat(timespec='seconds')} "
        f"by more than {skew} (an event is sent once it has happened; a clock up to {skew} ahead is taken as now)"
    )


def taken_at(occurred_at: datetime | None, now: datetime) -> datetime:
    """The time an accepted event is recorded at: when it happened, or now when that is not given or is
    ahead of now (within the skew `future_problem` allows)."""
    return now if occurred_at is None else min(occurred_at, now)
