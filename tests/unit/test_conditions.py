"""The condition language and event filters, as a marketer would write them in a funnel file."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from engine.core.conditions import evaluate, event_matches, lead_field
from engine.core.definition import Condition, EventMatch
from engine.core.journey import Lead

CONDITION: TypeAdapter[Condition] = TypeAdapter(Condition)

ADA = Lead(
    "Ada@Example.COM",
    timezone="Europe/Berlin",
    attributes={
        "plan": "pro",
        "seats": 12,
        "ratio": 1.0,
        "trial": True,
        "zip": "01234",
        "nickname": None,
        "interests": ["python", "email"],
        "bio": "Builds Funnels for a living",
        "company": {"name": "Acme", "size": "250", "address": {"country": "DE"}},
        "utm.source": "newsletter",
    },
    tags=frozenset({"vip", "customer"}),
    score=42,
)


def holds(condition: dict[str, Any], lead: Lead = ADA) -> bool:
    return evaluate(CONDITION.validate_python(condition), lead)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        # equals: text and numbers mean the same thing, "1" vs 1 included
        ({"attr": "plan", "equals": "pro"}, True),
        ({"attr": "plan", "equals": "Pro"}, False),
        ({"attr": "seats", "equals": 12}, True),
        ({"attr": "seats", "equals": "12"}, True),
        ({"attr": "seats", "equals": 12.0}, True),
        ({"attr": "ratio", "equals": 1}, True),
        ({"attr": "ratio", "equals": "1"}, True),
        ({"attr": "company.size", "equals": 250}, True),
        ({"attr": "zip", "equals": 1234}, False),  # leading zeros are text, not a number
        # booleans compare as written, and are not numbers
        ({"attr": "trial", "equals": True}, True),
        ({"attr": "trial", "equals": "true"}, True),
        ({"attr": "trial", "equals": 1}, False),
        ({"attr": "seats", "equals": True}, False),
        ({"attr": "plan", "not_equals": "free"}, True),
        ({"attr": "plan", "not_equals": "pro"}, False),
        # in / not_in
        ({"attr": "plan", "in": ["free", "pro"]}, True),
        ({"attr": "seats", "in": ["10", "12"]}, True),
        ({"attr": "plan", "in": ["free"]}, False),
        ({"attr": "plan", "not_in": ["free", "trial"]}, True),
        ({"attr": "seats", "not_in": [12]}, False),
        # comparisons: numbers and numeric text; anything else never compares
        ({"attr": "seats", "gt": 10}, True),
        ({"attr": "seats", "gt": 12}, False),
        ({"attr": "seats", "gte": 12}, True),
        ({"attr": "seats", "lt": 12.5}, True),
        ({"attr": "seats", "lte": 11}, False),
        ({"attr": "company.size", "gt": 100}, True),
        ({"attr": "plan", "gt": 0}, False),
        ({"attr": "plan", "lt": 0}, False),
        ({"attr": "trial", "gte": 0}, False),
        ({"attr": "interests", "gt": 0}, False),
        ({"attr": "score", "gte": 42}, True),
        ({"attr": "score", "lt": 42}, False),
        # exists: absent and null are the same
        ({"attr": "plan", "exists": True}, True),
        ({"attr": "nickname", "exists": True}, False),
        ({"attr": "nickname", "exists": False}, True),
        ({"attr": "phone", "exists": False}, True),
        ({"attr": "phone", "exists": True}, False),
        # contains: a list member, or a case-insensitive substring of text
        ({"attr": "interests", "contains": "python"}, True),
        ({"attr": "interests", "contains": "java"}, False),
        ({"attr": "bio", "contains": "funnels"}, True),
        ({"attr": "bio", "contains": "ads"}, False),
        ({"attr": "seats", "contains": 1}, False),
        # built-in fields and dotted attributes
        ({"attr": "email_domain", "equals": "example.com"}, True),
        ({"attr": "email_domain", "in": ["gmail.com", "example.com"]}, True),
        ({"attr": "timezone", "equals": "Europe/Berlin"}, True),
        ({"attr": "company.name", "equals": "Acme"}, True),
        ({"attr": "company.address.country", "in": ["DE", "AT"]}, True),
        ({"attr": "company.address.city", "exists": False}, True),
        ({"attr": "company.name.first", "exists": True}, False),  # through a non-mapping
        ({"attr": "utm.source", "equals": "newsletter"}, True),  # a flat key that has a dot
        # tags
        ({"has_tag": "vip"}, True),
        ({"has_tag": "cold"}, False),
    ],
)
def test_conditions(condition: dict[str, Any], expected: bool) -> None:
    assert holds(condition) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"attr": "phone", "equals": "1"}, False),
        ({"attr": "phone", "in": ["1"]}, False),
        ({"attr": "phone", "gt": 0}, False),
        ({"attr": "phone", "lte": 0}, False),
        ({"attr": "phone", "contains": "1"}, False),
        # A missing field satisfies only the negative tests.
        ({"attr": "phone", "not_equals": "1"}, True),
        ({"attr": "phone", "not_in": ["1"]}, True),
        ({"attr": "nickname", "not_equals": "x"}, True),
    ],
)
def test_missing_fields(condition: dict[str, Any], expected: bool) -> None:
    assert holds(condition) is expected


def test_all_any_not_nest() -> None:
    vip_pro = {"all": [{"has_tag": "vip"}, {"attr": "plan", "equals": "pro"}]}
    assert holds(vip_pro)
    assert not holds({"all": [{"has_tag": "vip"}, {"attr": "plan", "equals": "free"}]})
    assert holds({"any": [{"has_tag": "cold"}, {"attr": "seats", "gt": 10}]})
    assert not holds({"any": [{"has_tag": "cold"}, {"attr": "seats", "gt": 100}]})
    assert not holds({"not": vip_pro})
    assert holds({"not": {"not": vip_pro}})
    assert holds({"any": [{"not": {"has_tag": "vip"}}, {"all": [vip_pro, {"attr": "phone", "exists": False}]}]})


def test_email_domain_needs_an_email_address_as_the_lead_id() -> None:
    anonymous = Lead("lead-123")
    assert not holds({"attr": "email_domain", "equals": "example.com"}, anonymous)
    assert holds({"attr": "email_domain", "exists": False}, anonymous)
    assert lead_field(ADA, "email_domain") == "example.com"


@pytest.mark.parametrize(
    "condition",
    [
        {"attr": "plan"},  # no operator
        {"attr": "plan", "equals": "pro", "in": ["pro"]},  # two operators
        {"attr": "seats", "gt": "many"},
        {"attr": "bad name!", "equals": 1},
        {"has_tag": "VIP"},
        {"all": []},
        {"attr": "plan", "equals": "pro", "has_tag": "vip"},
        {"unknown": 1},
    ],
)
def test_malformed_conditions_are_refused_at_load(condition: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CONDITION.validate_python(condition)


# --------------------------------------------------------------------------------------------------
# Event filters
# --------------------------------------------------------------------------------------------------


def match(event: str, **where: Any) -> EventMatch:
    return EventMatch.model_validate({"event": event, "where": where})


def test_event_filters() -> None:
    clicked_pricing = match("email_clicked", link="pricing")
    assert event_matches(clicked_pricing, "email_clicked", {"link": "pricing", "email": "welcome"})
    assert not event_matches(clicked_pricing, "email_clicked", {"link": "docs"})
    assert not event_matches(clicked_pricing, "email_clicked", {})
    assert not event_matches(clicked_pricing, "email_opened", {"link": "pricing"})
    assert event_matches(match("email_clicked"), "email_clicked", {})
    one_of = match("email_clicked", link=["pricing", "book-call"])
    assert event_matches(one_of, "email_clicked", {"link": "book-call"})
    assert not event_matches(one_of, "email_clicked", {"link": "docs"})


def test_event_filters_coerce_like_conditions() -> None:
    assert event_matches(match("purchase_completed", plan_id=3), "purchase_completed", {"plan_id": "3"})
    assert event_matches(match("purchase_completed", plan_id="3"), "purchase_completed", {"plan_id": 3})
    assert event_matches(match("form_submitted", consent=True), "form_submitted", {"consent": "true"})
    assert not event_matches(match("form_submitted", consent=True), "form_submitted", {"consent": 1})
    assert event_matches(match("purchase_completed", plan_id=[1, 2]), "purchase_completed", {"plan_id": "2"})
    assert not event_matches(match("purchase_completed", plan_id=3), "purchase_completed", {"plan_id": None})
