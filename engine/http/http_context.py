"""What every part of the HTTP app shares: settings, the database, the clock, the signer, and the
API-key check. The routes live in modules by audience: `api_v1` (other systems), `pages` (leads from
their emails), `forms` (lead-magnet forms), `hooks` (signed webhooks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from fastapi import HTTPException
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from engine.mail.links import Links
from engine.settings import Settings
from engine.store import apikeys

# Declares `Authorization: Bearer` in the OpenAPI document; the key is checked by `check_api_key`.
BEARER = HTTPBearer(auto_error=False)


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

    def check_api_key(self, authorization: str | None) -> None:
        """Nothing if `authorization` is `Bearer <a valid key>`, else 401 with no detail either way (a
        caller learns nothing about which keys exist)."""
        scheme, key = get_authorization_scheme_param(authorization)
        if scheme.lower() != "bearer" or not key:
            raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        with self.engine.connect() as conn:
            if not apikeys.valid(conn, key):
                raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"})
