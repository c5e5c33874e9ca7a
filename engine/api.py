"""The HTTP app: event ingestion for other systems (`/v1`, API keys), lead-magnet forms, and the pages
leads reach from their emails. An adapter: it validates, commits, and answers; what an event does to a
lead's journey is the worker's business, on its next tick."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from fastapi import FastAPI

from engine import api_v1, forms, hooks, pages
from engine.http_context import HttpContext
from engine.settings import Settings


def create_app(
    settings: Settings,
    engine: sa.Engine,
    clock: Callable[[], datetime] | None = None,
    nudge: Callable[[], None] | None = None,
) -> FastAPI:
    """`nudge` is called after a commit that gives the engine work (see `HttpContext.nudge`)."""
    ctx = HttpContext(settings, engine, clock or (lambda: datetime.now(UTC)), nudge or (lambda: None))
    app = FastAPI(title="funnel engine", version="1", docs_url="/docs", redoc_url=None)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(api_v1.router(ctx))
    app.include_router(pages.router(ctx))
    app.include_router(hooks.router(ctx))
    app.include_router(forms.router(ctx))
    return app
