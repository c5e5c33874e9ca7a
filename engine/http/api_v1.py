"""`/v1`: the API for other systems (a shop, a CRM, a form builder), behind API keys. What an event must
be, and how a batch is recorded, is `engine.event_intake`'s (signed webhooks take the same events).

Invariant 7: an event carries an id, a replay changes nothing, and the answer comes after the commit.
Invariant 12: a batch with one bad item is rejected whole, with each item's and field's error.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from engine.core import signup
from engine.core.own_events import LEAD_UPDATED, engine_id
from engine.http.deps import Context, JsonSafeRoute, context_of

# EVENT_NAME, MAX_BATCH and EventIn are the API's rules as much as the intake's: named here too.
from engine.http.event_intake import EVENT_NAME as EVENT_NAME
from engine.http.event_intake import MAX_BATCH as MAX_BATCH
from engine.http.event_intake import (
    Accepted,
    Address,
    EventsBody,
    LanguageTag,
    StorableObject,
    StorableText,
    Zone,
    record_items,
    refuse_future,
)
from engine.http.event_intake import EventIn as EventIn
from engine.http.http_context import BEARER
from engine.store import consents, ingest
from engine.store import leads as store
from engine.views import lead_timeline


class KeyedRoute(JsonSafeRoute):
    """A route that checks the API key before FastAPI reads the body: a caller without a key is refused
    before anything it sent is read or parsed (a body over the limit is refused even before that)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def keyed(request: Request) -> Response:
            await run_in_threadpool(context_of(request).check_api_key, request.headers.get("authorization"))
            return await handler(request)

        return keyed


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body could not be read (not JSON, or not UTF-8)."},
    401: {"model": Problem, "description": "No key, or a wrong or revoked one. No detail, on purpose."},
    413: {"model": Problem, "description": "The body is larger than `http.body_limits` allows this route."},
}


class LeadIn(BaseModel):
    """What to set on a lead. Attributes are merged (given keys win), tags are added."""

    model_config = ConfigDict(extra="forbid")

    attributes: StorableObject = Field(default_factory=dict)
    tags: list[Annotated[StorableText, Field(min_length=1, max_length=100)]] = Field(default_factory=list)
    timezone: Zone | None = Field(default=None, description="An IANA zone, e.g. Europe/Berlin.")
    language: LanguageTag | None = Field(
        default=None,
        description="A BCP 47 tag, e.g. de or fr-CA: the language the lead's emails are written in, where the"
        " funnel has a translation (else the nearest one of its lookup chain, then the funnel's default).",
    )
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
    language: str | None = Field(description="The language the email was written in, once sent.")


class LeadOut(BaseModel):
    email: str
    attributes: dict[str, Any]
    tags: list[str]
    timezone: str | None
    language: str | None
    consent: str
    funnels: list[EnrollmentOut] = Field(description="The lead's place in each funnel.")
    timeline: list[TransitionOut] = Field(description="Every stage transition with its cause, oldest first.")
    emails: list[EmailOut]


router = APIRouter(prefix="/v1", dependencies=[Security(BEARER)], responses=ERRORS, route_class=KeyedRoute)


@router.post("/events", response_model=Accepted, tags=["events"])
def post_events(body: EventsBody, ctx: Context) -> Accepted:
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
        language=lead.language,
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
            TransitionOut(funnel=t.funnel_id, from_stage=t.from_stage, to_stage=t.to_stage, cause=str(t.cause), at=t.at)
            for t in store.get_transitions(conn, lead_id)
        ],
        emails=[
            EmailOut(
                funnel=m.funnel_id,
                step=m.step,
                template=m.template,
                status=m.status,
                sent_at=m.sent_at,
                language=m.language,
            )
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
def put_lead(email: Address, body: LeadIn, ctx: Context) -> LeadOut:
    """Create or update a lead: attributes merged, tags added, time zone, language and consent set when given.
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
            language=body.language,
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
def get_lead(email: Address, ctx: Context) -> LeadOut:
    """The lead, its place in each funnel, its stage timeline with causes, and its emails."""
    with ctx.engine.connect() as conn:
        return lead_view(conn, email)


@router.delete("/leads/{email:path}", status_code=204, tags=["leads"])
def erase_lead(email: Address, ctx: Context) -> Response:
    """Erasure: the lead and everything about it goes; only a hash of the address stays, so it is never
    mailed again (and a later import or signup cannot quietly bring it back into marketing)."""
    with ctx.engine.begin() as conn:
        lead_timeline.erase(conn, email, ctx.now())
    return Response(status_code=204)
