"""Response headers for the pages leads reach by a signed link (unsubscribe, preferences, opt-in,
clicks, the open pixel): their URLs carry tokens, and their buttons act in one click. Signup forms carry
no token and may be framed by the marketer's own site, so they are left as they are.

- `Referrer-Policy: no-referrer`: a page reached by a token must not hand that token to the next site.
- `X-Frame-Options` and `frame-ancestors`: no other site may frame an unsubscribe or opt-in button.
- `X-Content-Type-Options: nosniff`.

Pure ASGI, not Starlette's `BaseHTTPMiddleware`: `/v1` ingestion passes through at no cost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

LEAD_FACING = ("/u/", "/p/", "/c/", "/o/", "/confirm/")
HEADERS = [
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
]


class LeadFacingHeaders:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(LEAD_FACING):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in HEADERS if name not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)
