"""What failed, by the enhanced status code's subject first and the server's words second (RFC 3463)."""

from __future__ import annotations

import pytest

from engine.core.bounce_outcome import ADDRESS_GONE, MAILBOX_TROUBLE, NOT_FAILURE, SENDER_FAULT
from engine.core.failure_classes import classify, classify_reply, failed, status_in


@pytest.mark.parametrize(
    ("status", "diagnostic", "action", "expected"),
    [
        ("5.1.1", "smtp; 550 5.1.1 <x@y> User unknown", "failed", ADDRESS_GONE),
        ("5.1.2", None, "failed", ADDRESS_GONE),  # no such domain
        ("5.1.10", None, "failed", ADDRESS_GONE),  # null MX
        ("5.4.4", None, "failed", ADDRESS_GONE),  # no route to the domain
        ("5.1.8", None, "failed", SENDER_FAULT),  # the sender's own domain is bad, not the recipient's
        ("5.2.2", "smtp; 552 5.2.2 Quota exceeded", "failed", MAILBOX_TROUBLE),
        ("5.2.1", None, "failed", MAILBOX_TROUBLE),  # mailbox disabled
        ("5.7.1", "smtp; 554 5.7.1 Client host blocked using zen.spamhaus.org", "failed", SENDER_FAULT),
        ("5.7.26", "DMARC policy", "failed", SENDER_FAULT),
        ("5.3.4", "message too big", "failed", SENDER_FAULT),
        ("5.4.6", "routing loop", "failed", SENDER_FAULT),
        ("5.6.0", None, "failed", SENDER_FAULT),
        ("4.2.2", "mailbox full", "delayed", MAILBOX_TROUBLE),
        ("4.7.1", "greylisted", "failed", MAILBOX_TROUBLE),  # transient: soft, whatever its subject
        ("2.0.0", None, "delivered", NOT_FAILURE),
        ("5.0.0", "smtp; 550 #5.7.1 relaying denied", "failed", SENDER_FAULT),  # the remote's own code
        ("5.0.0", "smtp; 550 unknown user account", "failed", ADDRESS_GONE),
        ("5.0.0", "smtp; 552 user has exceeded the disk quota", "failed", MAILBOX_TROUBLE),
        ("5.0.0", "smtp; 550 Host not found, try again", "failed", MAILBOX_TROUBLE),
        ("5.0.0", "smtp; 554 something nobody wrote down", "failed", None),
        (None, "550 5.1.1 The email account that you tried to reach does not exist", None, ADDRESS_GONE),
    ],
)
def test_a_report_is_classed_by_what_failed(
    status: str | None, diagnostic: str | None, action: str | None, expected: str | None
) -> None:
    assert classify(status, diagnostic, action) == expected


def test_a_failure_nothing_explains_is_a_soft_bounce_never_a_dead_address() -> None:
    assert failed("5.0.0", "554 something nobody wrote down") == MAILBOX_TROUBLE


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "5.7.1 Client host [192.0.2.1] blocked using a blocklist", SENDER_FAULT),
        (554, "5.7.1 Service unavailable; Client host blocked using zen.spamhaus.org", SENDER_FAULT),
        (550, "5.1.1 <ann@example.com>: Recipient address rejected: User unknown", ADDRESS_GONE),
        (550, "user unknown", ADDRESS_GONE),  # a bare 550: the words decide
        (553, "sorry, that domain isn't in my list of allowed rcpthosts", SENDER_FAULT),
        (552, "5.2.2 Mailbox full", MAILBOX_TROUBLE),
        (550, "Requested action not taken", None),  # nothing says what failed: not suppressed
        (451, "4.3.0 try again later", MAILBOX_TROUBLE),
        (550, "5.1.1 ok 2.0.0", ADDRESS_GONE),  # the reply's own 5.x.x code, not a stray one in its words
    ],
)
def test_the_relays_own_refusal_at_send_time_is_classed_the_same_way(
    code: int, text: str, expected: str | None
) -> None:
    assert classify_reply(code, text) == expected


def test_status_in_finds_an_enhanced_code_and_not_a_version_number() -> None:
    assert status_in("smtp; 550 5.1.1 <x@y>: unknown") == "5.1.1"
    assert status_in("Postfix 3.7.10 says no") is None
    assert status_in(None) is None
