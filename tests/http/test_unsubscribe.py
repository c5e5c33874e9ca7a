"""Unsubscribe over a real socket (invariant 5, RFC 8058): one click by POST, no login, no redirect,
effective at once, so an email already queued is not sent; a GET only shows a page; a tampered or
foreign token is a 404."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import sqlalchemy as sa

from engine.mail.links import Links
from engine.mail.mailer import Mailer
from engine.mail.templates import TemplateLibrary
from engine.settings import Settings
from engine.store import consents, tables
from engine.store import leads as store
from tests.acceptance.conftest import queue_email
from tests.http.conftest import NOW, Served
from tests.smtp_server import RecordingSmtpServer

EMAILS = Path(__file__).resolve().parent.parent / "fixtures" / "emails"


def _consent(served: Served, address: str) -> str | None:
    with served.engine.connect() as conn:
        lead_id = store.find_lead_id(conn, address)
        lead = store.get_lead(conn, lead_id) if lead_id else None
    return lead.consent if lead else None


def test_one_click_unsubscribes_at_once_and_a_queued_email_is_not_sent(served: Served) -> None:
    queue_email(served.engine, "jo@example.com", "nurture-1", NOW)
    url = Links(served.settings).unsubscribe_url("jo@example.com", "lead-magnet")
    assert url.startswith(served.url)
    # What a mailbox provider sends for RFC 8058: a form-encoded POST, no cookies, no login.
    response = httpx.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=10, follow_redirects=False)
    assert response.status_code == 200
    assert _consent(served, "jo@example.com") == "unsubscribed"
    with RecordingSmtpServer() as smtp:
        settings = Settings(smtp={"host": smtp.host, "port": smtp.port, "security": "none"})
        mailer = Mailer(served.engine, settings, TemplateLibrary(EMAILS))
        result = asyncio.run(mailer.dispatch(NOW, smtp.host, smtp.port))
        assert smtp.messages() == []
    assert (result.sent, result.skipped) == (0, 1)


def test_a_get_only_shows_a_page_and_its_button_unsubscribes(served: Served) -> None:
    with served.engine.begin() as conn:
        store.upsert_lead(conn, "sam@example.com", now=NOW)
    url = Links(served.settings).unsubscribe_url("sam@example.com", "lead-magnet")
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200 and "sam@example.com" in page.text and "<form" in page.text
    assert _consent(served, "sam@example.com") == "subscribed"  # a link scanner changed nothing
    done = httpx.post(url, data={}, timeout=10)
    assert done.status_code == 200 and "no more marketing email" in done.text
    assert _consent(served, "sam@example.com") == "unsubscribed"


def test_an_erased_address_is_suppressed_instead(served: Served) -> None:
    url = Links(served.settings).unsubscribe_url("gone@example.com", None)
    assert httpx.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=10).status_code == 200
    with served.engine.connect() as conn:
        assert store.is_suppressed(conn, "gone@example.com")
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.leads)).scalar_one() == 0


def test_tampered_and_foreign_tokens_are_not_found(served: Served) -> None:
    with served.engine.begin() as conn:
        store.upsert_lead(conn, "kim@example.com", now=NOW)
    links = Links(served.settings)
    good = links.unsubscribe_url("kim@example.com", "lead-magnet")
    tampered = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    foreign = good.rsplit("/", 1)[0] + "/" + links.sign("preferences", {"e": "kim@example.com", "f": None})
    stranger = Links(Settings(base_url=served.url, secret_key="another-secret"))
    other_secret = stranger.unsubscribe_url("kim@example.com", None)
    # The same signature bytes spelled another way: the last character's low bits are padding.
    base, last = good[:-1], good[-1]
    respelled = [base + c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" if c != last]
    for url in (tampered, foreign, other_secret, *respelled, good + "="):
        assert httpx.get(url, timeout=10).status_code == 404
        assert httpx.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=10).status_code == 404
    assert _consent(served, "kim@example.com") == "subscribed"


def test_pages_reached_by_a_token_keep_it_to_themselves_and_cannot_be_framed(served: Served) -> None:
    url = Links(served.settings).unsubscribe_url("sam@example.com", "lead-magnet")
    with httpx.Client(timeout=10) as client:
        shown = client.get(url)
        events = client.post(f"{served.url}/v1/events", json={})
    assert shown.status_code == 200
    assert shown.headers["referrer-policy"] == "no-referrer"
    assert shown.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in shown.headers["content-security-policy"]
    assert shown.headers["x-content-type-options"] == "nosniff"
    assert "referrer-policy" not in events.headers  # the API is not a page


def _unsubscribed_via(served: Served, address: str) -> list[str | None]:
    with served.engine.connect() as conn:
        lead_id = store.find_lead_id(conn, address)
        return [r["source"] for r in consents.history(conn, lead_id) if r["action"] == "withdrawn"]


def test_one_click_posted_as_multipart_form_data_is_one_click(served: Served) -> None:
    """RFC 8058 asks mail clients to post `multipart/form-data`, and allows form-encoding: both are
    one-click, answered as such and recorded as such."""
    for address, encoding in (("mo@example.com", "multipart"), ("fo@example.com", "form-encoded")):
        with served.engine.begin() as conn:
            store.upsert_lead(conn, address, now=NOW)
        url = Links(served.settings).unsubscribe_url(address, "lead-magnet")
        if encoding == "multipart":
            # A field without a file name, as RFC 7578 writes a form's text field.
            answer = httpx.post(url, files={"List-Unsubscribe": (None, "One-Click")}, timeout=10)
            assert answer.request.headers["content-type"].startswith("multipart/form-data; boundary=")
        else:
            answer = httpx.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=10)
        assert answer.status_code == 200, encoding
        assert answer.json() == {"unsubscribed": True}, encoding
        assert _consent(served, address) == "unsubscribed"
        assert _unsubscribed_via(served, address) == ["one-click"], encoding
