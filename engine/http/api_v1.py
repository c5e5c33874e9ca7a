"""`/v1`: the API for other systems (a shop, a CRM, a form builder), behind API keys.

Invariant 7: an event carries an id, a replay changes nothing, and the answer comes after the commit.
Invariant 12: a batch with one bad item is rejected whole, with each item's and field's error.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Union

import sqlalchemy as sa
from fastapi import APIRouter, Body, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
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

from engine.core import addresses, event_times, localtime, own_events, signup, storable
from engine.core.own_events import LEAD_UPDATED, engine_id
from engine.core.storable import FIRST_YEAR, LAST_YEAR
from engine.http.http_context import BEARER, HttpContext
from engine.store import consents, ingest
from engine.store import leads as store
from engine.views import lead_timeline

EVENT_NAME = r"^[a-z][a-z0-9_.-]{0,99}$"
MAX_BATCH = 1000
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]")
# The schema lists the zones this machine knows, so a client can check a zone before sending it.
ZONES = sorted(localtime.known_zones())


# What no database can hold: NUL and lone surrogates in text (`engine.storable`), said in the schema (a lone
# surrogate cannot be written in a JSON document that is UTF-8).
_NO_NUL = {"pattern": "^[^\\x00]*$"}
_Text = Annotated[str, Field(json_schema_extra=_NO_NUL)]
_Object = Annotated[dict[str, "JsonValue"], Field(json_schema_extra={"propertyNames": _NO_NUL})]  # type: ignore[misc]
# Only the schema of what `properties` and `attributes` may hold: validating it value by value costs a
# hundred times what `storable.value_problem` does.
JsonValue: Any = TypeAliasType(
    "JsonValue",
    Union[_Text, int, float, bool, list["JsonValue"], _Object, None],  # type: ignore[misc]
)


class JsonSafeRoute(APIRoute):
    """FastAPI's 422 answer repeats each refused value, and Python's JSON parser reads values its encoder
    then refuses (NaN, Infinity, nesting a thousand deep, a lone surrogate from bytes that are not UTF-8):
    such a value is left out of the answer rather than turning the 422 into a dropped connection."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return JSONResponse(status_code=422, content={"detail": [_writable(e) for e in exc.errors()]})

        return route


def _keyed_route(ctx: HttpContext) -> type[APIRoute]:
    """A route that checks the API key before FastAPI reads the body: a caller without a key is refused
    before anything it sent is read or parsed (a body over the limit is refused even before that)."""

    class KeyedRoute(JsonSafeRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def keyed(request: Request) -> Response:
                await run_in_threadpool(ctx.check_api_key, request.headers.get("authorization"))
                return await handler(request)

            return keyed

    return KeyedRoute


def _writable(error: Any) -> Any:
    try:
        encoded = jsonable_encoder(error)
        json.dumps(encoded, allow_nan=False, ensure_ascii=False).encode("utf-8")  # as the answer is written
        return encoded
    except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError is a ValueError
        return jsonable_encoder({k: v for k, v in error.items() if k != "input"})


def _same(value: Any) -> Any:
    return value


def _storable(value: Any) -> Any:
    problem = storable.value_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


StorableText = Annotated[_Text, AfterValidator(_storable)]
StorableObject = Annotated[
    dict[str, Any], AfterValidator(_storable), BeforeValidator(_same, json_schema_input_type=_Object)
]


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body could not be read (not JSON, or not UTF-8)."},
    401: {"model": Problem, "description": "No key, or a wrong or revoked one. No detail, on purpose."},
    413: {"model": Problem, "description": "The body is larger than `http.body_limits` allows this route."},
}


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


class LeadIn(BaseModel):
    """What to set on a lead. Attributes are merged (given keys win), tags are added."""

    model_config = ConfigDict(extra="forbid")

    attributes: StorableObject = Field(default_factory=dict)
    tags: list[Annotated[StorableText, Field(min_length=1, max_length=100)]] = Field(default_factory=list)
    timezone: Zone | None = Field(default=None, description="An IANA zone, e.g. Europe/Berlin.")
    consent: Literal["subscribed", "unsubscribed", "pending"] | None = None
    consent_source: StorableText | None = Field(default=None, max_length=200)


class EnrollmentOut(BaseModel):
    funnel: str
    status: str
    stage: str
    step: str | None
    entered_at: datetime
    stage_entered_at: datetime


class TransitionOut(BaseModel):
    funnel: str
    from_stage: str | None
    to_stage: str | None
    cause: str
    at: datetime


class EmailOut(BaseModel):
    funnel: str
    step: str
    template: str
    status: str
    sent_at: datetime | None


class LeadOut(BaseModel):
    email: str
    attributes: dict[str, Any]
    tags: list[str]
    timezone: str | None
    consent: str
    funnels: list[EnrollmentOut] = Field(description="The lead's place in each funnel.")
    timeline: list[TransitionOut] = Field(description="Every stage transition with its cause, oldest first.")
    emails: list[EmailOut]


class Accepted(BaseModel):
    accepted: int = Field(description="New events, committed.")
    duplicates: int = Field(description="Events whose id was already recorded: nothing changed.")


# What `/v1/events` and `/hooks/{source}` take: one event, or a batch of up to MAX_BATCH.
EventsBody = Annotated[EventIn | Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH)], Body()]


def record_items(conn: sa.Connection, items: Sequence[EventIn], source: str, at: datetime) -> tuple[int, int]:
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
    if zones:  # the last new event of a lead that names a zone sets it
        ingest.set_timezones(conn, zones, lead_ids.values(), at)
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


def router(ctx: HttpContext) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Security(BEARER)], responses=ERRORS, route_class=_keyed_route(ctx))

    @router.post("/events", response_model=Accepted, tags=["events"])
    def post_events(body: EventsBody) -> Accepted:
        """One event, or a batch of up to 1,000 (a JSON array). Answered after the commit."""
        items = body if isinstance(body, list) else [body]
        at = ctx.now()
        refuse_future(body, at)
        inserted, duplicates = ingest.in_transaction(ctx.engine, lambda conn: record_items(conn, items, "api", at))
        if inserted:
            ctx.nudge()
        return Accepted(accepted=inserted, duplicates=duplicates)

    def lead_view(conn: sa.Connection, address: str) -> LeadOut:
        lead_id = store.find_lead_id(conn, address)
        lead = store.get_lead(conn, lead_id) if lead_id is not None else None
        if lead_id is None or lead is None:
            raise HTTPException(status_code=404, detail="no such lead")
        return LeadOut(
            email=address,
            attributes=dict(lead.attributes),
            tags=sorted(lead.tags),
            timezone=lead.timezone,
            consent=lead.consent,
            funnels=[
                EnrollmentOut(
                    funnel=e.funnel,
                    status=e.status,
                    stage=e.stage,
                    step=e.step,
                    entered_at=e.entered_at,
                    stage_entered_at=e.stage_entered_at,
                )
                for e in store.get_enrollments(conn, lead_id)
            ],
            timeline=[
                TransitionOut(
                    funnel=t.funnel_id, from_stage=t.from_stage, to_stage=t.to_stage, cause=str(t.cause), at=t.at
                )
                for t in store.get_transitions(conn, lead_id)
            ],
            emails=[
                EmailOut(funnel=m.funnel_id, step=m.step, template=m.template, status=m.status, sent_at=m.sent_at)
                for m in store.get_outbox(conn, lead_id)
            ],
        )

    @router.put(
        "/leads/{email:path}",
        response_model=LeadOut,
        tags=["leads"],
        responses={
            409: {
                "model": Problem,
                "description": "The lead opted out, bounced or complained, or has not confirmed its signup.",
            }
        },
    )
    def put_lead(email: Address, body: LeadIn) -> LeadOut:
        """Create or update a lead: attributes merged, tags added, time zone and consent set when given.
        Funnels hear of the change as a `lead_updated` event (their condition triggers look again).
        Consent can be withdrawn here, never given back to a lead who opted out, nor to one whose signup
        is unconfirmed: only the lead can do that (the preference page, or a signup it confirms). Every
        change of an existing lead's consent writes a consent record with its source."""
        address = email
        at = ctx.now()
        source = body.consent_source or "api"
        with ctx.engine.begin() as conn:
            lead_id, current = consents.lead_consent(conn, address)
            refusal = signup.operator_refusal(current, body.consent) if body.consent is not None else None
            if refusal is not None:
                raise HTTPException(status_code=409, detail=refusal)
            new_lead = lead_id is None
            lead_id = store.upsert_lead(
                conn,
                address,
                attributes=body.attributes,
                tags=body.tags,
                timezone=body.timezone,
                consent=body.consent if new_lead else None,
                consent_source=source if new_lead and body.consent is not None else None,
                now=at,
            )
            if body.consent == "unsubscribed" and not new_lead:
                # A consent record and the funnels' exit rules, as on the unsubscribe page.
                consents.unsubscribe(conn, address, consents.ConsentAct("withdrawn", source), at)
            elif body.consent is not None and current is not None:
                act = consents.ConsentAct(signup.act_name(body.consent), source)
                consents.change_status(conn, lead_id, address, current, body.consent, act, at)
            updated = store.NewEvent(engine_id("lead-updated", uuid.uuid4().hex), lead_id, LEAD_UPDATED, at, {}, "api")
            store.record_events(conn, [updated], now=at)
            view = lead_view(conn, address)
        ctx.nudge()
        return view

    @router.get(
        "/leads/{email:path}",
        response_model=LeadOut,
        tags=["leads"],
        responses={404: {"model": Problem, "description": "No lead with this address."}},
    )
    def get_lead(email: Address) -> LeadOut:
        """The lead, its place in each funnel, its stage timeline with causes, and its emails."""
        with ctx.engine.connect() as conn:
            return lead_view(conn, email)

    @router.delete("/leads/{email:path}", status_code=204, tags=["leads"])
    def erase_lead(email: Address) -> Response:
        """Erasure: the lead and everything about it goes; only a hash of the address stays, so it is never
        mailed again (and a later import or signup cannot quietly bring it back into marketing)."""
        with ctx.engine.begin() as conn:
            lead_timeline.erase(conn, email, ctx.now())
        return Response(status_code=204)

    return router
