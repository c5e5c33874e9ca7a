"""API keys: made once, shown once, kept only as a hash.

A key is 32 random bytes, so a plain SHA-256 is enough to store it (a slow password hash protects
guessable secrets; these are not guessable). The first characters are kept in clear to tell keys apart
in listings.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from engine.store.tables import api_keys

PREFIX = "fk_"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(conn: sa.Connection, name: str, now: datetime) -> str:
    """A new key; the only time it exists in clear."""
    key = PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        api_keys.insert().values(name=name, prefix=key[:10], key_hash=_hash(key), created_at=now, revoked_at=None)
    )
    return key


def valid(conn: sa.Connection, key: str) -> bool:
    if not key.startswith(PREFIX) or len(key) > 200:
        return False
    row = conn.execute(
        sa.select(api_keys.c.id).where(api_keys.c.key_hash == _hash(key), api_keys.c.revoked_at.is_(None))
    ).first()
    return row is not None


def revoke(conn: sa.Connection, prefix: str, now: datetime) -> int:
    result = conn.execute(
        sa.update(api_keys).where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
    )
    return int(result.rowcount or 0)


def listing(conn: sa.Connection) -> list[KeyInfo]:
    rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.id)).all()
    return [KeyInfo(r.id, r.name, r.prefix, r.created_at, r.revoked_at) for r in rows]
