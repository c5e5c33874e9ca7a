"""When each email of a stage goes, in words, for the customer journey map: the waits on every way to it
from entering the stage or from the email before it (`2 days after nurture-benefits`). Pure."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from engine.core.definition import (
    BranchStep,
    NotCondition,
    Outcome,
    SendStep,
    SplitStep,
    Stage,
    UpdateStep,
    WaitForStep,
    WaitStep,
    WaitUntilStep,
    WebhookStep,
)
from engine.core.durations import in_words
from engine.views.journey_map import words as words

MAX_WALK = 20_000
Literal_ = tuple[str, bool]  # (a condition, as canonical JSON; whether it held)


def when_sent(stage: Stage) -> dict[str, list[str]]:
    """For each email of the stage, when it goes: the waits on each way to it from the stage's start or
    from the previous email, e.g. `2 days after nurture-hidden-costs`. Ways through branches whose
    conditions contradict each other (the same test taken both ways, with no update between) cannot
    happen and are left out. A way stops where it comes back to a step it passed (a loop waits
    somewhere, and its first round says when)."""
    steps = stage.steps
    index = {st.id: i for i, st in enumerate(steps)}
    found: dict[str, list[str]] = defaultdict(list)
    explored: set[tuple[int, str | None, tuple[str, ...], frozenset[Literal_]]] = set()

    def walk(
        i: int, origin: str | None, waits: tuple[str, ...], known: frozenset[Literal_], seen: frozenset[int]
    ) -> None:
        state = (i, origin, waits, known)
        # Ways that meet again go on alike; the budget bounds a funnel of many independent branches.
        if i >= len(steps) or i in seen or state in explored or len(explored) > MAX_WALK:
            return
        explored.add(state)
        seen = seen | {i}
        step = steps[i]

        def follow(outcome: Outcome, more: tuple[str, ...], facts: frozenset[Literal_]) -> None:
            if outcome.goto is not None:
                walk(index[outcome.goto], origin, waits + more, facts, seen)
            elif outcome.move_to is None and outcome.exit is None:
                walk(i + 1, origin, waits + more, facts, seen)

        if isinstance(step, SendStep):
            phrase = _when(origin, waits)
            if phrase not in found[step.id]:
                found[step.id].append(phrase)
            # What held on the way here still holds after the email: the walk goes on from it.
            walk(i + 1, step.id, (), known, seen)
        elif isinstance(step, WaitStep):
            walk(i + 1, origin, (*waits, in_words(step.wait)), known, seen)
        elif isinstance(step, WaitUntilStep):
            walk(i + 1, origin, (*waits, words.local_time(step.wait_until.time, step.wait_until.days)), known, seen)
        elif isinstance(step, WaitForStep):
            w = step.wait_for
            follow(w.on_event, (f"on {words.event(w.event, w.where)}",), known)
            follow(w.on_timeout, (f"{in_words(w.timeout)} without {w.event}",), known)
        elif isinstance(step, SplitStep):
            for arm in step.split.arms:
                follow(Outcome(goto=arm.goto), (), known)
        elif isinstance(step, BranchStep):
            key, held = _literal(step.branch.if_)
            for outcome, value in ((step.branch.then, held), (step.branch.else_, not held)):
                if (key, not value) not in known:
                    follow(outcome, (), known | {(key, value)})
        elif isinstance(step, UpdateStep):
            walk(i + 1, origin, waits, frozenset(), seen)  # the lead's fields may change here
        elif isinstance(step, WebhookStep):
            walk(i + 1, origin, waits, known, seen)

    walk(0, None, (), frozenset(), frozenset())
    return found


def _literal(cond: Any) -> Literal_:
    held = True
    while isinstance(cond, NotCondition):
        cond, held = cond.not_, not held
    return json.dumps(cond.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True), held


def _when(origin: str | None, waits: tuple[str, ...]) -> str:
    start = "entering the stage" if origin is None else origin
    if not waits:
        return "on entering the stage" if origin is None else f"right after {origin}"
    return f"{' then '.join(waits)} after {start}"


__all__ = ["when_sent"]
