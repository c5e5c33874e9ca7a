"""The minute summary: a working engine logs what it did once a minute, not every tick (invariant 17).

Each round's counts are added up here, and one INFO line a minute says them: events, enrolments,
transitions, and emails sent, deferred, failed, unknown and skipped. A minute when nothing happened says
nothing; an engine that stays idle says so once an hour (a heartbeat: silence is then news). The per-round
lines are DEBUG; the figures per tick stay in the metrics (`engine.http.metrics`).

Pure: the caller gives the time and writes the line with its own logger.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from engine.core.durations import in_words
from engine.runtime.outages import Say

EVERY = timedelta(minutes=1)
HEARTBEAT = timedelta(hours=1)


@dataclass
class Counts:
    """What the worker and the mailer did, added up over rounds."""

    events: int = 0
    enrolled: int = 0
    transitions: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def __str__(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


class Summary:
    """Counts since the last line; `due(now)` answers the line to log when a minute has passed."""

    def __init__(self, started: datetime, every: timedelta = EVERY, heartbeat: timedelta = HEARTBEAT) -> None:
        self.every = every
        self.heartbeat = heartbeat
        self.since = started  # the start of the counts in hand
        self.said_at = started  # the last line, summary or heartbeat
        self.counts = Counts()

    def add(self, counts: Counts) -> None:
        self.counts.add(counts)

    def due(self, now: datetime) -> Say | None:
        """The summary of the minute just ended if anything happened in it; the heartbeat if nothing was
        said for an hour; otherwise nothing."""
        if now - self.since < self.every:
            return None
        return self.flush(now)

    def flush(self, now: datetime) -> Say | None:
        """The counts in hand, said now whatever their age (at a stop: a minute's work is not dropped)."""
        said: Say | None = None
        if self.counts:
            said = Say(logging.INFO, f"in the last {in_words(now - self.since)}: {self.counts}")
        elif now - self.said_at >= self.heartbeat:
            said = Say(logging.INFO, f"idle: nothing to do in the last {in_words(now - self.said_at, 2)}")
        if said is not None:
            self.said_at = now
        self.since, self.counts = now, Counts()
        return said
