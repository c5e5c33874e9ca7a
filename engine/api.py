"""The HTTP app: event ingestion for other systems (`/v1`, API keys), lead-magnet forms, and the pages
leads reach from their emails. An adapter: it validates, commits, and answers; what an event does to a
lead's journey is the worker's business, on its next tick."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine import api_v1, dashboard, forms, hooks, pages, provider_hooks
from engine.bounce_outcome import Outcome
from engine.database import describe_failure
from engine.http_context import HttpContext
from engine.lead_headers import LeadFacingHeaders
from engine.logs import safe_path
from engine.metrics import Metrics
from engine.request_bodies import RequestBodies
from engine.settings import Settings

log = logging.getLogger("engine.api")
# What a 503 asks the caller to wait: about a tick, by when a freed disk or a restarted server is back.
RETRY_AFTER_S = 5


def create_app(
    settings: Settings,
    engine: sa.Engine,
    clock: Callable[[], datetime] | None = None,
    nudge: Callable[[], None] | None = None,
    metrics: Metrics | None = None,
    record_outcomes: Callable[[list[Outcome]], None] | None = None,
) -> FastAPI:
    """`nudge` is called after a commit that gives the engine work (see `HttpContext.nudge`); `metrics`
    is the process's registry (`funnel run` times its ticks in it); `record_outcomes` takes the bounces
    and complaints of provider webhooks (`engine.provider_hooks`), in one transaction or not at all."""
    ctx = HttpContext(settings, engine, clock or (lambda: datetime.now(UTC)), nudge or (lambda: None))
    app = FastAPI(title="funnel engine", version="1", docs_url="/docs", redoc_url=None)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    registry = metrics or Metrics()
    registry.watch(engine, ctx.now)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        """Prometheus text format. Counts only: no addresses, no tokens."""
        return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)

    provider_hooks.install(app, provider_hooks.ProviderHooks.of(settings.bounces.providers, ctx.now, record_outcomes))
    routers = [api_v1.router(ctx), pages.router(ctx), hooks.router(ctx), forms.router(ctx), dashboard.router(ctx)]
    routers.append(provider_hooks.router)
    for router in routers:
        app.include_router(router)
    every_route = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]

    @app.exception_handler(sa.exc.DBAPIError)
    async def database_down(request: Request, exc: Exception) -> Response:
        # A full disk or a server restarting: the caller should send the same request again (event ids make
        # that safe), so 503 with Retry-After, and ops get the cause in words, not a traceback per request.
        problem = describe_failure(engine, exc)
        if problem is None:
            raise exc
        log.warning("%s %s: %s", request.method, safe_path(request.url.path), problem)
        return JSONResponse(
            status_code=503,
            content={"detail": "the database cannot take this request now; send it again later"},
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # RFC 9110: `Allow` lists every method of the resource. Starlette names only those of the first
            # route matching the path, and GET, PUT and DELETE of one resource are three routes here.
            path = request.url.path
            methods = {m for r in every_route if r.path_regex.match(path) for m in r.methods or ()}
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
        return await http_exception_handler(request, exc)

    app.add_middleware(RequestBodies, limits=settings.http.body_limits)
    app.add_middleware(LeadFacingHeaders)  # outermost: a 413 of a lead-facing page gets its headers too
    return app
