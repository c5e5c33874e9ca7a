"""A real SMTP server for tests: aiosmtpd on loopback, in a thread of the test process, recording every
message it accepts (envelope recipients, Message-ID, X-Funnel).

It lives in the test process so it outlives engine processes that the tests kill: a message counts as
delivered the moment this server has the whole DATA, exactly as a relay would see it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class Received:
    rcpt: tuple[str, ...]
    message_id: str
    funnel_step: str  # the X-Funnel header: "<funnel>/<step>"
    subject: str
    body: str
    raw: bytes = b""  # the bytes as the server got them
    mail_from: str = ""  # the envelope sender


class RecordingHandler:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[Received] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content or envelope.content
        msg = message_from_bytes(raw, policy=default_policy)
        body = msg.get_body(preferencelist=("plain", "html"))
        item = Received(
            rcpt=tuple(str(r).lower() for r in envelope.rcpt_tos),
            message_id=str(msg["Message-ID"] or ""),
            funnel_step=str(msg["X-Funnel"] or ""),
            subject=str(msg["Subject"] or ""),
            body=body.get_content() if body is not None else "",
            raw=raw,
            mail_from=str(envelope.mail_from or ""),
        )
        with self._lock:
            self._messages.append(item)
        return "250 Message accepted for delivery"

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)


class RecordingSmtpServer:
    """`with RecordingSmtpServer() as smtp:` then point the engine at `smtp.host`, `smtp.port`."""

    def __init__(
        self, host: str = "127.0.0.1", handler: RecordingHandler | None = None, smtputf8: bool = False
    ) -> None:
        self.host = host
        self.port = _free_port(host)
        self.handler = handler or RecordingHandler()
        # smtputf8: the server may answer in UTF-8 (a relay quoting an address with its Unicode domain).
        self._controller = Controller(
            self.handler, hostname=host, port=self.port, ready_timeout=60, enable_SMTPUTF8=smtputf8
        )

    def __enter__(self) -> RecordingSmtpServer:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def messages(self) -> list[Received]:
        return self.handler.messages()

    def per_lead_step(self) -> Counter[tuple[str, str]]:
        """How many copies each (recipient, funnel/step) got: every value must be 1."""
        return Counter((rcpt, m.funnel_step) for m in self.messages() for rcpt in m.rcpt)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if len(got) >= count:
                return got
            time.sleep(0.05)
        return self.messages()

    def env(self) -> dict[str, str]:
        """The engine's settings that send to this server."""
        return {
            "FUNNEL_SMTP__HOST": self.host,
            "FUNNEL_SMTP__PORT": str(self.port),
            "FUNNEL_SMTP__SECURITY": "none",
            # These tests are about what arrives, not about pacing a real relay.
            "FUNNEL_SMTP__RATE_PER_S": "100000",
        }


@contextmanager
def recording_smtp_server() -> Iterator[RecordingSmtpServer]:
    with RecordingSmtpServer() as server:
        yield server


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
