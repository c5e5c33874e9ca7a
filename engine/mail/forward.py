"""Forwarding a reply to the sender's real inbox through the engine's relay: the bytes exactly as they
came (so the lead's own DKIM signature still holds and DMARC passes at the inbox), in a new envelope.

Raises what the relay or the network raised (`ForwardError`): the caller keeps the reply for another try.
"""

from __future__ import annotations

import aiosmtplib

from engine.mail.mailer import client_options, reason
from engine.settings import SmtpSettings


class ForwardError(RuntimeError):
    """The relay did not take the forward. `permanent`: it refused it with a 5xx, and would again."""

    def __init__(self, text: str, permanent: bool) -> None:
        super().__init__(text)
        self.permanent = permanent


async def forward(raw: bytes, sender: str, recipient: str, smtp: SmtpSettings, host: str, port: int) -> None:
    """Hand `raw` unchanged to the relay at host:port, from `sender` to `recipient`."""
    try:
        await aiosmtplib.send(
            raw, sender=sender, recipients=[recipient], hostname=host, port=port, **client_options(smtp)
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        permanent = isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 500
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            permanent = all(refused.code >= 500 for refused in exc.recipients)
        raise ForwardError(f"relay {host}:{port} did not take the forward: {reason(exc)}", permanent) from None
