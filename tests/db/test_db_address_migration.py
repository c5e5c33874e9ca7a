"""The upgrade that brings stored addresses under the address rules (`engine.core.addresses`): a lead whose
domain was stored in Unicode gets its ASCII form, so the entries, which now give the ASCII form, find it;
its suppression follows it. What cannot move is left as it was, on each backend."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from engine.store import leads as store
from engine.store import tables
from engine.store.database import create_engine_for, upgrade

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BEFORE = "0006"  # the last revision whose entries stored IDN domains in Unicode


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'funnel.db'}"
        return
    admin: Engine = request.getfixturevalue("postgres_admin")
    admin_url: URL = request.getfixturevalue("postgres_admin_url")
    name = f"m_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield admin_url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_stored_unicode_domains_move_to_their_ascii_form_with_their_suppression(empty_url: str) -> None:
    upgrade(empty_url, BEFORE)
    engine = create_engine_for(empty_url)
    leads, suppressions = tables.leads, tables.suppressions
    kept = {
        "idn@bücher.example": "unsubscribed",  # moves, and its suppression with it
        "ana@straße.example": "subscribed",  # moves
        "twice@bücher.example": "subscribed",  # its ASCII form is a lead already: left for an operator
        "twice@xn--bcher-kva.example": "subscribed",
        "josé@bücher.example": "subscribed",  # a local part no relay takes: left as it was
        "plain@example.com": "subscribed",
    }
    try:
        with engine.begin() as conn:
            for email, consent in kept.items():
                conn.execute(sa.insert(leads).values(email=email, attributes={}, tags=[], score=0,
                                                     consent_status=consent, created_at=T0, updated_at=T0))  # fmt: skip
            conn.execute(sa.insert(suppressions).values(email_hash=_sha("idn@bücher.example"), reason="unsubscribed",
                                                        created_at=T0))  # fmt: skip
        upgrade(empty_url)
        with engine.connect() as conn:
            emails = set(conn.execute(sa.select(leads.c.email)).scalars())
            hashes = {h: r for h, r in conn.execute(sa.select(suppressions.c.email_hash, suppressions.c.reason))}
            assert store.is_suppressed(conn, "IDN@Bücher.example")
            assert store.find_lead_id(conn, "idn@xn--bcher-kva.example") is not None
    finally:
        engine.dispose()
    assert emails == {
        "idn@xn--bcher-kva.example",
        "ana@xn--strae-oqa.example",
        "twice@bücher.example",
        "twice@xn--bcher-kva.example",
        "josé@bücher.example",
        "plain@example.com",
    }
    assert hashes == {_sha("idn@bücher.example"): "unsubscribed", _sha("idn@xn--bcher-kva.example"): "unsubscribed"}
