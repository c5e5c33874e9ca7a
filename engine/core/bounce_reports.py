"""Reading what comes back to the return path: one raw message in, what it says about whom out. Pure.

- RFC 3464 delivery status notifications (multipart/report; report-type=delivery-status): one
  outcome per recipient block, from its Final-Recipient, Action, Status and Diagnostic-Code.
- RFC 5965 feedback reports (multipart/report; report-type=feedback-report): a complaint about the
  recipient the report names (Original-Rcpt-To) or the returned message's To.
- Non-standard bounces, which real MTAs still send: the failed recipients come from flufl.bounce's
  detectors (a well-kept library that knows dozens of MTAs' formats), the class from the code or the
  words in the text.
- Auto-replies (RFC 3834 `Auto-Submitted`, and what vacation programs write) are not failures.

Whatever it is, the original Message-ID is taken from the returned message or headers, and the VERP
token from the address the report came to. Reading never raises: a message it cannot read is kind
`unreadable`, and mail that is no report at all is `not_report`, for the caller to leave alone.
"""

from __future__ import annotations

import email
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message

from flufl.bounce import all_failures

from engine.core.bounce_outcome import COMPLAINT, MAILBOX_TROUBLE, NOT_FAILURE, SENDER_FAULT, Outcome
from engine.core.failure_classes import by_words, failed, status_in

NOT_REPORT = "not_report"
UNREADABLE = "unreadable"
RETURNED = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers")
RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
_ADDRESS = re.compile(r"[^\s<>\"';,()]+@[^\s<>\"';,()]+\.[^\s<>\"';,()]+")
_AUTO_SUBJECT = re.compile(
    r"^(?:out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?(?:reply|response)|autoreply|vacation"
    r"|away from (?:the|my) office|abwesenheit|r[ée]ponse automatique|respuesta autom)",
    re.IGNORECASE,
)
_MAX_TEXT = 200_000  # a report's words worth reading; a huge body is returned mail, not the report
quiet = logging.getLogger("flufl.bounce")
quiet.setLevel(logging.CRITICAL)  # it logs a traceback for every detector malformed input trips up


@dataclass(frozen=True)
class Report:
    kind: str
    outcomes: tuple[Outcome, ...]


def read_report(raw: bytes, source: str, verp_local: str = "bounces") -> Report:
    """Everything a report says, as outcomes; never raises."""
    key = hashlib.sha256(raw).hexdigest()
    try:
        message = email.message_from_bytes(raw)
        return _read(message, raw, key, source, verp_local)
    except Exception:
        return Report(UNREADABLE, (Outcome(key, source, UNREADABLE, None, raw=raw),))


def _read(message: Message, raw: bytes, key: str, source: str, verp_local: str) -> Report:
    token = _token(message, verp_local)
    original = _original_message_id(message)

    def outcome(kind: str, klass: str | None, recipient: str | None = None, **fields: str | None) -> Outcome:
        return Outcome(key, source, kind, klass, recipient, token=token, message_id=original, raw=raw, **fields)

    if message.get_content_type() == "multipart/report":
        report_type = str(message.get_param("report-type") or "").lower()
        if report_type == "feedback-report":
            return _complaint(message, outcome)
        if report_type == "delivery-status":
            blocks = _delivery_status(message)
            if blocks:
                return _dsn(blocks, _text(message), outcome)
    jmrp = _hotmail_complaint(message)
    if jmrp is not None:
        return Report("complaint", (outcome("complaint", COMPLAINT, jmrp, diagnostic="feedback loop (JMRP)"),))
    text = _text(message)
    transient, permanent = _detected(message)
    # MTAs mark their bounces Auto-Submitted too (RFC 3834 asks them to): a detector's finding comes
    # first, unless the subject says it is a vacation message.
    if _is_auto_reply(message) and (not (permanent or transient) or _AUTO_SUBJECT.match(_subject(message))):
        return Report("auto_reply", (outcome("auto_reply", NOT_FAILURE),))
    if permanent or transient:
        out = []
        for address in permanent:
            said = _diagnostic(text, address)
            status = status_in(said) or status_in(text)
            # A code found in free text may be an MTA's stock phrase; words of a refusal for the sender's
            # reasons then decide, since suppressing a good address cannot be undone by the lead.
            klass = SENDER_FAULT if by_words(said) == SENDER_FAULT else failed(status, said)
            out.append(outcome("non_standard", klass, address, status=status, diagnostic=said))
        out += [outcome("delay", MAILBOX_TROUBLE, address, status=status_in(text)) for address in transient]
        return Report("non_standard", tuple(out))
    if token is not None:
        # Mail to a VERP address that no detector reads: it still names its message; kept for an operator.
        return Report("non_standard", (outcome("non_standard", None, status=status_in(text)),))
    return Report(NOT_REPORT, ())


def _detected(message: Message) -> tuple[list[str], list[str]]:
    """flufl.bounce's (temporary, permanent) failed recipients; a detector that trips on malformed input
    stops the library's scan with its exception, which here means "found none"."""
    try:
        temporary, permanent = all_failures(message)
    except Exception:
        return [], []
    return sorted({_clean(a) for a in temporary} - {""}), sorted({_clean(a) for a in permanent} - {""})


def _dsn(blocks: list[Message], text: str, outcome: Callable[..., Outcome]) -> Report:
    out = []
    kinds = set()
    for block in blocks:
        # The address the message was sent to first: an alias or a forward may have changed the final one.
        recipient = _address_field(block.get("Original-Recipient")) or _address_field(block.get("Final-Recipient"))
        action = (block.get("Action") or "").strip().lower() or None
        diagnostic = _one_line(block.get("Diagnostic-Code"))
        status = (block.get("Status") or "").strip().split(" ")[0] or status_in(diagnostic)
        kind = {"delayed": "delay", "delivered": "delivered", "relayed": "delivered", "expanded": "delivered"}.get(
            action or "", "dsn"
        )
        kinds.add(kind)
        # With no Diagnostic-Code, the report's human-readable part says what the remote server said.
        words = diagnostic or (_diagnostic(text, recipient) if recipient else None)
        # A block that names no readable recipient condemns nobody: kept for an operator, unclassed.
        klass = failed(status, words, action) if recipient else None
        out.append(outcome(kind, klass, recipient, status=status, diagnostic=diagnostic))
    return Report("dsn" if "dsn" in kinds else min(kinds), tuple(out))


def _complaint(message: Message, outcome: Callable[..., Outcome]) -> Report:
    fields = Message()
    returned: Message | None = None
    for part in message.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                fields = payload[0]
            elif isinstance(payload, str):
                fields = email.message_from_string(payload)
        elif part.get_content_type() in RETURNED:
            returned = _returned(part)
    recipient = _address_field(fields.get("Original-Rcpt-To"))
    if recipient is None and returned is not None:
        recipient = _address_field(returned.get("To"))
    feedback = (fields.get("Feedback-Type") or "abuse").strip().lower()
    klass = NOT_FAILURE if feedback == "not-spam" else COMPLAINT
    return Report("complaint", (outcome("complaint", klass, recipient, diagnostic=f"feedback-type {feedback}"),))


def _hotmail_complaint(message: Message) -> str | None:
    """Outlook.com's feedback loop (JMRP) is no multipart/report: the complained-of message comes back
    attached, with the recipient in its own header."""
    for part in message.walk():
        if part.get_content_type() == "message/rfc822":
            returned = _returned(part)
            if returned is not None and returned.get("X-HmXmrOriginalRecipient"):
                return _address_field(returned.get("X-HmXmrOriginalRecipient"))
    return None


def _delivery_status(message: Message) -> list[Message]:
    for part in message.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            payload = part.get_payload()
            if isinstance(payload, list):
                blocks = [b for b in payload[1:] if isinstance(b, Message)]
                if not blocks and payload and isinstance(payload[0], Message):
                    # Some MTAs write no blank line between the per-message and per-recipient fields.
                    blocks = [payload[0]] if payload[0].get("Final-Recipient") else []
                return [b for b in blocks if b.get("Final-Recipient") or b.get("Original-Recipient")]
            if isinstance(payload, str):
                chunks = re.split(r"\r?\n\s*\r?\n", payload.strip())
                parsed = [email.message_from_string(c) for c in chunks]
                return [b for b in parsed if b.get("Final-Recipient") or b.get("Original-Recipient")]
    return []


def _is_auto_reply(message: Message) -> bool:
    submitted = (message.get("Auto-Submitted") or "").strip().lower()
    if submitted and submitted != "no":
        return True
    if message.get("X-Autoreply") or message.get("X-Autorespond") or message.get("X-Auto-Response-Suppress"):
        return (message.get("Precedence") or "").lower() != "bulk" or bool(message.get("X-Autoreply"))
    if (message.get("Precedence") or "").strip().lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT.match(_subject(message)))


def _subject(message: Message) -> str:
    return _one_line(message.get("Subject")) or ""


def _original_message_id(message: Message) -> str | None:
    for part in message.walk():
        if part.get_content_type() in RETURNED:
            returned = _returned(part)
            if returned is not None and returned.get("Message-ID"):
                return str(returned.get("Message-ID")).strip()
    return None


def _returned(part: Message) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    if isinstance(payload, str):
        return email.message_from_string(payload)
    return None


def _token(message: Message, verp_local: str) -> str | None:
    pattern = re.compile(rf"{re.escape(verp_local)}\+([A-Za-z0-9_-]{{4,80}})@", re.IGNORECASE)
    for header in RECIPIENT_HEADERS:
        for value in message.get_all(header) or []:
            found = pattern.search(str(value))
            if found:
                return found.group(1).lower()
    return None


def _text(message: Message) -> str:
    """The report's own words: its text parts, not the message it returns."""
    words: list[str] = []
    for part in _own_parts(message):
        if part.get_content_maintype() == "text" and part.get_content_type() != "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                words.append(payload[:_MAX_TEXT].decode(part.get_content_charset() or "latin-1", "replace"))
    return "\n".join(words)


def _own_parts(message: Message) -> list[Message]:
    if not message.is_multipart():
        return [message]
    parts: list[Message] = []
    for part in message.get_payload():
        if isinstance(part, Message) and part.get_content_type() != "message/rfc822":
            parts.extend(_own_parts(part))
    return parts


def _diagnostic(text: str, address: str) -> str | None:
    """The line of a bounce's text that names the address, with the one after it (servers wrap)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if address in line.lower():
            said = " ".join(x.strip() for x in lines[i : i + 3])
            if by_words(said) or status_in(said):
                return _one_line(said)
    return _one_line(text[:2000])


def _address_field(value: object) -> str | None:
    if not value:
        return None
    text = str(value)
    text = text.split(";", 1)[1] if ";" in text else text
    found = _ADDRESS.search(text)
    return _clean(found.group(0)) if found else None


def _clean(address: bytes | str) -> str:
    text = address.decode("utf-8", "replace") if isinstance(address, bytes) else address
    return text.strip().strip("<>.,;:\"'").lower()


def _one_line(value: object) -> str | None:
    if value is None:
        return None
    return " ".join(str(value).split())[:1000] or None
