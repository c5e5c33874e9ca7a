"""The ops dashboard's edges over plain HTTP (httpx, no browser): a cookie that is missing, tampered with,
expired or signed with another key gets the login page; a POST without the session's CSRF token, with
another session's, or from another origin changes nothing; the login refuses a post without its
nonce cookie and never redirects off the dashboard; the live feed resumes from Last-Event-ID and ends
when its time is up or the server stops; "send again" requeues, once."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from itsdangerous import URLSafeSerializer

from engine.core.ops_auth import LOGIN_COOKIE, SESSION_COOKIE, OpsSettings, Sessions, hash_password
from engine.store import tables
from tests.browser.conftest import NOW, PASSWORD, USER, USER_HASH, Dashboard

PAGES = ("/ops/", "/ops/feed", "/ops/leads?q=a", "/ops/leads/1", "/ops/outbox", "/ops/bounces")


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert found is not None, name
    return found.group(1)


def sign_in(ops: Dashboard) -> tuple[httpx.Client, str]:
    """A client holding a session, and the session's CSRF token (as the pages' forms carry it)."""
    client = httpx.Client(base_url=ops.url, timeout=10)
    nonce = _field(client.get("/ops/login").text, "nonce")
    answer = client.post("/ops/login", data={"name": USER, "password": PASSWORD, "nonce": nonce, "next": "/ops/"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ops/"
    return client, _field(client.get("/ops/outbox").text, "csrf")


def _goes_to_login(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers["location"].startswith("/ops/login?next=")


def test_pages_without_a_session_go_to_the_login_and_the_stream_answers_401(ops: Dashboard) -> None:
    with httpx.Client(base_url=ops.url, timeout=10) as client:
        for path in PAGES:
            assert _goes_to_login(client.get(path)), path
        assert client.get("/ops/outbox").headers["location"] == "/ops/login?next=%2Fops%2Foutbox"
        assert client.get("/ops/feed/stream").status_code == 401
        assert client.post("/ops/outbox/1", data={"decision": "sent"}).status_code == 303  # to the login
        # The assets hold nothing secret and the login page needs them; nothing else is served.
        css, js = client.get("/ops/static/ops.css"), client.get("/ops/static/ops.js")
        assert (css.status_code, js.status_code) == (200, 200)
        assert css.headers["content-type"].startswith("text/css")
        assert js.headers["content-type"].startswith("text/javascript")
        for name in ("../ops_auth.py", "..%2Fops_auth.py", "missing.js"):
            assert client.get(f"/ops/static/{name}").status_code == 404
        page = client.get("/ops/login")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        links = re.findall(r'(?:src|href|action)="([^"]+)"', page.text)
        assert [u for u in links if not u.startswith("/ops/") and u != "data:,"] == []  # no other host, no CDN
        assert any(re.fullmatch(r"/ops/static/ops\.css\?v=[0-9a-f]{10}", u) for u in links)
        assert any(re.fullmatch(r"/ops/static/ops\.js\?v=[0-9a-f]{10}", u) for u in links)


def test_a_tampered_expired_or_foreign_cookie_gets_the_login_page(ops: Dashboard) -> None:
    client, _ = sign_in(ops)
    good = client.cookies[SESSION_COOKIE]
    assert client.get("/ops/").status_code == 200
    payload, signature = good.rsplit(".", 1)
    forged = URLSafeSerializer("another secret", salt="funnel.ops-session").dumps(
        URLSafeSerializer(ops.settings.secret_key.get_secret_value(), salt="funnel.ops-session").loads(good)
    )
    other_salt = URLSafeSerializer(ops.settings.secret_key.get_secret_value(), salt="funnel.unsubscribe")
    for bad in (
        # Signature changed in its first character: the last one of a base64 text may carry only padding bits.
        payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:],
        payload.replace(payload[5], "x" if payload[5] != "x" else "y", 1) + "." + signature,  # payload changed
        forged,  # signed with another key
        other_salt.dumps({"u": USER}),  # a token of another purpose
        "",
    ):
        with httpx.Client(base_url=ops.url, timeout=10, cookies={SESSION_COOKIE: bad}) as other:
            assert _goes_to_login(other.get("/ops/")), bad
            assert other.get("/ops/feed/stream").status_code == 401

    ops.clock.at = NOW + timedelta(hours=12) - timedelta(seconds=1)
    assert client.get("/ops/").status_code == 200
    ops.clock.at = NOW + timedelta(hours=12)
    assert _goes_to_login(client.get("/ops/"))


def test_a_new_password_or_a_removed_user_ends_the_sessions() -> None:
    secret = "k" * 32
    before = OpsSettings(users={USER: USER_HASH})
    cookie, _ = Sessions(secret, before).issue(USER, NOW)
    assert Sessions(secret, before).read(cookie, NOW) is not None
    assert Sessions(secret, OpsSettings(users={USER: hash_password("a brand new password")})).read(cookie, NOW) is None
    assert Sessions(secret, OpsSettings(users={})).read(cookie, NOW) is None
    assert Sessions("another secret key", before).read(cookie, NOW) is None


def test_the_session_cookie_is_httponly_samesite_lax_and_secure_over_https(
    serve_dashboard: Callable[..., Dashboard],
) -> None:
    plain, _ = sign_in(serve_dashboard())
    assert plain.cookies[SESSION_COOKIE]
    nonce_page = plain.get("/ops/login")  # signed in: no cookie set, a redirect
    assert nonce_page.status_code == 303

    https = serve_dashboard(base_url="https://ops.greenleaf.example")
    with httpx.Client(base_url=https.url, timeout=10) as client:
        login = client.get("/ops/login")
        nonce = _field(login.text, "nonce")
        # A client keeps a Secure cookie to itself over plain http: this one hands it back by hand.
        answer = client.post(
            "/ops/login",
            data={"name": USER, "password": PASSWORD, "nonce": nonce},
            headers={"Cookie": f"{LOGIN_COOKIE}={nonce}"},
        )
    assert answer.status_code == 303
    cookie = next(v for v in answer.headers.get_list("set-cookie") if v.startswith(f"{SESSION_COOKIE}="))
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= attributes
    assert "samesite=lax" in cookie.lower() and "path=/ops" in cookie.lower() and "max-age=43200" in cookie.lower()
    login_cookie = login.headers["set-cookie"].lower()
    assert "httponly" in login_cookie and "secure" in login_cookie


def test_the_login_refuses_a_post_without_its_nonce_and_never_leaves_the_dashboard(ops: Dashboard) -> None:
    with httpx.Client(base_url=ops.url, timeout=10) as client:
        # Another site's form: no nonce cookie in this browser, or a nonce of its own.
        refused = client.post("/ops/login", data={"name": USER, "password": PASSWORD, "nonce": "guess"})
        assert refused.status_code == 403 and SESSION_COOKIE not in refused.cookies
        nonce = _field(refused.text, "nonce")  # each login page comes with a nonce of its own
        wrong = client.post("/ops/login", data={"name": USER, "password": PASSWORD, "nonce": nonce + "x"})
        assert wrong.status_code == 403 and SESSION_COOKIE not in wrong.cookies
        nonce = _field(wrong.text, "nonce")
        foreign = client.post(
            "/ops/login",
            data={"name": USER, "password": PASSWORD, "nonce": nonce},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403 and SESSION_COOKIE not in foreign.cookies
        unknown = client.post("/ops/login", data={"name": "mallory", "password": PASSWORD, "nonce": nonce})
        assert unknown.status_code == 401 and "Wrong name or password" in unknown.text
        assert SESSION_COOKIE not in client.cookies
        for target in ("//evil.example/", "https://evil.example/ops/", "/ops\\@evil.example", "/elsewhere"):
            nonce = _field(client.get("/ops/login").text, "nonce")
            answer = client.post(
                "/ops/login", data={"name": USER, "password": PASSWORD, "nonce": nonce, "next": target}
            )
            assert answer.status_code == 303 and answer.headers["location"] == "/ops/", target
            client.cookies.delete(SESSION_COOKIE, path="/ops")


def test_a_decision_needs_the_sessions_csrf_token_and_this_origin(ops: Dashboard) -> None:
    ops.lead("kim@example.com", "signed_up")
    message = ops.make_unknown("kim@example.com")
    client, csrf = sign_in(ops)
    other_client, other_csrf = sign_in(ops)
    assert other_csrf != csrf
    url = f"/ops/outbox/{message}"
    for data, headers in (
        ({"decision": "sent"}, {}),
        ({"decision": "sent", "csrf": ""}, {}),
        ({"decision": "sent", "csrf": csrf[:-1]}, {}),
        ({"decision": "sent", "csrf": other_csrf}, {}),  # a token of another session
        ({"decision": "sent", "csrf": csrf}, {"Origin": "https://evil.example"}),
        ({"decision": "sent", "csrf": csrf}, {"Origin": "null"}),
    ):
        answer = client.post(url, data=data, headers=headers)
        assert answer.status_code == 403, (data, headers)
        assert ops.status(message)[0] == "unknown"
    assert client.post("/ops/logout", data={}).status_code == 403  # a logout is a POST like the others
    assert client.get("/ops/").status_code == 200

    answer = client.post(url, data={"decision": "sent", "csrf": csrf}, headers={"Origin": ops.url})
    assert answer.status_code == 303 and answer.headers["location"] == f"/ops/outbox?done={message}&decision=sent"
    assert ops.status(message)[0] == "sent"
    other_client.close()


def test_send_again_requeues_once_and_records_who_decided(ops: Dashboard) -> None:
    ops.lead("lou@example.com", "signed_up")
    message = ops.make_unknown("lou@example.com")
    client, csrf = sign_in(ops)
    assert client.post(f"/ops/outbox/{message}", data={"decision": "maybe", "csrf": csrf}).status_code == 400
    ops.clock.at = NOW + timedelta(hours=1)
    answer = client.post(f"/ops/outbox/{message}", data={"decision": "resend", "csrf": csrf})
    assert answer.headers["location"] == f"/ops/outbox?done={message}&decision=resend"
    o, ev = tables.outbox, tables.events
    with ops.engine.connect() as conn:
        row = conn.execute(sa.select(o).where(o.c.id == message)).one()
        decided = conn.execute(sa.select(ev).where(ev.c.name == "email_decided")).one()
    assert (row.status, row.next_attempt_at, row.claimed_at) == ("queued", ops.clock.at, None)
    assert row.last_error.startswith(f"sent again by {USER} at 2026-11-23T11:00:00Z (was: worker stopped")
    assert decided.source == "ops" and decided.occurred_at == ops.clock.at
    assert decided.properties == {
        "decision": "resend",
        "by": USER,
        "message": message,
        "funnel": "trial",
        "step": "welcome",
    }

    # Settled already: a second decision (another tab, another operator) changes nothing.
    again = client.post(f"/ops/outbox/{message}", data={"decision": "sent", "csrf": csrf})
    assert again.headers["location"] == f"/ops/outbox?done={message}&decision=stale"
    assert ops.status(message)[0] == "queued"
    assert "was no longer unknown" in client.get(again.headers["location"]).text


class Events:
    """Reads a server-sent event stream in a thread, so a test can wait for what it expects."""

    def __init__(self, client: httpx.Client, path: str, headers: dict[str, str] | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.ended = threading.Event()
        self._response = client.send(client.build_request("GET", path, headers=headers), stream=True)
        assert self._response.status_code == 200
        assert self._response.headers["content-type"].startswith("text/event-stream")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        event: dict[str, Any] = {}
        try:
            for line in self._response.iter_lines():
                if not line:
                    if "event" in event:
                        self.received.append(event)
                    event = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    event[key] = json.loads(value) if key == "data" else value
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    def wait_for(self, test: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.received:
                if test(event):
                    return event
            time.sleep(0.05)
        raise AssertionError(f"no such event in {self.received}")

    def close(self) -> None:
        self._response.close()


@pytest.fixture
def short_streams(serve_dashboard: Callable[..., Dashboard]) -> Iterator[Dashboard]:
    yield serve_dashboard(ops=OpsSettings(users={USER: USER_HASH}, feed_stream_seconds=1))


def test_the_feed_resumes_from_last_event_id_and_a_stream_ends_in_its_time(short_streams: Dashboard) -> None:
    ops = short_streams
    client, _ = sign_in(ops)
    stream = Events(client, "/ops/feed/stream")
    ready = stream.wait_for(lambda e: e["event"] == "ready")
    assert ready["data"] == {"user": USER} and re.fullmatch(r"\d+\.\d+", ready["id"])

    ops.lead("max@example.com", "signed_up")
    moved = stream.wait_for(lambda e: e["event"] == "transition")
    assert (moved["data"]["lead"], moved["data"]["from"], moved["data"]["to"]) == ("max@example.com", None, "inquiry")
    assert moved["data"]["cause"] == "event" and moved["data"]["event"] == "signed_up"
    last_id = stream.wait_for(lambda e: "id" in e and e["event"] != "ready")["id"]
    assert stream.ended.wait(3), "the stream outlived feed_stream_seconds"

    # Between two connections the lead moves on: the next connection starts where the last one was.
    ops.lead("max@example.com", "pricing_viewed")
    resumed = Events(client, "/ops/feed/stream", {"Last-Event-ID": last_id})
    moved = resumed.wait_for(lambda e: e["event"] == "transition")
    assert (moved["data"]["from"], moved["data"]["to"]) == ("inquiry", "comparison")
    assert [e["data"]["to"] for e in resumed.received if e["event"] == "transition"] == ["comparison"]
    resumed.close()
    client.close()


def test_an_open_feed_does_not_keep_the_server_from_stopping(short_streams: Dashboard) -> None:
    ops = short_streams
    client, _ = sign_in(ops)
    stream = Events(client, "/ops/feed/stream")
    stream.wait_for(lambda e: e["event"] == "ready")
    started = time.monotonic()
    ops.server.should_exit = True
    ops.thread.join(timeout=10)
    assert not ops.thread.is_alive()
    assert time.monotonic() - started < 1 + 1.5  # feed_stream_seconds, a poll, uvicorn's own pause
    assert stream.ended.wait(1)
    client.close()


def test_a_stream_ends_when_its_client_goes_away(ops: Dashboard) -> None:
    """With the default feed_stream_seconds (10 s): the server notices the closed socket at its next poll."""
    client, _ = sign_in(ops)
    host, port = ops.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        request = (
            f"GET /ops/feed/stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Cookie: {SESSION_COOKIE}={client.cookies[SESSION_COOKIE]}\r\n\r\n"
        )
        sock.sendall(request.encode())
        received = b""
        while b"event: ready" not in received:
            received += sock.recv(4096)
        assert received.startswith(b"HTTP/1.1 200") and len(ops.server.server_state.tasks) == 1
    client.close()
    closed = time.monotonic()
    while ops.server.server_state.tasks and time.monotonic() - closed < 5:
        time.sleep(0.05)
    assert not ops.server.server_state.tasks and time.monotonic() - closed < 1.5
