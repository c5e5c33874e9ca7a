"""The pages leads reach from their emails: tracked links, the open pixel, unsubscribe. No login: each
URL carries a token signed for its purpose (invariant 11); a tampered or foreign token gets 404.

Invariant 5: an unsubscribe takes effect at once; the mailer reads consent again right before DATA.
"""

from __future__ import annotations

import html
from datetime import datetime

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from engine import store
from engine.http_context import HttpContext

# The smallest transparent GIF.
PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


def router(ctx: HttpContext) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/c/{token}", include_in_schema=False)
    def click(token: str) -> Response:
        """A tracked link: record the click as an event (a funnel can move the lead on it), then go where
        the email pointed. Only there: the URL is inside the signed token."""
        payload = ctx.links.verify("click", token)
        if not isinstance(payload, dict) or not isinstance(payload.get("u"), str):
            raise HTTPException(status_code=404)
        url, address = payload["u"], str(payload.get("e", ""))
        if not url.startswith(("https://", "http://")):
            raise HTTPException(status_code=404)
        at = ctx.now()
        with ctx.engine.begin() as conn:
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

    @router.get("/o/{token}.gif", include_in_schema=False)
    def opened(token: str) -> Response:
        """The open pixel: records `email_opened` once per email, answers with a transparent GIF."""
        payload = ctx.links.verify("open", token)
        if not isinstance(payload, dict) or "e" not in payload:
            raise HTTPException(status_code=404)
        at = ctx.now()
        with ctx.engine.begin() as conn:
            lead_id = store.find_lead_id(conn, str(payload["e"]))
            if lead_id is not None:
                funnel, step = payload.get("f"), payload.get("s")
                event = store.NewEvent(
                    f"open:{lead_id}:{funnel}:{step}",
                    lead_id,
                    "email_opened",
                    at,
                    {"funnel": funnel, "step": step},
                    "open",
                )
                store.record_events(conn, [event], now=at)
        return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})

    @router.get("/u/{token}", response_class=HTMLResponse, include_in_schema=False)
    def unsubscribepage(token: str) -> HTMLResponse:
        """Only a page: link scanners fetch URLs, and a GET must change nothing."""
        payload = ctx.links.verify("unsubscribe", token)
        if not isinstance(payload, dict) or "e" not in payload:
            raise HTTPException(status_code=404)
        address, sender = html.escape(str(payload["e"])), html.escape(ctx.settings.sender.name)
        return HTMLResponse(
            page(
                "Unsubscribe",
                f"<p>Stop all marketing email to <strong>{address}</strong> from {sender}?</p>"
                '<form method="post"><button type="submit">Unsubscribe</button></form>',
            )
        )

    @router.post("/u/{token}", include_in_schema=False)
    async def unsubscribe(token: str, request: Request) -> Response:
        """RFC 8058 one-click (a mail client posts `List-Unsubscribe=One-Click`), or the page's button.
        No login, no redirect; effective at once."""
        payload = ctx.links.verify("unsubscribe", token)
        if not isinstance(payload, dict) or "e" not in payload:
            raise HTTPException(status_code=404)
        body = (await request.body()).decode("utf-8", "replace")
        one_click = "List-Unsubscribe=One-Click" in body
        address = str(payload["e"])
        with ctx.engine.begin() as conn:
            _unsubscribe(conn, address, "one-click" if one_click else "unsubscribe page", ctx.now())
        if one_click:
            return JSONResponse({"unsubscribed": True})
        return HTMLResponse(
            page("Unsubscribed", f"<p>{html.escape(address)} will get no more marketing email from us.</p>")
        )

    return router


def _unsubscribe(conn: sa.Connection, address: str, source: str, at: datetime) -> None:
    """Unsubscribe the lead; for an address with no lead any more (erased), keep a suppression instead."""
    if store.find_lead_id(conn, address) is None:
        store.suppress(conn, address, "unsubscribed", now=at)
        return
    store.upsert_lead(conn, address, consent="unsubscribed", consent_source=source, now=at)


def page(title: str, body: str) -> str:
    """A plain page of the engine's own (forms and pages without a template of their own)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title></head>"
        '<body style="font-family: sans-serif; max-width: 36em; margin: 3em auto; line-height: 1.5">'
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
