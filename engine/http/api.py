"""The HTTP app: event ingestion for other systems (`/v1`, API keys), lead-magnet forms, and the pages
leads reach from their emails. An adapter: it validates, commits, and answers; what an event does to a
lead's journey is the worker's business, on its next tick."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.core.bounce_outcome import Outcome
from engine.core.redaction import safe_path
from engine.http import api_v1, dashboard, forms, hooks, pages, provider_hooks
from engine.http import deps as http_deps
from engine.http.deps import context_of
from engine.http.http_context import HttpContext
from engine.http.lead_headers import LeadFacingHeaders
from engine.http.metrics import Metrics
from engine.http.request_bodies import RequestBodies
from engine.settings import Settings
from engine.store import bounces
from engine.store.database import describe_failure

log = logging.getLogger("engine.api")
# What a 503 asks the caller to wait: about a tick, by when a freed disk or a restarted server is back.
RETRY_AFTER_S = 5


# The app's own routes: for probes and Prometheus, not in the OpenAPI document.
router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _metrics(request: Request) -> Metrics:
    registry: Metrics = request.app.state.metrics
    return registry


@router.get("/metrics")
def prometheus(registry: Annotated[Metrics, Depends(_metrics)]) -> Response:
    """Prometheus text format. Counts only: no addresses, no tokens."""
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)


# Every router of the app, in the order their routes are matched.
ROUTERS = (router, api_v1.router, pages.router, hooks.router, forms.router, dashboard.router, provider_hooks.router)
_EVERY_ROUTE = [r for each in ROUTERS for r in each.routes if isinstance(r, APIRoute)]


def create_app(
    settings: Settings,
    engine: sa.Engine,
    clock: Callable[[], datetime] | None = None,
    nudge: Callable[[], None] | None = None,
    metrics: Metrics | None = None,
    record_outcomes: Callable[[list[Outcome]], None] | None = None,
) -> FastAPI:
    """`nudge` is called after a commit that gives the engine work (see `HttpContext.nudge`); `metrics`
    is the process's registry (`funnel run` times its ticks in it). The routers are the modules'
    own; what they need of this app reaches them through its state (`engine.http.deps`). `record_outcomes`
    takes the bounces and complaints of provider webhooks; by default the store's one writer of them."""
    ctx = HttpContext(settings, engine, clock or (lambda: datetime.now(UTC)), nudge or (lambda: None))
    app = FastAPI(title="funnel engine", version="1", docs_url="/docs", redoc_url=None)
    registry = metrics or Metrics()
    registry.watch(engine, ctx.now)
    app.state.metrics = registry
    http_deps.install(app.state, ctx)
    forms.install(app.state, ctx)
    dashboard.install(app.state, ctx)
    record = record_outcomes or _recorder(ctx)
    provider_hooks.install(app, provider_hooks.ProviderHooks.of(settings.bounces.providers, ctx.now, record))
    for each in ROUTERS:
        app.include_router(each)
    app.add_exception_handler(sa.exc.DBAPIError, database_down)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(RequestBodies, limits=settings.http.body_limits)
    app.add_middleware(LeadFacingHeaders)  # outermost: a 413 of a lead-facing page gets its headers too
    return app


def _recorder(ctx: HttpContext) -> Callable[[list[Outcome]], None]:
    def record(outcomes: list[Outcome]) -> None:
        with ctx.engine.begin() as conn:
            bounces.record_outcomes(conn, outcomes, ctx.now(), ctx.settings.bounces, ctx.settings.signing_keys)

    return record


async def database_down(request: Request, exc: Exception) -> Response:
    # A full disk or a server restarting: the caller should send the same request again (event ids make
    # that safe), so 503 with Retry-After, and ops get the cause in words, not a traceback per request.
    problem = describe_failure(context_of(request).engine, exc)
    if problem is None:
        raise exc
    log.warning("%s %s: %s", request.method, safe_path(request.url.path), problem)
    return JSONResponse(
        status_code=503,
        content={"detail": "the database cannot take this request now; send it again later"},
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # the class it is registered for
    if exc.status_code == 405:
        # RFC 9110: `Allow` lists every method of the resource. Starlette names only those of the first
        # route matching the path, and GET, PUT and DELETE of one resource are three routes here.
        path = request.url.path
        methods = {m for r in _EVERY_ROUTE if r.path_regex.match(path) for m in r.methods or ()}
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
    return await http_exception_handler(request, exc)
