"""`/v1/leads/{email}` over a real socket: upsert, the lead's place and timeline, erasure that keeps
only a suppression."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa

from engine import consents, store, tables
from engine.mailer import Mailer
from engine.settings import Settings
from engine.templates import TemplateLibrary
from engine.validation import load_funnels
from engine.worker import Worker
from tests.acceptance.conftest import queue_email
from tests.http.conftest import NOW, Served
from tests.smtp_server import RecordingSmtpServer

EMAILS = Path(__file__).resolve().parent.parent / "fixtures" / "emails"


def test_put_creates_then_merges_and_get_shows_the_lead_its_funnels_and_emails(served: Served) -> None:
    with served.client() as client:
        created = client.put(
            "/v1/leads/Zoe@Example.com",
            json={"attributes": {"company": "Acme"}, "tags": ["vip"], "timezone": "Europe/Berlin"},
        )
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


ROUTED = """\
id: for-{persona}
name: For {persona}
entry:
  triggers:
    - condition: {{attr: persona, equals: {persona}}}
stages:
  - id: first
    steps:
      - id: hello
        wait: 1d
"""


def test_a_lead_update_routes_the_lead_by_persona_through_condition_triggers(served: Served, tmp_path: Path) -> None:
    funnels = tmp_path / "routed"
    funnels.mkdir()
    for persona in ("owner", "facilities"):
        (funnels / f"{persona}.yaml").write_text(ROUTED.format(persona=persona))
    loaded = load_funnels([funnels], emails_dir=None)
    assert loaded.ok, loaded.errors
    worker = Worker(served.engine, {f.id: f for f in loaded.funnels})
    with served.client() as client:
        assert client.put("/v1/leads/fiona@example.com", json={"attributes": {"company": "Acme"}}).status_code == 200
        worker.run_until_idle(NOW)
        assert client.get("/v1/leads/fiona@example.com").json()["funnels"] == []  # no persona yet: nowhere
        client.put("/v1/leads/fiona@example.com", json={"attributes": {"persona": "facilities"}})
        client.put("/v1/leads/omar@example.com", json={"attributes": {"persona": "owner"}})
        client.put("/v1/leads/ada@example.com", json={"attributes": {"persona": "accountant"}})
        worker.run_until_idle(NOW)
        shown = {
            a: client.get(f"/v1/leads/{a}").json() for a in ("fiona@example.com", "omar@example.com", "ada@example.com")
        }
    assert [f["funnel"] for f in shown["fiona@example.com"]["funnels"]] == ["for-facilities"]
    assert [f["funnel"] for f in shown["omar@example.com"]["funnels"]] == ["for-owner"]
    assert shown["ada@example.com"]["funnels"] == []
    assert [(t["to_stage"], t["cause"]) for t in shown["fiona@example.com"]["timeline"]] == [
        ("first", "entry:condition")
    ]


def test_consent_is_withdrawn_with_a_record_but_never_given_back_by_the_api(served: Served) -> None:
    with served.client() as client:
        client.put("/v1/leads/sam@example.com", json={"attributes": {"first_name": "Sam"}})
        withdrawn = client.put("/v1/leads/sam@example.com", json={"consent": "unsubscribed", "consent_source": "crm"})
        again = client.put("/v1/leads/sam@example.com", json={"consent": "subscribed"})
        pending = client.put("/v1/leads/sam@example.com", json={"consent": "pending"})
        shown = client.get("/v1/leads/sam@example.com").json()
    assert withdrawn.status_code == 200 and withdrawn.json()["consent"] == "unsubscribed"
    assert again.status_code == 409 and "only the lead can opt in again" in again.json()["detail"]
    assert pending.status_code == 409
    assert shown["consent"] == "unsubscribed"
    with served.engine.connect() as conn:
        lead_id = store.find_lead_id(conn, "sam@example.com")
        assert lead_id is not None
        acts = [(r["action"], r["source"]) for r in consents.history(conn, lead_id)]
        names = conn.execute(sa.select(tables.events.c.name).where(tables.events.c.lead_id == lead_id)).scalars().all()
    assert acts == [("withdrawn", "crm")]
    assert "unsubscribed" in names  # the funnels' exit rules hear of it, as from the unsubscribe page
