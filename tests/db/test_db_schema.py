"""The schema: migrations apply on both backends and agree with the table models."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Engine

from engine.store import leads as store
from engine.store import tables
from engine.store.database import alembic_config, connect_read_only, create_engine_for, current_revision, upgrade


def test_migrations_reach_head_and_match_the_table_models(db_url: str, db: Engine) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert current_revision(db_url) == head
    with db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), tables.metadata)
    assert diff == []


def test_upgrade_twice_changes_nothing(db_url: str, db: Engine) -> None:
    with db.begin() as conn:
        store.upsert_lead(conn, "kept@example.com")
    upgrade(db_url)
    with db.connect() as conn:
        assert store.find_lead_id(conn, "kept@example.com") is not None


def test_sqlite_is_configured_for_a_busy_embedded_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'data' / 'funnel.db'}"
    upgrade(url)  # creates the directory
    engine = create_engine_for(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    engine.dispose()


def test_datetimes_come_back_as_the_same_instant_in_utc(db: Engine) -> None:
    paris_summer = timezone(timedelta(hours=2))
    given = datetime(2026, 7, 1, 9, 30, 15, 123456, tzinfo=paris_summer)
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, "tz@example.com", consent="subscribed", now=given)
    with db.connect() as conn:
        row = conn.execute(sa.select(tables.leads).where(tables.leads.c.id == lead_id)).one()
    for value in (row.created_at, row.consent_at, row.updated_at):
        assert value == given
        assert value.utcoffset() == timedelta(0)
        assert value.hour == 7


def test_naive_datetimes_are_refused(db: Engine) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive"), db.begin() as conn:
        store.upsert_lead(conn, "naive@example.com", now=datetime(2026, 1, 1))


def test_sqlite_text_timestamps_compare_in_time_order(db: Engine) -> None:
    # Whole seconds and fractions must not sort as text ("…:00" < "…:00.5" is right, "…:00" vs "…:01" too).
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with db.begin() as conn:
        lead = store.upsert_lead(conn, "order@example.com", now=base)
        store.record_events(
            conn,
            [
                store.NewEvent("b", lead, "x", base),
                store.NewEvent("a", lead, "x", base + timedelta(microseconds=500_000)),
                store.NewEvent("c", lead, "x", base + timedelta(seconds=1)),
            ],
            now=base,
        )
        events = tables.events
        later = conn.execute(
            sa.select(events.c.event_id).where(events.c.occurred_at > base).order_by(events.c.occurred_at)
        ).scalars()
        assert list(later) == ["a", "c"]


def test_a_reader_does_not_wait_for_the_writer(db: Engine) -> None:
    with db.begin() as writer:
        store.upsert_lead(writer, "w@example.com", now=datetime(2026, 1, 1, tzinfo=UTC))
    with db.begin() as writer:  # holds the write lock (SQLite) until the end of the block
        store.upsert_lead(writer, "uncommitted@example.com", now=datetime(2026, 1, 1, tzinfo=UTC))
        started = time.monotonic()
        with connect_read_only(db) as reader:
            assert store.find_lead_id(reader, "w@example.com") is not None
            assert store.find_lead_id(reader, "uncommitted@example.com") is None
        assert time.monotonic() - started < 5


@pytest.mark.postgres
def test_workers_started_together_on_an_empty_database_migrate_it_once(
    postgres_admin: Engine, postgres_admin_url: URL
) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = postgres_admin_url.set(database=name)
    try:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda _: upgrade(url), range(3)))
        assert results == [None, None, None]
        engine = create_engine_for(url)
        try:
            assert current_revision(url) == ScriptDirectory.from_config(alembic_config()).get_current_head()
            with engine.connect() as conn:
                assert conn.execute(sa.select(sa.func.count()).select_from(sa.table("leads"))).scalar_one() == 0
        finally:
            engine.dispose()
    finally:
        with postgres_admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
