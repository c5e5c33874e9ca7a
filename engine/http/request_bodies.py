"""Request bodies: every route takes at most so many bytes (`http.body_limits`, by kind of route), and
the limit holds before anything is proven. The scheduler, the mailer and the webhook sender share the
process with the HTTP app, so a stranger's body must not be able to take their memory.

- A `Content-Length` over the limit is answered 413 from the headers alone: none of the body is read.
- A body that comes in chunks is counted as it streams in; the read that passes the limit ends the
  request with 413, so no more than the limit (and one chunk) is ever held.
- A client that goes away mid-body ends its request quietly: one line in the log, no traceback.

Pure ASGI, like `engine.http.lead_headers`: one place for every route, whatever reads the body (FastAPI's
JSON and forms, the signed hooks, the unsubscribe page).
"""

from __future__ import annotations

import logging

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.settings import BodyLimits

log = logging.getLogger("engine.api")


def body_limit(limits: BodyLimits, path: str) -> tuple[str, int]:
    """Which limit a path falls under, by its setting's name, and how many bytes that is."""
    if path == "/v1/events" or path.startswith("/hooks/"):
        return "events", limits.events
    if path.startswith("/v1/"):
        return "api", limits.api
    return "forms", limits.forms


def _too_large(limit: int) -> str:
    return f"the request body is larger than this route takes ({limit:,} bytes)"


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            # The server has already refused a length that is not a number.
            return int(value) if value.isdigit() else None
    return None


class RequestBodies:
    """The ASGI middleware that holds every request body to its route's limit (see the module)."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind, limit = body_limit(self.limits, scope["path"])
        where = f"{scope['method']} {scope['path']}"
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            log.info("refused a body of %s bytes on %s: over http.body_limits.%s", f"{declared:,}", where, kind)
            response = JSONResponse({"detail": _too_large(limit)}, status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    log.info("refused a body on %s at %s bytes: over http.body_limits.%s", where, f"{received:,}", kind)
                    # Raised where the body is read: the app's own error handling answers 413.
                    raise HTTPException(status_code=413, detail=_too_large(limit), headers={"Connection": "close"})
            return message

        try:
            await self.app(scope, counted, send)
        except ClientDisconnect:
            # Nobody is left to answer, and nothing went wrong on our side.
            log.info("the client went away before sending the whole body of %s", where)
