"""Dashboard sessions live in the database, over real sockets: signing out ends the session for every
copy of its cookie, on every process of the app that shares the database; failed sign-ins lock the name
(known or not, answered alike) and then the client out for a growing while, said once in the log."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest

from engine.core.ops_auth import SESSION_COOKIE
from tests.browser.conftest import NOW, PASSWORD, USER, Dashboard
from tests.browser.test_ops_http import _field, _goes_to_login, sign_in


def test_signing_out_ends_the_session_everywhere_the_cookie_goes(serve_dashboard: Callable[..., Dashboard]) -> None:
    one = serve_dashboard()
    other = serve_dashboard()  # a second process of the app on the same database
    client, csrf = sign_in(one)
    cookie = client.cookies[SESSION_COOKIE]
    with httpx.Client(base_url=other.url, timeout=10, cookies={SESSION_COOKIE: cookie}) as copy:
        assert copy.get("/ops/").status_code == 200  # the same session, on the other process
        signed_out = copy.post("/ops/logout", data={"csrf": csrf})
        assert signed_out.status_code == 303 and signed_out.headers["location"] == "/ops/login"
    for dashboard in (one, other):
        with httpx.Client(base_url=dashboard.url, timeout=10, cookies={SESSION_COOKIE: cookie}) as kept:
            assert _goes_to_login(kept.get("/ops/")), dashboard.url
            assert kept.get("/ops/feed/stream").status_code == 401
            assert kept.post("/ops/logout", data={"csrf": csrf}).status_code == 303  # to the login
    # Signing in again is a new session; the old cookie stays dead.
    again, _ = sign_in(one)
    assert again.cookies[SESSION_COOKIE] != cookie and again.get("/ops/").status_code == 200


def _attempt(client: httpx.Client, name: str, password: str) -> httpx.Response:
    nonce = _field(client.get("/ops/login").text, "nonce")
    return client.post("/ops/login", data={"name": name, "password": password, "nonce": nonce, "next": "/ops/"})


def _message(page: httpx.Response) -> str:
    found = re.search(r'role="alert"[^>]*>([^<]+)<', page.text)
    assert found is not None, page.text
    return found.group(1).strip()


def test_failed_sign_ins_lock_the_name_for_a_growing_while(ops: Dashboard, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine.dashboard")
    client = httpx.Client(base_url=ops.url, timeout=10)
    for _ in range(5):
        assert _attempt(client, USER, "wrong password").status_code == 401
    locked = [_attempt(client, USER, PASSWORD) for _ in range(3)]  # even the right password, while locked
    for answer in locked:
        assert answer.status_code == 429 and answer.headers["retry-after"] == "60"
        assert _message(answer) == "Too many failed sign-ins. Try again in 1 minute."
        assert SESSION_COOKIE not in client.cookies
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "locked" in r.getMessage()]
    assert warnings == [f"ops sign-in locked for name {USER!r} until 2026-11-23 10:01:00Z after 5 failed sign-ins"]

    ops.clock.at = NOW + timedelta(seconds=60)
    assert _attempt(client, USER, "wrong again").status_code == 401  # the sixth: twice as long this time
    assert _attempt(client, USER, PASSWORD).headers["retry-after"] == "120"
    ops.clock.at = NOW + timedelta(seconds=180)
    assert _attempt(client, USER, PASSWORD).status_code == 303  # a sign-in clears the count
    client.cookies.delete(SESSION_COOKIE, path="/ops")
    assert _attempt(client, USER, "wrong").status_code == 401
    assert _attempt(client, USER, PASSWORD).status_code == 303
    client.close()


def test_an_unknown_name_is_locked_and_answered_as_a_known_one(ops: Dashboard) -> None:
    answers = {}
    for name in (USER, "mallory"):
        with httpx.Client(base_url=ops.url, timeout=10) as client:
            failed = [_attempt(client, name, "wrong password") for _ in range(5)]
            answers[name] = (failed, _attempt(client, name, PASSWORD))
    for name, (failed, locked) in answers.items():
        assert [a.status_code for a in failed] == [401] * 5, name
        assert {_message(a) for a in failed} == {"Wrong name or password."}, name
        assert (locked.status_code, locked.headers["retry-after"], _message(locked)) == (
            429,
            "60",
            "Too many failed sign-ins. Try again in 1 minute.",
        ), name


def test_failed_sign_ins_from_one_client_lock_that_client_out(ops: Dashboard) -> None:
    """Twenty failures from one address, whatever names they try, lock the address: a guesser cannot go
    through the names four at a time."""
    with httpx.Client(base_url=ops.url, timeout=10) as client:
        for i in range(20):
            assert _attempt(client, f"guess{i // 4}", "wrong password").status_code == 401
        locked = _attempt(client, USER, PASSWORD)
        assert (locked.status_code, locked.headers["retry-after"]) == (429, "60")
        ops.clock.at = NOW + timedelta(minutes=1)
        assert _attempt(client, USER, PASSWORD).status_code == 303


def test_attempts_sent_all_at_once_are_counted_before_they_pass_the_lockout(ops: Dashboard) -> None:
    """Twenty wrong passwords for one name posted at the same moment: the lockout is checked with the
    password, a few at a time, so it stops most of them instead of all twenty being tried."""
    clients = [httpx.Client(base_url=ops.url, timeout=30) for _ in range(20)]
    nonces = [_field(c.get("/ops/login").text, "nonce") for c in clients]
    start = threading.Barrier(len(clients))
    statuses: list[int] = []

    def attempt(client: httpx.Client, nonce: str) -> None:
        start.wait()
        answer = client.post("/ops/login", data={"name": USER, "password": "wrong password", "nonce": nonce})
        statuses.append(answer.status_code)

    threads = [threading.Thread(target=attempt, args=pair) for pair in zip(clients, nonces, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for c in clients:
        c.close()
    assert len(statuses) == 20 and set(statuses) == {401, 429}
    assert statuses.count(401) <= 5 + 1  # the fifth failure locks; one more may be in its check already
