"""What failed, by the enhanced status code first and the words second. Pure.

RFC 3463 gives an enhanced status code three parts, class.subject.detail; the subject says what the
failure is about. Only a failure about the address (X.1.x, and 5.4.4: no route to the domain) says the
address is gone. The mailbox's trouble (X.2.x: full, disabled) and every transient failure are soft.
Everything else (X.7.x: a blocklisting, a policy, SPF/DKIM/DMARC; X.3.x, X.5.x, X.6.x and the rest of
X.4.x: system, protocol, content, network) is the sender's problem and must never cost a lead.

Where the code says nothing (none, or a generic X.0.0), the words decide: a short list of what
receiving servers write for each class, the sender's problems looked for first, so that "blocked" in
a refusal that also says "mailbox" is never read as a dead address. What neither reads stays
unclassified (None): it is kept for an operator, never guessed.
"""

from __future__ import annotations

import re

from engine.core.bounce_outcome import ADDRESS_GONE, MAILBOX_TROUBLE, NOT_FAILURE, SENDER_FAULT

STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
NOT_FAILURES = frozenset({"delivered", "relayed", "expanded"})
# The sender's own address at fault (5.1.7 bad sender's mailbox syntax, 5.1.8 bad sender's system):
# about an address, but not the recipient's.
SENDER_ADDRESS = frozenset({(1, 7), (1, 8)})

_SENDER_WORDS = re.compile(
    r"block|black ?list|spam|polic(?:y|ies)|reputation|\bspf\b|\bdkim\b|dmarc|reverse dns|\bptr\b|\brbl\b"
    r"|dnsbl|not (?:allowed|permitted|authori[sz]ed)|relay|rcpthosts|authenticat|content rejected|virus|malware"
    r"|too (?:big|large)|size limit|exceeds? (?:the )?(?:maximum )?(?:message )?size|rate limit"
    r"|too many (?:connections|recipients)|unsolicited|suspicious|client host|sender (?:address )?rejected"
    r"|denied by|white ?list|allow ?list|service (?:currently )?unavailable|attachment|loops? back|too many hops"
    r"|mail loop",
    re.IGNORECASE,
)
# The mailbox's own trouble, said in words that cannot mean anything else.
_MAILBOX_WORDS = re.compile(
    r"quota|(?:mail ?box|account|inbox) (?:is )?(?:full|over)|over ?quota|insufficient (?:system )?storage"
    r"|storage space|(?:account|mailbox|user) (?:has been |is )?(?:disabled|suspended|inactive|locked|frozen"
    r"|deactivated|discontinued)|deactivated mailbox|too many messages|exceeded (?:the )?(?:storage|size)"
    r"|enough (?:disk )?space|disk quota",
    re.IGNORECASE,
)
_GONE_WORDS = re.compile(
    r"user ?unknown|unknown (?:user|recipient|address|local ?part|mailbox)|no such (?:user|mailbox|recipient"
    r"|address|account|person|domain)|(?:user|mailbox|recipient|address|account)(?: name)? (?:does ?n[o']t exist"
    r"|not found|unavailable|not known|is not (?:valid|known|recogni[sz]ed))|does not exist|doesn't exist"
    r"|invalid (?:recipient|mailbox|address|user)|(?:recipient|address) (?:address )?rejected"
    r"|not (?:a |an )?(?:valid|known|active|registered) (?:recipient|mailbox|user|address|account)"
    r"|name (?:is )?not recogni[sz]ed|unrouteable|unroutable|host (?:or domain name )?not found"
    r"|domain (?:not found|does not exist)|no mx|addressee unknown|bad.recipient"
    r"|no (?:mail ?box|account)(?: available)?(?: by that name| for this user| here)|invalid.username"
    r"|(?:account|mailbox) (?:has been )?(?:closed|deleted|removed|expired|terminated)"
    r"|no longer (?:valid|active|in use)|not listed|unknown or illegal alias|bad destination mailbox"
    r"|name service error|name or service not known|user not found|recipient not found|unknown host"
    r"|doesn't have an? [\w.-]+ account|does not have an? [\w.-]+ account|(?:domain|host) name not found"
    r"|invalid (?:final )?(?:delivery )?userid",
    re.IGNORECASE,
)
# A server that says "try again" (postfix's "Host not found, try again") failed for now, not for good.
_AGAIN = re.compile(r"try again", re.IGNORECASE)
# Words of a transient failure, read last: bounce texts use them loosely ("this is not a temporary error").
_TRANSIENT_WORDS = re.compile(r"temporar|deferr|greylist|graylist|retry timeout|timed? ?out|delayed", re.IGNORECASE)


def status_in(text: str | None) -> str | None:
    """The first enhanced status code written in a text (a Diagnostic-Code, a reply, a bounce's body)."""
    if not text:
        return None
    found = STATUS.search(text)
    return ".".join(found.groups()) if found else None


def by_words(text: str | None) -> str | None:
    """The class a server's words give, or None: the sender's problems first, then the mailbox's."""
    if not text:
        return None
    if _SENDER_WORDS.search(text):
        return SENDER_FAULT
    if _MAILBOX_WORDS.search(text) or _AGAIN.search(text):
        return MAILBOX_TROUBLE
    if _GONE_WORDS.search(text):
        return ADDRESS_GONE
    if _TRANSIENT_WORDS.search(text):
        return MAILBOX_TROUBLE
    return None


def classify(status: str | None, diagnostic: str | None = None, action: str | None = None) -> str | None:
    """One recipient of a report: by the Action, the enhanced code's subject, then the words."""
    if action and action.strip().lower() in NOT_FAILURES:
        return NOT_FAILURE
    if action and action.strip().lower() == "delayed":
        return MAILBOX_TROUBLE
    parts = STATUS.fullmatch(status.strip()) if status else None
    if parts is None:
        status = status_in(diagnostic)
        parts = STATUS.fullmatch(status) if status else None
    if parts is None:
        return by_words(diagnostic)
    klass, subject, detail = (int(p) for p in parts.groups())
    if subject == 0 and detail == 0:
        # A generic code: the remote server's own code in the diagnostic says more ("#5.7.1").
        said = status_in(diagnostic)
        if said and said[0] == str(klass) and not said.endswith(".0.0"):
            klass, subject, detail = (int(p) for p in said.split("."))
    if klass == 2:
        return NOT_FAILURE
    if klass == 4:
        return MAILBOX_TROUBLE  # transient, whatever its subject: counted as soft, never at once
    if (subject == 0 and detail == 0) or (subject, detail) == (1, 0):
        return by_words(diagnostic) or (ADDRESS_GONE if subject == 1 else None)
    if subject == 1:
        return SENDER_FAULT if (subject, detail) in SENDER_ADDRESS else ADDRESS_GONE
    if (subject, detail) == (4, 4):
        return ADDRESS_GONE
    if subject == 2:
        return MAILBOX_TROUBLE
    return SENDER_FAULT


def failed(status: str | None, diagnostic: str | None = None, action: str | None = None) -> str:
    """A failure report's class, where nothing read says what failed: counted as a soft bounce, which
    costs the address only if it happens again and again, and never at once."""
    return classify(status, diagnostic, action) or MAILBOX_TROUBLE


def classify_reply(code: int, text: str) -> str | None:
    """The relay's own refusal at send time (`550 5.7.1 ...`): the same rules, the basic code last.

    A 4xx is transient (retried, never a class of its own here); a 5xx with no enhanced code and words
    that say nothing is unclassified: the message fails, the address is kept."""
    if 400 <= code < 500:
        return MAILBOX_TROUBLE
    status = status_in(text)
    if status is not None and not status.startswith("5"):
        status = None  # a 5xx reply's code decides; a stray 2.x.x or 4.x.x in its words does not
    return classify(status, text) if status else by_words(text)
