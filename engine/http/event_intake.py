"""Event intake: what an event from another system must be, and how a validated batch is recorded. Both
doors that take events share it: `/v1/events` (an API key, `engine.api_v1`) and `/hooks/{source}` (a
signature, `engine.hooks`).

Invariant 7: an event carries an id, a replay changes nothing; `record_items` writes in the caller's
transaction, so the answer can come after the commit.
Invariant 12: a batch with one bad item is rejected whole, with each item's and field's error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Union

from fastapi import Body
from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)
from pydantic.config import JsonDict
from typing_extensions import TypeAliasType

from engine.core import addresses, event_times, localtime, own_events, storable
from engine.core.languages import MAX_TAG_LENGTH, LanguageError, canonical
from engine.core.storable import FIRST_YEAR, LAST_YEAR
from engine.store import ingest
from engine.store import leads as store
from engine.store.database import Connection

EVENT_NAME = r"^[a-z][a-z0-9_.-]{0,99}$"
MAX_BATCH = 1000
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]")
# The schema lists the zones this machine knows, so a client can check a zone before sending it.
ZONES = sorted(localtime.known_zones())


# What no database can hold: NUL and lone surrogates in text (`engine.storable`), said in the schema (a lone
# surrogate cannot be written in a JSON document that is UTF-8).
_NO_NUL: JsonDict = {"pattern": "^[^\\x00]*$"}
_Text = Annotated[str, Field(json_schema_extra=_NO_NUL)]
_Object = Annotated[dict[str, "JsonValue"], Field(json_schema_extra={"propertyNames": _NO_NUL})]  # type: ignore[misc]
# Only the schema of what `properties` and `attributes` may hold: validating it value by value costs a
# hundred times what `storable.value_problem` does.
JsonValue: Any = TypeAliasType(
    "JsonValue",
    Union[_Text, int, float, bool, list["JsonValue"], _Object, None],  # type: ignore[misc]
)
# `_Object` with its values' type named, not written as text: a model of any module can take it.
_JsonObject: Any = Annotated[dict[str, JsonValue], Field(json_schema_extra={"propertyNames": _NO_NUL})]


def _same(value: Any) -> Any:
    return value


def _storable(value: Any) -> Any:
    problem = storable.value_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


StorableText = Annotated[_Text, AfterValidator(_storable)]
StorableObject = Annotated[
    dict[str, Any], AfterValidator(_storable), BeforeValidator(_same, json_schema_input_type=_JsonObject)
]


def _reserved(problem: Callable[[str], str | None]) -> Callable[[str], str]:
    def check(value: str) -> str:
        found = problem(value)
        if found is not None:
            raise ValueError(found)
        return value

    return check


_EMAIL_SCHEMA = {"type": "string", "format": "email"}
# An address as every entry takes it (`engine.addresses`): an event's `email`, a lead's path.
Address = Annotated[str, AfterValidator(addresses.normalise), WithJsonSchema(_EMAIL_SCHEMA)]


def _known_zone(value: str) -> str:
    if not localtime.is_zone(value):
        raise ValueError(f"unknown time zone {value!r}; expected an IANA name like Europe/Berlin")
    return value


# A lead's time zone, as `PUT /v1/leads` and events take it.
Zone = Annotated[str, AfterValidator(_known_zone), WithJsonSchema({"type": "string", "enum": ZONES})]


def _language_tag(value: str) -> str:
    try:
        return canonical(value)
    except LanguageError as e:
        raise ValueError(str(e)) from None


# A lead's language, as `PUT /v1/leads` and events take it: kept in canonical case (`fr_ca` is `fr-CA`).
# RFC 5646's rules (each variant once, ...) are more than a JSON Schema pattern says well: the schema
# names the format (`language-tag`, RFC 5646 §2.1) and the 422 says what is wrong with a tag.
LanguageTag = Annotated[
    str,
    AfterValidator(_language_tag),
    WithJsonSchema(
        {
            "type": "string",
            "format": "language-tag",
            "maxLength": MAX_TAG_LENGTH,
            "examples": ["de", "fr-CA", "zh-Hant-TW"],
        }
    ),
]
# The engine's own ids, names and sources (`engine.own_events`), which no client may write; the schema says so.
_OWN_IDS: JsonDict = {"not": {"pattern": f"^({'|'.join(sorted(own_events.ID_KINDS))}):"}}
_OWN_NAMES: JsonDict = {"not": {"enum": [*sorted(own_events.RESERVED_NAMES)]}}
_OWN_SOURCES: JsonDict = {"not": {"enum": [*sorted(own_events.SOURCES)]}}


class EventIn(BaseModel):
    """One event from another system. `id` is the sender's idempotency key: a replay changes nothing.
    The engine's own ids, event names and sources are refused (see `engine.own_events`)."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[StorableText, AfterValidator(_reserved(own_events.id_problem))] = Field(
        min_length=1, max_length=200, json_schema_extra=_OWN_IDS
    )
    type: Annotated[str, AfterValidator(_reserved(own_events.name_problem))] = Field(
        pattern=EVENT_NAME,
        description="e.g. form_submitted, link_clicked, order_completed",
        json_schema_extra=_OWN_NAMES,
    )
    email: Address
    occurred_at: AwareDatetime | None = Field(
        default=None,
        description=f"An ISO 8601 date-time with its offset, in the years {FIRST_YEAR} to {LAST_YEAR}."
        " Default: when it is received.",
        json_schema_extra={"pattern": "^(19|[2-8][0-9])[0-9][0-9]-"},  # FIRST_YEAR to LAST_YEAR
    )
    properties: StorableObject = Field(default_factory=dict)
    source: Annotated[StorableText, AfterValidator(_reserved(own_events.source_problem))] | None = Field(
        default=None, max_length=200, json_schema_extra=_OWN_SOURCES
    )
    timezone: Zone | None = Field(
        default=None,
        description="The lead's IANA time zone, e.g. Europe/Berlin: set on the lead (new or not) with a new event.",
    )
    language: LanguageTag | None = Field(
        default=None,
        description="The lead's language, a BCP 47 tag such as de or fr-CA: set on the lead (new or not) with a"
        " new event. The emails are written in it where the funnel has a translation (else the nearest one).",
    )

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _date_time_text(cls, value: Any) -> Any:
        # Pydantic would read 0 or "1700000000" as a Unix time: a sender's bug, stored as 1970 or worse.
        if value is not None and not (isinstance(value, str) and _DATE_TIME.match(value)):
            raise ValueError("expected an ISO 8601 date-time with its offset, e.g. 2026-11-23T10:00:00+00:00")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _date_time_in_range(cls, value: datetime | None) -> datetime | None:
        # Times are kept in UTC and waits are added to them: 0001-01-01T00:00+05:00 has no UTC date at all.
        if value is not None and not FIRST_YEAR <= value.year <= LAST_YEAR:
            raise ValueError(
                f"expected a date-time in the years {FIRST_YEAR} to {LAST_YEAR}, found {value.isoformat()}"
            )
        return value


class Accepted(BaseModel):
    accepted: int = Field(description="New events, committed.")
    duplicates: int = Field(description="Events whose id was already recorded: nothing changed.")


# What `/v1/events` and `/hooks/{source}` take: one event, or a batch of up to MAX_BATCH.
EventsBody = Annotated[EventIn | Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH)], Body()]


def record_items(conn: Connection, items: Sequence[EventIn], source: str, at: datetime) -> tuple[int, int]:
    """Record validated events (creating leads for new addresses) in the caller's transaction; returns
    (accepted, duplicates). An event's own `source` wins over the default."""
    # Only new events bring leads: an id already recorded, or repeated within the batch (the first one
    # counts), changes nothing, even when it names another address.
    first: dict[str, EventIn] = {}
    for item in items:
        first.setdefault(item.id, item)
    recorded = ingest.recorded_event_ids(conn, list(first))
    fresh = [item for event_id, item in first.items() if event_id not in recorded]
    lead_ids = ingest.lead_ids(conn, [item.email for item in fresh], at) if fresh else {}
    zones = {lead_ids[item.email]: item.timezone for item in fresh if item.timezone is not None}
    languages = {lead_ids[item.email]: item.language for item in fresh if item.language is not None}
    if zones or languages:  # the last new event of a lead that names a zone (a language) sets it
        ingest.set_lead_settings(conn, zones, languages, lead_ids.values(), at)
    new = [
        store.NewEvent(
            item.id,
            lead_ids[item.email],
            item.type,
            event_times.taken_at(item.occurred_at, at),
            item.properties,
            item.source or source,
        )
        for item in fresh
    ]
    inserted, _ = ingest.record(conn, new, at)
    return inserted, len(items) - inserted


def refuse_future(body: EventIn | list[EventIn], now: datetime) -> None:
    """A 422 naming every event dated after `now` by more than the clock skew (`engine.event_times`):
    the whole batch is refused, as for any other invalid item. The clock is the engine's, known only
    once the body is read, so this comes after the model's own checks."""
    items = body if isinstance(body, list) else [body]
    errors = []
    for i, item in enumerate(items):
        when = item.occurred_at
        problem = event_times.future_problem(when, now) if when is not None else None
        if when is None or problem is None:
            continue
        where = ("list[EventIn]", i) if isinstance(body, list) else ("EventIn",)
        error = {"type": "value_error", "loc": ("body", *where, "occurred_at"), "msg": f"occurred_at {problem}"}
        errors.append({**error, "input": when.isoformat()})
    if errors:
        raise RequestValidationError(errors)
