"""The HTTP app: event ingestion for other systems (`/v1`, API keys) and the pages leads reach from
their emails (one-click unsubscribe). An adapter: it validates, commits, and answers; what an event
does to a lead's journey is the worker's business, on its next tick.

Invariant 7: an event carries an id, a replay changes nothing, and the answer comes after the commit.
Invariant 5: an unsubscribe takes effect at once; the mailer reads consent again right before DATA.
Invariant 12: a batch with one bad item is rejected whole, with each item's and field's error.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, ConfigDict, EmailStr, Field, field_validator

from engine import apikeys, store, tables
from engine.links import Links
from engine.settings import Settings

EVENT_NAME = r"^[a-z][a-z0-9_.-]{0,99}$"
MAX_BATCH = 1000
# The smallest transparent GIF.
PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


class EventIn(BaseModel):
    """One event from another system. `id` is the sender's idempotency key: a replay changes nothing."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    type: str = Field(pattern=EVENT_NAME, description="e.g. form_submitted, link_clicked, order_completed")
    email: EmailStr
    occurred_at: AwareDatetime | None = Field(default=None, description="Default: when it is received.")
    properties: dict[str, Any] = Field(default_factory=dict)
    source: str | None = Field(default=None, max_length=200)


class LeadIn(BaseModel):
    """What to set on a lead. Attributes are merged (given keys win), tags are added."""

    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, Any] = Field(default_factory=dict)
    tags: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list)
    timezone: str | None = Field(default=None, description="An IANA zone, e.g. Europe/Berlin.")
    consent: Literal["subscribed", "unsubscribed", "pending"] | None = None
    consent_source: str | None = Field(default=None, max_length=200)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}; expected an IANA name like Europe/Berlin") from None
        return value


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


_bearer = HTTPBearer(auto_error=False)


def create_app(settings: Settings, engine: sa.Engine, clock: Callable[[], datetime] | None = None) -> FastAPI:
    now = clock or (lambda: datetime.now(UTC))
    links = Links(settings)
    app = FastAPI(title="funnel engine", version="1", docs_url="/docs", redoc_url=None)

    def api_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        # No detail either way: a caller learns nothing about which keys exist.
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        with engine.connect() as conn:
            if not apikeys.valid(conn, credentials.credentials):
                raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/events", response_model=Accepted, dependencies=[Depends(api_key)], tags=["events"])
    def post_events(
        body: Annotated[EventIn | Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH)], Body()],
    ) -> Accepted:
        """One event, or a batch of up to 1,000 (a JSON array). Answered after the commit."""
        items = body if isinstance(body, list) else [body]
        at = now()
        with engine.begin() as conn:
            lead_ids: dict[str, int] = {}
            for item in items:
                address = store.normalise_email(item.email)
                if address not in lead_ids:
                    lead_ids[address] = store.upsert_lead(conn, address, now=at)
            new = [
                store.NewEvent(
                    item.id,
                    lead_ids[store.normalise_email(item.email)],
                    item.type,
                    item.occurred_at or at,
                    item.properties,
                    item.source or "api",
                )
                for item in items
            ]
            inserted, duplicates = store.record_events(conn, new, now=at)
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
                EnrollmentOut(funnel=e.funnel, status=e.status, stage=e.stage, step=e.step, entered_at=e.entered_at,
                              stage_entered_at=e.stage_entered_at)
                for e in store.get_enrollments(conn, lead_id)
            ],
            timeline=[
                TransitionOut(funnel=t.funnel_id, from_stage=t.from_stage, to_stage=t.to_stage, cause=str(t.cause),
                              at=t.at)
                for t in store.get_transitions(conn, lead_id)
            ],
            emails=[
                EmailOut(funnel=m.funnel_id, step=m.step, template=m.template, status=m.status, sent_at=m.sent_at)
                for m in store.get_outbox(conn, lead_id)
            ],
        )

    @app.put("/v1/leads/{email}", response_model=LeadOut, dependencies=[Depends(api_key)], tags=["leads"])
    def put_lead(email: EmailStr, body: LeadIn) -> LeadOut:
        """Create or update a lead: attributes merged, tags added, time zone and consent set when given."""
        address = store.normalise_email(email)
        at = now()
        with engine.begin() as conn:
            store.upsert_lead(
                conn,
                address,
                attributes=body.attributes,
                tags=body.tags,
                timezone=body.timezone,
                consent=body.consent,
                consent_source=body.consent_source or ("api" if body.consent else None),
                now=at,
            )
            return lead_view(conn, address)

    @app.get("/v1/leads/{email}", response_model=LeadOut, dependencies=[Depends(api_key)], tags=["leads"])
    def get_lead(email: EmailStr) -> LeadOut:
        """The lead, its place in each funnel, its stage timeline with causes, and its emails."""
        with engine.connect() as conn:
            return lead_view(conn, store.normalise_email(email))

    @app.delete("/v1/leads/{email}", status_code=204, dependencies=[Depends(api_key)], tags=["leads"])
    def erase_lead(email: EmailStr) -> Response:
        """Erasure: the lead and everything about it goes; only a hash of the address stays, so it is never
        mailed again (and a later import or signup cannot quietly bring it back into marketing)."""
        address = store.normalise_email(email)
        with engine.begin() as conn:
            store.suppress(conn, address, "erased", now=now())
            conn.execute(sa.delete(tables.leads).where(tables.leads.c.email == address))
        return Response(status_code=204)

    @app.get("/c/{token}", include_in_schema=False)
    def click(token: str) -> Response:
        """A tracked link: record the click as an event (a funnel can move the lead on it), then go where
        the email pointed. Only there: the URL is inside the signed token."""
        payload = links.verify("click", token)
        if not isinstance(payload, dict) or not isinstance(payload.get("u"), str):
            raise HTTPException(status_code=404)
        url, address = payload["u"], str(payload.get("e", ""))
        if not url.startswith(("https://", "http://")):
            raise HTTPException(status_code=404)
        at = now()
        with engine.begin() as conn:
            lead_id = store.find_lead_id(conn, address)
            if lead_id is not None:
                funnel, step, name = payload.get("f"), payload.get("s"), payload.get("n")
                # One event per link of an email: clicking it again changes nothing.
                event = store.NewEvent(
                    f"click:{lead_id}:{funnel}:{step}:{name}",
                    lead_id,
                    "email_clicked",
                    at,
                    {"link": name, "url": url, "funnel": funnel, "step": step},
                    "click",
                )
                store.record_events(conn, [event], now=at)
        return RedirectResponse(url, status_code=302)

    @app.get("/o/{token}.gif", include_in_schema=False)
    def opened(token: str) -> Response:
        """The open pixel: records `email_opened` once per email, answers with a transparent GIF."""
        payload = links.verify("open", token)
        if not isinstance(payload, dict) or "e" not in payload:
            raise HTTPException(status_code=404)
        at = now()
        with engine.begin() as conn:
            lead_id = store.find_lead_id(conn, str(payload["e"]))
            if lead_id is not None:
                funnel, step = payload.get("f"), payload.get("s")
                event = store.NewEvent(
                    f"open:{lead_id}:{funnel}:{step}", lead_id, "email_opened", at,
                    {"funnel": funnel, "step": step}, "open",
                )
                store.record_events(conn, [event], now=at)
        return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})

    @app.get("/u/{token}", response_class=HTMLResponse, include_in_schema=False)
    def unsubscribe_page(token: str) -> HTMLResponse:
        """Only a page: link scanners fetch URLs, and a GET must change nothing."""
        payload = links.verify("unsubscribe", token)
        if not isinstance(payload, dict) or "e" not in payload:
            raise HTTPException(status_code=404)
        address, sender = html.escape(str(payload["e"])), html.escape(settings.sender.name)
        return HTMLResponse(
            _page(
                "Unsubscribe",
                f"<p>Stop all marketing email to <strong>{address}</strong> from {sender}?</p>"
                '<form method="post"><button type="submit">Unsubscribe</button></form>',
            )
        )

    @app.post("/u/{token}", include_in_schema=False)
    async def unsubscribe(token: str, request: Request) -> Response:
        """RFC 8058 one-click (a mail client posts `List-Unsubscribe=One-Click`), or the page's button.
        No login, no redirect; effective at once."""
        payload = links.verify("unsubscribe", token)
        if not isinstance(payload, dict) or "e" not in payload:
            raise HTTPException(status_code=404)
        body = (await request.body()).decode("utf-8", "replace")
        one_click = "List-Unsubscribe=One-Click" in body
        address = str(payload["e"])
        with engine.begin() as conn:
            _unsubscribe(conn, address, "one-click" if one_click else "unsubscribe page", now())
        if one_click:
            return JSONResponse({"unsubscribed": True})
        return HTMLResponse(
            _page("Unsubscribed", f"<p>{html.escape(address)} will get no more marketing email from us.</p>")
        )

    return app


def _unsubscribe(conn: sa.Connection, address: str, source: str, at: datetime) -> None:
    """Unsubscribe the lead; for an address with no lead any more (erased), keep a suppression instead."""
    if store.find_lead_id(conn, address) is None:
        store.suppress(conn, address, "unsubscribed", now=at)
        return
    store.upsert_lead(conn, address, consent="unsubscribed", consent_source=source, now=at)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head>"
        '<body style="font-family: sans-serif; max-width: 36em; margin: 3em auto; line-height: 1.5">'
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
