"""The dashboard's sessions and failed sign-ins, in the database: every process of the app sees a
sign-out, and a lockout, at once (the rules are `engine.core.ops_auth`'s).

A session is kept by a hash of its id (the id travels only in the signed cookie). Failures are counted
with one `INSERT ... ON CONFLICT DO UPDATE` per key, which PostgreSQL applies atomically under the row's
lock, so concurrent failures from several processes are each counted once; keys are written in one
order, so two attempts never wait on each other in a cycle. Expired sessions and forgotten failures
are deleted as new ones come.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from engine.core.ops_auth import FAILURES_FORGOTTEN_AFTER, Counted, Session
from engine.store.tables import ops_sessions, ops_sign_in_failures


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start(conn: sa.Connection, session: Session, now: datetime) -> None:
    """Record a new session; sweep the expired ones."""
    s = ops_sessions
    conn.execute(sa.delete(s).where(s.c.expires_at <= now))
    conn.execute(
        sa.insert(s).values(
            id_hash=_hash(session.id), user_name=session.user, created_at=now, expires_at=session.expires
        )
    )


def is_open(conn: sa.Connection, session_id: str, now: datetime) -> bool:
    """Whether the session was started, has not ended and has not expired."""
    s = ops_sessions
    found = conn.execute(
        sa.select(s.c.id_hash).where(s.c.id_hash == _hash(session_id), s.c.ended_at.is_(None), s.c.expires_at > now)
    ).first()
    return found is not None


def end(conn: sa.Connection, session_id: str, now: datetime) -> None:
    s = ops_sessions
    conn.execute(sa.update(s).where(s.c.id_hash == _hash(session_id), s.c.ended_at.is_(None)).values(ended_at=now))


def locked_until(conn: sa.Connection, keys: Sequence[Counted], now: datetime) -> datetime | None:
    """When the last lockout among these keys ends, or None when none holds now."""
    f = ops_sign_in_failures
    until = conn.execute(
        sa.select(sa.func.max(f.c.locked_until)).where(f.c.key.in_([k.key for k in keys]), f.c.locked_until > now)
    ).scalar()
    return until if isinstance(until, datetime) else None


def count_failure(conn: sa.Connection, keys: Sequence[Counted], now: datetime) -> list[tuple[Counted, datetime, int]]:
    """Count one failed sign-in against each key. Returns the lockouts it starts: (key, until when,
    after how many failures), one each time a key earns one, so each lockout is told once."""
    f = ops_sign_in_failures
    forgotten = now - FAILURES_FORGOTTEN_AFTER
    conn.execute(
        sa.delete(f).where(f.c.last_failed_at < forgotten, sa.or_(f.c.locked_until.is_(None), f.c.locked_until <= now))
    )
    insert = postgresql.insert(f) if conn.dialect.name == "postgresql" else sqlite.insert(f)
    started = []
    for key in sorted(keys, key=lambda k: k.key):
        stmt = insert.values(key=key.key, failures=1, last_failed_at=now, locked_until=None)
        stmt = stmt.on_conflict_do_update(
            index_elements=[f.c.key],
            set_={
                "failures": sa.case((f.c.last_failed_at < forgotten, 1), else_=f.c.failures + 1),
                "last_failed_at": now,
            },
        )
        failures = int(conn.execute(stmt.returning(f.c.failures)).scalar_one())
        lock = key.lockout.lock_for(failures)
        if lock is not None:
            conn.execute(sa.update(f).where(f.c.key == key.key).values(locked_until=now + lock))
            started.append((key, now + lock, failures))
    return started


def clear_failures(conn: sa.Connection, keys: Sequence[Counted]) -> None:
    """A sign-in that succeeded: its name and client start from nothing."""
    f = ops_sign_in_failures
    conn.execute(sa.delete(f).where(f.c.key.in_([k.key for k in keys])))
