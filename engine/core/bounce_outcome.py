"""What the world says back after the SMTP 250, as the engine acts on it. Pure values.

Every way a report comes in (`funnel bounces ingest`, the embedded LMTP receiver, the bounce mailbox
poller, a provider's event webhook) turns it into `Outcome`s, one per recipient the report names,
already classified; one writer in the store acts on them. The ways in differ only in how they read a
report and how they say "taken" to whoever handed it over (`Verdict`).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# The classes of a failure (RFC 3463's subject of the enhanced status code, the detector's reading of
# the text where the code says nothing), as docs/bounces.md describes what each does to a lead.
ADDRESS_GONE = "address_gone"  # a hard bounce: the address is suppressed at once
MAILBOX_TROUBLE = "mailbox_trouble"  # a soft bounce: suppressed after N within D days, no delivery between
SENDER_FAULT = "sender_fault"  # the sender's problem: the message failed, the lead is kept, an alarm counts it
COMPLAINT = "complaint"  # the lead said "spam": an opt-out at once, and a `complained` event
NOT_FAILURE = "not_failure"  # an auto-reply, a delivered/relayed/expanded DSN: recorded, nothing changes
FAILURE_CLASSES = (ADDRESS_GONE, MAILBOX_TROUBLE, SENDER_FAULT, COMPLAINT, NOT_FAILURE)


@dataclass(frozen=True)
class Outcome:
    """One recipient of one report, classified; `failure_class` None when nothing could classify it.

    `report_key` identifies the report (a digest of the raw message, a provider's event id): the same
    report received twice changes nothing the second time. A message is matched by `token` (the signed
    VERP token of the return path), else `message_id` (the original Message-ID the report returns),
    else the `recipient`'s most recent message; what matches nothing is kept for an operator with
    `raw`, never guessed."""

    report_key: str
    source: str  # where it came in: "ingest", "lmtp", "imap", "ses", "sendgrid", "postmark", "mailgun"
    kind: str  # dsn, delay, non_standard, complaint, auto_reply, delivered, not_report, unreadable
    failure_class: str | None
    recipient: str | None = None
    status: str | None = None  # the enhanced status code, e.g. "5.1.1"
    diagnostic: str | None = None  # the remote server's words, one line
    token: str | None = None
    message_id: str | None = None
    raw: bytes | None = None


class Verdict(enum.Enum):
    """What a way in tells whoever handed it a report."""

    TAKEN = "taken"  # recorded (matched or kept for an operator): the MTA may forget it, the poller may move it
    NOT_RECOGNISED = "not_recognised"  # not a report at all: the poller leaves it where it is
    RETRY = "retry"  # the engine could not record it now (the database is away): hand it over again later


# A way in hands the raw message and its source's name to this, and answers its MTA by the verdict.
Intake = Callable[[bytes, str], Awaitable[Verdict]]
