"""`/v1/leads/{email}` over a real socket: upsert, the lead's place and timeline, erasure that keeps
only a suppression."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from typer.testing import CliRunner

from engine.authoring.validation import load_funnels
from engine.cli import main as cli
from engine.mail.mailer import Mailer
from engine.mail.templates import TemplateLibrary
from engine.runtime.worker import Worker
from engine.settings import Settings
from engine.store import consents, tables
from engine.store import leads as store
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


def test_a_lead_language_is_kept_in_canonical_case_and_a_bad_one_is_refused(served: Served) -> None:
    with served.client() as client:
        set_ = client.put("/v1/leads/a@example.com", json={"language": "zh_hant_tw"})
        kept = client.put("/v1/leads/a@example.com", json={"attributes": {"first_name": "Ann"}})
        # Not a language of any funnel here: kept all the same (the lead may join another funnel).
        other = client.put("/v1/leads/b@example.com", json={"language": "sw"})
        bad = client.put("/v1/leads/a@example.com", json={"language": "english"})
        shown = client.get("/v1/leads/a@example.com").json()
    assert set_.status_code == 200 and set_.json()["language"] == "zh-Hant-TW"
    assert kept.json()["language"] == "zh-Hant-TW"  # an update without a language leaves it
    assert other.json()["language"] == "sw"
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "language"
    assert "found 'english'" in bad.json()["detail"][0]["msg"]
    assert shown["language"] == "zh-Hant-TW"


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


def test_an_opt_out_outlives_a_strangers_form_post_and_the_api_cannot_lift_it(serve: Any) -> None:
    served = serve(forms={"report": {"double_opt_in": True}})
    with served.client() as client:
        client.put("/v1/leads/una@example.com", json={"attributes": {"first_name": "Una"}})
        assert client.put("/v1/leads/una@example.com", json={"consent": "unsubscribed"}).status_code == 200
        assert client.put("/v1/leads/una@example.com", json={"consent": "subscribed"}).status_code == 409
        posted = httpx.post(f"{served.url}/forms/report", data={"email": "una@example.com", "consent": "yes"})
        assert posted.status_code == 303
        again = client.put("/v1/leads/una@example.com", json={"consent": "subscribed"})
        pending = client.put("/v1/leads/una@example.com", json={"consent": "pending"})
        shown = client.get("/v1/leads/una@example.com").json()
    assert again.status_code == 409 and "only the lead can opt in again" in again.json()["detail"]
    assert pending.status_code == 409
    assert shown["consent"] == "unsubscribed"


def test_a_pending_lead_is_subscribed_only_by_its_own_confirmation(serve: Any) -> None:
    served = serve(forms={"report": {"double_opt_in": True}})
    httpx.post(f"{served.url}/forms/report", data={"email": "val@example.com", "consent": "yes"})
    with served.client() as client:
        refused = client.put("/v1/leads/val@example.com", json={"consent": "subscribed"})
        shown = client.get("/v1/leads/val@example.com").json()
    assert refused.status_code == 409 and "confirm" in refused.json()["detail"]
    assert shown["consent"] == "pending"


def test_every_consent_change_through_the_api_writes_a_record_with_its_source(served: Served) -> None:
    with served.client() as client:
        client.put("/v1/leads/wes@example.com", json={"attributes": {"first_name": "Wes"}})
        assert client.put("/v1/leads/wes@example.com", json={"consent": "pending", "consent_source": "crm"}).is_success
        assert client.put("/v1/leads/wes@example.com", json={"consent": "pending"}).is_success  # no change
        assert client.put("/v1/leads/wes@example.com", json={"consent": "unsubscribed"}).is_success
    with served.engine.connect() as conn:
        lead_id = store.find_lead_id(conn, "wes@example.com")
        assert lead_id is not None
        history = consents.history(conn, lead_id)
    acts = [(r["action"], r["source"], r["status_before"], r["status_after"]) for r in history]
    assert acts == [("withdrawn", "crm", "subscribed", "pending"), ("withdrawn", "api", "pending", "unsubscribed")]


def test_an_import_cannot_lift_an_opt_out_after_a_strangers_form_post(serve: Any, tmp_path: Path) -> None:
    served = serve(forms={"report": {"double_opt_in": True}})
    with served.client() as client:
        client.put("/v1/leads/xia@example.com", json={"consent": "unsubscribed"})
    httpx.post(f"{served.url}/forms/report", data={"email": "xia@example.com", "consent": "yes"})
    httpx.post(f"{served.url}/forms/report", data={"email": "yan@example.com", "consent": "yes"})  # pending
    csv_file = tmp_path / "crm.csv"
    csv_file.write_text("email,consent\nxia@example.com,subscribed\nyan@example.com,subscribed\n")
    result = CliRunner().invoke(cli.app, ["import", str(csv_file), "--database-url", str(served.engine.url)])
    assert result.exit_code == 0, result.output
    with served.client() as client:
        assert client.get("/v1/leads/xia@example.com").json()["consent"] == "unsubscribed"
        assert client.get("/v1/leads/yan@example.com").json()["consent"] == "pending"
