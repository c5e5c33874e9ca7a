"""An outage is a state change (invariant 17): when a dependency (the relay, the database) fails, the log
says so once, at most once a minute while it lasts, and once when it is back, instead of a line per
failed tick or per message.

Pure: an `Outage` is told what happened and when (the caller's clock), and answers with the line to log,
if any. The caller writes it with its own logger. What waits for the dependency (the relay's backlog: how
many messages, since when) comes from a reader the caller gives; it is asked only for a line to be said,
so at most once a minute.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.core.durations import in_words

REMIND = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Say:
    """A line to log, at a `logging` level."""

    level: int
    text: str


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits for a dependency: how many (of what), and since when the oldest was due."""

    waiting: int
    oldest: datetime | None
    noun: str = "messages"

    def words(self, now: datetime) -> str:
        if not self.waiting:
            return f"no {self.noun} waiting"
        if self.oldest is None:
            return f"{self.waiting:,} {self.noun} waiting"
        return f"{self.waiting:,} {self.noun} waiting, the oldest for {in_words(now - self.oldest, 2)}"


class Outage:
    """One dependency, working or down since a given time. `name` says which in the line that ends the
    outage ("relay smtp.example.com:587 working again ..."); the cause, given at each failure, says which
    in the others, so it should name the dependency too."""

    def __init__(
        self,
        name: str,
        retrying: str,
        remind: timedelta = REMIND,
        backlog: Callable[[datetime], Backlog | None] | None = None,
    ) -> None:
        self.name = name
        self.retrying = retrying  # how the engine tries again, for the first line: "every tick"
        self.remind = remind
        self.backlog = backlog  # None, or an answer of None: nothing to say about what waits
        self.since: datetime | None = None
        self.failures = 0
        self.said_at: datetime | None = None

    def failed(self, cause: str, now: datetime) -> Say | None:
        """It failed again (or for the first time): an ERROR when the outage starts, a WARNING when the
        last line is a minute old, nothing otherwise."""
        self.failures += 1
        if self.since is None:
            self.since = self.said_at = now
            return Say(logging.ERROR, f"{cause}; retrying {self.retrying}")
        if self.said_at is not None and now - self.said_at < self.remind:
            return None
        self.said_at = now
        return Say(
            logging.WARNING,
            f"{cause}; still failing after {in_words(now - self.since)}, failures: {self.failures}{self._waiting(now)}",
        )

    def recovered(self, now: datetime) -> Say | None:
        """It worked: an INFO line if it was down, nothing if it was not."""
        if self.since is None:
            return None
        said = Say(
            logging.INFO,
            f"{self.name} working again after {in_words(now - self.since)}, failures: {self.failures}"
            f"{self._waiting(now)}",
        )
        self.since, self.said_at, self.failures = None, None, 0
        return said

    def _waiting(self, now: datetime) -> str:
        found = self.backlog(now) if self.backlog is not None else None
        return f"; {found.words(now)}" if found is not None else ""
