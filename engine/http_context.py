"""What every part of the HTTP app shares: settings, the database, the clock, the signer, and the
API-key check. The routes live in modules by audience: `api_v1` (other systems), `pages` (leads from
their emails), `forms` (lead-magnet forms), `hooks` (signed webhooks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine import apikeys
from engine.links import Links
from engine.settings import Settings

_bearer = HTTPBearer(auto_error=False)


@dataclass
class HttpContext:
    settings: Settings
    engine: sa.Engine
    now: Callable[[], datetime]
    nudge: Callable[[], None] = lambda: None
    """Called after a commit that gives the engine work (an event, a confirmation email): `funnel run`
    ticks at once instead of at the next interval, so a form's first email goes in about a second."""
    links: Links = field(init=False)

    def __post_init__(self) -> None:
        self.links = Links(self.settings)

    def api_key(self) -> Callable[..., None]:
        """A FastAPI dependency: a valid `Authorization: Bearer` key, or 401 with no detail either way
        (a caller learns nothing about which keys exist)."""
        engine = self.engine

        def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
            if credentials is None or credentials.scheme.lower() != "bearer":
                raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"})
            with engine.connect() as conn:
                if not apikeys.valid(conn, credentials.credentials):
                    raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"})

        return check
