"""Replies through the LMTP receiver, on SQLite and PostgreSQL, with an aiosmtpd server standing for the
relay in front of the sender's real inbox: a person's reply becomes one `email_replied` event and arrives
there byte for byte; the same reply twice is one event and one forward; an auto-reply is on the timeline
and moves nothing; a forged token puts nothing on any lead; a relay that is down makes the MTA keep the
reply (451) until it can be forwarded."""

from __future__ import annotations

import asyncio
import re
import smtplib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from sqlalchemy.engine import Engine

from engine.core.return_paths import return_path
from engine.runtime.bounce_mailbox import PollResult
from engine.runtime.bounce_processing import intake
from engine.runtime.bounce_receiver import BounceReceiver
from engine.runtime.replies import ReplyDesk
from engine.settings import BounceReceiverSettings, BounceSettings, Settings
from engine.store import tables
from engine.views import lead_timeline
from tests.db.test_bounce_outcomes import sent
from tests.mail_servers import Dovecot, Postfix, free_port, require
from tests.mta.test_bounce_mailbox import folder, poller
from tests.mta.test_bounce_receiver import wait_for_log

KEY = "r" * 43
NOW = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


class Inbox:
    """aiosmtpd as the relay: every message it takes, with its envelope, as the bytes it got."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.got: list[tuple[str, list[str], bytes]] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=port, ready_timeout=30)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.got.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: queued"

    def __enter__(self) -> Inbox:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class Served:
    """The receiver with the engine's own intake (reports and replies) on a loop of its own thread."""

    @staticmethod
    def settings_for(relay_port: int) -> Settings:
        return Settings(
            secret_key=KEY,
            sender={"name": "Shop", "address": "hello@shop.test"},
            smtp={"host": "127.0.0.1", "port": relay_port, "security": "none", "timeout_s": 5},
            replies={"domain": "reply.shop.test", "forward_to": "owner@inbox.test"},
            bounces=BounceSettings(domain="bounce.shop.test", receiver=BounceReceiverSettings(port=0)),
        )

    def __init__(self, db: Engine, relay_port: int) -> None:
        self.settings = self.settings_for(relay_port)
        self.desk = ReplyDesk(db, self.settings, ("127.0.0.1", relay_port), lambda: NOW)
        take = intake(db, self.settings.bounces, lambda: NOW, self.settings.signing_keys, replies=self.desk)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.receiver = BounceReceiver(self.settings.bounces, take, reply_domain="reply.shop.test")
        self.call(self.receiver.start())

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def deliver(self, sender: str, recipient: str, message: bytes) -> dict[str, tuple[int, bytes]]:
        with smtplib.LMTP("127.0.0.1", self.receiver.port, timeout=30) as client:
            client.ehlo("mta.test")
            return client.sendmail(sender, [recipient], message)  # refusals by recipient

    def stop(self) -> None:
        self.call(self.receiver.stop(5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def relay_port() -> int:
    return free_port()


@pytest.fixture
def served(db: Engine, relay_port: int) -> Iterator[Served]:
    server = Served(db, relay_port)
    yield server
    server.stop()


def reply(to: str, message_id: str = "<answer-1@example.com>", extra: str = "") -> bytes:
    return (
        f"From: Ana <ana@example.com>\r\nTo: Shop <{to}>\r\nSubject: Re: Your guide\r\n{extra}"
        "Date: Mon, 04 May 2026 10:00:00 +0000\r\n"
        f"Message-ID: {message_id}\r\nDKIM-Signature: v=1; a=rsa-sha256; d=example.com; b=abc\r\n\r\n"
        "Yes, please call me.\r\n"
    ).encode()


def replied_events(db: Engine) -> list[tuple[int, str, dict[str, Any]]]:
    e = tables.events
    with db.connect() as conn:
        rows = conn.execute(sa.select(e.c.lead_id, e.c.source, e.c.properties).where(e.c.name == "email_replied"))
        return [(r.lead_id, r.source, dict(r.properties)) for r in rows]


def timeline(db: Engine, address: str) -> list[str]:
    with db.connect() as conn:
        found = lead_timeline.read(conn, address)
    assert found is not None
    return [entry.what for entry in found.entries if entry.kind == "report"]


def test_a_reply_becomes_one_event_and_reaches_the_inbox_unchanged_once(
    served: Served, db: Engine, relay_port: int
) -> None:
    lead_id, outbox_id = sent(db, "ana@example.com", step="guide")
    address = return_path(outbox_id, KEY, "reply", "reply.shop.test")
    message = reply(address)
    with Inbox(relay_port) as inbox:
        assert served.deliver("ana@example.com", address, message) == {}
        assert served.deliver("ana@example.com", address, message) == {}  # the MTA's second copy
    assert replied_events(db) == [(lead_id, "reply", {"funnel": "guide", "step": "guide", "message": outbox_id})]
    [(mail_from, rcpts, forwarded)] = inbox.got
    assert (mail_from, rcpts) == ("hello@shop.test", ["owner@inbox.test"])
    # The reply as the lead's server wrote it, signature included, under the receiver's delivery lines.
    assert forwarded.endswith(message)
    assert forwarded.startswith(b"Return-Path: <ana@example.com>\r\nDelivered-To: " + address.encode())
    assert timeline(db, "ana@example.com") == [f"a reply via lmtp to message {outbox_id} by token (replied, forwarded)"]


def test_an_auto_reply_is_on_the_timeline_and_moves_nothing(served: Served, db: Engine, relay_port: int) -> None:
    _, outbox_id = sent(db, "ana@example.com")
    address = return_path(outbox_id, KEY, "reply", "reply.shop.test")
    away = reply(address, "<ooo-1@example.com>", "Auto-Submitted: auto-replied\r\n")
    with Inbox(relay_port) as inbox:
        assert served.deliver("ana@example.com", address, away) == {}
    assert replied_events(db) == []
    assert [got[2].endswith(away) for got in inbox.got] == [True]  # forward_automatic: the sender sees it too
    assert timeline(db, "ana@example.com") == [
        f"an auto-reply (Auto-Submitted: auto-replied) via lmtp to message {outbox_id} by token "
        "(auto-reply recorded, forwarded)"
    ]


def test_a_forged_token_is_kept_for_an_operator_and_put_on_no_lead(served: Served, db: Engine, relay_port: int) -> None:
    _, outbox_id = sent(db, "ana@example.com")
    forged = return_path(outbox_id, "another key entirely, not the engine's", "reply", "reply.shop.test")
    with Inbox(relay_port) as inbox:
        assert served.deliver("mallory@example.com", forged, reply(forged, "<f@evil.test>")) == {}
    assert replied_events(db) == []
    assert len(inbox.got) == 1  # the sender still reads it, with no event
    b = tables.bounce_reports
    with db.connect() as conn:
        [row] = conn.execute(sa.select(b.c.kind, b.c.outbox_id, b.c.lead_id, b.c.action, b.c.raw)).all()
    assert row[:4] == ("reply", None, None, "kept for an operator, forwarded") and row.raw.endswith(
        b"please call me.\r\n"
    )


def test_a_relay_that_is_down_makes_the_mta_keep_the_reply_until_it_is_forwarded(
    served: Served, db: Engine, relay_port: int
) -> None:
    _, outbox_id = sent(db, "ana@example.com")
    address = return_path(outbox_id, KEY, "reply", "reply.shop.test")
    message = reply(address)
    with pytest.raises(smtplib.SMTPDataError) as refused:  # nothing listens on the relay's port
        served.deliver("ana@example.com", address, message)
    assert refused.value.smtp_code == 451
    assert len(replied_events(db)) == 1  # recorded at once: the funnels hear it while the relay is down
    with Inbox(relay_port) as inbox:
        assert served.deliver("ana@example.com", address, message) == {}  # the MTA's retry
    assert len(replied_events(db)) == 1
    assert [got[2].endswith(message) for got in inbox.got] == [True]


def test_postfix_hands_a_reply_over_lmtp_and_keeps_it_while_the_relay_is_down(
    served: Served, db: Engine, relay_port: int
) -> None:
    require()
    lead_id, outbox_id = sent(db, "ana@example.com")
    address = return_path(outbox_id, KEY, "reply", "reply.shop.test")
    message = reply(address)
    with Postfix({"reply.shop.test": f"lmtp:inet:127.0.0.1:{served.receiver.port}"}) as postfix:
        with smtplib.SMTP("127.0.0.1", postfix.port) as smtp:  # the lead's server, sending the answer
            smtp.sendmail("ana@example.com", [address], message)
        wait_for_log(postfix, rf"to=<{re.escape(address)}>.*status=deferred.*451 4\.3\.0")
        assert len(replied_events(db)) == 1
        with Inbox(relay_port) as inbox:
            postfix.flush()
            wait_for_log(postfix, rf"to=<{re.escape(address)}>.*status=sent \(250 2\.0\.0")
    assert replied_events(db) == [(lead_id, "reply", {"funnel": "guide", "step": "s1", "message": outbox_id})]
    [(_, rcpts, forwarded)] = inbox.got
    assert rcpts == ["owner@inbox.test"]
    # The lead's message as postfix delivered it: its trace lines on top, then the bytes the lead sent.
    assert forwarded.endswith(message)
    assert b"Delivered-To: " + address.encode() in forwarded


def test_a_reply_in_the_polled_mailbox_is_taken_moved_and_forwarded(db: Engine, relay_port: int) -> None:
    require()
    lead_id, outbox_id = sent(db, "ana@example.com")
    address = return_path(outbox_id, KEY, "reply", "reply.shop.test")
    message = reply(address)
    newsletter = b"From: news@other.test\r\nTo: desk@bounce.test\r\nSubject: Spring news\r\n\r\nSeeds.\r\n"
    settings = Served.settings_for(relay_port)
    desk = ReplyDesk(db, settings, ("127.0.0.1", relay_port), lambda: NOW)
    take = intake(db, settings.bounces, lambda: NOW, settings.signing_keys, replies=desk)
    with Dovecot({"desk": None}) as dovecot, Inbox(relay_port) as inbox:
        # A catch-all delivers to the mailbox: its envelope names the mailbox, the To the reply address.
        with smtplib.LMTP("127.0.0.1", dovecot.lmtp_port) as lmtp:
            lmtp.sendmail("ana@example.com", ["desk@bounce.test"], message)
            lmtp.sendmail("news@other.test", ["desk@bounce.test"], newsletter)
        assert asyncio.run(poller(dovecot, "desk", take).poll()) == PollResult(taken=1, left=1)
        assert list(folder(dovecot, "desk")) == ["Spring news"]
        assert list(folder(dovecot, "desk", "Processed")) == ["Re: Your guide"]
    assert replied_events(db) == [(lead_id, "reply", {"funnel": "guide", "step": "s1", "message": outbox_id})]
    [(_, rcpts, forwarded)] = inbox.got
    assert rcpts == ["owner@inbox.test"] and forwarded.endswith(message)
