"""Lead-magnet forms: an ordinary HTML form posts here, the lead is recorded with proof of consent, and
the funnel's entry event is emitted (at once, or after the double opt-in link is followed). A post about
an address that already has a lead changes nothing of it: it is a request its owner confirms by the
link (invariant 13; the decisions are in `engine.signup`).

    GET  /forms/{id}          the signup page (a Jinja template under `pages_dir`, or a plain one)
    POST /forms/{id}          the signup: 303 to a thank-you, check-your-inbox or download page
    GET  /confirm/{token}     the double opt-in page: a button, because link scanners fetch URLs
    POST /confirm/{token}     confirms: consent recorded, entry event emitted, 303 to the download page

A bad post (an invalid address, the consent box not ticked) gets the page again with its errors (422)
and changes nothing. A bot that fills the honeypot gets the same redirect as a person and changes nothing.

Languages (engine.http.form_languages): a form page is in the visitor's language among its funnel's
(`?lang=`, else `Accept-Language`, else the default), and its post gives a new lead that language. The
engine's own texts (errors, the plain form, thank-you and confirmation pages) come from the catalogues
(engine.http.catalogues): a page reached by the confirmation link is in its lead's language.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup, escape
from starlette.datastructures import State

from engine.core import addresses, signup, storable
from engine.core.addresses import AddressError
from engine.core.languages import canonical, is_tag
from engine.core.own_events import engine_id
from engine.http.catalogues import PageTexts, catalogues
from engine.http.deps import Context
from engine.http.form_languages import LANGUAGE_FIELD, FormLanguages, read_form_languages
from engine.http.http_context import HttpContext
from engine.http.pages import lead_texts, page
from engine.mail.folder_loader import FolderLoader, OutsideFolder
from engine.settings import FormSettings
from engine.store import consents
from engine.store import leads as store
from engine.store.consents import ConsentAct

log = logging.getLogger("engine.forms")

MAX_FIELD = 500
TICKED = ("on", "yes", "true", "1")
# The script that fills a signup page's hidden time zone field; served from here, so that a page whose
# Content-Security-Policy allows only its own origin's scripts (no inline one) still runs it.
ZONE_SCRIPT = Path(__file__).parent / "static" / "timezone.js"
ZONE_SCRIPT_URL = "/forms/timezone.js"


def _client(request: Request) -> tuple[str | None, str | None]:
    """The poster's IP (as uvicorn sees it: behind a proxy, run it with --forwarded-allow-ips) and agent."""
    return (request.client.host if request.client else None), request.headers.get("user-agent")


class _Pages:
    """The marketer's page templates: sandboxed and autoescaped like the emails, and read only from
    inside their folder. Lenient about missing values (unlike emails), because `errors.email` and
    `values.company` are missing on most renders."""

    def __init__(self, folder: Path, languages: dict[str, FormLanguages]) -> None:
        self.loader = FolderLoader(folder)
        self.env = SandboxedEnvironment(loader=self.loader, autoescape=True)
        self.languages = languages

    def render(self, name: str, context: dict[str, Any]) -> str:
        return self.env.get_template(name).render(context)

    def exists(self, name: str) -> bool:
        try:
            return self.loader.find(name) is not None
        except OutsideFolder:
            return False

    def languages_of(self, form_id: str) -> FormLanguages:
        return self.languages.get(form_id) or FormLanguages()


router = APIRouter(include_in_schema=False)


def install(state: State, ctx: HttpContext) -> None:
    """The app's page templates, read from its `pages_dir`, where the `Pages` dependency finds them, with
    each form's languages (its funnel's); and the engine's catalogues, read now rather than on a first visit."""
    events = {form_id: spec.event for form_id, spec in ctx.settings.forms.items()}
    state.signup_pages = _Pages(ctx.settings.pages_dir, read_form_languages(ctx.settings.funnels_dir, events))
    catalogues()


async def _pages(request: Request) -> _Pages:
    pages: _Pages = request.app.state.signup_pages
    return pages


Pages = Annotated[_Pages, Depends(_pages)]


def _form_of(ctx: HttpContext, form_id: str) -> FormSettings:
    spec = ctx.settings.forms.get(form_id)
    if spec is None:
        raise HTTPException(status_code=404)
    return spec


def _visitor_language(request: Request, pages: _Pages, form_id: str) -> str:
    asked = request.query_params.get("lang")
    return pages.languages_of(form_id).for_visitor(asked, request.headers.get("accept-language"))


def _linked(url: str, language: str | None, request: Request, pages: _Pages, form_id: str) -> str:
    """`url` of a page to show in `language`: with `?lang=` when the browser alone would get another."""
    browser = pages.languages_of(form_id).for_visitor(None, request.headers.get("accept-language"))
    return url if language is None or language == browser else f"{url}{'&' if '?' in url else '?'}lang={language}"


def _signup_page(
    ctx: HttpContext,
    request: Request,
    pages: _Pages,
    form_id: str,
    spec: FormSettings,
    language: str,
    values: dict[str, str],
    errors: dict[str, str],
) -> str:
    """The signup page in `language` (one of the form's); `errors` are in that language already."""
    context = {
        "form": {
            "id": form_id,
            # The post comes back in the page's language (engine.http.form_languages).
            "action": _linked(f"/forms/{form_id}", language, request, pages, form_id),
            "language": language,
            "language_field": LANGUAGE_FIELD,
            "consent_text": spec.consent_text,
            "consent_version": spec.consent_version,
            "honeypot": spec.honeypot,
            "double_opt_in": spec.double_opt_in,
        },
        "values": values,
        "errors": errors,
        "sender": ctx.settings.sender,
    }
    if spec.page is not None:
        try:
            return pages.render(pages.languages_of(form_id).page(spec.page, language, pages.exists), context)
        except TemplateNotFound:
            log.error("form %s: page template %s not found in %s", form_id, spec.page, ctx.settings.pages_dir)
        except OutsideFolder as exc:
            # The engine's own form instead: the signup keeps working, and nothing outside is shown.
            found = pages.loader.locate(exc, exc.__traceback__)
            log.error("form %s: %s:%d: %s", form_id, found.path, found.line, found.message)
    _ = catalogues().texts(language)
    return page(_("Sign up"), _plain_form(context, _), _.language)


@router.get(ZONE_SCRIPT_URL)
def zone_script() -> Response:
    """Declared before the forms: a form id has no dot, so this path is never a form's."""
    headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
    return FileResponse(ZONE_SCRIPT, media_type="text/javascript; charset=utf-8", headers=headers)


@router.get("/forms/{form_id}", response_class=HTMLResponse)
def show(form_id: str, request: Request, ctx: Context, pages: Pages) -> HTMLResponse:
    spec = _form_of(ctx, form_id)
    language = _visitor_language(request, pages, form_id)
    return HTMLResponse(
        _signup_page(ctx, request, pages, form_id, spec, language, {}, {}), headers={"Vary": "Accept-Language"}
    )


@router.post("/forms/{form_id}")
async def submit(form_id: str, request: Request, ctx: Context, pages: Pages) -> Response:
    spec = _form_of(ctx, form_id)
    posted = await request.form()
    values = {k: v.strip() for k, v in posted.items() if isinstance(v, str)}
    # Filled by the page's script, not typed: never an error shown to the person, only kept when valid.
    zone = values.pop(signup.ZONE_FIELD, None)
    page_language = _visitor_language(request, pages, form_id)
    language = pages.languages_of(form_id).posted(values.pop(LANGUAGE_FIELD, None), page_language)
    own_page = f"/forms/{form_id}/{'check-inbox' if spec.double_opt_in else 'thanks'}"
    done_page = spec.redirect or _linked(own_page, language, request, pages, form_id)
    if values.get(spec.honeypot):
        log.info("form %s: honeypot filled, post ignored", form_id)
        return RedirectResponse(done_page, status_code=303)
    address, errors = _check(values, spec, catalogues().texts(language))
    if address is None or errors:
        shown = {k: v for k, v in values.items() if k != spec.honeypot}
        return HTMLResponse(_signup_page(ctx, request, pages, form_id, spec, language, shown, errors), status_code=422)
    attributes = {k: values[k] for k in spec.fields if values.get(k)}
    if values.get("name"):
        attributes.setdefault("name", values["name"])
        attributes.setdefault("first_name", values["name"].split()[0])
    fields = signup.with_zone(attributes, zone)  # as the consent record keeps them
    attributes, zone = signup.lead_fields(fields)
    ip, agent = _client(request)
    at = ctx.now()
    source = f"form {form_id}"
    with ctx.engine.begin() as conn:
        lead_id, current = consents.lead_consent(conn, address)
        outcome = signup.signup_outcome(current, spec.double_opt_in)
        if outcome.action == "ignore":
            log.info("form %s: a post for a lead that complained or was erased changes nothing", form_id)
        elif outcome.action == "subscribe":
            created = store.create_lead(
                conn,
                address,
                attributes=attributes,
                timezone=zone,
                consent="subscribed",
                consent_source=source,
                now=at,
            )
            if created is None:  # the same address, posted at the same instant: that post counts
                log.info("form %s: a concurrent post made this lead first; this one changes nothing", form_id)
            else:
                store.set_language(conn, created, language, at)
                act = ConsentAct("given", source, form_id, spec.consent_version, ip, agent, fields)
                record_id = consents.record(conn, created, act, at, (None, "subscribed"))
                _emit(conn, created, form_id, spec, record_id, attributes, at)
        else:
            act = ConsentAct("requested", source, form_id, spec.consent_version, ip, agent, fields)
            _ask_owner(conn, form_id, spec, address, (lead_id, current), outcome.new_status, act, at, language)
    ctx.nudge()
    return RedirectResponse(done_page, status_code=303)


@router.get("/forms/{form_id}/{outcome}", response_class=HTMLResponse)
def after(form_id: str, outcome: str, request: Request, ctx: Context, pages: Pages) -> HTMLResponse:
    """The engine's own thank-you pages, for forms that name no page of their own; in the language the
    signup's redirect names (`?lang=`), else the browser's."""
    _form_of(ctx, form_id)
    # The language a confirmation link's lead has may be none of the form's: its redirect names it.
    asked = request.query_params.get("lang")
    _ = catalogues().texts(canonical(asked) if asked and is_tag(asked) else _visitor_language(request, pages, form_id))
    texts = {
        "thanks": (_("Thank you"), _("It is on its way to your inbox.")),
        "check-inbox": (
            _("Check your inbox"),
            _(
                "We have sent you an email with a link. Follow it to confirm your address, "
                "and what you asked for comes straight after."
            ),
        ),
        "confirmed": (_("Confirmed"), _("Thank you: your address is confirmed. It is on its way.")),
    }
    if outcome not in texts:
        raise HTTPException(status_code=404)
    title, text = texts[outcome]
    return HTMLResponse(page(title, f"<p>{text}</p>", _.language), headers={"Vary": "Accept-Language"})


def _confirmation(ctx: HttpContext, token: str) -> tuple[str, str, FormSettings, int]:
    payload = ctx.links.verify("opt-in", token)
    if not isinstance(payload, dict) or not isinstance(payload.get("r"), int):
        raise HTTPException(status_code=404)
    form_id = str(payload.get("f"))
    return str(payload.get("e")), form_id, _form_of(ctx, form_id), payload["r"]


@router.get("/confirm/{token}", response_class=HTMLResponse)
def confirm_page(token: str, ctx: Context) -> HTMLResponse:
    """In the language of the address's lead: the one its signup gave it, or its own from before."""
    address = _confirmation(ctx, token)[0]
    with ctx.engine.connect() as conn:
        _ = lead_texts(conn, address)
    question = _(
        "Confirm that {address} wants to hear from {sender}.",
        address=Markup("<strong>{}</strong>").format(address),
        sender=ctx.settings.sender.name,
    )
    button = _("Yes, confirm")
    return HTMLResponse(
        page(
            _("Confirm your address"),
            f'<p>{question}</p><form method="post"><button type="submit">{button}</button></form>',
            _.language,
        )
    )


@router.post("/confirm/{token}")
def confirm(token: str, request: Request, ctx: Context, pages: Pages) -> Response:
    address, form_id, spec, request_id = _confirmation(ctx, token)
    ip, agent = _client(request)
    at = ctx.now()
    with ctx.engine.begin() as conn:
        lead_id, current = consents.lead_consent(conn, address)
        asked = consents.get_request(conn, lead_id, form_id, request_id) if lead_id is not None else None
        if lead_id is None or asked is None:
            raise HTTPException(status_code=404)
        state = signup.confirmation_state(
            asked.at, at, timedelta(hours=spec.confirm_within_hours), consents.is_confirmed(conn, lead_id, asked.id)
        )
        language = store.language_of(conn, address)
        if state == "expired":
            _ = catalogues().texts(language)
            again = _(
                "Please {link}sign up again{end}: we will send you a new link.",
                link=Markup('<a href="{}">').format(_linked(f"/forms/{form_id}", language, request, pages, form_id)),
                end=Markup("</a>"),
            )
            return HTMLResponse(page(_("This link has expired"), f"<p>{again}</p>", _.language), status_code=410)
        if state == "confirm" and current is not None:
            # The link proves the address: what the post carried becomes the lead's now. It reached
            # the mailbox, too: a bounce is lifted, recorded as such first.
            lift = ConsentAct("lifted", f"form {form_id}", form_id, None, ip, agent, {"request": asked.id})
            lifted = consents.lift_bounce(conn, address, lift, at)  # None: no bounce (or a complaint)
            current = lifted.after if lifted is not None else current
            after = signup.status_after_confirming(current)
            act = ConsentAct(
                "confirmed", f"form {form_id}", form_id, asked.text_version, ip, agent, {"request": asked.id}
            )
            consents.record(conn, lead_id, act, at, (current, after))
            changed = after != current
            attributes, zone = signup.lead_fields(asked.fields)
            store.upsert_lead(
                conn,
                address,
                attributes=attributes,
                timezone=zone,
                consent=after if changed else None,
                consent_source=f"double opt-in {form_id}" if changed else None,
                now=at,
            )
            _emit(conn, lead_id, form_id, spec, asked.id, attributes, at)
    if state == "confirm":
        ctx.nudge()
    own_page = f"/forms/{form_id}/confirmed"
    return RedirectResponse(
        spec.confirmed_redirect or _linked(own_page, language, request, pages, form_id), status_code=303
    )


def _ask_owner(
    conn: Any,
    form_id: str,
    spec: FormSettings,
    address: str,
    lead: tuple[int | None, str | None],
    new_status: str | None,
    act: ConsentAct,
    at: datetime,
    language: str,
) -> None:
    """A confirmation email for this post, unless one still valid is waiting or a limit is reached.
    `lead` is the address's (id, consent status), (None, None) for a new address, which is made with
    `new_status` and the page's `language` (the confirmation email is written in it). The post's fields
    wait in the request record: nothing of an existing lead changes (its language neither), and a new
    lead has no fields yet, so the confirmation shows nothing the poster typed."""
    lead_id, current = lead
    if lead_id is not None:
        last = consents.latest_request(conn, lead_id, form_id)
        if last is not None and not signup.confirmation_due(
            last.at, consents.is_confirmed(conn, lead_id, last.id), at, timedelta(hours=spec.confirm_within_hours)
        ):
            return  # the link sent before still works
    limits = signup.ConfirmationLimits(
        spec.confirmations_per_address, spec.confirmations_per_ip, timedelta(hours=spec.limit_window_hours)
    )
    since = at - limits.window
    refusal = signup.confirmation_refusal(
        consents.confirmations_to(conn, lead_id, since) if lead_id is not None else 0,
        consents.confirmations_from(conn, act.ip, since),
        limits,
    )
    if refusal is not None:
        # Answered like any other post: the poster learns nothing about the address.
        log.warning("form %s: post from client %s sends no confirmation: %s", form_id, act.ip or "unknown", refusal)
        return
    status = (current, current)
    if lead_id is None:
        made = new_status or "pending"
        lead_id = store.create_lead(conn, address, consent=made, consent_source=act.source, now=at)
        if lead_id is None:  # the same address, posted at the same instant: that post's link goes
            log.info("form %s: a concurrent post made this lead first; this one changes nothing", form_id)
            return
        store.set_language(conn, lead_id, language, at)
        status = (None, made)
    request_id = consents.record(conn, lead_id, act, at, status)
    consents.queue_confirmation(conn, lead_id, form_id, request_id, spec.confirm_template, at)


def _emit(
    conn: Any, lead_id: int, form_id: str, spec: FormSettings, record_id: int, fields: dict[str, Any], at: datetime
) -> None:
    """The event the funnel's entry trigger listens to. Its id is the consent record's: a second click
    on the same confirmation link, or a replayed post, cannot enter the lead twice."""
    event_id = engine_id("form", form_id, record_id)
    event = store.NewEvent(event_id, lead_id, spec.event, at, {**fields, "form": form_id}, "form")
    store.record_events(conn, [event], now=at)


def _check(
    values: dict[str, str], spec: FormSettings, texts: PageTexts | None = None
) -> tuple[str | None, dict[str, str]]:
    """The normalised address and the errors by field (shown next to each field), in the page's language
    (`texts`; English without)."""
    _ = texts or catalogues().texts(None)
    errors: dict[str, str] = {}
    address: str | None = None
    raw = values.get("email", "")
    if not raw:
        errors["email"] = _("Please enter your email address.")
    else:
        try:
            address = addresses.normalise(raw)
        except AddressError as exc:
            # The reason is the address rules' own, in English: a translation would repeat each rule.
            errors["email"] = _("Please check your email address: {reason}", reason=exc.reason)
    if spec.consent_required and values.get("consent", "").lower() not in TICKED:
        errors["consent"] = _("Please tick the box so that we may email you.")
    for name, value in values.items():
        if name == "email":  # the address rules bound its length, as at every other entry
            continue
        if len(value) > MAX_FIELD:
            errors[name] = _("Please keep this under {count} characters.", count=MAX_FIELD)
        elif storable.text_problem(value) is not None:  # a NUL: no browser sends it, no database holds it
            errors[name] = _("Please remove the invisible characters from this field.")
    return address, errors


def _plain_form(context: dict[str, Any], _: PageTexts) -> str:
    form, values, errors = context["form"], context["values"], context["errors"]

    def error(name: str) -> str:
        return f'<p role="alert" style="color:#b00">{escape(errors[name])}</p>' if name in errors else ""

    others = "".join(
        f'<p role="alert" style="color:#b00">{html.escape(name)}: {escape(text)}</p>'
        for name, text in errors.items()
        if name not in ("email", "consent")
    )
    # Named first: the message extractor reads calls, not calls inside an f-string.
    name_label, email_label, trap_label, button = _("Name"), _("Email"), _("Leave this empty"), _("Send it to me")
    return (
        f'{others}<form method="post" action="{html.escape(form["action"])}">'
        f'<p><label>{name_label} <input name="name" value="{html.escape(values.get("name", ""))}"></label></p>'
        f'<p><label>{email_label} <input name="email" type="email" required '
        f'value="{html.escape(values.get("email", ""))}"></label></p>{error("email")}'
        f'<p><label><input type="checkbox" name="consent" value="yes"> {html.escape(form["consent_text"])}</label></p>'
        f"{error('consent')}"
        f'<p style="position:absolute;left:-10000px" aria-hidden="true"><label>{trap_label} '
        f'<input name="{html.escape(form["honeypot"])}" tabindex="-1" autocomplete="off"></label></p>'
        f'<input type="hidden" name="{signup.ZONE_FIELD}" value="">'
        f'<input type="hidden" name="{LANGUAGE_FIELD}" value="{html.escape(form["language"])}">'
        f'<p><button type="submit">{button}</button></p></form>'
        f'<script src="{ZONE_SCRIPT_URL}" defer></script>'
    )
