"""The rows the report's queries read (`engine.store.report_queries`), one per group the database
counted, and the layout of a funnel they are put in order by: plain values handed from the store to the
views (`engine.views.report`, `engine.views.journey_map`). Pure: no database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class StageCount:
    """Enrollments in one place: active in `stage`, or exited (from `stage`) for `exit_reason`."""

    funnel: str
    stage: str
    status: str  # active | exited
    exit_reason: str | None
    leads: int


@dataclass(frozen=True, slots=True)
class Reached:
    """Leads that ever entered `stage`."""

    funnel: str
    stage: str
    leads: int


@dataclass(frozen=True, slots=True)
class Followed:
    """Leads whose first visit of `later` came after their first visit of `stage`."""

    funnel: str
    stage: str
    later: str
    leads: int


@dataclass(frozen=True, slots=True)
class EmailLanguage:
    """`count` emails of `step` in `status`, written in `language` (None: not recorded, e.g. an email
    rendered before the engine recorded languages, or not rendered yet)."""

    funnel: str
    step: str
    language: str | None
    status: str
    count: int


@dataclass(frozen=True, slots=True)
class Stays:
    """`count` completed stays in `stage` that lasted `minutes` (rounded to the minute)."""

    funnel: str
    stage: str
    minutes: int
    count: int


@dataclass(frozen=True, slots=True)
class EmailStatus:
    funnel: str
    step: str
    template: str
    status: str
    count: int


@dataclass(frozen=True, slots=True)
class Engagement:
    """Leads who did `kind` (opened, clicked, unsubscribed) after this email, or whose email had a report
    of the kind `soft bounced` or `complained`."""

    funnel: str
    step: str
    kind: str
    leads: int


@dataclass(frozen=True, slots=True)
class Layout:
    """A funnel's stages and email steps in the order its definition gives them."""

    stages: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExitRow:
    """`leads` who left `funnel` from `stage` for `reason`, their last email there being `after`.

    `cause` is the transition's cause kind (`timeout`, `sequence_end`, `exit_rule`, ...), `bounce` for
    leads whose email bounced, `complaint` for leads who complained about an email (or left on an exit
    rule for the engine's `complained` event); `goal_reached` whether they had reached the funnel's goal
    by then."""

    funnel: str
    stage: str
    reason: str
    cause: str
    goal_reached: bool
    after: str | None
    leads: int


@dataclass(frozen=True)
class Rows:
    stage_counts: Sequence[StageCount] = ()
    reached: Sequence[Reached] = ()
    followed: Sequence[Followed] = ()
    stays: Sequence[Stays] = ()
    email_statuses: Sequence[EmailStatus] = ()
    engagement: Sequence[Engagement] = ()
    losses: Sequence[ExitRow] = ()  # leads who lost their address to an email: bounced or complained
    email_languages: Sequence[EmailLanguage] = ()
    exits: Sequence[ExitRow] = ()  # only the journey map reads them (`engine.store.report_queries.exits`)


# The lists of `Rows` by name, with the row type each holds: how rows are stored in rollups and read back.
KINDS: dict[str, type] = {
    "stage_counts": StageCount,
    "reached": Reached,
    "followed": Followed,
    "stays": Stays,
    "email_statuses": EmailStatus,
    "engagement": Engagement,
    "losses": ExitRow,
    "email_languages": EmailLanguage,
    "exits": ExitRow,
}


def entries(rows: Rows) -> list[tuple[str, tuple[Any, ...], int]]:
    """Every row as (kind, its fields but the count, the count): the count is each row's last field."""
    found = []
    for kind in KINDS:
        for row in getattr(rows, kind):
            values = astuple(row)
            found.append((kind, values[:-1], int(values[-1])))
    return found


def from_entries(found: Iterable[tuple[str, Sequence[Any], int]]) -> Rows:
    """The rows of (kind, fields, count) entries, as `entries` wrote them."""
    lists: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    for kind, key, count in found:
        lists[kind].append(KINDS[kind](*key, count))
    return Rows(**lists)


def merged(*parts: Rows) -> Rows:
    """The rows of several disjoint sets of leads as one: rows with the same fields add their counts.
    Every count in `Rows` is of rows or of distinct leads per group, and no lead is in two parts, so
    the sums are what one query over all of them would have counted."""
    sums: dict[tuple[str, tuple[Any, ...]], int] = {}
    for part in parts:
        for kind, key, count in entries(part):
            sums[(kind, key)] = sums.get((kind, key), 0) + count
    return from_entries((kind, key, count) for (kind, key), count in sums.items())
