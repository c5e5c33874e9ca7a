"""Failure classes by what failed: the RFC 3463 subject of the enhanced code decides, the words decide
only under a missing or generic code, and the relay's own reply at send time is read the same way."""

from __future__ import annotations

import pytest

from engine.core.failure_classes import FailureClass, classify, classify_reply, status_in, text_class

GONE = FailureClass.ADDRESS_GONE
TROUBLE = FailureClass.MAILBOX_TROUBLE
SENDER = FailureClass.SENDER_FAULT


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("5.1.1", GONE),  # bad destination mailbox
        ("5.1.2", GONE),  # bad destination system
        ("5.1.6", GONE),  # mailbox moved
        ("5.1.10", GONE),  # null MX (RFC 7505)
        ("5.4.4", GONE),  # unable to route
        ("5.2.1", TROUBLE),  # mailbox disabled
        ("5.2.2", TROUBLE),  # mailbox full
        ("5.2.3", TROUBLE),  # message larger than the mailbox takes
        ("5.4.7", TROUBLE),  # delivery time expired
        ("5.7.1", SENDER),  # delivery not authorised (blocklists, policy)
        ("5.7.26", SENDER),  # DMARC / authentication failures
        ("5.3.0", SENDER),  # mail system
        ("5.3.4", SENDER),  # message too big for the system
        ("5.4.6", SENDER),  # routing loop
        ("5.4.1", SENDER),  # no answer from host
        ("5.5.2", SENDER),  # syntax error
        ("5.6.0", SENDER),  # content
        ("5.1.7", SENDER),  # the sender's own address is malformed
        ("5.1.8", SENDER),  # the sender's system address is bad
        ("4.1.1", TROUBLE),  # any transient report is a soft bounce, even about the address
        ("4.7.1", TROUBLE),
        ("4.2.2", TROUBLE),
    ],
)
def test_the_subject_of_a_specific_code_decides(status: str, expected: FailureClass) -> None:
    assert classify(status, "", "failed") is expected


def test_a_specific_code_wins_over_the_words_around_it() -> None:
    assert classify("5.7.1", "550 5.7.1 No such user here", "failed") is SENDER
    assert classify("5.1.1", "mailbox is full", "failed") is GONE
    assert classify("5.3.0", "553 5.3.0 Addressee unknown", "failed") is SENDER


@pytest.mark.parametrize("action", ["delivered", "relayed", "expanded", "Delivered (comment)"])
def test_delivered_relayed_and_expanded_are_not_failures(action: str) -> None:
    assert classify("2.0.0", "250 ok", action) is FailureClass.NOT_FAILURE
    assert classify("5.1.1", "user unknown", action) is FailureClass.NOT_FAILURE


def test_a_delay_is_mailbox_trouble_whatever_its_code() -> None:
    assert classify("5.1.1", "user unknown", "delayed") is TROUBLE
    assert classify("4.4.1", "connection timed out", "delayed") is TROUBLE


def test_a_generic_status_is_read_by_the_specific_code_in_the_diagnostic() -> None:
    assert classify("5.0.0", "550 5.1.1 <a@example.com>... User unknown", "failed") is GONE
    assert classify("5.0.0", "550 user mail-box not found (#5.7.1)", "failed") is SENDER
    assert classify("5.0.0", "451 4.3.0 temporary local problem", "failed") is TROUBLE


@pytest.mark.parametrize(
    ("diagnostic", "expected"),
    [
        ("550 User unknown", GONE),
        ("550 <a@example.com>: Recipient address rejected: User unknown in local recipient table", GONE),
        ("550 Requested action not taken: mailbox unavailable", GONE),
        ("550 No such user here", GONE),
        ("550 Host unknown (Name server: example.invalid: host not found)", GONE),
        ("550 is not a known user", GONE),
        ("550 Mailbox full", TROUBLE),
        ("552 Requested mail action aborted: exceeded storage allocation", TROUBLE),
        ("550 This account has been disabled or discontinued", TROUBLE),
        ("550 Host not found, try again", TROUBLE),
        ("554 Message rejected: listed at zen.spamhaus.org", SENDER),
        ("550 Message rejected because of its content: looks like spam", SENDER),
        ("550 Relaying denied", SENDER),
        ("550 SPF check failed", SENDER),
        ("554 Too many hops 26 (25 max)", SENDER),
        ("554 Message size exceeds fixed maximum message size", SENDER),
        ("550 Service currently unavailable", SENDER),
        ("550 <a@example.com>: Sender address rejected: Domain not found", SENDER),
        ("550 The domain of the sender address does not exist", SENDER),
        ("450 Client host rejected: cannot find your hostname", TROUBLE),  # transient by its reply code
        ("550 Client host rejected: cannot find your hostname", SENDER),
        ("550 Your server is not listed in our allowed senders", TROUBLE),  # nothing about the address
        ("550 User ola not listed in Domino Directory", GONE),
        ("Exceeded Maximum Delivery Attempts", TROUBLE),
        ("Reason 1 (Unable-To-Transfer)", TROUBLE),  # no reason given: a soft bounce, never a suppression
        ("", TROUBLE),
    ],
)
def test_under_a_generic_code_the_words_decide(diagnostic: str, expected: FailureClass) -> None:
    assert classify("5.0.0", diagnostic, "failed") is expected
    assert classify(None, diagnostic, "failed") is expected


def test_words_that_point_several_ways_never_suppress() -> None:
    assert classify(None, "550 user unknown - your IP is on our blocklist", "failed") is SENDER
    assert classify(None, "550 No such user. Mailbox full.", "failed") is TROUBLE


def test_an_address_refused_after_the_message_was_sent_is_not_trusted_under_a_generic_code() -> None:
    said = "host mx.example.com said: 550 Address unknown (in reply to end of DATA command)"
    assert classify("5.0.0", said, "failed") is TROUBLE
    assert classify("5.0.0", "550 Address unknown (in reply to RCPT TO command)", "failed") is GONE
    assert classify("5.1.1", said, "failed") is GONE  # a specific code still decides


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "5.7.1 Client host [192.0.2.1] blocked using a blocklist", SENDER),
        (554, "5.7.1 Service unavailable; client host blocked using zen.spamhaus.org", SENDER),
        (550, "5.1.1 user unknown", GONE),
        (550, "user unknown", GONE),
        (551, "User not local; please try <b@example.com>", GONE),
        (553, "5.1.7 Sender address rejected: malformed", SENDER),
        (552, "5.2.2 mailbox full", TROUBLE),
        (552, "5.3.4 Message size exceeds fixed limit", SENDER),
        (550, "Requested action not taken", TROUBLE),  # a bare 550 that gives no reason
        (450, "4.2.1 mailbox temporarily unavailable", TROUBLE),
        (421, "4.7.0 Try again later, closing connection", TROUBLE),
        (451, "5.1.1 user unknown", TROUBLE),  # the reply code says transient: it is
        (250, "2.0.0 Ok: queued", FailureClass.NOT_FAILURE),
    ],
)
def test_the_relays_own_reply_at_send_time(code: int, text: str, expected: FailureClass) -> None:
    assert classify_reply(code, text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("smtp; 550 5.1.1 <a@example.com>: Recipient address rejected", "5.1.1"),
        ("550 5.0.0 user mail-box not found (#5.7.1)", "5.7.1"),
        ("Sorry, no mailbox here by that name. (#5.1.1)", "5.1.1"),
        ("host 10.5.1.1 said: 550 5.2.2 full", "5.2.2"),  # not the IP address
        ("Postfix 2.5.1 says 550 5.1.1 unknown", "5.1.1"),  # not the version number
        ("Office 365: 550 5.1.10 RESOLVER.ADR.RecipientNotFound", "5.1.10"),
        ("Status: 5.0.0", "5.0.0"),
        ("connect to 192.0.2.4 failed", None),
        ("", None),
    ],
)
def test_status_in_finds_the_enhanced_code_a_server_wrote(text: str, expected: str | None) -> None:
    assert status_in(text) == expected


def test_text_class_is_none_when_the_words_name_nothing() -> None:
    assert text_class("Your message could not be delivered.") is None
    assert text_class("user unknown") is GONE


def test_only_address_gone_and_complaint_suppress_at_once() -> None:
    assert {c for c in FailureClass if c.suppresses} == {GONE, FailureClass.COMPLAINT}
