"""A funnel's rules in a marketer's words, for the customer journey map: conditions (`employees ≥ 50`),
events with their filters (`email_clicked (link: pricing, book-call)`), local times (`next weekday
09:00`), entry triggers and updates (which the virtual timelines use too). Pure functions of the
definition. Lengths of time are said by `engine.core.durations.in_words`, like everywhere else."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import time
from typing import Any

from engine.core.definition import (
    WEEKDAYS,
    AllCondition,
    AnyCondition,
    AttrCondition,
    ConditionTrigger,
    EventTrigger,
    NotCondition,
    TagCondition,
)

_SYMBOLS = {"equals": "=", "not_equals": "≠", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤"}
_WORKDAYS = ("mon", "tue", "wed", "thu", "fri")


def scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def condition(cond: Any) -> str:
    """`employees ≥ 50`, `tagged client`, `plan in (a, b) and not (score < 10)`."""
    if isinstance(cond, AttrCondition):
        op, value = cond.operator
        if op in _SYMBOLS:
            return f"{cond.attr} {_SYMBOLS[op]} {scalar(value)}"
        if op in ("in", "not_in"):
            listed = ", ".join(scalar(v) for v in value)
            return f"{cond.attr} {'in' if op == 'in' else 'not in'} ({listed})"
        if op == "exists":
            return f"{cond.attr} {'is set' if value else 'is not set'}"
        return f"{cond.attr} contains {scalar(value)}"
    if isinstance(cond, TagCondition):
        return f"tagged {cond.has_tag}"
    if isinstance(cond, AllCondition):
        return " and ".join(_grouped(c) for c in cond.all)
    if isinstance(cond, AnyCondition):
        return " or ".join(_grouped(c) for c in cond.any)
    if isinstance(cond, NotCondition):
        return f"not {_grouped(cond.not_)}"
    raise AssertionError(f"unknown condition {cond!r}")  # pragma: no cover - the union is closed


def _grouped(cond: Any) -> str:
    text = condition(cond)
    return f"({text})" if isinstance(cond, AllCondition | AnyCondition) and len(text.split()) > 3 else text


def event(name: str, where: Mapping[str, Any]) -> str:
    """`email_clicked (link: pricing, book-call)`."""
    if not where:
        return name
    parts = []
    for key, value in where.items():
        shown = ", ".join(scalar(v) for v in value) if isinstance(value, list) else scalar(value)
        parts.append(f"{key}: {shown}")
    return f"{name} ({'; '.join(parts)})"


def weekdays(days: Sequence[str] | None) -> str:
    """`weekday`, `day`, `mon, wed`: the days a local time may fall on."""
    if days is None or set(days) == set(WEEKDAYS):
        return "day"
    if set(days) == set(_WORKDAYS):
        return "weekday"
    if set(days) == {"sat", "sun"}:
        return "weekend day"
    return ", ".join(d for d in WEEKDAYS if d in days)


def local_time(at: time, days: Sequence[str] | None) -> str:
    """`next weekday 09:00`."""
    return f"next {weekdays(days)} {at:%H:%M}"


def trigger(item: Any) -> str:
    if isinstance(item, EventTrigger):
        return f"on {event(item.event, item.where)}"
    if isinstance(item, ConditionTrigger):
        return f"when {condition(item.condition)}"
    return "added by hand"


__all__ = ["condition", "event", "local_time", "scalar", "trigger", "weekdays"]


def update(
    set_: Mapping[str, Any], unset: Sequence[str], add_tags: Sequence[str], remove_tags: Sequence[str], score: int
) -> str:
    """An update step (or what it did) in words: `tag client, untag sales-ready, plan = pro, score +50`."""
    parts = [f"tag {t}" for t in add_tags] + [f"untag {t}" for t in remove_tags]
    parts += [f"{k} = {scalar(v)}" for k, v in set_.items()] + [f"unset {k}" for k in unset]
    if score:
        parts.append(f"score {score:+d}")
    return ", ".join(parts) or "nothing"
