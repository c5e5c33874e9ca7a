"""The dashboard's sessions and failed sign-ins on each backend (`engine.store.ops_sessions`): a session is open
until it ends or expires; failures racing from several processes are each counted once, and each
lockout is started by exactly one of them; counts are forgotten a day after the last failure."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.core.ops_auth import Session, counted
from engine.store import ops_sessions, tables

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_a_session_is_open_until_it_ends_or_expires(db: Engine) -> None:
    ended, kept = (
        Session("olivia", "c1", T0 + timedelta(hours=12), "s1"),
        Session("olivia", "c2", T0 + timedelta(hours=1), "s2"),
    )
    with db.begin() as conn:
        ops_sessions.start(conn, ended, T0)
        ops_sessions.start(conn, kept, T0)
    with db.begin() as conn:
        assert ops_sessions.is_open(conn, "s1", T0) and ops_sessions.is_open(conn, "s2", T0)
        assert not ops_sessions.is_open(conn, "s3", T0)
        ops_sessions.end(conn, "s1", T0 + timedelta(minutes=5))
    with db.connect() as conn:
        assert not ops_sessions.is_open(conn, "s1", T0 + timedelta(minutes=5))
        assert ops_sessions.is_open(conn, "s2", T0 + timedelta(minutes=59))
        assert not ops_sessions.is_open(conn, "s2", T0 + timedelta(hours=1))
        stored = set(conn.execute(sa.select(tables.ops_sessions.c.id_hash)).scalars())
    assert "s1" not in stored and len(stored) == 2  # kept by a hash of the id only
    with db.begin() as conn:  # the next sign-in sweeps what has expired
        ops_sessions.start(conn, Session("olivia", "c4", T0 + timedelta(days=2), "s4"), T0 + timedelta(hours=13))
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.ops_sessions)).scalar_one() == 1


def test_failures_racing_from_many_processes_are_each_counted_and_each_lockout_starts_once(db: Engine) -> None:
    keys = counted("olivia", "203.0.113.7")
    started: list[tuple[str, datetime, int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def fail() -> None:
        try:
            barrier.wait()
            for _ in range(5):
                with db.begin() as conn:
                    for key, until, failures in ops_sessions.count_failure(conn, keys, T0):
                        started.append((key.key, until, failures))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    with db.connect() as conn:
        counts = dict(
            conn.execute(sa.select(tables.ops_sign_in_failures.c.key, tables.ops_sign_in_failures.c.failures)).all()
        )
        until = ops_sessions.locked_until(conn, keys, T0)
    name, client = keys
    assert counts == {name.key: 40, client.key: 40}
    # One lockout per failure from the fifth (name) and the twentieth (client) on: each told once.
    assert sorted(f for k, _, f in started if k == name.key) == list(range(5, 41))
    assert sorted(f for k, _, f in started if k == client.key) == list(range(20, 41))
    assert until == T0 + timedelta(hours=1)  # doubled up to the longest lockout


def test_failures_are_forgotten_a_day_after_the_last_one(db: Engine) -> None:
    keys = counted("olivia", "2001:db8::1")
    assert keys[1].key == "client:2001:db8::/64"
    with db.begin() as conn:
        for _ in range(4):
            assert ops_sessions.count_failure(conn, keys, T0) == []
    with db.begin() as conn:
        (name_lock,) = ops_sessions.count_failure(conn, keys, T0 + timedelta(hours=23))
    assert name_lock[1:] == (T0 + timedelta(hours=23, minutes=1), 5)
    later = T0 + timedelta(hours=23) + timedelta(days=1, seconds=1)
    with db.begin() as conn:
        assert ops_sessions.count_failure(conn, keys, later) == []  # counted from one again
        ops_sessions.clear_failures(conn, keys[:1])
    with db.connect() as conn:
        counts = dict(
            conn.execute(sa.select(tables.ops_sign_in_failures.c.key, tables.ops_sign_in_failures.c.failures)).all()
        )
    assert counts == {keys[1].key: 1}
