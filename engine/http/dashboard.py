"""The ops dashboard under `/ops`, behind a login (`engine.ops_auth`): where leads are in each funnel and
how many go on (the figures of `funnel report`), transitions per day, a live feed of transitions and
email outcomes, lead search and a lead's timeline (invariant 9: why is this lead in this stage?), and the
outbox's `unknown` messages, for an operator to decide (invariant 3: never resent blindly), and the
bounce and complaint reports kept for an operator because they matched no message or could not be classed.

Server-rendered pages (Jinja, autoescaped) with one small script and one style sheet, both served from
here: nothing is fetched from another host, so the dashboard works where the internet is not. Charts
are inline SVG drawn on the server. The live feed is server-sent events, polled from the database.

    GET  /ops/login, POST /ops/login, POST /ops/logout
    GET  /ops/                  funnels: leads per stage, conversion, time in stage, emails; per day
    GET  /ops/feed              the live feed (the page), /ops/feed/stream (the events)
    GET  /ops/leads?q=PREFIX    lead search; /ops/leads/{id}: the lead's timeline
    GET  /ops/outbox            `unknown` messages; POST /ops/outbox/{id}: mark as sent, or send again
    GET  /ops/bounces           reports kept for an operator (`funnel bounces unknown`); /ops/bounces/{id}: one,
                                with its raw message as text (invariant 15: never guessed, never deleted)
    GET  /ops/funnels/{id}/map  the funnel's customer journey map with live figures (`funnel map --live`)
    GET  /ops/experiments       each experiment's arms, lift over the control, state and decision (the figures
                                of `funnel report` and `funnel experiment show`)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.datastructures import State

from engine.core import ops_auth
from engine.core.durations import stay_in_words
from engine.core.ops_auth import Session, Sessions
from engine.http.deps import Context
from engine.http.http_context import HttpContext
from engine.mail.templates import Sender, TemplateLibrary
from engine.store import bounces, dashboard_data, domain_alarms, ops_sessions, report_queries
from engine.store.database import connect_read_only
from engine.views import experiment_figures, lead_timeline, report
from engine.views.journey_map import html as journey_map_html
from engine.views.journey_map import model as journey_map
from engine.views.journey_map.sources import read_live, sample_subjects, templates_of, translations_of

log = logging.getLogger("engine.dashboard")
T = TypeVar("T")

HERE = Path(__file__).parent
STATIC = HERE / "static"
ASSETS = {"ops.css": "text/css; charset=utf-8", "ops.js": "text/javascript; charset=utf-8"}
POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15.0
DAYS = 30
FIGURES_MIN_AGE_S = 5.0
KEPT_COUNT_MIN_AGE_S = 1.0
KEPT_PER_PAGE = 50
RAW_SHOWN = 64 * 1024  # bytes of a kept report's raw message a page shows; the rest stays in the database

# Everything from this origin, nothing inline that could run: a page showing lead data cannot be made
# to run a script, and it cannot be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# The journey map is one self-contained page (the same as `funnel map` writes): its inline style sheet is
# allowed by its hash, and still no script at all.
MAP_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": SECURITY_HEADERS["Content-Security-Policy"]
    + f"; style-src 'self' '{journey_map_html.STYLE_HASH}'",
}


# --------------------------------------------------------------------------------------------------
# Charts: geometry for the SVG the templates draw
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: int
    x: float
    y: float
    width: float
    height: float
    note: str = ""


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bars: Sequence[Bar]
    top: int = 0  # the largest value, for an axis label


BAR_H, STEP_GAP, LABEL_W, COUNT_W, FUNNEL_W = 30, 26, 170, 90, 620


def funnel_chart(stages: Sequence[report.StageFigures]) -> Chart:
    """One centred bar per stage, as wide as the leads in it now; the conversion to the next stage is
    written in the gap below it."""
    top = max((s.now for s in stages), default=0)
    room = FUNNEL_W - LABEL_W - COUNT_W
    bars = []
    for i, s in enumerate(stages):
        width = room * s.now / top if top else 0.0
        if s.now and width < 2:
            width = 2.0
        note = ""
        if s.conversion is not None and s.next_stage is not None:
            note = f"{s.conversion:.0%} of the {s.reached} who reached it went on to {s.next_stage}"
        bars.append(
            Bar(s.stage, s.now, LABEL_W + (room - width) / 2, i * (BAR_H + STEP_GAP), round(width, 1), BAR_H, note)
        )
    return Chart(FUNNEL_W, max(len(stages) * (BAR_H + STEP_GAP) - STEP_GAP, BAR_H), bars, top)


DAY_W, DAY_GAP, DAYS_H = 18, 4, 120


def days_chart(per_day: Mapping[str, int], today: datetime, days: int = DAYS) -> Chart:
    """One bar per UTC day, the last `days` days up to `today`, oldest first."""
    first = (today - timedelta(days=days - 1)).date()
    labels = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    top = max((per_day.get(d, 0) for d in labels), default=0)
    bars = []
    for i, day in enumerate(labels):
        n = per_day.get(day, 0)
        height = DAYS_H * n / top if top else 0.0
        if n and height < 2:
            height = 2.0
        bars.append(Bar(day, n, i * (DAY_W + DAY_GAP), DAYS_H - height, DAY_W, round(height, 1)))
    return Chart(days * (DAY_W + DAY_GAP) - DAY_GAP, DAYS_H, bars, top)


# --------------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


class _Views:
    """Our own templates (not the marketer's: no sandbox needed), autoescaped; an undefined name is an
    error, not an empty string."""

    def __init__(
        self, alarms: Callable[[], Sequence[domain_alarms.Alarm]] = tuple, kept: Callable[[], int] = int
    ) -> None:
        self.alarms = alarms  # shown as a banner on every page of a signed-in operator
        self.kept = kept  # the count of kept bounce reports, in the navigation
        self.env = Environment(
            loader=FileSystemLoader(str(HERE / "templates_ops")), autoescape=True, undefined=StrictUndefined
        )
        self.env.filters.update(
            when=_when,
            share=_share,
            duration=stay_in_words,
            lift=experiment_figures.lift_words,
            interval=experiment_figures.interval_words,
        )
        # Asset URLs carry a hash of their content: cached for long, never stale after an upgrade.
        self.env.globals["asset"] = {
            name: f"/ops/static/{name}?v={hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]}"
            for name in ASSETS
        }

    def page(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("session", None)
        context["alarms"] = self.alarms() if context["session"] is not None else ()
        if "kept_reports" not in context:
            context["kept_reports"] = self.kept() if context["session"] is not None else 0
        return HTMLResponse(self.env.get_template(name).render(context), status_code, headers=SECURITY_HEADERS)


@dataclass(frozen=True)
class _Figures:
    at: datetime
    funnels: Sequence[report.FunnelReport]
    names: Mapping[str, str]
    per_day: Mapping[str, int]


class _Recent(Generic[T]):
    """What `read` gives, read again only once older than twenty times what reading it cost (and at
    least `min_age` seconds). The overview's figures count every enrollment and transition (about a
    second per 20,000 leads on SQLite), and the navigation's count of kept reports every bounce report:
    a dashboard left open, or opened by several people, must not keep the database busy counting. One
    reader at a time; the others wait for its value."""

    def __init__(self, read: Callable[[], T], min_age: float = FIGURES_MIN_AGE_S) -> None:
        self._read = read
        self._min_age = min_age
        self._lock = threading.Lock()
        self._value: T | None = None
        self._until = 0.0

    def get(self) -> T:
        with self._lock:
            started = time.monotonic()
            if self._value is None or started >= self._until:
                self._value = self._read()
                cost = time.monotonic() - started
                self._until = time.monotonic() + max(self._min_age, 20 * cost)
            return self._value


def _cursor(text: str | None) -> tuple[int, int] | None:
    """A feed position as the stream writes it into event ids: 'transition id.outbox id'."""
    try:
        transitions, emails = (int(part) for part in (text or "").split("."))
    except ValueError:
        return None
    return (transitions, emails) if transitions >= 0 and emails >= 0 else None


def _seen_json(item: report_queries.TransitionSeen | report_queries.EmailSeen) -> tuple[str, str]:
    """An SSE event (type, data) for one feed item. Addresses, stages and causes; no lead attributes."""
    at = item.at.isoformat().replace("+00:00", "Z")
    if isinstance(item, report_queries.TransitionSeen):
        data: dict[str, Any] = {
            "id": item.id,
            "at": at,
            "lead": item.lead,
            "funnel": item.funnel,
            "from": item.from_stage,
            "to": item.to_stage,
            "cause": item.cause_kind,
            "ref": item.cause_ref,
            "event": item.event,
            "exit_reason": item.exit_reason,
        }
        return "transition", json.dumps(data)
    data = {
        "id": item.id,
        "at": at,
        "lead": item.lead,
        "funnel": item.funnel,
        "step": item.step,
        "template": item.template,
        "status": item.status,
        "detail": item.detail,
    }
    return "email", json.dumps(data)


def _sse(event: str, data: str, event_id: str | None = None) -> str:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head + "".join(f"data: {line}\n" for line in data.splitlines() or [""]) + "\n"


@dataclass(frozen=True, slots=True)
class _SignIn:
    """A sign-in attempt's outcome: a session's cookie, a lockout's end, or neither (a wrong name or
    password)."""

    cookie: str | None = None
    locked_until: datetime | None = None


# --------------------------------------------------------------------------------------------------
# The app's dashboard state, and the dependencies every page is built on
# --------------------------------------------------------------------------------------------------


class OpsDesk:
    """What the dashboard keeps for as long as its app runs: the session signer, its own templates, the
    overview's figures, and the journey maps' subjects. One per app (`install`), handed to a handler by
    the `Desk` dependency."""

    def __init__(self, ctx: HttpContext) -> None:
        self.ctx = ctx
        self.ops = ctx.settings.ops
        self.sessions = Sessions(ctx.settings.secret_key.get_secret_value(), self.ops)
        # The count of kept reports in the navigation; `/ops/bounces` itself counts afresh.
        self.kept_count = _Recent(lambda: _kept_count(ctx), KEPT_COUNT_MIN_AGE_S)
        self.views = _Views(lambda: _alarms(ctx), self.kept_count.get)
        self.cookie = ops_auth.cookie_options(ctx.settings.base_url)
        # Checking a password takes a tenth of a second of CPU on purpose: a flood of sign-ins may queue
        # for these two threads, but not take the thread pool every other route of the app runs in. The
        # lockout is checked in the same turn, so attempts sent at once cannot all pass it before any is
        # counted.
        self.password_checks = anyio.CapacityLimiter(2)
        self.figures: _Recent[_Figures] = _Recent(lambda: _read_figures(ctx))
        self.experiments: _Recent[_Experiments] = _Recent(lambda: _read_experiments(ctx))
        self.library = TemplateLibrary(ctx.settings.emails_dir)
        self.subjects_of: dict[str, dict[str, str]] = {}  # funnel version -> subjects (rendering them takes a while)
        self.translations_of: dict[str, dict[str, tuple[str, ...]]] = {}  # funnel version -> template -> languages

    def session_of(self, request: Request) -> Session | None:
        """The request's session: a cookie that reads well, for a session the database still holds open
        (a sign-out on any process of the app ends it). Reads the database: call it off the event loop."""
        now = self.ctx.now()
        session = self.sessions.read(request.cookies.get(ops_auth.SESSION_COOKIE), now)
        if session is None:
            return None
        with connect_read_only(self.ctx.engine) as conn:
            return session if ops_sessions.is_open(conn, session.id, now) else None


def _alarms(ctx: HttpContext) -> list[domain_alarms.Alarm]:
    with connect_read_only(ctx.engine) as conn:
        return domain_alarms.active(conn, ctx.now())


def _kept_count(ctx: HttpContext) -> int:
    with connect_read_only(ctx.engine) as conn:
        return bounces.kept_count(conn)


def install(state: State, ctx: HttpContext) -> None:
    """The app's `OpsDesk`, where the `Desk` dependency finds it."""
    state.ops_desk = OpsDesk(ctx)


async def _desk(request: Request) -> OpsDesk:
    desk: OpsDesk = request.app.state.ops_desk
    return desk


Desk = Annotated[OpsDesk, Depends(_desk)]


def signed_in(request: Request, desk: Desk) -> Session:
    """A FastAPI dependency for pages: the session, or a redirect to the login page."""
    session = desk.session_of(request)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(status_code=303, headers={"Location": f"/ops/login?next={quote(target, safe='')}"})
    return session


def streaming(request: Request, desk: Desk) -> Session:
    """For the event stream: a redirect to an HTML page would only confuse EventSource."""
    session = desk.session_of(request)
    if session is None:
        raise HTTPException(status_code=401)
    return session


async def posted(request: Request, desk: Desk) -> tuple[Session, Mapping[str, str]]:
    """For POSTs: a session, the session's CSRF token in the form, and no foreign Origin; 403 else."""
    session = await anyio.to_thread.run_sync(signed_in, request, desk)
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if ops_auth.foreign_origin(request.headers.get("origin"), request.headers.get("host")):
        raise HTTPException(status_code=403, detail="cross-site request refused")
    if not ops_auth.same_token(session.csrf, fields.get("csrf")):
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token: reload the page and try again")
    return session, fields


PageSession = Annotated[Session, Depends(signed_in)]
StreamSession = Annotated[Session, Depends(streaming)]
PostedForm = Annotated[tuple[Session, Mapping[str, str]], Depends(posted)]

router = APIRouter(prefix="/ops", include_in_schema=False)


# --------------------------------------------------------------------------------------------------
# Login
# --------------------------------------------------------------------------------------------------


def _login_page(desk: OpsDesk, next_url: str, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    nonce = ops_auth.new_login_nonce()
    users = bool(desk.ops.users)
    response = desk.views.page("login.html", status_code, next=next_url, nonce=nonce, error=error, users=users)
    response.set_cookie(ops_auth.LOGIN_COOKIE, nonce, max_age=ops_auth.LOGIN_COOKIE_SECONDS, **desk.cookie)
    return response


def _try_sign_in(desk: OpsDesk, name: str, password: str, client: str | None, now: datetime) -> _SignIn:
    """One sign-in attempt, run under the password checks' limiter with its lockout check first, so
    that attempts sent all at once are judged a few at a time against the counts of those before
    them. A locked name or client is refused before its password is checked, alike for every name."""
    counted = ops_auth.counted(name, client)
    engine = desk.ctx.engine
    with connect_read_only(engine) as conn:
        until = ops_sessions.locked_until(conn, counted, now)
    if until is not None:
        return _SignIn(locked_until=until)
    if not ops_auth.check_password(desk.ops, name, password):
        with engine.begin() as conn:
            started = ops_sessions.count_failure(conn, counted, now)
        for key, ends, failures in started:  # once per lockout; the attempts it refuses are not logged
            when = ends.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            log.warning("ops sign-in locked for %s until %s after %d failed sign-ins", key.shown, when, failures)
        return _SignIn()
    cookie, session = desk.sessions.issue(name, now)
    with engine.begin() as conn:
        ops_sessions.clear_failures(conn, counted)
        ops_sessions.start(conn, session, now)
    return _SignIn(cookie=cookie)


@router.get("/login")
def login_form(request: Request, desk: Desk, next: str | None = None) -> Response:
    target = ops_auth.safe_next(next)
    if desk.session_of(request) is not None:
        return RedirectResponse(target, status_code=303)
    return _login_page(desk, target)


@router.post("/login")
async def login(request: Request, desk: Desk) -> Response:
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    target = ops_auth.safe_next(fields.get("next"))
    if ops_auth.foreign_origin(request.headers.get("origin"), request.headers.get("host")):
        raise HTTPException(status_code=403, detail="cross-site request refused")
    expected = request.cookies.get(ops_auth.LOGIN_COOKIE)
    if expected is None or not ops_auth.same_token(expected, fields.get("nonce")):
        return _login_page(desk, target, "The sign-in form had expired (or cookies are off). Please try again.", 403)
    name, password = fields.get("name", "").strip(), fields.get("password", "")
    now = desk.ctx.now()
    client = request.client.host if request.client else None
    outcome = await anyio.to_thread.run_sync(
        _try_sign_in, desk, name, password, client, now, limiter=desk.password_checks
    )
    if outcome.locked_until is not None:
        wait = ops_auth.wait_seconds(outcome.locked_until, now)
        refused = _login_page(desk, target, f"Too many failed sign-ins. Try again in {ops_auth.wait_words(wait)}.", 429)
        refused.headers["Retry-After"] = str(wait)
        return refused
    if outcome.cookie is None:
        log.info("ops sign-in refused for %r", name[:64])
        return _login_page(desk, target, "Wrong name or password.", 401)
    log.info("ops sign-in: %s", name)
    response = RedirectResponse(target, status_code=303)
    max_age = int(desk.ops.session_hours * 3600)
    response.set_cookie(ops_auth.SESSION_COOKIE, outcome.cookie, max_age=max_age, **desk.cookie)
    response.delete_cookie(ops_auth.LOGIN_COOKIE, path=ops_auth.COOKIE_PATH)
    return response


@router.post("/logout")
def logout(post: PostedForm, ctx: Context) -> Response:
    """Ends the session in the database, not only in this browser: a copy of the cookie opens
    nothing afterwards."""
    session, _ = post
    with ctx.engine.begin() as conn:
        ops_sessions.end(conn, session.id, ctx.now())
    log.info("ops sign-out: %s", session.user)
    response = RedirectResponse("/ops/login", status_code=303)
    response.delete_cookie(ops_auth.SESSION_COOKIE, path=ops_auth.COOKIE_PATH)
    return response


# --------------------------------------------------------------------------------------------------
# Overview
# --------------------------------------------------------------------------------------------------


def _read_figures(ctx: HttpContext) -> _Figures:
    now = ctx.now()
    since = datetime.combine((now - timedelta(days=DAYS - 1)).date(), datetime.min.time(), now.tzinfo)
    with connect_read_only(ctx.engine) as conn:
        rows = report_queries.read_rows(conn, report_queries.Scope())
        funnels = report.build(rows, report_queries.layouts(conn, {r.funnel for r in rows.stage_counts}))
        names = dashboard_data.funnel_names(conn)
        per_day = dashboard_data.transitions_per_day(conn, since)
    return _Figures(now, funnels, names, per_day)


@router.get("/")
def overview(session: PageSession, desk: Desk) -> HTMLResponse:
    found = desk.figures.get()
    with connect_read_only(desk.ctx.engine) as conn:
        counts = dashboard_data.outbox_counts(conn)
    charts = [(f, found.names.get(f.funnel, f.funnel), funnel_chart(f.stages)) for f in found.funnels]
    return desk.views.page(
        "overview.html",
        session=session,
        funnels=charts,
        days=days_chart(found.per_day, found.at),
        total_days=sum(found.per_day.values()),
        counts=counts,
        now=found.at,
    )


# --------------------------------------------------------------------------------------------------
# Live feed
# --------------------------------------------------------------------------------------------------


@router.get("/feed")
def feed_page(session: PageSession, desk: Desk, funnel: str | None = None) -> HTMLResponse:
    stream = "/ops/feed/stream" + (f"?funnel={quote(funnel, safe='')}" if funnel else "")
    return desk.views.page("feed.html", session=session, stream=stream, funnel=funnel)


@router.get("/feed/stream")
async def feed_stream(
    request: Request, session: StreamSession, desk: Desk, funnel: str | None = None
) -> StreamingResponse:
    """Server-sent events: `ready` (with the starting position as its id), then a `transition` or
    `email` event for each new row. The last event of each batch carries the position as its id, so
    a browser that reconnects (EventSource does, with Last-Event-ID) resumes where it was. A stream
    ends after `feed_stream_seconds`, when the browser goes away, or when the session expires: a
    server shutting down never waits on it for longer than that."""
    feed = report_queries.Feed(funnel=funnel)
    start = _cursor(request.headers.get("last-event-id") or request.query_params.get("from"))
    if start is not None:
        feed.transitions, feed.emails = start
    headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}  # nginx: pass each event on at once
    events = _feed_events(desk, request, session, feed)
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _feed_events(
    desk: OpsDesk, request: Request, session: Session, feed: report_queries.Feed
) -> AsyncIterator[str]:
    def poll() -> list[report_queries.TransitionSeen | report_queries.EmailSeen]:
        with connect_read_only(desk.ctx.engine) as conn:
            return feed.poll(conn)

    ends = anyio.current_time() + desk.ops.feed_stream_seconds
    quiet_since = anyio.current_time()
    first = await anyio.to_thread.run_sync(poll)
    yield "retry: 1000\n\n"
    yield _sse("ready", json.dumps({"user": session.user}), f"{feed.transitions}.{feed.emails}")
    pending = first
    while True:
        if pending:
            position = f"{feed.transitions}.{feed.emails}"
            for i, item in enumerate(pending):
                kind, data = _seen_json(item)
                yield _sse(kind, data, position if i == len(pending) - 1 else None)
            quiet_since = anyio.current_time()
        elif anyio.current_time() - quiet_since > KEEP_ALIVE_SECONDS:
            yield ": still here\n\n"  # a comment: proxies keep an idle stream open
            quiet_since = anyio.current_time()
        await anyio.sleep(POLL_SECONDS)
        if (
            anyio.current_time() >= ends
            or await request.is_disconnected()
            or await anyio.to_thread.run_sync(desk.session_of, request) is None
        ):
            return
        pending = await anyio.to_thread.run_sync(poll)


# --------------------------------------------------------------------------------------------------
# Leads
# --------------------------------------------------------------------------------------------------


@router.get("/leads")
def leads(session: PageSession, desk: Desk, q: str = "") -> Response:
    q = q.strip()
    found = []
    if q:
        with connect_read_only(desk.ctx.engine) as conn:
            found = dashboard_data.search_leads(conn, q)
        if len(found) == 1 and found[0].email == q.lower():
            return RedirectResponse(f"/ops/leads/{found[0].id}", status_code=303)
    return desk.views.page("leads.html", session=session, q=q, found=found)


@router.get("/leads/{lead_id}")
def lead(lead_id: int, session: PageSession, desk: Desk) -> HTMLResponse:
    with connect_read_only(desk.ctx.engine) as conn:
        address = dashboard_data.lead_email(conn, lead_id)
        story = lead_timeline.read(conn, address) if address is not None else None
        names = dashboard_data.funnel_names(conn)
    if story is None:
        raise HTTPException(status_code=404)
    return desk.views.page("lead.html", session=session, story=story, names=names)


# --------------------------------------------------------------------------------------------------
# Outbox
# --------------------------------------------------------------------------------------------------


@router.get("/outbox")
def outbox_page(session: PageSession, desk: Desk, done: int | None = None, decision: str | None = None) -> HTMLResponse:
    with connect_read_only(desk.ctx.engine) as conn:
        unknown = dashboard_data.messages(conn, ("unknown",))
        counts = dashboard_data.outbox_counts(conn)
    return desk.views.page("outbox.html", session=session, unknown=unknown, counts=counts, done=done, decision=decision)


@router.post("/outbox/{message_id}")
def decide(message_id: int, post: PostedForm, ctx: Context) -> Response:
    session, fields = post
    decision = fields.get("decision", "")
    if decision not in dashboard_data.DECISIONS:
        raise HTTPException(status_code=400, detail="decision must be 'sent' or 'resend'")
    with ctx.engine.begin() as conn:
        changed = dashboard_data.decide(conn, message_id, decision, session.user, ctx.now())
    if changed:
        log.info("ops: %s %s message %d", session.user, dashboard_data.DECISIONS[decision], message_id)
        if decision == "resend":
            ctx.nudge()
    outcome = decision if changed else "stale"
    return RedirectResponse(f"/ops/outbox?done={message_id}&decision={outcome}", status_code=303)


# --------------------------------------------------------------------------------------------------
# Kept bounce reports: read only (never deleted, never guessed)
# --------------------------------------------------------------------------------------------------

# Bytes that would not show as themselves, or could make the text read otherwise than it is: C0 controls
# but tab and line ends, DEL, C1 controls, and Unicode's direction overrides and isolates.
_HIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def raw_text(raw: bytes) -> str:
    """A raw message as text to show: read as UTF-8 (as 8-bit mail mostly is, and ASCII is); a byte that
    is not UTF-8 is written `\\xNN`, and so is every character that would not show as itself."""
    text = raw.decode("utf-8", errors="backslashreplace")
    return _HIDDEN.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


@router.get("/bounces")
def kept_reports(session: PageSession, desk: Desk, page: Annotated[int, Query(ge=1)] = 1) -> HTMLResponse:
    with connect_read_only(desk.ctx.engine) as conn:
        total = bounces.kept_count(conn)
        reports = bounces.kept(conn, KEPT_PER_PAGE, (page - 1) * KEPT_PER_PAGE)
    pages = max(1, math.ceil(total / KEPT_PER_PAGE))
    return desk.views.page(
        "bounces.html",
        session=session,
        reports=reports,
        total=total,
        kept_reports=total,
        page=page,
        pages=pages,
        first=(page - 1) * KEPT_PER_PAGE + 1,
        last=(page - 1) * KEPT_PER_PAGE + len(reports),
    )


@router.get("/bounces/{report_id}")
def kept_report(report_id: int, session: PageSession, desk: Desk) -> HTMLResponse:
    with connect_read_only(desk.ctx.engine) as conn:
        detail = bounces.kept_report(conn, report_id, RAW_SHOWN)
    if detail is None:
        raise HTTPException(status_code=404, detail=f"no kept bounce report {report_id}")
    return desk.views.page("bounce.html", session=session, detail=detail, raw=raw_text(detail.raw_head))


# --------------------------------------------------------------------------------------------------
# Journey map
# --------------------------------------------------------------------------------------------------


@router.get("/funnels/{funnel_id}/map")
def funnel_map(funnel_id: str, session: PageSession, desk: Desk) -> HTMLResponse:
    """The map of the definition the engine runs (the newest published), with the figures of now."""
    with connect_read_only(desk.ctx.engine) as conn:
        # None too when published by an engine of another shape; `funnel map FILE` still draws it.
        definition = experiment_figures.published(conn, [funnel_id]).get(funnel_id)
        if definition is None:
            raise HTTPException(status_code=404)
        live = read_live(conn, funnel_id, desk.ctx.now())
    subjects = desk.subjects_of.get(definition.version)
    if subjects is None:
        sender = desk.ctx.settings.sender
        who = Sender(sender.name, sender.postal_address, sender.website)
        subjects = desk.subjects_of[definition.version] = sample_subjects(desk.library, templates_of(definition), who)
    translations = desk.translations_of.get(definition.version)
    if translations is None:
        translations = desk.translations_of[definition.version] = translations_of(desk.library, definition)
    page = journey_map_html.render(journey_map.build(definition, subjects, live, translations), back="/ops/")
    return HTMLResponse(page, headers=MAP_HEADERS)


# --------------------------------------------------------------------------------------------------
# Experiments
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Experiments:
    at: datetime
    funnels: Sequence[tuple[str, Sequence[experiment_figures.ExperimentFigures]]]  # (name, its experiments)


def _read_experiments(ctx: HttpContext) -> _Experiments:
    """Counted like the overview's figures, at most every few seconds: each experiment reads its assignments."""
    now = ctx.now()
    with connect_read_only(ctx.engine) as conn:
        names = dashboard_data.funnel_names(conn)
        found = experiment_figures.read_published(conn, names, now)
    return _Experiments(now, [(names[f], found[f]) for f in sorted(found)])


@router.get("/experiments")
def experiments(session: PageSession, desk: Desk) -> HTMLResponse:
    found = desk.experiments.get()
    return desk.views.page(
        "experiments.html",
        session=session,
        funnels=found.funnels,
        now=found.at,
        decided=experiment_figures.decided_words,
    )


# --------------------------------------------------------------------------------------------------
# Assets
# --------------------------------------------------------------------------------------------------


@router.get("/static/{name}")
def asset(name: str) -> Response:
    """The style sheet and the script (no login: they hold nothing secret, and the login page uses
    them). Only these names: no path from the URL reaches the file system."""
    if name not in ASSETS:
        raise HTTPException(status_code=404)
    return FileResponse(
        STATIC / name,
        media_type=ASSETS[name],
        headers={"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"},
    )
