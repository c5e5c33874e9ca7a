"""Click tracking over a real socket (invariant 11): links in a composed email are signed redirects;
a click records `email_clicked` once per link and goes to the URL that was in the email and nowhere
else; a tampered or re-signed token is a 404."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

from engine.core.outbox_item import OutboxItem
from engine.mail.composer import Composer
from engine.mail.links import Links
from engine.settings import Settings
from engine.store import leads as store
from engine.store import tables
from tests.http.conftest import NOW, Served

ROOT = Path(__file__).resolve().parents[2]


def _clicks(served: Served) -> list[tuple[str, dict[str, object]]]:
    e = tables.events
    with served.engine.connect() as conn:
        rows = conn.execute(sa.select(e.c.name, e.c.properties).order_by(e.c.id)).all()
    return [(r[0], dict(r[1])) for r in rows]


def _tracked_links(served: Served, email: str) -> dict[str, str]:
    """The pricing email of the example funnel, composed for `email`: its tracked links by target."""
    composer = Composer(served.settings, ROOT / "emails")
    item = OutboxItem(
        1,
        1,
        email,
        "subscribed",
        {},
        "lead-magnet",
        "invite-to-call",
        "lead-magnet/book-a-call",
        "conversion",
        False,
        0,
        False,
    )
    html = composer.compose(item, datetime(2026, 11, 23, tzinfo=UTC)).payload.decode()
    rendered = composer.render(item, datetime(2026, 11, 23, tzinfo=UTC))
    assert dict(rendered.links)["pricing"] == "https://greenleaf.example/pricing"
    # The message body is quoted-printable: undo its soft breaks and '=3D' before looking for URLs.
    body = html.replace("=\r\n", "").replace("=3D", "=")
    found = set(re.findall(re.escape(served.url) + r"/c/[A-Za-z0-9_.\-]+", body))
    return {httpx.get(u, timeout=10, follow_redirects=False).headers["location"]: u for u in sorted(found)}


def test_a_click_redirects_to_the_emails_url_and_is_recorded_once(served: Served) -> None:
    with served.engine.begin() as conn:
        store.upsert_lead(conn, "jo@example.com", now=NOW)
    by_target = _tracked_links(served, "jo@example.com")
    assert "https://greenleaf.example/pricing" in by_target and "https://greenleaf.example/book-a-call" in by_target
    pricing = by_target["https://greenleaf.example/pricing"]
    response = httpx.get(pricing, timeout=10, follow_redirects=False)
    assert response.status_code == 302 and response.headers["location"] == "https://greenleaf.example/pricing"
    clicks = [p for name, p in _clicks(served) if name == "email_clicked" and p["link"] == "pricing"]
    # _tracked_links followed every link once, and this test clicked pricing again: still one event.
    assert clicks == [
        {
            "link": "pricing",
            "url": "https://greenleaf.example/pricing",
            "funnel": "lead-magnet",
            "step": "invite-to-call",
        }
    ]


def test_no_open_redirect_and_tampered_tokens_are_not_found(served: Served) -> None:
    links = Links(served.settings)
    good = links.click_url("jo@example.com", "lead-magnet", "s", "pricing", "https://greenleaf.example/pricing")
    token = good.rsplit("/", 1)[1]
    payload, _, signature = token.rpartition(".")
    tampered = f"{served.url}/c/{payload}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}"
    stranger = Links(Settings(base_url=served.url, secret_key="someone-else"))
    forged = stranger.click_url("jo@example.com", "lead-magnet", "s", "pricing", "https://evil.example/")
    as_unsubscribe = f"{served.url}/c/" + links.sign(
        "unsubscribe", {"e": "jo@example.com", "u": "https://evil.example/"}
    )
    for url in (tampered, forged, as_unsubscribe, f"{served.url}/c/not-a-token"):
        response = httpx.get(url, timeout=10, follow_redirects=False)
        assert response.status_code == 404 and "location" not in response.headers
    assert _clicks(served) == []


def test_the_open_pixel_records_one_open_per_email(served: Served) -> None:
    with served.engine.begin() as conn:
        store.upsert_lead(conn, "jo@example.com", now=NOW)
    composer = Composer(served.settings, ROOT / "emails")
    item = OutboxItem(
        1,
        1,
        "jo@example.com",
        "subscribed",
        {},
        "lead-magnet",
        "welcome",
        "lead-magnet/welcome",
        "inquiry",
        False,
        0,
        False,
    )
    body = composer.compose(item, NOW).payload.decode().replace("=\r\n", "").replace("=3D", "=")
    (pixel,) = re.findall(re.escape(served.url) + r"/o/[A-Za-z0-9_.\-]+\.gif", body)
    for _ in range(2):
        response = httpx.get(pixel, timeout=10)
        assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
        assert response.content.startswith(b"GIF89a")
    assert [(n, p) for n, p in _clicks(served)] == [("email_opened", {"funnel": "lead-magnet", "step": "welcome"})]
    assert httpx.get(pixel.replace("/o/", "/o/x"), timeout=10).status_code == 404
