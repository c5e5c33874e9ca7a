"""`funnel send-test`: one email through the configured relay, as a lead of the funnel would get it, to a
real SMTP server on loopback. Each send is a message of its own (mailbox providers drop a Message-ID they
have seen), and a template the funnel sends as transactional goes without List-Unsubscribe, as it does
to leads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest

from tests.smtp_server import RecordingHandler, RecordingSmtpServer

ROOT = Path(__file__).resolve().parent.parent.parent


class RawHandler(RecordingHandler):
    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.raw.append(envelope.original_content or envelope.content)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def relay() -> Iterator[tuple[RecordingSmtpServer, RawHandler]]:
    handler = RawHandler()
    with RecordingSmtpServer(handler=handler) as server:
        yield server, handler


def send_test(server: RecordingSmtpServer, template: str, to: str) -> EmailMessage:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env.update(server.env())
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "send-test", template, "--to", to],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    raw: bytes = server.handler.raw[-1]  # type: ignore[attr-defined]
    message = message_from_bytes(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def test_each_test_send_has_a_message_id_of_its_own(relay: tuple[RecordingSmtpServer, RawHandler]) -> None:
    server, _ = relay
    ids = [
        send_test(server, "lead-magnet/benefits-of-recycling", to)["Message-ID"]
        for to in ("me@example.com", "me@example.com", "colleague@example.com")
    ]
    assert len(set(ids)) == 3, ids
    assert all(i.startswith("<") and i.endswith(">") and "@" in i for i in ids)


def test_a_transactional_template_goes_as_the_funnel_sends_it(relay: tuple[RecordingSmtpServer, RawHandler]) -> None:
    server, _ = relay
    report = send_test(server, "lead-magnet/report-delivery", "me@example.com")  # `transactional: true`
    assert report["List-Unsubscribe"] is None and report["List-Unsubscribe-Post"] is None
    assert report["X-Funnel"] == "lead-magnet/deliver-report"
    nurture = send_test(server, "lead-magnet/benefits-of-recycling", "me@example.com")
    assert nurture["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert nurture["X-Funnel"].startswith("lead-magnet/")
