"""The real mail servers the bounce tests stand on: postfix and dovecot write the reports themselves.

These prove the harness, not the engine: a missing mailbox, a full one and a receiving server that
refuses the sender each come back to the return path as a delivery status notification written by
postfix, and a refusal by the relay itself arrives at RCPT time.
"""

from __future__ import annotations

import imaplib
import smtplib
import threading
import time
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.mail_servers import Dovecot, Postfix, free_port, require

BLOCKLISTED = "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"


class Returns:
    """The bounce domain's server: every message postfix returns, with its envelope."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 2.0.0 taken"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[str, list[str], Message]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.1)
        raise AssertionError(f"{len(self.messages)} returned messages, expected {count}")


def delivery_status(report: Message) -> dict[str, str]:
    """The per-recipient fields of a DSN's message/delivery-status part."""
    for part in report.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            assert isinstance(payload, list)
            fields = payload[1]
            return {key.lower(): " ".join(str(value).split()) for key, value in fields.items()}
    raise AssertionError("no message/delivery-status part")


@pytest.fixture(scope="module")
def servers() -> Any:
    require()
    returns = Returns()
    sink = Controller(returns, hostname="127.0.0.1", port=free_port())
    sink.start()
    with Dovecot({"ann": None, "full": 1}) as dovecot:
        routes = {
            "mail.test": f"lmtp:inet:127.0.0.1:{dovecot.lmtp_port}",
            "bounce.test": f"smtp:[127.0.0.1]:{sink.port}",
        }
        with Postfix(routes, refuse={"rbl.test": BLOCKLISTED}, remote_refuse={"blocked.test": BLOCKLISTED}) as postfix:
            yield postfix, dovecot, returns
    sink.stop()


def send(postfix: Postfix, token: str, to: str, size: int = 100) -> None:
    body = f"From: news@shop.test\r\nTo: {to}\r\nMessage-ID: <{token}@shop.test>\r\nSubject: hi\r\n\r\n{'x' * size}\r\n"
    with smtplib.SMTP("127.0.0.1", postfix.port) as smtp:
        smtp.sendmail(f"bounces+{token}@bounce.test", [to], body.encode())


def test_postfix_returns_reports_for_a_missing_mailbox_a_full_one_and_a_refusing_server(servers: Any) -> None:
    postfix, dovecot, returns = servers
    send(postfix, "gone", "ghost@mail.test")
    send(postfix, "full", "full@mail.test", size=5000)
    send(postfix, "blocked", "someone@blocked.test")
    send(postfix, "fine", "ann@mail.test")
    reports = {rcpt[0]: (sender, delivery_status(msg)) for sender, rcpt, msg in returns.wait_for(3)}
    assert set(reports) == {"bounces+gone@bounce.test", "bounces+full@bounce.test", "bounces+blocked@bounce.test"}
    senders = {sender for sender, _ in reports.values()}
    assert senders <= {"", "<>"}, f"a report goes out with a null sender, not {senders}"
    assert reports["bounces+gone@bounce.test"][1]["status"] == "5.1.1"
    assert reports["bounces+full@bounce.test"][1]["status"] == "5.2.2"
    assert reports["bounces+blocked@bounce.test"][1]["status"] == "5.7.1"
    assert "blocked using" in reports["bounces+blocked@bounce.test"][1]["diagnostic-code"]
    with imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port, ssl_context=dovecot.ssl_context()) as imap:
        imap.login("ann", dovecot.password)
        imap.select("INBOX")
        _, found = imap.search(None, "ALL")
        assert len(found[0].split()) == 1


def test_the_relay_itself_refuses_at_rcpt_time(servers: Any) -> None:
    postfix, _, _ = servers
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(postfix, "rbl", "someone@rbl.test")
    code, text = refused.value.recipients["someone@rbl.test"]
    assert (code, text.split()[0]) == (554, b"5.7.1")
