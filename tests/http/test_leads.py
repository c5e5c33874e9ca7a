"""`/v1/leads/{email}` over a real socket: upsert, the lead's place and timeline, erasure that keeps
only a suppression."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa

from engine import store, tables
from engine.mailer import Mailer
from engine.settings import Settings
from engine.templates import TemplateLibrary
from tests.acceptance.conftest import queue_email
from tests.http.conftest import NOW, Served
from tests.smtp_server import RecordingSmtpServer

EMAILS = Path(__file__).resolve().parent.parent / "fixtures" / "emails"


def test_put_creates_then_merges_and_get_shows_the_lead_its_funnels_and_emails(served: Served) -> None:
    with served.client() as client:
        created = client.put("/v1/leads/Zoe@Example.com", json={"attributes": {"company": "Acme"}, "tags": ["vip"],
                                                                 "timezone": "Europe/Berlin"})
        assert created.status_code == 200
        merged = client.put("/v1/leads/zoe@example.com", json={"attributes": {"first_name": "Zoë"}, "tags": ["b2b"]})
        queue_email(served.engine, "zoe@example.com", "welcome", NOW, funnel="lead-magnet")
        shown = client.get("/v1/leads/zoe@example.com").json()
    assert merged.json()["attributes"] == {"company": "Acme", "first_name": "Zoë"}
    assert shown["tags"] == ["b2b", "vip"] and shown["timezone"] == "Europe/Berlin" and shown["consent"] == "subscribed"
    assert [(f["funnel"], f["stage"]) for f in shown["funnels"]] == [("lead-magnet", "s")]
    assert [(e["funnel"], e["step"], e["status"]) for e in shown["emails"]] == [("lead-magnet", "welcome", "queued")]


def test_bad_input_is_refused_with_the_field_named(served: Served) -> None:
    with served.client() as client:
        zone = client.put("/v1/leads/a@example.com", json={"timezone": "Mars/Olympus"})
        consent = client.put("/v1/leads/a@example.com", json={"consent": "bounced"})
        address = client.put("/v1/leads/not-an-address", json={})
        missing = client.get("/v1/leads/nobody@example.com")
    assert zone.status_code == 422 and zone.json()["detail"][0]["loc"][-1] == "timezone"
    assert "Mars/Olympus" in zone.json()["detail"][0]["msg"]
    assert consent.status_code == 422 and consent.json()["detail"][0]["loc"][-1] == "consent"
    assert address.status_code == 422
    assert missing.status_code == 404


def test_erasure_removes_everything_but_a_suppression_and_nothing_more_is_sent(served: Served) -> None:
    queue_email(served.engine, "gone@example.com", "welcome", NOW)
    with served.client() as client:
        assert client.delete("/v1/leads/gone@example.com").status_code == 204
        assert client.get("/v1/leads/gone@example.com").status_code == 404
        # Coming back through an event makes a new lead, but the address stays suppressed.
        client.post("/v1/events", json={"id": "e1", "type": "form_submitted", "email": "gone@example.com"})
    queue_email(served.engine, "gone@example.com", "welcome", NOW)
    with served.engine.connect() as conn:
        assert store.is_suppressed(conn, "gone@example.com")
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.outbox)).scalar_one() == 1
    with RecordingSmtpServer() as smtp:
        settings = Settings(smtp={"host": smtp.host, "port": smtp.port, "security": "none"})
        mailer = Mailer(served.engine, settings, TemplateLibrary(EMAILS))
        result = asyncio.run(mailer.dispatch(NOW, smtp.host, smtp.port))
        assert smtp.messages() == []
    assert result.skipped == 1
