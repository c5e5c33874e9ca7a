"""What a message that came back says: a delivery status notification (RFC 3464), a feedback report
(RFC 5965 ARF, and Hotmail's JMRP), a non-standard bounce, a delay warning, an auto-reply (RFC 3834),
or none of these. Pure: it reads the bytes it is given and returns a `Report`; nothing is looked up.

The reading never raises: a message the email package cannot make sense of is a report of kind
`unreadable`, kept for an operator like any report that names nothing.

Where it looks, in order:

1. A `message/feedback-report` part, or a returned message carrying Hotmail's
   `X-HmXmrOriginalRecipient`: a complaint about the message.
2. A `message/delivery-status` part: one entry per recipient block, with its Action, Status and
   Diagnostic-Code. The rfc822 Original-Recipient is taken over the Final-Recipient, because it is the
   address the sender used.
3. flufl.bounce's detectors (Mailman's), for the bounces that have no delivery-status part; then, for
   a message that is plainly a bounce (sent by a mailer daemon, or titled as one) where they find
   nothing, the addresses its text names that are neither its own nor the sender's.
4. Auto-reply signs: `Auto-Submitted` other than `no` from a person, `X-Autoreply`,
   `Precedence: auto_reply`, an out-of-office subject.

A non-standard bounce is classified by the words near each address: the enhanced code there, else the
reply code and the words (`failure_classes.classify`). The returned message's Message-ID and the VERP
token of the address the report came to let the caller find the message it is about.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email.message import Message
from enum import StrEnum

from flufl.bounce import all_failures

from engine.core.failure_classes import FailureClass, Status, classify, status_in, text_class
from engine.core.report_parts import MAX_TEXT, addresses_in, field_blocks, header_values, parse, sort_parts

# Bounds on the work one message may cost: a report is a few kilobytes, spam can be megabytes.
_MAX_DIAGNOSTIC = 500
_WINDOW = 800  # characters after an address in a bounce's text that still speak about it
_MAX_RAW = 2_000_000
# The detectors read every line of every part, attachments included; a bounce says what failed at its
# top, so they are given its first 64 KB (a 9 MB message took them 4 s).
_MAX_DETECTED = 64_000
_MAX_FALLBACK = 5  # more addresses than this in a bounce's text is a page of them, not a list of failures


class ReportKind(StrEnum):
    DSN = "dsn"
    COMPLAINT = "complaint"
    AUTO_REPLY = "auto_reply"
    NON_STANDARD = "non_standard"
    DELAY = "delay"
    NOT_REPORT = "not_report"
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient a report speaks about. `status` is the enhanced code ("" when none), `action`
    the DSN's word (failed, delayed, delivered, relayed, expanded), `diagnostic` the remote's words."""

    address: str
    status: str
    action: str
    diagnostic: str
    failure_class: FailureClass


@dataclass(frozen=True, slots=True)
class Report:
    """What one returned message says.

    `failure_class` is the class of the report as a whole: that of its first failed recipient, or,
    when it names none (a complaint whose recipient is redacted), what its kind implies.
    `verp_token` is TOKEN from a `<verp_local>+TOKEN@...` address the report was delivered to;
    `message_id` the Message-ID of the returned message (with its angle brackets); `feedback_type`
    the ARF Feedback-Type; `auto_submitted` the report's own Auto-Submitted header.
    """

    kind: ReportKind
    failure_class: FailureClass
    recipients: tuple[Recipient, ...] = ()
    verp_token: str | None = None
    message_id: str | None = None
    feedback_type: str | None = None
    auto_submitted: str | None = None


def read_report(raw: bytes, verp_local: str = "bounces") -> Report:
    """Read one returned message, as an MTA hands it over (headers and body, any line ends)."""
    try:
        return _Reading(parse(raw), raw, verp_local).report()
    # The email package and the detectors raise on some malformed input (IndexError, ValueError,
    # LookupError, RecursionError...); whatever it is, the message is kept for an operator.
    except Exception:
        return Report(ReportKind.UNREADABLE, FailureClass.NOT_FAILURE)


_BARE_ADDRESS = re.compile(r"[!-~]+@[!-~]+")  # printable ASCII, no space: what a DSN field may hold
_MESSAGE_ID = re.compile(r"^[ \t]*>?[ \t]*Message-ID:[ \t]*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_DAEMONS = frozenset({"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "maildaemon", "mailer_daemon"})

_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|failure|failed|notification|problem|report)|non[- ]?delivery"
    r"|returned (?:mail|to sender)|failure notice|mail delivery|could not be delivered|delivery has failed"
    r"|mail system error|\bbounce|nicht zustellbar|unzustellbar|non recapitabile|non remis|no entregado"
    r"|onbestelbaar|niedostarcz|impossible de remettre|no se puede entregar|non consegnato|nedoru\w*iteln"
    r"|levererades inte|kan ikke leveres|配信エラー|配送エラー|不達|未達|退信|无法投递",
    re.IGNORECASE,
)
# Who sends bounces: a mailer daemon or postmaster by address, or by the name it signs with.
_DAEMON_NAME = re.compile(
    r"mail(?:er)?[ _-]?daemon|postmaster|mail delivery|delivery (?:subsystem|system|status)|(?:system|mail) admin",
    re.IGNORECASE,
)
_DELAY_SUBJECT = re.compile(r"\b(?:delay(?:ed)?|warning|deferred|postponed)\b", re.IGNORECASE)
_DELAY_TEXT = re.compile(
    r"warning message only|do not (?:need to )?resend|not yet been delivered|has been delayed"
    r"|delivery (?:is |has been )?delayed"
    r"|will (?:continue|keep) (?:to )?(?:try|retry|attempt)|attempts will continue|will be retried|will try again"
    r"|still (?:trying|retrying|being retried)|continue trying|delivery (?:has been )?postponed",
    re.IGNORECASE,
)
_GAVE_UP = re.compile(
    r"permanent (?:error|failure)|failed permanently|giving up|gave up|not going to try again", re.IGNORECASE
)
_PERMANENT_TEXT = re.compile(
    r"could not be delivered|undeliverable|delivery (?:has )?failed|(?<![\w.:#/-])5\d\d(?=[ -])", re.IGNORECASE
)
# Exim's and sendmail's note that the failed address came from another one, the address the sender used.
_EXPANDED_FROM = re.compile(
    r"\((?:ultimately )?(?:generated|expanded) from:?\s*<?([^\s<>()]+@[^\s<>()]+?)>?\s*\)", re.IGNORECASE
)
_AUTO_REPLY_SUBJECT = re.compile(
    r"(?:^|[\s\[(:])(?:auto(?:matic)?[ -]?(?:reply|response|antwort|answer)|auto:|out of (?:the )?office|\bOOO\b"
    r"|abwesenheit|vacation|away from|r[ée]ponse automatique|respuesta autom[aá]tica|risposta automatica"
    r"|automatyczna odpowied|automatisch antwoord|autosvar|autoreply|autoresponse"
    r"|thank you for (?:your )?(?:e-?mail|message|contacting))",
    re.IGNORECASE,
)
# Where a bounce's own words stop and the copy of the returned message begins.
_RETURNED_TEXT = re.compile(
    r"^[ \t]*[-=*_>]{2,}.{0,60}?\b"
    r"(?:original|returned|unsent|undelivered|copy of|below this line|headers? (?:of|follow))"
    r"|^.{0,60}?\b(?:original|returned|unsent|undelivered) (?:message|mail)(?: headers?)?\b.{0,20}?\bfollows?\b"
    r"|^(?:Received|Return-Path|DKIM-Signature):",
    re.IGNORECASE | re.MULTILINE,
)
# A line of an SMTP dialogue where the remote refused: from its reply code to the end of the line.
_REFUSAL = re.compile(r"(?<![\w.:#/-])[45]\d\d(?=[ -]).*$", re.MULTILINE)


@functools.lru_cache(maxsize=16)
def _verp_pattern(verp_local: str) -> re.Pattern[str]:
    """`<verp_local>+TOKEN@`: TOKEN is what the return path's signer wrote (letters, digits, `._=-`)."""
    return re.compile(rf"(?<![\w.+-]){re.escape(verp_local)}\+([\w.=-]+)@", re.IGNORECASE)


class _Reading:
    """One message being read; `report()` says what it is."""

    def __init__(self, message: Message, raw: bytes, verp_local: str) -> None:
        self.message = message
        self.raw = raw
        self.verp_local = verp_local
        self.parts = sort_parts(message)
        text = "\n".join(self.parts.text)[:MAX_TEXT]
        cut = _RETURNED_TEXT.search(text)
        # The bounce's own words, and what follows them (a copy of the returned message, inline).
        self.own_text = text[: cut.start()] if cut else text
        self.copied_text = text[cut.start() :] if cut else ""
        self.subject = " ".join(header_values(message, "Subject"))
        # What the message names, as written and as decoded (base64, quoted-printable): an address
        # outside it is never taken as gone.
        self.named = "\n".join([raw[:_MAX_RAW].decode("latin-1"), *self.parts.everything]).lower()

    def report(self) -> Report:
        if not self.message.keys():
            return Report(ReportKind.UNREADABLE, FailureClass.NOT_FAILURE)
        for read in (self._complaint, self._dsn, self._detected, self._auto_reply, self._plain_bounce):
            found = read()
            if found is not None:
                return found
        return self._made(ReportKind.NOT_REPORT, [])

    def _made(self, kind: ReportKind, found: list[Recipient], feedback_type: str | None = None) -> Report:
        recipients = tuple(self._named_only(recipient) for recipient in found)
        if recipients:
            failed = [r for r in recipients if r.failure_class is not FailureClass.NOT_FAILURE]
            report_class = (failed or list(recipients))[0].failure_class
        elif kind is ReportKind.COMPLAINT:
            report_class = _feedback_class(feedback_type)
        elif kind is ReportKind.DELAY:
            report_class = FailureClass.MAILBOX_TROUBLE
        elif kind in (ReportKind.DSN, ReportKind.NON_STANDARD):
            # A bounce that names no recipient still speaks about the message it returns.
            report_class = classify(status_in(self.own_text), self.own_text)
        else:
            report_class = FailureClass.NOT_FAILURE
        return Report(
            kind=kind,
            failure_class=report_class,
            recipients=recipients,
            verp_token=self._verp_token(),
            message_id=self._message_id(),
            feedback_type=feedback_type,
            auto_submitted=next(iter(header_values(self.message, "Auto-Submitted")), None),
        )

    def _named_only(self, recipient: Recipient) -> Recipient:
        """A recipient the message does not name as written (AOL's bare screen names, completed by the
        detector) is kept, but never as a reason to suppress."""
        if recipient.address in self.named or not recipient.failure_class.suppresses:
            return recipient
        return replace(recipient, failure_class=FailureClass.MAILBOX_TROUBLE)

    def _verp_token(self) -> str | None:
        pattern = _verp_pattern(self.verp_local)
        for name in ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To"):
            for value in header_values(self.message, name):
                match = pattern.search(value)
                if match:
                    return match[1]
        return None

    def _message_id(self) -> str | None:
        for returned in self.parts.returned:
            for value in header_values(returned, "Message-ID"):
                if value.strip():
                    return value.strip()
        match = _MESSAGE_ID.search(self.copied_text) or _MESSAGE_ID.search(self.own_text)
        return match[1] if match else None

    # 1. Complaints
    def _complaint(self) -> Report | None:
        jmrp = [
            value for returned in self.parts.returned for value in header_values(returned, "X-HmXmrOriginalRecipient")
        ]
        if not self.parts.feedback and not jmrp:
            return None
        fields = [field for text in self.parts.feedback for block in field_blocks(text) for field in block]
        feedback_type = next((value.strip().lower() for name, value in fields if name == "feedback-type"), None)
        named = [value for name, value in fields if name in ("original-rcpt-to", "removal-recipient")] + jmrp
        addresses = [address for value in named for address in addresses_in(value)]
        if not addresses:  # the message complained about went to one address: that one
            to = [
                a
                for returned in self.parts.returned
                for value in header_values(returned, "To")
                for a in addresses_in(value)
            ]
            addresses = to if len(to) == 1 else []
        complaint_class = _feedback_class(feedback_type)
        recipients = [Recipient(address, "", "", "", complaint_class) for address in dict.fromkeys(addresses)]
        return self._made(ReportKind.COMPLAINT, recipients, feedback_type)

    # 2. Delivery status notifications
    def _dsn(self) -> Report | None:
        texts = self.parts.delivery_status or self.parts.nested_status
        recipients = [entry for text in texts for entry in self._dsn_entries(text)]
        if not recipients:
            return None
        kind = ReportKind.DELAY if all(r.action == "delayed" for r in recipients) else ReportKind.DSN
        return self._made(kind, recipients)

    def _dsn_entries(self, text: str) -> Iterator[Recipient]:
        blocks = list(_recipient_blocks(text))
        addresses = [_block_address(fields) for fields in blocks]
        for fields, address in zip(blocks, addresses, strict=True):
            if address is None:
                continue
            status = status_in(fields.get("status", "")) or ""
            action = (fields.get("action", "").split() or [_action_of(status)])[0].lower()
            diagnostic = _diagnostic(fields.get("diagnostic-code", ""))
            failure_class = classify(status, diagnostic, action or "failed")
            if _undetermined(status, diagnostic):
                # The code and the remote's words say nothing specific: the report's own text may.
                about = self._about(address, [a for a in addresses if a and a != address])
                failure_class = classify(status, about, action or "failed")
                diagnostic = diagnostic or about[:_MAX_DIAGNOSTIC]
            yield Recipient(address, status, action, diagnostic, failure_class)

    # 3. Non-standard bounces
    def _detected(self) -> Report | None:
        try:
            head = self.message if len(self.raw) <= _MAX_DETECTED else parse(self.raw[:_MAX_DETECTED])
            temporary, permanent = all_failures(head)
        # A detector that meets input it does not expect raises (and logs it); the fallback reads on.
        except Exception:
            return None
        found = []
        for raw_address in sorted(permanent | temporary):
            address = raw_address.decode("ascii", errors="replace").strip().strip("<>").lower()
            local = address.partition("@")[0]
            if "@" in address and local and local in self.named:
                found.append(address)
        if not found:
            return None
        delayed = self._reads_as_delay() or (not permanent and not self._reads_as_failure())
        return self._non_standard(found, delayed)

    def _plain_bounce(self) -> Report | None:
        if not self._looks_like_bounce():
            return None
        named = _dsn_like_fields(self.message, self.own_text)
        if not named:
            own = self._own_addresses()
            named = [address for address in addresses_in(self.own_text) if address not in own]
        if len(named) > _MAX_FALLBACK:  # a page of addresses is not a bounce's list of failures
            named = []
        return self._non_standard(named, self._reads_as_delay())

    def _non_standard(self, addresses: list[str], delayed: bool) -> Report:
        recipients: dict[str, Recipient] = {}
        action = "delayed" if delayed else "failed"
        for address in addresses:
            others = [other for other in addresses if other != address]
            about = self._about(address, others)
            status = status_in(about) or ""
            sent_to = self._sent_to(address)
            if sent_to not in recipients:
                diagnostic = about[:_MAX_DIAGNOSTIC]
                recipients[sent_to] = Recipient(sent_to, status, action, diagnostic, classify(status, about, action))
        return self._made(ReportKind.DELAY if delayed else ReportKind.NON_STANDARD, list(recipients.values()))

    def _sent_to(self, address: str) -> str:
        """The address the sender used, when the report says the failed one was expanded from it."""
        near = _near(self.own_text, address, [])[: len(address) + 200]
        match = _EXPANDED_FROM.search(near)
        return match[1].lower() if match else address

    def _about(self, address: str, others: list[str]) -> str:
        """The words of the report about one address: the refusal lines of an SMTP dialogue near it,
        else the text near it, else the same in the whole report (the reason may come first)."""
        near = _near(self.own_text, address, others)
        whole = " ".join(self.own_text.split())
        candidates = [_refusals(near), near, _refusals(self.own_text), whole]
        for text in candidates:
            if text and (status_in(text) is not None or text_class(text) is not None):
                return text
        return near or whole

    def _reads_as_delay(self) -> bool:
        """A warning that delivery goes on, whatever its subject says: it says so in its text, or is
        titled as one without reading as a failure."""
        if _GAVE_UP.search(self.own_text):
            return False
        if _DELAY_TEXT.search(self.own_text):
            return True
        titled = _DELAY_SUBJECT.search(self.subject) and not _BOUNCE_SUBJECT.search(self.subject)
        return bool(titled) and not self._reads_as_failure()

    def _reads_as_failure(self) -> bool:
        text = self.own_text
        return bool(_PERMANENT_TEXT.search(text)) or text_class(text) is FailureClass.ADDRESS_GONE

    def _looks_like_bounce(self) -> bool:
        if self.parts.disposition:  # a read receipt (RFC 8098)
            return False
        report_type = str(self.message.get_param("report-type", "")).lower()
        if report_type == "delivery-status" or _BOUNCE_SUBJECT.search(self.subject):
            return True
        return self._from_daemon()

    def _from_daemon(self) -> bool:
        """Whether the From header is a mail system's: a daemon's or postmaster's address or name, or
        none at all. (A null return path says nothing here: RFC 3834 asks auto-replies to use one too.)"""
        values = header_values(self.message, "From")
        for value in values:
            found = addresses_in(value)
            if not found or any(address.partition("@")[0] in _DAEMONS for address in found):
                return True
        return any(_DAEMON_NAME.search(value) for value in values)

    def _own_addresses(self) -> set[str]:
        """Addresses that are not a failed recipient: the report's own, and the sender's."""
        own: set[str] = set()
        for name in ("From", "To", "Cc", "Sender", "Reply-To", "Return-Path", "Delivered-To", "X-Original-To"):
            for value in header_values(self.message, name):
                own.update(addresses_in(value))
        for returned in self.parts.returned:
            for name in ("From", "Sender", "Return-Path"):
                for value in header_values(returned, name):
                    own.update(addresses_in(value))
        for address in addresses_in(self.own_text):
            local = address.partition("@")[0]
            if local in _DAEMONS or local.startswith(f"{self.verp_local.lower()}+"):
                own.add(address)
        return own

    # 4. Auto-replies
    def _auto_reply(self) -> Report | None:
        auto = (header_values(self.message, "Auto-Submitted") or [""])[0].strip().lower()
        precedence = " ".join(
            header_values(self.message, "Precedence") + header_values(self.message, "X-Precedence")
        ).lower()
        signs = (
            (auto and not auto.startswith("no") and not self._from_daemon())
            or header_values(self.message, "X-Autoreply")
            or header_values(self.message, "X-Autorespond")
            or "auto_reply" in precedence
            or _AUTO_REPLY_SUBJECT.search(self.subject)
        )
        if not signs or self.parts.disposition:
            return None
        return self._made(ReportKind.AUTO_REPLY, [])


def _recipient_blocks(text: str) -> Iterator[dict[str, str]]:
    """Per-recipient field sets of a delivery-status text. A block that names a second recipient
    without a blank line between them starts a new set (some MTAs write them run together); an Action
    given only once for the whole report (per-message fields) applies to each recipient."""
    shared: dict[str, str] = {}
    for block in field_blocks(text):
        current: dict[str, str] = {}
        for name, value in block:
            if name in ("final-recipient", "original-recipient") and name in current:
                yield {**shared, **current}
                current = {}
            current.setdefault(name, value)
        if "final-recipient" in current or "original-recipient" in current:
            yield {**shared, **current}
        elif "action" in current:
            shared["action"] = current["action"]


def _block_address(fields: dict[str, str]) -> str | None:
    """The address the sender used: an rfc822 Original-Recipient, else the Final-Recipient."""
    return _dsn_address(fields.get("original-recipient", "")) or _dsn_address(fields.get("final-recipient", ""))


def _dsn_address(value: str) -> str | None:
    """The address of an `rfc822; user@example.com` field; None for another address type (X.400)."""
    kind, _, rest = value.rpartition(";")
    if kind and kind.split(";")[0].strip().lower() not in ("rfc822", "utf-8", "unknown", ""):
        return None
    found = addresses_in(rest)
    if found:
        return found[0]
    # An address the pattern does not take (`user@#example.net`) is still the one the report names.
    bare = rest.strip().strip("<>").strip()
    return bare.lower() if _BARE_ADDRESS.fullmatch(bare) else None


def _action_of(status: str) -> str:
    return {"2": "delivered", "4": "delayed", "5": "failed"}.get(status[:1], "failed")


def _diagnostic(value: str) -> str:
    """A Diagnostic-Code without its type (`smtp; 550 ...`, `X-Postfix; ...`)."""
    kind, sep, rest = value.partition(";")
    text = rest if sep and " " not in kind.strip() else value
    return " ".join(text.split())[:_MAX_DIAGNOSTIC]


def _undetermined(status: str, diagnostic: str) -> bool:
    code = Status.parse(status)
    told = Status.parse(status_in(diagnostic))
    if (code is not None and not code.generic) or (told is not None and not told.generic):
        return False
    return text_class(diagnostic) is None


def _near(text: str, address: str, others: list[str]) -> str:
    """The words of a bounce about one address: from the line that names it, up to the line that
    names another failed address, or a few lines on."""
    lower = text.lower()
    start = lower.find(address)
    if start < 0:
        return ""
    start = lower.rfind("\n", 0, start) + 1
    end = min(len(text), start + _WINDOW)
    for other in others:
        at = lower.find(other, start + len(address))
        if 0 <= at < end:
            end = max(lower.rfind("\n", start, at), start + len(address))
    return " ".join(text[start:end].split())


def _refusals(text: str) -> str:
    """The lines of an SMTP dialogue in which the remote refused (`550 ...`), joined."""
    return " ".join(" ".join(match.group(0).split()) for match in _REFUSAL.finditer(text))


def _dsn_like_fields(message: Message, text: str) -> list[str]:
    """Recipients a bounce names in DSN fields outside a delivery-status part: in its headers
    (`X-Failed-Recipients`, `Final-Recipient`) or in its text."""
    named = []
    for name in ("X-Failed-Recipients", "Original-Recipient", "Final-Recipient"):
        for value in header_values(message, name):
            named.extend(addresses_in(value))
    for fields in _recipient_blocks(text):
        address = _block_address(fields)
        if address:
            named.append(address)
    return list(dict.fromkeys(named))


def _feedback_class(feedback_type: str | None) -> FailureClass:
    """abuse, fraud, opt-out and other are the recipient's complaint; not-spam takes one back;
    auth-failure and virus (RFC 6591, RFC 5965) speak about the sender's mail, not the reader's wish."""
    if feedback_type == "not-spam":
        return FailureClass.NOT_FAILURE
    if feedback_type in ("auth-failure", "virus"):
        return FailureClass.SENDER_FAULT
    return FailureClass.COMPLAINT
