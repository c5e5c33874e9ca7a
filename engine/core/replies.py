"""Replies that come back to a message's own reply address, `reply+TOKEN@reply-domain`. Pure: no IO.

With a reply domain, each message's Reply-To names its outbox row with the same signed token as its
return path (`return_paths`). Mail to that domain is a reply, not a report: `read_reply` says which reply
address it came to, its token, its idempotency key, and whether a person wrote it or a machine did (an
out-of-office, a vacation responder, a delivery report), because only a person's answer may move a lead.

Where the address is looked for: the envelope first (`Delivered-To`, `X-Original-To`, as the LMTP
receiver, a pipe with postfix's `D` flag and most mailbox servers write it), else `To` and `Cc` (what the
lead's mail program wrote from the Reply-To; a mailbox filled by a catch-all names only itself in its
envelope). Mail delivered to a return path is a report, whatever its headers say.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email.message import Message

from engine.core.report_parts import addresses_in, header_values, parse
from engine.core.return_paths import token_in

ENVELOPE = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")
HEADERS = ("To", "Cc")
# A machine's answer says so at the start of its subject; a person's "Re: Out of office?" does not.
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic)?[ -]?(?:reply|response|antwort|answer)|auto:|out of (?:the )?office|ooo\b"
    r"|abwesenheit|vacation|away from|r[ée]ponse automatique|respuesta autom[aá]tica|risposta automatica"
    r"|automatische antwort|automatisch antwoord|autosvar|autoreply|autoresponse|undeliver|delivery status)",
    re.IGNORECASE,
)
_DAEMONS = frozenset({"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"})


@dataclass(frozen=True, slots=True)
class Reply:
    """One message to a reply address.

    `token` is TOKEN of `local+TOKEN@domain` (None: an address at the reply domain without one, which
    names no message); `key` identifies the reply for idempotency (its Message-ID, else its bytes, with
    the token); `automatic` says why a machine wrote it, None for a person."""

    address: str
    token: str | None
    key: str
    message_id: str | None
    automatic: str | None


def read_reply(raw: bytes, local_part: str, domain: str, report_local: str = "bounces") -> Reply | None:
    """The reply in `raw`, or None when it was not sent to an address at the reply domain, or was
    delivered to a return path (`report_local+TOKEN@...`: a report, read as such)."""
    try:
        message = parse(raw)
        address = _reply_address(message, local_part, domain, report_local)
        if address is None:
            return None
        token = token_in(address, local_part, domain)
        message_id = next((v.strip() for v in header_values(message, "Message-ID") if v.strip()), None)
        automatic = _automatic(message)
    # The email package raises on some malformed input; mail to the reply domain still is a reply
    # (kept for an operator: without a readable address it names no message).
    except Exception:
        return Reply(f"?@{domain}", None, reply_key(None, None, raw), None, "unreadable")
    return Reply(address, token, reply_key(token, message_id, raw), message_id, automatic)


def reply_key(token: str | None, message_id: str | None, raw: bytes) -> str:
    """The same reply handed over twice (an MTA's retry, a poller after a restart) has one key: its
    Message-ID with the token it came to; a message without one, its bytes."""
    seed = f"reply\n{token or ''}\n{message_id}".encode() if message_id else b"reply-raw\n" + raw
    return hashlib.sha256(seed).hexdigest()


def _reply_address(message: Message, local_part: str, domain: str, report_local: str) -> str | None:
    domain = domain.lower().rstrip(".")

    def found(names: tuple[str, ...]) -> list[str]:
        return [a for name in names for value in header_values(message, name) for a in addresses_in(value)]

    envelope = found(ENVELOPE)
    # Delivered to a return path: a report, even if it quotes or copies a reply address.
    if any(a.startswith(f"{report_local.lower()}+") for a in envelope):
        return None
    # The envelope first; a mailbox that a catch-all fills names itself there, and the reply address
    # only in To or Cc.
    ours = [a for a in envelope if _at_reply_domain(a, local_part, domain)]
    ours = ours or [a for a in found(HEADERS) if _at_reply_domain(a, local_part, domain)]
    return next((a for a in ours if token_in(a, local_part, domain)), ours[0] if ours else None)


def _at_reply_domain(address: str, local_part: str, domain: str) -> bool:
    local, _, where = address.rpartition("@")
    base = local.partition("+")[0]
    return where == domain and base == local_part.lower()


def _automatic(message: Message) -> str | None:
    """Why a machine wrote this (RFC 3834 and the signs responders leave), or None for a person."""

    def first(name: str) -> str:
        return (header_values(message, name) or [""])[0].strip()

    auto = first("Auto-Submitted").lower()
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {auto[:40]}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        if first(name):
            return f"{name} header"
    precedence = (first("Precedence") or first("X-Precedence")).lower()
    if precedence in ("auto_reply", "bulk", "junk", "list"):
        return f"Precedence: {precedence}"
    if header_values(message, "Return-Path") and first("Return-Path").strip("<> ") == "":
        return "a null return path (a delivery report or an auto-reply)"
    sender = addresses_in(first("From"))
    if sender and sender[0].partition("@")[0] in _DAEMONS:
        return "from a mail system"
    content_type = first("Content-Type").lower()
    if content_type.startswith("multipart/report"):
        return "a delivery or feedback report"
    subject = first("Subject")
    if _AUTO_SUBJECT.search(subject):
        return f"subject: {subject[:60]}"
    return None
