"""Signed links survive a key rotation: a link signed with a replaced key still works while that key is
listed in `previous_secret_keys`, and stops working once it is dropped. A token (and an ops session
cookie) is valid only as it was written: no other spelling of its signature is taken."""

from __future__ import annotations

import string
from datetime import UTC, datetime

from pydantic import SecretStr

from engine.core.ops_auth import OpsSettings, Sessions, hash_password
from engine.mail.links import PURPOSES, Links
from engine.settings import Settings


def _links(key: str, previous: list[str] | None = None) -> Links:
    return Links(Settings(secret_key=SecretStr(key), previous_secret_keys=[SecretStr(k) for k in previous or []]))


def test_a_link_signed_with_a_replaced_key_works_while_that_key_is_listed() -> None:
    old = _links("old-key-0123456789")
    token = old.unsubscribe_url("ana@example.com", "lead-magnet").rsplit("/", 1)[1]
    payload = {"e": "ana@example.com", "f": "lead-magnet"}

    assert old.verify("unsubscribe", token) == payload
    assert _links("new-key-0123456789", ["old-key-0123456789"]).verify("unsubscribe", token) == payload
    assert _links("new-key-0123456789").verify("unsubscribe", token) is None


def test_new_links_are_signed_with_the_new_key_only() -> None:
    rotated = _links("new-key-0123456789", ["old-key-0123456789"])
    token = rotated.preferences_url("ana@example.com").rsplit("/", 1)[1]
    assert _links("new-key-0123456789").verify("preferences", token) == {"e": "ana@example.com"}
    assert _links("old-key-0123456789").verify("preferences", token) is None
    assert rotated.verify("unsubscribe", token) is None  # still one purpose per token


def test_the_public_default_key_is_refused_beyond_loopback() -> None:
    assert Settings().start_problems() == []  # the demo: everything on 127.0.0.1
    assert Settings(base_url="http://localhost:8000").start_problems("::1") == []
    public = Settings(base_url="https://news.greenleaf.example")
    (problem,) = public.start_problems()
    assert problem.startswith("secret_key is the public default key while base_url") and "FUNNEL_SECRET_KEY" in problem
    (problem,) = Settings().start_problems("0.0.0.0")
    assert "http.host" in problem
    assert Settings(secret_key=SecretStr("x" * 32), base_url="https://g.example").start_problems("0.0.0.0") != []
    strong = SecretStr("MP56PnSGiUDc1eGDsRoWAKPT1RHyMfl2Wc8oWdK67wQ")
    assert Settings(secret_key=strong, base_url="https://g.example").start_problems("0.0.0.0") == []


def _other_spellings(token: str) -> list[str]:
    """Every other way to write the token's signature that a lenient base64 reader takes for the same
    bytes: another last character (its low bits are padding), `=` padding, a character outside the
    alphabet."""
    payload, signature = token.rsplit(".", 1)
    alphabet = string.ascii_letters + string.digits + "-_"
    last = [signature[:-1] + c for c in alphabet if c != signature[-1]]
    return [f"{payload}.{s}" for s in (*last, signature + "=", signature + "==", signature + "é")]


def test_a_token_is_valid_only_as_it_was_written() -> None:
    links = _links("MP56PnSGiUDc1eGDsRoWAKPT1RHyMfl2Wc8oWdK67wQ")
    for purpose in PURPOSES:
        token = links.sign(purpose, {"e": "ana@example.com", "f": "lead-magnet"})
        assert links.verify(purpose, token) is not None
        for other in _other_spellings(token):
            assert links.verify(purpose, other) is None, (purpose, other)


def test_an_ops_session_cookie_is_valid_only_as_it_was_written() -> None:
    ops = OpsSettings(users={"olivia": hash_password("correct horse battery staple")})
    sessions = Sessions("MP56PnSGiUDc1eGDsRoWAKPT1RHyMfl2Wc8oWdK67wQ", ops)
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    cookie, _ = sessions.issue("olivia", now)
    assert sessions.read(cookie, now) is not None
    for other in _other_spellings(cookie):
        assert sessions.read(other, now) is None, other
