"""What failed, when a message did not reach its reader: the class of a failure, read from an RFC 3463
enhanced status code, and from the words around it only when the code says nothing specific. Pure: no
IO.

The class follows the code's subject, not its first digit. A 5.x.x report is permanent for that
message, but it says the address is bad only when the failure is about the address:

- `ADDRESS_GONE`: X.1.x (no such mailbox or domain, moved, bad syntax, null MX) and 5.4.4 (no route to
  the domain). X.1.7 and X.1.8 are about the sender's own address, so they are the sender's fault.
- `MAILBOX_TROUBLE`: X.2.x (full, disabled, over its size limit), every transient report (4.x.x, a
  delay, an expiry such as X.4.7), and a permanent failure that gives no reason at all.
- `SENDER_FAULT`: X.7.x (blocked, blocklisted, spam, policy, authentication), X.3.x, X.5.x, X.6.x and
  the rest of X.4.x (system, protocol, content, routing).
- `COMPLAINT`: a feedback report; never derived from a status code.
- `NOT_FAILURE`: delivered, relayed or expanded; auto-replies; mail that is not a report.

When the code is missing or generic (X.0.0, or only a bare reply code such as 550), the diagnostic
text decides (`text_class`). Where its words point several ways, the class that does not suppress
wins: suppressing a valid address costs a lead for good, a missed hard bounce costs one more soft
bounce.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class FailureClass(StrEnum):
    """What failed. The values are the words the store, the reports and the corpus manifest use."""

    ADDRESS_GONE = "address_gone"
    MAILBOX_TROUBLE = "mailbox_trouble"
    SENDER_FAULT = "sender_fault"
    COMPLAINT = "complaint"
    NOT_FAILURE = "not_failure"

    @property
    def suppresses(self) -> bool:
        """Whether this class alone suppresses the address at once (soft bounces only count)."""
        return self in (FailureClass.ADDRESS_GONE, FailureClass.COMPLAINT)


# An enhanced code is class.subject.detail (RFC 3463 2: subject and detail up to three digits). The
# guards keep parts of IP addresses and version numbers (`10.5.1.1`, `2.5.1.3`) from reading as one.
_STATUS = re.compile(r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)(?!\w)")
# A code written where an SMTP server writes its code: after a reply code, `#` (qmail, exim) or `(`.
_ANCHORED = re.compile(r"(?:\b[245]\d\d[ -]|#|\()\s*$")
# A basic RFC 5321 reply code at the start of a reply or after `said:` and the like.
_REPLY = re.compile(r"(?<![\w.#-])([245])\d\d(?=[ -]|$)(?![-.]\d)", re.MULTILINE)
_DELIVERED = ("delivered", "relayed", "expanded")


@dataclass(frozen=True, slots=True)
class Status:
    """An RFC 3463 enhanced status code."""

    klass: int
    subject: int
    detail: int

    def __str__(self) -> str:
        return f"{self.klass}.{self.subject}.{self.detail}"

    @property
    def generic(self) -> bool:
        """X.0.x, and subjects RFC 3463 does not define: they name no cause."""
        return not 1 <= self.subject <= 7

    @classmethod
    def parse(cls, text: str | None) -> Status | None:
        match = _STATUS.search(text or "")
        if match is None:
            return None
        return cls(int(match[1]), int(match[2]), int(match[3]))


def status_in(text: str) -> str | None:
    """The enhanced status code a diagnostic text carries, or None.

    A specific code is taken before a generic one (`550 5.0.0 ... (#5.7.1)` reads as 5.7.1), then one
    where a server writes its code (after `550 `, `#` or `(`) before one elsewhere in the text, then
    the first.
    """
    found = [(m, Status(int(m[1]), int(m[2]), int(m[3]))) for m in _STATUS.finditer(text)]
    ranked = sorted(found, key=lambda pair: (pair[1].generic, _ANCHORED.search(text, 0, pair[0].start()) is None))
    return str(ranked[0][1]) if ranked else None


def classify(status: str | None, diagnostic: str = "", action: str = "failed") -> FailureClass:
    """The class of one recipient's outcome in a delivery report.

    `status` is the report's enhanced code (a DSN's `Status:`, or None), `diagnostic` the remote
    server's words (a DSN's `Diagnostic-Code`, or the text of a non-standard bounce about that
    recipient), `action` the DSN's `Action:` (failed, delayed, delivered, relayed, expanded).
    """
    verb = action.strip().lower()
    if verb.startswith(_DELIVERED):
        return FailureClass.NOT_FAILURE
    if verb.startswith("delayed"):
        return FailureClass.MAILBOX_TROUBLE
    code = Status.parse(status)
    if code is None or code.generic:
        # A generic 5.0.0 whose diagnostic carries the remote's own specific code is read by that code.
        told = Status.parse(status_in(diagnostic))
        if told is not None and (code is None or not told.generic):
            code = told
    if code is not None and code.klass == 4:
        return FailureClass.MAILBOX_TROUBLE
    if code is not None and code.klass == 5 and not code.generic:
        return _by_subject(code, diagnostic)
    reply = _REPLY.search(diagnostic)
    if reply is not None and reply[1] == "4":
        return FailureClass.MAILBOX_TROUBLE
    said = text_class(diagnostic)
    if said is None or (said is FailureClass.ADDRESS_GONE and _AFTER_DATA.search(diagnostic)):
        return FailureClass.MAILBOX_TROUBLE
    return said


def classify_reply(code: int, text: str) -> FailureClass:
    """The class of the relay's own reply at send time: `550 5.7.1 blocked` is the sender's fault,
    `550 5.1.1 user unknown` and a bare `550 user unknown` mean the address is gone, `552 5.2.2` is
    mailbox trouble. The reply code decides transient or permanent (RFC 5321 4.2.1)."""
    if code < 400:
        return FailureClass.NOT_FAILURE
    if code < 500:
        return FailureClass.MAILBOX_TROUBLE
    told = Status.parse(status_in(text))
    status = str(told) if told is not None and told.klass == 5 else None
    return classify(status, text, "failed")


def _by_subject(code: Status, diagnostic: str) -> FailureClass:
    if code.subject == 1:
        if code.detail in (7, 8):  # the sender's own address: bad syntax, bad system
            return FailureClass.SENDER_FAULT
        if code.detail == 0 and text_class(diagnostic) is FailureClass.SENDER_FAULT:
            return FailureClass.SENDER_FAULT  # "other address status" about the sender's address
        return FailureClass.ADDRESS_GONE
    if code.subject == 2:
        return FailureClass.MAILBOX_TROUBLE
    if code.subject == 4 and code.detail == 4:
        return FailureClass.ADDRESS_GONE
    if code.subject == 4 and code.detail == 7:  # delivery time expired: a soft bounce
        return FailureClass.MAILBOX_TROUBLE
    return FailureClass.SENDER_FAULT


def _phrases(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


# The words of the three failure classes, as mail systems write them. Tiers are read in order and the
# first that matches decides: a full mailbox is the most specific thing a report says, the sender's
# fault and a disabled mailbox do not suppress and so come before the address, and the transient words
# many reports say in passing come last, except "try again", which makes anything before it transient.
_FULL = _phrases(
    r"mail ?box (?:is )?(?:full|over)|\bfull mail ?box|mail ?box (?:size|storage)",
    r"\bquota\b|over ?quota",
    r"\bstorage (?:allocation|limit|space)|exceeded storage|insufficient (?:disk |system )?storage",
    r"\bdisk (?:space|full)|out of (?:disk )?space|\btoo many messages",
    r"\bmail ?box (?:has )?exceeded|\bexceeds? (?:the |its )?(?:mail ?box|storage|account)",
)
_AGAIN = _phrases(
    r"\btry (?:again|later)\b",
    r"(?<!not a )(?<!not )\btemporar(?:y|ily)\b",
)
_SENDER = _phrases(
    r"\bblock(?:ed|ing|list(?:ed)?)\b",
    r"\bblack ?list(?:ed)?\b|\bdeny ?list|\bwhite ?list|\ballow ?list",
    r"\bspam",
    r"\bjunk mail",
    r"\bunsolicited|\bbulk (?:e-?)?mail",
    r"\b(?:rbl|dnsbl|uribl|surbl|spamhaus|spamcop|sorbs|barracuda)\b",
    r"\bpolic(?:y|ies)\b",
    r"\brelay(?:ing)? (?:access )?(?:denied|not (?:permitted|allowed)|prohibited)",
    r"\b(?:unable|not permitted|not allowed|not authori[sz]ed) to (?:relay|send)",
    r"\b(?:spf|dkim|dmarc)\b",
    r"sender policy framework",
    r"reverse (?:dns|lookup)|\brdns\b|\bptr\b",
    r"\breputation\b",
    r"\bvirus(?:es)?\b|\bmalware\b|\binfected\b|\bphish",
    r"message (?:size|(?:is )?too (?:large|big))|exceeds? (?:the )?(?:max(?:imum)?|fixed) (?:message )?size",
    r"\bcontent (?:rejected|filter|polic)|\bmessage content|\bcontent was rejected",
    r"\b(?:sender|from address|from domain|return[- ]path)\b[^.;]{0,40}?\b(?:rejected|denied|refused|unknown|invalid"
    r"|not (?:allowed|found|permitted|verified)|does not (?:exist|resolve)|verif\w* fail)",
    r"\bclient host rejected|\bcannot find your (?:host ?name|reverse)",
    r"\baccess denied|\bpermission denied|\bnot authori[sz]ed|\bauthentication (?:required|failed)",
    r"\b(?:routing|mail|message) loop|\blooping\b|\btoo many hops|\bloop detected|\bloops back",
    r"\btoo many recipients",
    r"\b(?:helo|ehlo)\b.{0,40}\b(?:rejected|refused|denied|invalid)",
    r"(?:attachments?|images?) (?:are |is )?not (?:allowed|accepted|permitted)",
    r"accept\w* (?:e-?mail|mail|messages?)? ?with (?:attachments|images)",
    r"\b(?:does not|doesn't|do not|don't|not) accept(?:ing)? (?:e-?mail|mail|messages?) from",
    r"\bwithout (?:a |any )?(?:to|from|date|subject|message-id|resent-[a-z]+):? (?:fields?|headers?)",
    r"\bno (?:to|from|date|subject|message-id|resent-[a-z]+):? (?:fields?|headers?) given",
    r"\brequires? confirmation|\bnot pre-?approved|\bchallenge",
    r"\bcommand died\b|\berror while being processed|\binternal (?:server )?error|\bservice (?:currently )?unavailable",
)
_DISABLED = _phrases(
    r"\b(?:disabled|deactivated|inactive|suspended|frozen|locked)\b",
    r"\bnot (?:currently )?active\b|\baccount (?:is |has been )?(?:closed|expired|on hold)",
)
_ADDRESS = _phrases(
    r"\bunknown (?:user|recipient|mail ?box|address|account|alias|local ?part|e-?mail)",
    r"\b(?:user|recipient|mail ?box|address|addressee|account|alias|e-?mail)(?: ?name)?"
    r" (?:is )?(?:unknown|not (?:found|known|recogni[sz]ed|valid|listed|unique)|invalid)",
    r"\b(?:does not|doesn't|did not|not|no longer) exist",
    r"\bno such (?:user|recipient|mail ?box|address|account|person|domain|local)",
    r"\bno (?:mail ?box|account|user)\b|\bno user by that name",
    r"\binvalid\b.{0,30}?\b(?:recipient|mail ?box|address|user|userid|username|account|e-?mail|destination)",
    r"\bunroute?able\b|\bbad[ _-]?(?:destination[ _-]?)?(?:mail ?box|recipient|address)",
    r"\bnot listed in (?:the )?(?:domino|public name|name (?:and|&) address|address book|directory)",
    r"\bname is not recogni[sz]ed|\bnot unique\b|\bseveral matches\b|\bambiguous\b",
    r"\bnot an? (?:known|valid|active) (?:user|recipient|mail ?box|address|account)",
    r"\bhost (?:or domain name )?(?:not found|unknown)|\bunknown (?:host|domain)|\bname service error",
    r"\bdomain (?:name )?(?:not found|does not exist|unknown)|\bnxdomain\b|name or service not known",
    r"\bnot our customer\b|\buser not local\b|\bmail ?box unavailable\b",
    r"\bno longer (?:valid|active|in use|available)|\bhas been (?:deleted|removed|terminated)",
    r"\b(?:does not|doesn't) have an? (?:[\w.-]+ ){0,3}(?:account|mail ?box|delivery point)",
    r"\bdid not (?:exactly )?match (?:an?y? )?(?:[\w.-]+ ){0,3}(?:address|user|account|mail ?box)",
    r"\bunbekannt|existiert nicht|inexistente|n'existe pas|\binconnu|\bno existe\b|desconocid|sconosciut|inesistent",
)
_TRANSIENT = _phrases(
    r"\bdeferred\b|\bdelayed\b|\bpostponed\b",
    r"\bexpired\b|\btimed? ?out\b|\btimeout\b|\bconnection (?:refused|reset|lost|dropped)",
    r"\bretry (?:time|timeout|limit)|\bretries exceeded|\btoo long in (?:the )?queue",
    r"\bwill (?:continue|keep) (?:to )?(?:try|retry)|\b(?:maximum|max) (?:delivery )?attempts",
    r"\bdelivery attempts? exceeded|\btoo many (?:delivery )?attempts",
    r"\bno answer\b|\bunreachable\b|\bmail ?box (?:is )?(?:currently )?busy",
)
_TIERS = (
    (_FULL, FailureClass.MAILBOX_TROUBLE),
    (_AGAIN, FailureClass.MAILBOX_TROUBLE),
    (_SENDER, FailureClass.SENDER_FAULT),
    (_DISABLED, FailureClass.MAILBOX_TROUBLE),
    (_ADDRESS, FailureClass.ADDRESS_GONE),
    (_TRANSIENT, FailureClass.MAILBOX_TROUBLE),
)
# A refusal after the whole message was sent (postfix's "in reply to end of DATA command", exim's
# "after end of data", Gmail's "state 14") judged the message, not the address: a server that does
# not know a recipient says so at RCPT, and content filters that answer "user unknown" to what they
# take for spam are common. Under a generic code such words are not trusted to mean the address is gone.
_AFTER_DATA = _phrases(r"\bend of data\b", r"\bafter data\b", r"\(state 1[4-9]\)")


def text_class(text: str) -> FailureClass | None:
    """The class the words of a diagnostic name, or None when they name none."""
    flat = " ".join(text.split())
    for pattern, failure_class in _TIERS:
        if pattern.search(flat):
            return failure_class
    return None
