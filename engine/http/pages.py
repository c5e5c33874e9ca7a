"""The pages leads reach from their emails: tracked links, the open pixel, unsubscribe. No login: each
URL carries a token signed for its purpose (invariant 11); a tampered or foreign token gets 404.

A page is in its lead's language: the token names the address, the address its lead, the lead its
language, which picks a catalogue along its lookup chain (engine.http.catalogues).

Invariant 5: an unsubscribe takes effect at once; the mailer reads consent again right before DATA.
"""

from __future__ import annotations

import html

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from markupsafe import Markup, escape

from engine.core import signup
from engine.core.own_events import engine_id
from engine.http.catalogues import PageTexts, catalogues
from engine.http.deps import Context
from engine.http.http_context import HttpContext
from engine.mail import mime
from engine.store import consents
from engine.store import leads as store
from engine.store.consents import ConsentAct

# The field a one-click unsubscribe posts: the value of `List-Unsubscribe-Post` in every marketing email.
ONE_CLICK_FIELD, ONE_CLICK_VALUE = mime.ONE_CLICK.split("=")
# The smallest transparent GIF.
PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


router = APIRouter(include_in_schema=False)


@router.get("/c/{token}", include_in_schema=False)
def click(token: str, ctx: Context) -> Response:
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
                engine_id("click", lead_id, funnel, step, name),
                lead_id,
                "email_clicked",
                at,
                {"link": name, "url": url, "funnel": funnel, "step": step},
                "click",
            )
            store.record_events(conn, [event], now=at)
    return RedirectResponse(url, status_code=302)


@router.get("/o/{token}.gif", include_in_schema=False)
def opened(token: str, ctx: Context) -> Response:
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
                engine_id("open", lead_id, funnel, step),
                lead_id,
                "email_opened",
                at,
                {"funnel": funnel, "step": step},
                "open",
            )
            store.record_events(conn, [event], now=at)
    return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})


def _address_in(ctx: HttpContext, purpose: str, token: str) -> tuple[str, str | None]:
    payload = ctx.links.verify(purpose, token)
    if not isinstance(payload, dict) or not isinstance(payload.get("e"), str):
        raise HTTPException(status_code=404)
    funnel = payload.get("f")
    return payload["e"], funnel if isinstance(funnel, str) else None


def _act(request: Request, source: str, fields: dict[str, str] | None = None, action: str = "withdrawn") -> ConsentAct:
    ip = request.client.host if request.client else None
    return ConsentAct(action, source, ip=ip, user_agent=request.headers.get("user-agent"), fields=fields)


def lead_texts(conn: sa.Connection, address: str) -> PageTexts:
    """The engine's texts in the language of the address's lead (English for none)."""
    return catalogues().texts(store.language_of(conn, address))


def _para(text: Markup) -> Markup:
    return Markup("<p>{}</p>").format(text)


def _strong(text: str) -> Markup:
    return Markup("<strong>{}</strong>").format(text)


@router.get("/u/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, ctx: Context) -> HTMLResponse:
    """Only a page: link scanners fetch URLs, and a GET must change nothing. It offers to stop this
    funnel's emails or all marketing email."""
    address, funnel_id = _address_in(ctx, "unsubscribe", token)
    sender = ctx.settings.sender.name
    preferences = ctx.links.preferences_url(address)
    with ctx.engine.connect() as conn:
        active = _active_funnels(conn, address)
        _ = lead_texts(conn, address)
    options = Markup()
    if funnel_id is not None and funnel_id in active:
        options += _button("funnel", _("Only emails about {funnel}", funnel=active[funnel_id]))
    options += _button("all", _("All marketing email from {sender}", sender=sender))
    everything = _("All email preferences")
    question = _("Which emails should {address} stop getting from {sender}?", address=_strong(address), sender=sender)
    return HTMLResponse(
        page(
            _("Unsubscribe"),
            f'<p>{question}</p>{options}<p><a href="{html.escape(preferences)}">{everything}</a></p>',
            _.language,
        )
    )


@router.post("/u/{token}")
async def unsubscribe(token: str, request: Request, ctx: Context) -> Response:
    """RFC 8058 one-click (a mail client posts `List-Unsubscribe=One-Click`: all marketing email), or
    the page's buttons. No login, no redirect; effective at once."""
    address, funnel_id = _address_in(ctx, "unsubscribe", token)
    fields = await _form(request)
    # RFC 8058: the key/value pair of List-Unsubscribe-Post, as a form field, multipart/form-data
    # (what clients should send) or form-encoded (what they may send). That field alone, exactly.
    one_click = fields.get(ONE_CLICK_FIELD) == ONE_CLICK_VALUE
    scope = fields.get("scope", "all")
    at = ctx.now()
    with ctx.engine.begin() as conn:
        _ = lead_texts(conn, address)
        if scope == "funnel" and funnel_id is not None and not one_click:
            name = _active_funnels(conn, address).get(funnel_id)
            lead_id = store.find_lead_id(conn, address)
            if name is not None and lead_id is not None:
                consents.leave_funnel(
                    conn, lead_id, funnel_id, _act(request, "unsubscribe page", {"funnel": funnel_id}), at
                )
                done = _(
                    "{address} will get no more emails about {funnel}.",
                    address=address,
                    funnel=name,
                )
                return HTMLResponse(page(_("Unsubscribed"), f"<p>{done}</p>", _.language))
        consents.unsubscribe(conn, address, _act(request, "one-click" if one_click else "unsubscribe page"), at)
    ctx.nudge()
    if one_click:
        return JSONResponse({"unsubscribed": True})
    done = _("{address} will get no more marketing email from us.", address=address)
    return HTMLResponse(page(_("Unsubscribed"), f"<p>{done}</p>", _.language))


@router.get("/p/{token}", response_class=HTMLResponse)
def preferences_page(token: str, ctx: Context) -> HTMLResponse:
    """What this address gets from us, and a button per choice (a GET changes nothing)."""
    address, _funnel = _address_in(ctx, "preferences", token)
    with ctx.engine.connect() as conn:
        lead_id, consent = consents.lead_consent(conn, address)
        active = _active_funnels(conn, address)
        restartable = consent in signup.RESTARTABLE and consents.may_resubscribe(conn, address)
        never_confirmed = lead_id is not None and not signup.may_restart(consents.opted_out_from(conn, lead_id))
        _ = lead_texts(conn, address)
    body = _para(_("Email preferences for {address}.", address=_strong(address)))
    if lead_id is None:
        body += _para(_("We hold nothing about this address, and send it no email."))
    elif consent == "subscribed":
        if active:
            names = ", ".join(active.values())
            body += _para(_("You get marketing email from us: {funnels}.", funnels=names))
        else:
            body += _para(_("You get marketing email from us."))
        for funnel_id, name in active.items():
            body += _button(f"funnel:{funnel_id}", _("Stop emails about {funnel}", funnel=name))
        body += _button("all", _("Stop all marketing email"))
    elif restartable and consent == "complained":
        body += _para(_("You reported our email as spam, so we send you none.")) + _button(
            "resubscribe", _("Start again")
        )
    elif restartable:
        body += _para(_("You get no marketing email from us.")) + _button("resubscribe", _("Start again"))
    elif consent == "unsubscribed" and never_confirmed:
        # Only a confirmed signup subscribes an address that was never confirmed.
        body += _para(
            _(
                "You get no marketing email from us. Your address was never confirmed: to hear from us, "
                "sign up again and follow the link in the email we send."
            )
        )
    elif consent == "unsubscribed":
        body += _para(_("You get no marketing email from us."))
    elif consent == "pending":
        body += _para(_("Your address is not confirmed yet: we send it nothing until it is."))
    else:
        body += _para(_("We send this address no marketing email."))
    return HTMLResponse(page(_("Email preferences"), body, _.language))


@router.post("/p/{token}")
async def preferences(token: str, request: Request, ctx: Context) -> Response:
    address, _ = _address_in(ctx, "preferences", token)
    scope = (await _form(request)).get("scope", "")
    at = ctx.now()
    with ctx.engine.begin() as conn:
        lead_id = store.find_lead_id(conn, address)
        if scope == "all":
            consents.unsubscribe(conn, address, _act(request, "preferences page"), at)
        elif scope == "resubscribe":
            consents.resubscribe(conn, address, _act(request, "preferences page", action="given"), at)
        elif scope.startswith("funnel:") and lead_id is not None:
            funnel_id = scope.removeprefix("funnel:")
            if funnel_id in _active_funnels(conn, address):
                consents.leave_funnel(
                    conn, lead_id, funnel_id, _act(request, "preferences page", {"funnel": funnel_id}), at
                )
        else:
            raise HTTPException(status_code=400, detail="unknown choice")
    ctx.nudge()
    # Back to the page, which now shows the new state (post/redirect/get).
    return RedirectResponse(f"/p/{token}", status_code=303)


async def _form(request: Request) -> dict[str, str]:
    """The posted form's text fields, whichever of the two form encodings it came in."""
    form = await request.form()
    return {name: value for name, value in form.items() if isinstance(value, str)}


def _button(scope: str, label: Markup) -> Markup:
    """A button posting `scope`; `label` is HTML (a catalogue's text, escaped by it)."""
    return Markup(
        '<form method="post"><input type="hidden" name="scope" value="{}"><button type="submit">{}</button></form>'
    ).format(scope, label)


def _active_funnels(conn: sa.Connection, address: str) -> dict[str, str]:
    """The funnels the lead is active in, by id, with their names as their files say."""
    lead_id = store.find_lead_id(conn, address)
    if lead_id is None:
        return {}
    found: dict[str, str] = {}
    for e in store.get_enrollments(conn, lead_id):
        if e.status == "active":
            definition = store.get_funnel_definition(conn, e.funnel, e.version) or {}
            found[e.funnel] = str(definition.get("name") or e.funnel)
    return found


def page(title: str, body: str, language: str = "en") -> str:
    """A plain page of the engine's own (forms and pages without a template of their own), in `language`
    (a canonical tag: the one its texts were taken in). `title` is text or Markup (a catalogue's)."""
    return (
        f'<!doctype html><html lang="{html.escape(language)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title></head>"
        '<body style="font-family: sans-serif; max-width: 36em; margin: 3em auto; line-height: 1.5">'
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    )
