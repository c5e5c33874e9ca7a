"""Durations as marketers write them in funnel files (`30m`, `36h`, `2d`, `1w`, `1d12h`), and as
everything the engine shows people says them (`1 day 12 hours`): reports, the dashboard, journey maps,
logs and error messages all use `in_words`."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+)([wdhms])")
_WHOLE = re.compile(r"^(?:\d+[wdhms])+$")
_UNIT_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """Parse `2d`, `36h`, `1d12h`; raise ValueError with the expected shape otherwise."""
    compact = text.strip().replace(" ", "")
    if not _WHOLE.match(compact):
        raise ValueError(f"expected a duration such as '30m', '36h', '2d' or '1w2d', found {text!r}")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(compact))
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest `parse_duration` spelling of a delta: what a funnel file would say (the JSON Schema's
    defaults, a definition written as JSON)."""
    total = int(delta.total_seconds())
    if total == 0:
        return "0s"
    out = []
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if total >= size:
            out.append(f"{total // size}{unit}")
            total %= size
    return "".join(out)


_WORDS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def in_words(delta: timedelta, units: int = len(_WORDS)) -> str:
    """A duration for people: `45 seconds`, `3 hours 10 minutes`, `1 day 12 hours`. Days at most
    (marketers count waits in days, not weeks). `units` is the precision: the largest unit and the
    ones below it, the rest dropped (`units=2` reads 2 days 4 hours 13 minutes as `2 days 4 hours`,
    and 1 day 13 minutes as `1 day`)."""
    total = max(int(delta.total_seconds()), 0)
    out = []
    for unit, size in _WORDS:
        count, total = divmod(total, size)
        if count:
            out.append(f"{count} {unit}{'' if count == 1 else 's'}")
        if out:
            units -= 1
            if units == 0:
                break
    return " ".join(out) or "0 seconds"


def stay_in_words(minutes: int | None) -> str:
    """A stay in a report (whole minutes, None when no lead has left yet): `3 hours 10 minutes`,
    `2 days 4 hours`, `under a minute`, `-`."""
    if minutes is None:
        return "-"
    return in_words(timedelta(minutes=minutes), units=2) if minutes > 0 else "under a minute"
