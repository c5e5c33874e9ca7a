"""Taking replies: mail to the reply domain, whichever way it came in (`funnel bounces ingest`, the LMTP
receiver, the mailbox poller), is recorded, then forwarded unchanged to the sender's real inbox.

Recording comes first, in one transaction (the `email_replied` event of a person's answer, or an
auto-reply on the timeline, or a reply kept for an operator); then the forward. The verdict is what the way
in tells its MTA or mailbox: TAKEN once both are done; RETRY when the database cannot record it now, and
a `ForwardError` when the relay cannot take the forward now (the way in says that outage once, as for any
intake failure); either way the MTA keeps the message (451), or the mailbox, and hands it over again. The second
copy changes nothing recorded (one event) and is forwarded only if the first was not. A relay that
refuses the forward for good (5xx) would refuse every copy: the reply is kept whole for an operator and
taken, rather than bounced back to the lead days later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from engine.core.bounce_outcome import Verdict
from engine.core.replies import Reply, read_reply
from engine.core.return_paths import read_token
from engine.mail.forward import ForwardError, forward
from engine.settings import Settings
from engine.store import replies as store
from engine.store.database import DBAPIError, Engine

log = logging.getLogger("engine.replies")


@dataclass(frozen=True)
class Taken:
    verdict: Verdict
    action: str  # replied, auto-reply recorded, kept for an operator, duplicate, or why it is not taken
    outbox_id: int | None = None
    forwarded: bool = False


class ReplyDesk:
    """`await desk.take(raw, source)`: the reply's `Taken`, or None when `raw` is no reply (a report);
    raises `ForwardError` when the relay cannot take the forward now (the reply is recorded: hand it over
    again). `relay` is (host, port) of the SMTP relay forwards go through; None: there is none."""

    def __init__(
        self, engine: Engine, settings: Settings, relay: tuple[str, int] | None, clock: Callable[[], datetime]
    ) -> None:
        assert settings.replies.domain is not None
        self.engine = engine
        self.settings = settings
        self.domain = settings.replies.domain
        self.relay = relay
        self.clock = clock

    def read(self, raw: bytes) -> Reply | None:
        return read_reply(raw, self.settings.replies.local_part, self.domain, self.settings.bounces.local_part)

    async def take(self, raw: bytes, source: str) -> Taken | None:
        reply = self.read(raw)
        if reply is None:
            return None
        outbox_id = read_token(reply.token, self.settings.signing_keys) if reply.token else None
        try:
            recorded = await asyncio.to_thread(self._record, reply, outbox_id, raw, source)
        except DBAPIError as exc:
            log.warning("reply: the database cannot record it now (%s); it is kept for later", exc.orig)
            return Taken(Verdict.RETRY, "database away")
        if recorded.action != "duplicate":
            log.debug("reply (%s): message %s, %s", source, recorded.outbox_id or "unmatched", recorded.action)
        if recorded.forwarded or not self._forwards(reply):
            return Taken(Verdict.TAKEN, recorded.action, recorded.outbox_id, recorded.forwarded)
        return await self._forward(reply, raw, recorded)

    def _record(self, reply: Reply, outbox_id: int | None, raw: bytes, source: str) -> store.Recorded:
        with self.engine.begin() as conn:
            return store.record_reply(conn, reply, outbox_id, raw, source, self.clock())

    def _forwards(self, reply: Reply) -> bool:
        replies = self.settings.replies
        return replies.forward and (reply.automatic is None or replies.forward_automatic)

    async def _forward(self, reply: Reply, raw: bytes, recorded: store.Recorded) -> Taken:
        settings = self.settings
        sender = settings.replies.forward_from or settings.sender.address
        try:
            if self.relay is None:
                raise ForwardError("smtp.host is not set: there is no relay to forward the reply with", False)
            await forward(raw, sender, settings.forward_target, settings.smtp, *self.relay)
        except ForwardError as exc:
            if exc.permanent:
                log.error("reply to message %s: %s; kept for an operator", recorded.outbox_id or "unmatched", exc)
                await asyncio.to_thread(self._write, store.keep_for_operator, reply.key, raw, str(exc))
                return Taken(Verdict.TAKEN, "kept, forward refused", recorded.outbox_id)
            raise  # the way in keeps the reply and says the outage once (`bounce_handover`)
        try:
            await asyncio.to_thread(self._write, store.mark_forwarded, reply.key)
        except DBAPIError as exc:  # forwarded all the same; a second copy would be forwarded again
            log.warning("reply forwarded, but the database cannot note it now (%s)", exc.orig)
        return Taken(Verdict.TAKEN, recorded.action, recorded.outbox_id, True)

    def _write(self, write: Callable[..., None], *args: object) -> None:
        with self.engine.begin() as conn:
            write(conn, *args)
