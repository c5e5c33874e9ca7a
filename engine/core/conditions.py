"""Evaluation of the condition language and of event property filters. Pure functions over data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from engine.core.definition import AllCondition, AnyCondition, AttrCondition, NotCondition, TagCondition

if TYPE_CHECKING:
    from engine.core.definition import Condition

_MISSING = object()


class Lead(Protocol):
    """What a condition reads of a lead (`engine.core.journey.Lead` is one): declared here, so that the
    journey imports the conditions and not the other way round."""

    @property
    def id(self) -> str: ...

    @property
    def timezone(self) -> str | None: ...

    @property
    def attributes(self) -> Mapping[str, Any]: ...

    @property
    def tags(self) -> frozenset[str]: ...

    @property
    def score(self) -> int: ...


class EventFilter(Protocol):
    """Anything that names an event and filters its properties: an event match, a goal, a trigger."""

    @property
    def event(self) -> str: ...

    @property
    def where(self) -> Mapping[str, Any]: ...


def lead_field(lead: Lead, name: str) -> Any:
    """A lead field by name: the built-ins `score`, `timezone`, `email_domain`, else an attribute
    (dotted names reach into nested attribute objects unless a flat key has that exact name)."""
    if name == "score":
        return lead.score
    if name == "timezone":
        return lead.timezone
    if name == "email_domain":
        return lead.id.rpartition("@")[2].lower() if "@" in lead.id else _MISSING
    if name in lead.attributes:
        # A flat key that has a dot in it (a CSV column such as `utm.source`) is read as written.
        return lead.attributes[name]
    value: Any = lead.attributes
    for part in name.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            return _MISSING
    return value


def _same(a: Any, b: Any) -> bool:
    # Properties arrive as text from forms and the CLI and as JSON numbers from the API; `1` and "1"
    # mean the same thing to a marketer. Booleans compare as written (`true`).
    if a == b and type(a) is not bool and type(b) is not bool:
        return True
    return _text(a) == _text(b)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _attr(cond: AttrCondition, lead: Lead) -> bool:
    op, expected = cond.operator
    value = lead_field(lead, cond.attr)
    if op == "exists":
        return bool((value is not _MISSING and value is not None) == expected)
    if value is _MISSING or value is None:
        # A missing field satisfies only the negative tests.
        return op in ("not_equals", "not_in")
    if op == "equals":
        return _same(value, expected)
    if op == "not_equals":
        return not _same(value, expected)
    if op == "in":
        return any(_same(value, e) for e in expected)
    if op == "not_in":
        return not any(_same(value, e) for e in expected)
    if op == "contains":
        if isinstance(value, list | tuple | set | frozenset):
            return any(_same(v, expected) for v in value)
        return isinstance(value, str) and _text(expected).lower() in value.lower()
    number = _number(value)
    if number is None:
        return False
    if op == "gt":
        return bool(number > expected)
    if op == "gte":
        return bool(number >= expected)
    if op == "lt":
        return bool(number < expected)
    if op == "lte":
        return bool(number <= expected)
    raise AssertionError(f"unknown operator {op}")


def evaluate(cond: Condition, lead: Lead) -> bool:
    if isinstance(cond, AttrCondition):
        return _attr(cond, lead)
    if isinstance(cond, TagCondition):
        return cond.has_tag in lead.tags
    if isinstance(cond, AllCondition):
        return all(evaluate(c, lead) for c in cond.all)
    if isinstance(cond, AnyCondition):
        return any(evaluate(c, lead) for c in cond.any)
    if isinstance(cond, NotCondition):
        return not evaluate(cond.not_, lead)
    raise AssertionError(f"unknown condition {cond!r}")


def event_matches(match: EventFilter, name: str, properties: Mapping[str, Any]) -> bool:
    if match.event != name:
        return False
    for key, expected in match.where.items():
        if key not in properties:
            return False
        actual = properties[key]
        if isinstance(expected, list):
            if not any(_same(actual, e) for e in expected):
                return False
        elif not _same(actual, expected):
            return False
    return True
