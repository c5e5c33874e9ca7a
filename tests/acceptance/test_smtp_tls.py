"""The relay connection as configured: STARTTLS or implicit TLS with a certificate checked against a
given CA, and a login, against a real aiosmtpd server that requires both. A relay that refuses the
login or the certificate costs the messages nothing: they wait, no attempt counted, and the error
says what is wrong. `funnel send-test` goes the same way."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from engine.mail.mailer import DispatchResult, Mailer
from engine.mail.templates import TemplateLibrary
from engine.settings import Settings
from engine.store import tables
from tests.acceptance.conftest import queue_email
from tests.smtp_server import _free_port

# aiosmtpd warns about AUTH without STARTTLS; with implicit TLS the whole session is encrypted.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

ROOT = Path(__file__).resolve().parents[2]
EMAILS = ROOT / "tests" / "fixtures" / "emails"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
USER, PASSWORD = "funnel", "s3cret-relay"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class Relay:
    """Records each delivered message with whether its session was encrypted and logged in."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bool, bool]] = []
        self.logins = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        encrypted = server.transport.get_extra_info("ssl_object") is not None
        self.messages.append((envelope.original_content or envelope.content, encrypted, bool(session.authenticated)))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        self.logins += 1
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USER.encode(), PASSWORD.encode())
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 235 or 535 itself


@pytest.fixture(params=["starttls", "ssl"])
def relay(request: pytest.FixtureRequest, certificate: tuple[Path, Path]) -> Iterator[tuple[Relay, int, str]]:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = Relay()
    port = _free_port("127.0.0.1")
    # aiosmtpd only knows STARTTLS sessions as encrypted for AUTH; an implicit-TLS session is, from the start.
    tls: dict[str, Any] = (
        {"tls_context": context, "require_starttls": True, "auth_require_tls": True}
        if request.param == "starttls"
        else {"ssl_context": context, "auth_require_tls": False}
    )
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        ready_timeout=60,
        authenticator=handler.authenticate,
        auth_required=True,
        auth_exclude_mechanism=["LOGIN"],  # one mechanism, so each login attempt counts once
        **tls,
    )
    controller.start()
    try:
        yield handler, port, request.param
    finally:
        controller.stop()


def queue(engine: sa.Engine, count: int) -> None:
    for i in range(count):
        queue_email(engine, f"lead{i}@example.com", "welcome", NOW)


def dispatch(engine: sa.Engine, port: int, security: str, **smtp: Any) -> DispatchResult:
    options = {
        "host": "127.0.0.1",
        "port": port,
        "security": security,
        "timeout_s": 5.0,
        "rate_per_s": 1000,
        "connections": 2,
        "username": USER,
        "password": PASSWORD,
        **smtp,
    }
    mailer = Mailer(engine, Settings(smtp=options), TemplateLibrary(EMAILS))
    return asyncio.run(mailer.dispatch(NOW, "127.0.0.1", port))


def states(engine: sa.Engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(tables.outbox.c.status, tables.outbox.c.attempts))]  # type: ignore[misc]


def test_mail_goes_encrypted_and_logged_in_with_the_configured_ca(
    engine: sa.Engine, relay: tuple[Relay, int, str], certificate: tuple[Path, Path]
) -> None:
    handler, port, security = relay
    queue(engine, 3)
    result = dispatch(engine, port, security, ca_file=certificate[0])
    assert (result.sent, result.errors, result.relay_error) == (3, [], None)
    assert [(tls, logged_in) for _, tls, logged_in in handler.messages] == [(True, True)] * 3
    assert handler.logins <= 2  # one login per connection, reused for the next messages


def test_a_refused_login_keeps_the_messages_waiting_and_says_why(
    engine: sa.Engine, relay: tuple[Relay, int, str], certificate: tuple[Path, Path]
) -> None:
    handler, port, security = relay
    queue(engine, 5)
    result = dispatch(engine, port, security, ca_file=certificate[0], password="wrong")
    assert result.sent == 0 and handler.messages == []
    assert states(engine) == [("deferred", 0)] * 5
    # The relay's failure, for the runner to say once; no message is blamed for it.
    assert result.errors == [] and result.relay_error is not None and "535" in result.relay_error
    assert handler.logins <= 2  # the round stopped trying a relay that refused us


def test_an_untrusted_certificate_is_refused(engine: sa.Engine, relay: tuple[Relay, int, str]) -> None:
    handler, port, security = relay
    queue(engine, 2)
    result = dispatch(engine, port, security)  # no ca_file: the system's CAs do not know this one
    assert result.sent == 0 and handler.messages == []
    assert states(engine) == [("deferred", 0)] * 2
    assert result.relay_error is not None and "certificate" in result.relay_error.lower()


def test_send_test_uses_the_relay_settings(
    relay: tuple[Relay, int, str], certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    handler, port, security = relay
    env = {
        **os.environ,
        "FUNNEL_SMTP__HOST": "127.0.0.1",
        "FUNNEL_SMTP__PORT": str(port),
        "FUNNEL_SMTP__SECURITY": security,
        "FUNNEL_SMTP__CA_FILE": str(certificate[0]),
        "FUNNEL_SMTP__USERNAME": USER,
        "FUNNEL_SMTP__PASSWORD": PASSWORD,
    }
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "send-test", "lead-magnet/report-delivery", "--to", "me@example.com"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "sent lead-magnet/report-delivery to me@example.com" in done.stdout
    ((raw, tls, logged_in),) = handler.messages
    assert tls and logged_in
    message = message_from_bytes(raw, policy=default_policy)
    assert message["To"] == "me@example.com"
    assert message["Subject"]
