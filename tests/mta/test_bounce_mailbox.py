"""The bounce mailbox poller against a real IMAP server (dovecot over TLS, on loopback).

The mailbox holds what a real bounce mailbox holds: delivery status notifications, a feedback report,
an auto-reply, and mail that is nothing of the kind, delivered over dovecot's own LMTP. The intake
here stands for the engine's processor (test_bounces_through_postfix.py drives the real one): it
recognises the reports by their subject and records what it was handed. What these tests prove is the
IMAP side: what is taken leaves, what is not stays exactly as it was, and nothing is handed over twice.
"""

from __future__ import annotations

import asyncio
import imaplib
import logging
import smtplib
from collections.abc import Iterator
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest
from pydantic import SecretStr

from engine.core.bounce_outcome import Verdict
from engine.runtime.bounce_mailbox import MailboxPoller, PollResult
from engine.settings import BounceMailboxSettings
from tests.mail_servers import Dovecot, free_port, require

CORPUS = Path(__file__).parent.parent / "data" / "bounces"
DSN = (CORPUS / "Mail-DeliveryStatus-BounceParser/cam-unknown.eml").read_bytes()
ARF = (CORPUS / "email-arf/example2.eml").read_bytes()
AUTO_REPLY = (CORPUS / "Mail-DeliveryStatus-BounceParser/aol-vacation.eml").read_bytes()
NEWSLETTER = (
    b"From: news@shop.test\r\nTo: bounces@bounce.test\r\nSubject: Our spring newsletter\r\n"
    b"Message-ID: <spring@shop.test>\r\n\r\nNew seeds are in.\r\n"
)
LATE_DSN = (
    b"From: MAILER-DAEMON@relay.test\r\nTo: bounces+late@bounce.test\r\nSubject: Delivery Status Notification\r\n"
    b"Message-ID: <late@relay.test>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nNo such user.\r\n"
    b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.test\r\n\r\n"
    b"Final-Recipient: rfc822; ghost@mail.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n"
)
REPORTS = {
    "Undelivered Mail Returned to Sender",
    "FW: Earn money",
    "Re:   blah blah blah (Automatic Response)",
    "Delivery Status Notification",
}
USERS = ("ann", "bob", "cat", "dan", "eve", "fay")


class Intake:
    """Takes what it recognises as a report, says the rest is none; `retry_at` makes it say RETRY from
    that call on, as when the database is away."""

    def __init__(self, retry_at: int | None = None) -> None:
        self.handed: list[tuple[str, bytes]] = []
        self.retry_at = retry_at

    async def __call__(self, raw: bytes, source: str) -> Verdict:
        self.handed.append((source, raw))
        if self.retry_at is not None and len(self.handed) >= self.retry_at:
            return Verdict.RETRY
        return Verdict.TAKEN if subject(raw) in REPORTS else Verdict.NOT_RECOGNISED

    def subjects(self) -> list[str]:
        return [subject(raw) for _, raw in self.handed]


def subject(raw: bytes) -> str:
    return str(message_from_bytes(raw, policy=default_policy)["Subject"] or "")


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    require()
    with Dovecot(dict.fromkeys(USERS)) as server:
        yield server


def deliver(dovecot: Dovecot, user: str, *messages: bytes) -> None:
    """Into `user`'s INBOX over dovecot's LMTP, as an MTA delivers."""
    with smtplib.LMTP("127.0.0.1", dovecot.lmtp_port) as lmtp:
        for raw in messages:
            lmtp.sendmail("", [f"{user}@bounce.test"], raw)


def folder(dovecot: Dovecot, user: str, name: str = "INBOX") -> dict[str, tuple[bytes, bytes]]:
    """Each message of a folder by subject: its flags and its bytes, read with another client than the
    poller's (the standard library's), without changing any flag."""
    with imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port, ssl_context=dovecot.ssl_context()) as imap:
        imap.login(user, dovecot.password)
        status, _ = imap.select(f'"{name}"', readonly=True)
        if status != "OK":
            return {}
        _, found = imap.uid("SEARCH", "ALL")
        out: dict[str, tuple[bytes, bytes]] = {}
        for uid in found[0].split():
            _, data = imap.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")
            head, body = data[0]  # type: ignore[misc]
            out[subject(body)] = (head, body)
        return out


def poller(dovecot: Dovecot, user: str, intake: Intake, **changes: object) -> MailboxPoller:
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "port": dovecot.imaps_port,
        "username": user,
        "password": SecretStr(dovecot.password),
        "ca_file": dovecot.cert,
        "interval_s": 0.2,
    }
    return MailboxPoller(BounceMailboxSettings.model_validate(settings | changes), intake)


def test_reports_are_moved_the_rest_stays_untouched_and_a_second_poll_takes_nothing_new(
    dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="engine")
    deliver(dovecot, "ann", DSN, NEWSLETTER, ARF, AUTO_REPLY)
    before = folder(dovecot, "ann")
    intake = Intake()
    mailbox = poller(dovecot, "ann", intake)

    first = asyncio.run(mailbox.poll())

    assert first == PollResult(taken=3, left=1, retried=0)
    assert {source for source, _ in intake.handed} == {"imap"}
    assert sorted(intake.subjects()) == sorted(before)  # each message handed over once, whole
    assert {raw for _, raw in intake.handed} == {body for _, body in before.values()}
    inbox = folder(dovecot, "ann")
    assert list(inbox) == ["Our spring newsletter"]
    flags, body = inbox["Our spring newsletter"]
    assert b"\\Seen" not in flags, flags  # not even read
    assert body == before["Our spring newsletter"][1]
    processed = folder(dovecot, "ann", "Processed")
    assert set(processed) == REPORTS - {"Delivery Status Notification"}
    assert all(processed[s][1] == before[s][1] for s in processed)
    assert [r.getMessage() for r in caplog.records if r.name == "engine.bounce_mailbox"] == [
        f"bounce mailbox 127.0.0.1:{dovecot.imaps_port} INBOX: taken=3 left=1 retried=0"
    ]

    caplog.clear()
    second = asyncio.run(mailbox.poll())
    assert second == PollResult()
    assert len(intake.handed) == 4, "the newsletter was handed over again"
    assert not [r for r in caplog.records if r.name == "engine.bounce_mailbox"], "a poll that did nothing logged"

    deliver(dovecot, "ann", LATE_DSN)
    third = asyncio.run(mailbox.poll())
    assert third == PollResult(taken=1)
    assert intake.subjects()[4:] == ["Delivery Status Notification"]
    assert list(folder(dovecot, "ann")) == ["Our spring newsletter"]
    assert set(folder(dovecot, "ann", "Processed")) == REPORTS


def test_taken_reports_can_be_deleted_instead(dovecot: Dovecot) -> None:
    deliver(dovecot, "bob", DSN, NEWSLETTER, LATE_DSN)
    mailbox = poller(dovecot, "bob", Intake(), on_taken="delete")
    assert asyncio.run(mailbox.poll()) == PollResult(taken=2, left=1)
    assert list(folder(dovecot, "bob")) == ["Our spring newsletter"]
    assert folder(dovecot, "bob", "Processed") == {}  # deleted, not moved anywhere


def test_a_retry_leaves_the_message_and_ends_the_poll_until_the_engine_is_back(dovecot: Dovecot) -> None:
    deliver(dovecot, "cat", DSN, ARF, LATE_DSN)
    down = Intake(retry_at=2)
    assert asyncio.run(poller(dovecot, "cat", down).poll()) == PollResult(taken=1, retried=1)
    assert len(down.handed) == 2, "the poll went on after a retry"
    assert set(folder(dovecot, "cat")) == {"FW: Earn money", "Delivery Status Notification"}
    assert b"\\Seen" not in folder(dovecot, "cat")["FW: Earn money"][0]

    back = Intake()
    assert asyncio.run(poller(dovecot, "cat", back).poll()) == PollResult(taken=2)
    assert folder(dovecot, "cat") == {}


def test_a_message_over_the_size_limit_is_left_in_the_mailbox(dovecot: Dovecot) -> None:
    big = NEWSLETTER.replace(b"Our spring newsletter", b"Undelivered Mail Returned to Sender") + b"x" * 4000 + b"\r\n"
    deliver(dovecot, "dan", big, LATE_DSN)
    intake = Intake()
    assert asyncio.run(poller(dovecot, "dan", intake, max_message_bytes=2000).poll()) == PollResult(taken=1, left=1)
    assert intake.subjects() == ["Delivery Status Notification"]
    assert list(folder(dovecot, "dan")) == ["Undelivered Mail Returned to Sender"]


def test_a_mailbox_that_fails_is_an_outage_said_once_and_when_it_is_over(
    dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    deliver(dovecot, "eve", LATE_DSN)
    intake = Intake()
    refused = poller(dovecot, "eve", intake, password=SecretStr("wrong"))
    first = asyncio.run(refused.poll())
    assert first.error is not None and first.error.startswith("login refused"), first
    assert asyncio.run(refused.poll()).error == first.error
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "engine.bounce_mailbox"]
    assert len(lines) == 1 and lines[0][0] == logging.ERROR, lines
    assert f"bounce mailbox 127.0.0.1:{dovecot.imaps_port}: login refused" in lines[0][1]

    refused.settings = refused.settings.model_copy(update={"password": SecretStr(dovecot.password)})
    caplog.clear()
    assert asyncio.run(refused.poll()) == PollResult(taken=1)
    back = f"bounce mailbox 127.0.0.1:{dovecot.imaps_port} working again"
    assert any(r.levelno == logging.INFO and r.getMessage().startswith(back) for r in caplog.records)
    assert intake.subjects() == ["Delivery Status Notification"]

    untrusted = MailboxPoller(
        BounceMailboxSettings(host="127.0.0.1", port=dovecot.imaps_port, username="eve", password=SecretStr("x")),
        intake,
    )
    assert (asyncio.run(untrusted.poll()).error or "").startswith("certificate not trusted")
    nobody = poller(dovecot, "eve", intake, port=free_port())
    assert asyncio.run(nobody.poll()).error is not None
    assert len(intake.handed) == 1


def test_run_polls_at_the_interval_until_stopped(dovecot: Dovecot) -> None:
    intake = Intake()
    mailbox = poller(dovecot, "fay", intake)

    async def scenario() -> None:
        stop = asyncio.Event()
        polling = asyncio.create_task(mailbox.run(stop))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(deliver, dovecot, "fay", LATE_DSN)
        for _ in range(100):
            if intake.handed:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(polling, timeout=10)

    asyncio.run(scenario())
    assert intake.subjects() == ["Delivery Status Notification"]
    assert folder(dovecot, "fay") == {}
