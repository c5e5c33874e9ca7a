"""Driving one lead through a funnel on a virtual clock: the shared engine of `funnel simulate` and
`funnel test`. It calls the same pure core as the real engine, in the same order the engine would:
timers and events in time order, each event after whatever fell due before it."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.core import journey
from engine.core.definition import Funnel
from engine.core.journey import Cause, Command, Decision, Enrollment, Event, Lead


@dataclass(frozen=True, slots=True)
class Moment:
    """One line of a lead's timeline."""

    at: datetime
    command: Command | None = None
    event: Event | None = None


@dataclass
class LeadRun:
    lead: Lead
    moments: list[Moment] = field(default_factory=list)
    state: Enrollment | None = None
    # The lead's language tag (canonical), None for the funnel's default: the core decides the same for
    # every language; which translation each email is read in is the templates' (`read_as`).
    language: str | None = None

    def commands(self) -> Iterable[Command]:
        return (m.command for m in self.moments if m.command is not None)


# Reactions turn a command (usually a SendEmail) into future events: the simulated lead opening,
# clicking, buying. Scenario tests pass none; `simulate` passes a seeded random mix.
Reaction = Callable[[Command, Lead], list[Event]]


def drive(
    funnel: Funnel,
    lead: Lead,
    entry: Event | None,
    enter_at: datetime,
    events: Iterable[Event],
    until: datetime,
    react: Reaction | None = None,
    language: str | None = None,
) -> LeadRun:
    """Enter the lead at `enter_at` (by `entry`, or manually) and run the clock to `until`."""
    run = LeadRun(lead, language=language)
    queue: list[tuple[datetime, int, Event]] = []
    seq = 0
    for ev in events:
        heapq.heappush(queue, (ev.at, seq, ev))
        seq += 1

    def take(decision: Decision) -> None:
        nonlocal seq
        run.state = decision.enrollment
        run.lead = decision.lead
        for command in decision.commands:
            run.moments.append(Moment(command.at, command=command))
            if react is not None:
                for ev in react(command, run.lead):
                    heapq.heappush(queue, (ev.at, seq, ev))
                    seq += 1

    # Events before the entry are recorded but cannot move the lead yet.
    while queue and queue[0][0] < enter_at:
        _, _, ev = heapq.heappop(queue)
        run.moments.append(Moment(ev.at, event=ev))
    if entry is not None:
        run.moments.append(Moment(entry.at, event=entry))
        cause = Cause("event", entry.id)
    else:
        cause = Cause("manual", "enrolled")
    take(journey.enroll(funnel, lead, enter_at, cause))

    while run.state is not None and run.state.status == "active":
        wake = run.state.wake_at
        next_event_at = queue[0][0] if queue else None
        if next_event_at is not None and next_event_at <= until and (wake is None or next_event_at < wake):
            _, _, ev = heapq.heappop(queue)
            run.moments.append(Moment(ev.at, event=ev))
            take(journey.on_event(funnel, run.lead, run.state, ev))
        elif wake is not None and wake <= until:
            take(journey.on_clock(funnel, run.lead, run.state, wake))
        else:
            break
    # Events after an exit are still part of the lead's story (e.g. a late click).
    while queue and queue[0][0] <= until:
        _, _, ev = heapq.heappop(queue)
        run.moments.append(Moment(ev.at, event=ev))
    return run


def entry_event(funnel: Funnel, lead: Lead, at: datetime, event_id: str) -> Event | None:
    """The event that the funnel's first event trigger listens to, with its filter values."""
    from engine.core.definition import EventTrigger

    for trigger in funnel.entry.triggers:
        if isinstance(trigger, EventTrigger):
            props: dict[str, Any] = {k: (v[0] if isinstance(v, list) else v) for k, v in trigger.where.items()}
            return Event(event_id, trigger.event, at, props)
    return None
