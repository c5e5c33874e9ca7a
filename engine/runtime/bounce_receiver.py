"""The embedded LMTP receiver: an MTA hands the bounce domain's mail to the engine over a socket.

An MTA's LMTP transport (postfix: `lmtp:inet:HOST:PORT` in a transport map) delivers every message for
the bounce domain here. Each recipient's copy goes to the `Intake` with `Return-Path:` and
`Delivered-To:` lines on top, as a delivery agent writes them: the envelope recipient carries the
report's VERP token, and the message alone does not. After DATA each recipient gets its own reply, as
LMTP asks (RFC 2033, section 4.2): a report taken, or mail that is no report, 250; an engine that cannot
record it now, 451 4.3.0, so that the MTA keeps the message and hands it over again.

aiosmtpd speaks the protocol on the engine's own event loop. Stopping stops listening, lets the
messages in hand reach the intake, then closes the sessions: an MTA cut off before its reply tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiosmtpd.lmtp import LMTP

from engine.core.bounce_outcome import Intake, Verdict
from engine.runtime.bounce_handover import Handover, utc_now
from engine.settings import BounceSettings

log = logging.getLogger("engine.bounce_receiver")

SOURCE = "lmtp"
REPLIES = {
    Verdict.TAKEN: "250 2.0.0 Report taken",
    Verdict.NOT_RECOGNISED: "250 2.0.0 Accepted, not a report",
    Verdict.RETRY: "451 4.3.0 Cannot record reports now; try again later",
}
TOO_BIG = "552 5.3.4 Message too big for system"
# aiosmtpd's own refusals of a whole message, with no enhanced status code and, after DATA, one reply
# where LMTP owes one per recipient: said again as LMTP clients expect.
LIBRARY_REFUSALS = {
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "552 Error: Too much mail data": TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": "552 5.3.4 Line too long",
}
AFTER_DATA = {"552 Error: Too much mail data", "500 Line too long (see RFC5321 4.5.3.1.6)"}


class ReceiverError(RuntimeError):
    """The receiver cannot start (no domain to accept, the port taken): said at start."""


def delivered(mail_from: str | None, recipient: str, content: bytes) -> bytes:
    """The message as a delivery agent hands it on: the envelope on top (RFC 9228's Delivered-To)."""
    return b"Return-Path: <%s>\r\nDelivered-To: %s\r\n%s" % (
        (mail_from or "").strip("<>").encode(),
        recipient.encode(),
        content,
    )


class _Handler:
    """aiosmtpd's hooks: which recipients are accepted, and what each one's message became."""

    def __init__(self, receiver: BounceReceiver) -> None:
        self.receiver = receiver

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if address.rpartition("@")[2].lower() not in self.receiver.domains:
            return f"550 5.1.1 <{address}>: not a bounce address here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        replies = await self.receiver.deliver(envelope.mail_from, envelope.rcpt_tos, envelope.original_content)
        # aiosmtpd writes the text it is given and a CRLF: one line per recipient, in RCPT order.
        return "\r\n".join(replies)


class _Session(LMTP):
    # Some MTAs write bounces with lines past RFC 5322's 998 characters; refusing them would lose the
    # report, since nobody bounces a bounce.
    line_length_limit = 1 << 16

    def __init__(self, receiver: BounceReceiver, **kwargs: Any) -> None:
        super().__init__(_Handler(receiver), **kwargs)
        self.receiver = receiver

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.receiver.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.receiver.sessions.discard(self)
        super().connection_lost(error)

    async def push(self, status: Any) -> None:
        said = LIBRARY_REFUSALS.get(status) if isinstance(status, str) else None
        if said is None:
            await super().push(status)
            return
        count = len(self.envelope.rcpt_tos) if status in AFTER_DATA and self.envelope is not None else 1
        await super().push("\r\n".join([said] * max(count, 1)))


class BounceReceiver:
    """`await start()`, then `port` says where it listens; `await stop()` ends it."""

    def __init__(
        self,
        settings: BounceSettings,
        intake: Intake,
        clock: Callable[[], datetime] = utc_now,
        reply_domain: str | None = None,
    ) -> None:
        self.settings = settings.receiver
        accepted = (settings.domain, *settings.receiver.domains, reply_domain)
        self.domains = {d.lower().rstrip(".") for d in accepted if d}
        if not self.domains:
            raise ReceiverError(
                "bounces.receiver.port is set but there is no domain to accept mail for: "
                "set bounces.domain (or bounces.receiver.domains, or replies.domain)"
            )
        self.take = Handover(intake, SOURCE, "when the MTA hands the message over again", clock)
        self.sessions: set[_Session] = set()
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        hostname = sorted(self.domains)[0]

        def session() -> _Session:
            return _Session(
                self,
                hostname=hostname,
                data_size_limit=self.settings.max_message_bytes,
                enable_SMTPUTF8=True,
                loop=loop,
            )

        try:
            self.server = await loop.create_server(session, self.settings.host, self.settings.port)
        except OSError as exc:
            raise ReceiverError(
                f"bounces.receiver: cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror or exc}"
            ) from None
        self.port = int(self.server.sockets[0].getsockname()[1])
        log.info(
            "bounce receiver (LMTP) on %s:%d for %s", self.settings.host, self.port, ", ".join(sorted(self.domains))
        )

    async def deliver(self, mail_from: str | None, recipients: list[str], content: bytes) -> list[str]:
        """Each recipient's copy to the intake, one after the other; the reply each one gets."""
        self.in_flight += 1
        self.idle.clear()
        try:
            return [REPLIES[await self.take(delivered(mail_from, rcpt, content))] for rcpt in recipients]
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop listening, let the messages in hand reach the intake (at most `grace_s`), close the rest."""
        if self.server is None:
            return
        self.server.close()
        try:
            await asyncio.wait_for(self.idle.wait(), timeout=grace_s)
        except TimeoutError:
            log.warning("bounce receiver stopping with a message in hand: the MTA will hand it over again")
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        await self.server.wait_closed()
        self.server = None
