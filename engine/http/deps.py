"""How a route reaches the app it serves. The routers are module-level objects that any number of apps
include (a process serves one; the tests start many): what differs from one app to another (settings,
database, clock) is kept on the app's state by `engine.api.create_app` and handed to each handler as a
FastAPI dependency, never captured when a router is built.

Also the route class every JSON router shares, whose 422 answer survives any refused value."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.datastructures import State

from engine.http.http_context import HttpContext


def install(state: State, ctx: HttpContext) -> None:
    """Puts the app's context where `context_of` finds it."""
    state.http = ctx


def context_of(request: Request) -> HttpContext:
    """The context of the app serving `request`, for code that runs before the handler's dependencies
    are solved (a route class checking a key or a signature before the body is read)."""
    ctx: HttpContext = request.app.state.http
    return ctx


async def context(request: Request) -> HttpContext:
    """The dependency. A coroutine, so that FastAPI solves it on the event loop, not in a thread."""
    return context_of(request)


# A handler's parameter: `ctx: Context`.
Context = Annotated[HttpContext, Depends(context)]


class JsonSafeRoute(APIRoute):
    """FastAPI's 422 answer repeats each refused value, and Python's JSON parser reads values its encoder
    then refuses (NaN, Infinity, nesting a thousand deep, a lone surrogate from bytes that are not UTF-8):
    such a value is left out of the answer rather than turning the 422 into a dropped connection."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return JSONResponse(status_code=422, content={"detail": [_writable(e) for e in exc.errors()]})

        return route


def _writable(error: Any) -> Any:
    try:
        encoded = jsonable_encoder(error)
        json.dumps(encoded, allow_nan=False, ensure_ascii=False).encode("utf-8")  # as the answer is written
        return encoded
    except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError is a ValueError
        return jsonable_encoder({k: v for k, v in error.items() if k != "input"})
