"""`POST /hooks/{source}`: events from systems that sign what they send (a shop's order_completed)
instead of holding an API key. Each source is configured with its secret (`[hooks.shop] secret = ...`).

The signature is checked over the raw bytes before any JSON is parsed; a refusal is 401 and says
nothing about why (unknown source, no header, bad signature, stale timestamp look the same). A request
without a well-formed signature header is refused before its body is read; any other has its body read
(no more than `http.body_limits.events`) and checked, whether its source exists or not, so that neither
the answer nor the time it takes tells which sources exist. The body is what `/v1/events` takes and is
validated the same way. A request is remembered by a receipt written in the same transaction as its
events: a replay is 409 and changes nothing, while a request that failed (422, a crash before the
commit) left no receipt and can be sent again as it was. The answer comes after the commit (invariant 7).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Path, Request, Response

from engine.core import signatures
from engine.http.deps import Context, JsonSafeRoute, context_of
from engine.http.event_intake import Accepted, EventsBody, record_items, refuse_future
from engine.settings import HookSettings, Settings
from engine.store import tables

log = logging.getLogger("engine.hooks")

_VERIFIED = "funnel_signature"  # where the route leaves a verified request's receipt for the endpoint
_UNAUTHORIZED = {"WWW-Authenticate": signatures.HEADER}
# What a request naming no configured source is checked against: a key nobody has, and the default tolerance.
_NO_SOURCE = HookSettings(secret=secrets.token_urlsafe(32))


def _refuse() -> HTTPException:
    return HTTPException(status_code=401, headers=_UNAUTHORIZED)


class SignedRoute(JsonSafeRoute):  # a refused value that JSON cannot repeat still gets its 422
    """A route that checks the signature before FastAPI reads the body as JSON: a request that is not
    signed is refused before anything in it is interpreted, malformed JSON included, and one without a
    well-formed signature header before its body is even read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def signed(request: Request) -> Response:
            ctx = context_of(request)
            receipt = await _verified(request, ctx.settings, ctx.now)
            setattr(request.state, _VERIFIED, receipt)
            return await handler(request)

        return signed


async def _verified(request: Request, settings: Settings, now: Callable[[], datetime]) -> str:
    """The receipt of a request whose signature holds; a 401 else, alike whatever the reason."""
    source = str(request.path_params.get("source", ""))
    header = request.headers.get(signatures.HEADER)
    refusal = signatures.header_refusal(header)
    if refusal is not None:
        log.info("refused a webhook from %r: %s", source, refusal.value)
        raise _refuse()
    hook = settings.hooks.get(source)
    # Kept by the request: the handler reads the same bytes. The body limit bounds it.
    body = await request.body()
    # An unknown source is checked as a known one is, so its refusal comes after the same work.
    known = hook or _NO_SOURCE
    outcome = signatures.verify([known.secret.get_secret_value()], header, body, now(), known.tolerance_s)
    if hook is None:
        log.info("refused a webhook for unknown source %r", source)
        raise _refuse()
    if isinstance(outcome, signatures.Refusal):
        log.info("refused a webhook from %r: %s", source, outcome.value)
        raise _refuse()
    return signatures.receipt(source, outcome.timestamp, body)


def receipts_kept_for(settings: Settings) -> timedelta:
    """How long a receipt must outlive its request. A timestamp is accepted up to the tolerance on either
    side of our clock, so a request received at r may carry t = r + tolerance and stay acceptable until
    t + tolerance: twice the tolerance after r."""
    tolerance = max((hook.tolerance_s for hook in settings.hooks.values()), default=0)
    return timedelta(seconds=2 * tolerance)


def sweep_receipts(conn: sa.Connection, settings: Settings, now: datetime) -> int:
    """Forget receipts whose request could no longer be accepted anyway; returns how many."""
    r = tables.webhook_receipts
    result = conn.execute(sa.delete(r).where(r.c.received_at < now - receipts_kept_for(settings)))
    return result.rowcount


router = APIRouter(route_class=SignedRoute)


@router.post(
    "/hooks/{source}",
    response_model=Accepted,
    tags=["hooks"],
    responses={
        401: {"description": "Unknown source, a missing, malformed or wrong signature, or a stale timestamp."},
        409: {"description": "This signed request was already received: nothing changed."},
    },
    openapi_extra={
        "parameters": [
            {
                "name": signatures.HEADER,
                "in": "header",
                "required": True,
                "description": "t=<unix seconds>,v1=<hex HMAC-SHA256, keyed with the hook's secret, of `{t}.` "
                "followed by the raw body>; several v1 values may be given. Checked before the body is parsed.",
                "schema": {"type": "string"},
            }
        ]
    },
)
def receive(
    source: Annotated[str, Path(description="The sender's name, as configured under [hooks].")],
    request: Request,
    body: EventsBody,
    ctx: Context,
) -> Accepted:
    """One event, or a batch of up to 1,000 (a JSON array), as for `/v1/events`, signed instead of
    sent with a key. An event's `source` defaults to the hook's name. Answered after the commit."""
    receipt = getattr(request.state, _VERIFIED)
    items = body if isinstance(body, list) else [body]
    at = ctx.now()
    refuse_future(body, at)  # before the receipt: a refused request can be sent again once its time has come
    with ctx.engine.begin() as conn:
        sweep_receipts(conn, ctx.settings, at)
        try:
            conn.execute(sa.insert(tables.webhook_receipts).values(signature=receipt, source=source, received_at=at))
        except sa.exc.IntegrityError:
            # Leaving the block rolls back: a replay changes nothing, not even the sweep.
            raise HTTPException(status_code=409, detail="already received") from None
        accepted, duplicates = record_items(conn, items, source, at)
    if accepted:
        ctx.nudge()
    return Accepted(accepted=accepted, duplicates=duplicates)
