"""The unsubscribe and preference pages over a real socket: leave one funnel (its waiting emails are
skipped at once, the funnel records the exit with its cause, other funnels go on) or stop all marketing
email, and start again from the preference page. Only the exact one-click field stops all email."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engine.authoring.validation import load_funnels
from engine.core.bounce_outcome import COMPLAINT, Outcome
from engine.mail.links import Links
from engine.runtime.worker import Worker
from engine.settings import BounceSettings
from engine.store import leads as store
from engine.store import tables
from engine.store.bounces import record_outcomes
from tests.http.conftest import NOW, Served

FUNNEL = """\
id: {id}
name: {name}
entry:
  triggers:
    - event: signed_up
stages:
  - id: first
    steps:
      - id: hello
        send: drip/hello
      - id: pause
        wait: 2d
      - id: again
        send: drip/hello
"""


@pytest.fixture
def enrolled(served: Served, tmp_path: Path) -> tuple[Served, Worker]:
    """ana@example.com is active in two funnels, each with its first email queued."""
    folder = tmp_path / "funnels"
    folder.mkdir()
    for funnel_id, name in (("recycling", "Recycling report"), ("water", "Water savings")):
        (folder / f"{funnel_id}.yaml").write_text(FUNNEL.format(id=funnel_id, name=name))
    loaded = load_funnels([folder], emails_dir=None)
    assert not loaded.errors, loaded.errors
    worker = Worker(served.engine, {f.id: f for f in loaded.funnels})
    worker.publish(NOW)
    with served.engine.begin() as conn:
        lead_id = store.upsert_lead(conn, "ana@example.com", now=NOW)
        store.record_events(conn, [store.NewEvent("s-1", lead_id, "signed_up", NOW)], now=NOW)
    worker.run_until_idle(NOW)
    assert sorted(statuses(served).values()) == ["queued", "queued"]
    return served, worker


def statuses(served: Served) -> dict[str, str]:
    with served.engine.connect() as conn:
        o = tables.outbox
        return {r.funnel_id: r.status for r in conn.execute(sa.select(o.c.funnel_id, o.c.status))}


def enrollment(served: Served, funnel_id: str) -> Any:
    with served.engine.connect() as conn:
        e = tables.enrollments
        return conn.execute(sa.select(e).where(e.c.funnel_id == funnel_id)).one()


def consent(served: Served) -> str:
    with served.engine.connect() as conn:
        return str(conn.execute(sa.select(tables.leads.c.consent_status)).scalar_one())


def test_leaving_one_funnel_skips_its_waiting_email_and_records_the_exit(enrolled: tuple[Served, Worker]) -> None:
    served, worker = enrolled
    url = Links(served.settings).unsubscribe_url("ana@example.com", "recycling")
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200
    assert "Only emails about Recycling report" in page.text and "All marketing email" in page.text
    assert statuses(served) == {"recycling": "queued", "water": "queued"}  # the GET changed nothing

    done = httpx.post(url, data={"scope": "funnel"}, timeout=10)
    assert done.status_code == 200 and "no more emails about Recycling report" in done.text
    assert statuses(served) == {"recycling": "skipped", "water": "queued"}  # at once, before any tick
    assert consent(served) == "subscribed"

    worker.run_until_idle(NOW)
    left, stays = enrollment(served, "recycling"), enrollment(served, "water")
    assert (left.status, left.exit_reason, stays.status) == ("exited", "unsubscribed", "active")
    with served.engine.connect() as conn:
        t = tables.stage_transitions
        exit_row = conn.execute(sa.select(t).where(t.c.funnel_id == "recycling", t.c.to_stage.is_(None))).one()
        record = conn.execute(sa.select(tables.consent_records)).one()
    assert exit_row.cause_kind == "event" and exit_row.cause_ref.startswith("funnel-unsubscribe:")
    assert (record.action, record.fields, record.ip) == ("withdrawn", {"funnel": "recycling"}, "127.0.0.1")


def test_the_preference_page_stops_everything_and_starts_again(enrolled: tuple[Served, Worker]) -> None:
    served, _ = enrolled
    url = Links(served.settings).preferences_url("ana@example.com")
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200
    assert "Stop emails about Recycling report" in page.text and "Stop emails about Water savings" in page.text

    stopped = httpx.post(url, data={"scope": "all"}, timeout=10, follow_redirects=True)
    assert stopped.status_code == 200 and "You get no marketing email from us" in stopped.text
    assert consent(served) == "unsubscribed"
    with served.engine.connect() as conn:
        names = conn.execute(sa.select(tables.events.c.name).order_by(tables.events.c.id)).scalars().all()
    assert names == ["signed_up", "unsubscribed"]  # the funnels hear of it (an exit rule can record it)

    again = httpx.post(url, data={"scope": "resubscribe"}, timeout=10, follow_redirects=True)
    assert again.status_code == 200 and "You get marketing email from us" in again.text
    assert consent(served) == "subscribed"
    with served.engine.connect() as conn:
        actions = conn.execute(sa.select(tables.consent_records.c.action)).scalars().all()
    assert actions == ["withdrawn", "given"]


def test_leaving_one_funnel_from_the_preference_page(enrolled: tuple[Served, Worker]) -> None:
    served, _ = enrolled
    url = Links(served.settings).preferences_url("ana@example.com")
    httpx.post(url, data={"scope": "funnel:water"}, timeout=10)
    assert statuses(served) == {"recycling": "queued", "water": "skipped"}
    page = httpx.get(url, timeout=10)
    assert "Stop emails about Recycling report" in page.text  # still there until the worker records the exit


def test_tampered_tokens_and_unknown_choices(enrolled: tuple[Served, Worker]) -> None:
    served, _ = enrolled
    links = Links(served.settings)
    url = links.preferences_url("ana@example.com")
    assert httpx.get(url[:-3] + "xyz", timeout=10).status_code == 404
    unsubscribe_token = links.unsubscribe_url("ana@example.com", None).rsplit("/", 1)[1]
    assert httpx.get(f"{served.url}/p/{unsubscribe_token}", timeout=10).status_code == 404
    assert httpx.post(url, data={"scope": "everything"}, timeout=10).status_code == 400
    assert consent(served) == "subscribed"


def test_a_pending_lead_cannot_be_subscribed_from_the_preference_page(serve: Any) -> None:
    served = serve(forms={"report": {"double_opt_in": True}})
    httpx.post(f"{served.url}/forms/report", data={"email": "pam@example.com", "consent": "yes"}, timeout=10)
    assert consent(served) == "pending"
    url = Links(served.settings).preferences_url("pam@example.com")  # the link in the confirmation email
    httpx.post(url, data={"scope": "all"}, timeout=10)
    assert consent(served) == "unsubscribed"
    page = httpx.post(url, data={"scope": "resubscribe"}, timeout=10, follow_redirects=True)
    assert consent(served) == "unsubscribed"
    assert "Start again" not in page.text and "never confirmed" in page.text
    with served.engine.connect() as conn:
        records = conn.execute(sa.select(tables.consent_records).order_by(tables.consent_records.c.id)).all()
    assert [r.action for r in records] == ["requested", "withdrawn"]

    # Its own confirmation still subscribes it: the link proves the address.
    confirm = Links(served.settings).confirm_url("pam@example.com", "report", records[0].id)
    assert httpx.post(confirm, timeout=10).status_code == 303
    assert consent(served) == "subscribed"


@pytest.mark.parametrize(
    "body",
    [
        "scope=funnel&note=List-Unsubscribe=One-Click",
        "scope=funnel&List-Unsubscribe=One-Clicks",
        "scope=funnel&list-unsubscribe=One-Click",
    ],
)
def test_only_the_exact_one_click_field_is_one_click(enrolled: tuple[Served, Worker], body: str) -> None:
    """The page's "only this funnel" button with the words of one-click elsewhere in the body (another
    field's value, a longer value, another name) leaves that funnel only: the form is parsed, not
    searched."""
    served, _ = enrolled
    url = Links(served.settings).unsubscribe_url("ana@example.com", "recycling")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    answer = httpx.post(url, content=body, headers=headers, timeout=10)
    assert answer.status_code == 200 and "no more emails about Recycling report" in answer.text
    assert consent(served) == "subscribed"
    assert statuses(served) == {"recycling": "skipped", "water": "queued"}


def complain(served: Served, key: str) -> None:
    """An abuse report about the lead's first email, which the relay took."""
    with served.engine.begin() as conn:
        o = tables.outbox
        conn.execute(sa.update(o).where(o.c.funnel_id == "recycling").values(status="sent", sent_at=NOW))
        outcome = Outcome(key, "test", "complaint", COMPLAINT, "ana@example.com", raw=b"arf")
        [applied] = record_outcomes(conn, [outcome], NOW, BounceSettings())
    assert applied.action == "complained"


def test_a_complaint_is_taken_back_only_by_the_leads_own_start_again(enrolled: tuple[Served, Worker]) -> None:
    served, _ = enrolled
    complain(served, "arf-1")
    assert consent(served) == "complained"
    with served.engine.connect() as conn:
        assert store.is_suppressed(conn, "ana@example.com")

    url = Links(served.settings).preferences_url("ana@example.com")
    page = httpx.get(url, timeout=10)
    assert "You reported our email as spam" in page.text and "Start again" in page.text
    assert consent(served) == "complained"  # the GET changed nothing

    again = httpx.post(url, data={"scope": "resubscribe"}, timeout=10, follow_redirects=True)
    assert again.status_code == 200 and "You get marketing email from us" in again.text
    assert consent(served) == "subscribed"
    with served.engine.connect() as conn:
        assert not store.is_suppressed(conn, "ana@example.com")
        records = conn.execute(sa.select(tables.consent_records).order_by(tables.consent_records.c.id)).all()
    assert [(r.status_before, r.status_after, r.source) for r in records][-1] == (
        "complained",
        "subscribed",
        "preferences page",
    )


def test_a_complained_address_also_suppressed_for_a_bounce_cannot_start_again(enrolled: tuple[Served, Worker]) -> None:
    served, _ = enrolled
    with served.engine.begin() as conn:
        store.suppress(conn, "ana@example.com", "bounced", now=NOW)
    complain(served, "arf-2")
    url = Links(served.settings).preferences_url("ana@example.com")
    assert "Start again" not in httpx.get(url, timeout=10).text
    httpx.post(url, data={"scope": "resubscribe"}, timeout=10)
    assert consent(served) == "complained"
