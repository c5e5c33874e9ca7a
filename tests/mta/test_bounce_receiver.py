"""The embedded LMTP receiver, with postfix as the MTA that hands it the bounce domain's mail.

postfix relays a message to a receiving server that refuses it, writes the delivery status
notification itself, and delivers it to the bounce domain over LMTP (`lmtp:inet:127.0.0.1:PORT`): the
engine's receiver hands it to the intake with its envelope on top. When the intake cannot record it,
postfix keeps the message and hands it over again. Other tests speak LMTP to the receiver directly, to
see each reply a client gets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from engine.core.bounce_outcome import Verdict
from engine.runtime.bounce_receiver import BounceReceiver, ReceiverError
from engine.runtime.runner import Runner
from engine.settings import BounceMailboxSettings, BounceReceiverSettings, BounceSettings, Settings
from tests.mail_servers import Postfix, free_port, require

REFUSED = "550 5.1.1 <ghost@far.test>: Recipient address rejected: User unknown"


class Intake:
    """Records what it is handed; answers `verdict(raw)`, TAKEN unless told otherwise."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handed: list[tuple[str, bytes]] = []
        self.verdict: Callable[[bytes], Verdict] = lambda raw: Verdict.TAKEN

    async def __call__(self, raw: bytes, source: str) -> Verdict:
        with self.lock:
            self.handed.append((source, raw))
        return self.verdict(raw)

    def messages(self) -> list[Message]:
        with self.lock:
            return [message_from_bytes(raw) for _, raw in self.handed]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.handed) >= count:
                return self.messages()
            time.sleep(0.1)
        raise AssertionError(f"the intake was handed {len(self.handed)} messages, expected {count}")


class Served:
    """The receiver on an event loop of its own thread, as `funnel run` serves it beside the ticks."""

    def __init__(self, settings: BounceSettings, intake: Intake) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.receiver = self.call(self._make(settings, intake))

    async def _make(self, settings: BounceSettings, intake: Intake) -> BounceReceiver:
        receiver = BounceReceiver(settings, intake)
        await receiver.start()
        return receiver

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.call(self.receiver.stop(5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def settings_for(port: int = 0, **receiver: Any) -> BounceSettings:
    return BounceSettings(domain="bounce.test", receiver=BounceReceiverSettings(port=port, **receiver))


@pytest.fixture
def served() -> Iterator[tuple[Served, Intake]]:
    intake = Intake()
    server = Served(settings_for(max_message_bytes=20_000), intake)
    yield server, intake
    server.stop()


def delivery_status(report: Message) -> dict[str, str]:
    for part in report.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            assert isinstance(payload, list)
            return {key.lower(): " ".join(str(value).split()) for key, value in payload[1].items()}
    raise AssertionError("no message/delivery-status part")


def send(postfix: Postfix, token: str, to: list[str]) -> None:
    body = f"From: news@shop.test\r\nTo: {to[0]}\r\nMessage-ID: <{token}@shop.test>\r\nSubject: hi\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", postfix.port) as smtp:
        smtp.sendmail(f"bounces+{token}@bounce.test", to, body.encode())


def wait_for_log(postfix: Postfix, pattern: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, postfix.log())
        if found:
            return found.group(0)
        time.sleep(0.2)
    raise AssertionError(f"postfix never logged {pattern!r}:\n{postfix.log()[-3000:]}")


@pytest.fixture
def relay(served: tuple[Served, Intake]) -> Iterator[tuple[Postfix, Intake]]:
    require()
    server, intake = served
    routes = {"bounce.test": f"lmtp:inet:127.0.0.1:{server.receiver.port}"}
    with Postfix(routes, remote_refuse={"far.test": REFUSED}) as postfix:
        yield postfix, intake


def test_postfix_hands_its_own_dsn_to_the_intake_over_lmtp(relay: tuple[Postfix, Intake]) -> None:
    postfix, intake = relay
    send(postfix, "gone", ["ghost@far.test"])
    (report,) = intake.wait_for(1)
    assert intake.handed[0][0] == "lmtp"
    assert report["Delivered-To"] == "bounces+gone@bounce.test"  # the envelope: the VERP token
    assert report["Return-Path"] == "<>"  # a report's null sender
    assert report.get_content_type() == "multipart/report"
    status = delivery_status(report)
    assert status["status"] == "5.1.1"
    assert "User unknown" in status["diagnostic-code"]
    wait_for_log(postfix, r"to=<bounces\+gone@bounce\.test>.*status=sent \(250 2\.0\.0 Report taken\)")


def test_a_retry_makes_postfix_keep_the_report_and_hand_it_over_again(relay: tuple[Postfix, Intake]) -> None:
    postfix, intake = relay
    intake.verdict = lambda raw: Verdict.RETRY
    send(postfix, "later", ["ghost@far.test"])
    intake.wait_for(1)
    wait_for_log(postfix, r"to=<bounces\+later@bounce\.test>.*status=deferred.*451 4\.3\.0 Cannot record reports")
    intake.verdict = lambda raw: Verdict.TAKEN
    postfix.flush()
    wait_for_log(postfix, r"to=<bounces\+later@bounce\.test>.*status=sent \(250 2\.0\.0 Report taken\)")
    handed = intake.messages()
    assert len(handed) >= 2
    assert {m["Delivered-To"] for m in handed} == {"bounces+later@bounce.test"}
    assert len({m.as_bytes() for m in handed}) == 1, "postfix handed over another message than the one kept"


def test_each_recipient_of_one_transaction_gets_its_own_reply(relay: tuple[Postfix, Intake]) -> None:
    postfix, intake = relay
    intake.verdict = lambda raw: Verdict.RETRY if b"Delivered-To: bounces+b@" in raw else Verdict.TAKEN
    send(postfix, "pair", ["bounces+a@bounce.test", "bounces+b@bounce.test"])
    wait_for_log(postfix, r"to=<bounces\+a@bounce\.test>.*status=sent \(250 2\.0\.0 Report taken\)")
    wait_for_log(postfix, r"to=<bounces\+b@bounce\.test>.*status=deferred.*451 4\.3\.0")
    delivered_to = [m["Delivered-To"] for m in intake.messages()[:2]]
    assert sorted(delivered_to) == ["bounces+a@bounce.test", "bounces+b@bounce.test"]


def reply(client: smtplib.LMTP) -> tuple[int, str]:
    code, text = client.getreply()
    return code, text.decode()


def test_lmtp_replies_recipient_by_recipient(served: tuple[Served, Intake]) -> None:
    server, intake = served
    intake.verdict = lambda raw: Verdict.RETRY if b"Delivered-To: bounces+b@" in raw else Verdict.TAKEN
    with smtplib.LMTP("127.0.0.1", server.receiver.port, timeout=10) as client:
        code, features = client.ehlo("mta.test")  # smtplib's LMTP says LHLO
        assert code == 250 and b"SIZE 20000" in features
        assert client.mail("") == (250, b"OK")
        assert client.rcpt("bounces+a@bounce.test")[0] == 250
        assert client.rcpt("postmaster@elsewhere.test") == (
            550,
            b"5.1.1 <postmaster@elsewhere.test>: not a bounce address here",
        )
        assert client.rcpt("bounces+b@BOUNCE.test")[0] == 250
        client.putcmd("data")
        assert reply(client)[0] == 354
        client.send(b"Subject: report\r\n\r\nbody\r\n.\r\n")
        assert reply(client) == (250, "2.0.0 Report taken")
        assert reply(client) == (451, "4.3.0 Cannot record reports now; try again later")
        assert client.noop()[0] == 250  # still in step: two replies for two recipients, no more

        # Too large: refused at MAIL when the client says so, and after DATA once per recipient if not.
        assert client.mail("", ["SIZE=20001"]) == (552, b"5.3.4 Message too big for system")
        assert client.mail("") == (250, b"OK")
        assert client.rcpt("bounces+c@bounce.test")[0] == 250
        assert client.rcpt("bounces+d@bounce.test")[0] == 250
        client.putcmd("data")
        assert reply(client)[0] == 354
        client.send(b"Subject: big\r\n\r\n" + (b"x" * 990 + b"\r\n") * 25 + b".\r\n")
        assert reply(client) == (552, "5.3.4 Message too big for system")
        assert reply(client) == (552, "5.3.4 Message too big for system")
        assert client.noop()[0] == 250
    assert [m["Delivered-To"] for m in intake.messages()] == ["bounces+a@bounce.test", "bounces+b@BOUNCE.test"]


def test_an_intake_that_fails_is_a_retry_and_an_outage_said_once(
    served: tuple[Served, Intake], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    server, intake = served

    def broken(raw: bytes) -> Verdict:
        raise ConnectionError("database is away")

    intake.verdict = broken
    with smtplib.LMTP("127.0.0.1", server.receiver.port, timeout=10) as client:
        for _ in range(3):
            client.ehlo("mta.test")
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("", ["bounces+x@bounce.test"], b"Subject: x\r\n\r\nx\r\n")
            assert refused.value.smtp_code == 451  # kept by the MTA, not bounced
    outage = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "engine.bounce_handover"]
    assert outage == [
        (
            logging.ERROR,
            "bounce intake failed: ConnectionError: database is away; "
            "retrying when the MTA hands the message over again",
        )
    ]
    intake.verdict = lambda raw: Verdict.TAKEN
    with smtplib.LMTP("127.0.0.1", server.receiver.port, timeout=10) as client:
        client.ehlo("mta.test")
        client.sendmail("", ["bounces+x@bounce.test"], b"Subject: x\r\n\r\nx\r\n")
    back = [r for r in caplog.records if r.name == "engine.bounce_handover" and r.levelno == logging.INFO]
    assert len(back) == 1 and back[0].getMessage().startswith("bounce intake working again after")


def test_no_domain_or_a_taken_port_stops_the_start() -> None:
    with pytest.raises(ReceiverError, match="no domain to accept"):
        BounceReceiver(BounceSettings(receiver=BounceReceiverSettings(port=0)), Intake())
    intake = Intake()
    first = Served(settings_for(), intake)
    try:
        with pytest.raises(ReceiverError, match=f"cannot listen on 127.0.0.1:{first.receiver.port}"):
            first.call(BounceReceiver(settings_for(first.receiver.port), intake).start())
    finally:
        first.stop()


def test_funnel_run_serves_the_receiver_and_stops_it_cleanly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    port = free_port()
    settings = Settings(
        data_dir=tmp_path,
        funnels_dir=tmp_path,
        emails_dir=tmp_path,
        http={"enabled": False},
        tick_seconds=60,
        # A mailbox too, here one that cannot be reached: its poller must not hold the stop either.
        bounces=settings_for(port).model_copy(
            update={"imap": BounceMailboxSettings(host="127.0.0.1", port=free_port(), interval_s=0.1)}
        ),
    )
    intake = Intake()
    runner = Runner(settings, [], lambda: datetime.now(UTC), intake=intake)
    assert runner.receiver is not None and runner.poller is not None
    answers: list[int] = []

    def deliver_then_stop() -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = smtplib.LMTP("127.0.0.1", port, timeout=10)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the receiver never listened"
                time.sleep(0.05)
        with client:
            client.ehlo("mta.test")
            client.sendmail("", ["bounces+run@bounce.test"], b"Subject: x\r\n\r\nx\r\n")
            answers.append(client.noop()[0])
            os.kill(os.getpid(), signal.SIGTERM)  # what a service manager sends
            # The session stays open: a stop must not wait for the MTA to hang up.

    async def scenario() -> None:
        helper = asyncio.create_task(asyncio.to_thread(deliver_then_stop))
        await asyncio.wait_for(runner.run_forever(), timeout=60)
        await helper

    try:
        asyncio.run(scenario())
    finally:
        runner.close()
    assert answers == [250]
    assert [m["Delivered-To"] for m in intake.messages()] == ["bounces+run@bounce.test"]
    with pytest.raises(ConnectionRefusedError):
        smtplib.LMTP("127.0.0.1", port)
    refused = [r for r in caplog.records if r.name == "engine.bounce_mailbox" and r.levelno == logging.ERROR]
    assert len(refused) == 1, "the mailbox's outage was said more than once"
