"""Reading one returned message: delivery status notifications, feedback reports, auto-replies, and
mail that is no report, with the VERP token and the original Message-ID; never raising."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.bounce_outcome import ADDRESS_GONE, COMPLAINT, MAILBOX_TROUBLE, NOT_FAILURE, SENDER_FAULT
from engine.core.bounce_reports import NOT_REPORT, UNREADABLE, read_report


def dsn(*blocks: str, to: str = "bounces+abc123@bounce.test", original: str = "<m1@shop.test>") -> bytes:
    status = "\n".join(f"\n{block.strip()}" for block in blocks)
    return f"""From: MAILER-DAEMON@relay.test
To: {to}
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.test
{status}

--B
Content-Type: text/rfc822-headers

From: news@shop.test
To: someone
Message-ID: {original}
Subject: hi

--B--
""".replace("\n", "\r\n").encode()


def test_a_dsn_gives_one_outcome_per_recipient_with_its_class_token_and_message_id() -> None:
    raw = dsn(
        "Final-Recipient: rfc822; gone@mail.test\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <gone@mail.test>: User doesn't exist",
        "Final-Recipient: rfc822; full@mail.test\nAction: failed\nStatus: 5.2.2\n"
        "Diagnostic-Code: smtp; 552 5.2.2 Quota exceeded",
        "Final-Recipient: rfc822; someone@blocked.test\nAction: failed\nStatus: 5.7.1\n"
        "Diagnostic-Code: smtp; 554 5.7.1 blocked using zen.spamhaus.org",
    )
    report = read_report(raw, "lmtp")
    assert report.kind == "dsn"
    got = {o.recipient: (o.failure_class, o.status, o.token, o.message_id) for o in report.outcomes}
    assert got == {
        "gone@mail.test": (ADDRESS_GONE, "5.1.1", "abc123", "<m1@shop.test>"),
        "full@mail.test": (MAILBOX_TROUBLE, "5.2.2", "abc123", "<m1@shop.test>"),
        "someone@blocked.test": (SENDER_FAULT, "5.7.1", "abc123", "<m1@shop.test>"),
    }
    assert {o.source for o in report.outcomes} == {"lmtp"}
    assert len({o.report_key for o in report.outcomes}) == 1


def test_the_address_first_mailed_is_the_one_reported() -> None:
    raw = dsn("Original-Recipient: rfc822; alias@mail.test\nFinal-Recipient: rfc822; real@mail.test\n"
              "Action: failed\nStatus: 5.1.1")  # fmt: skip
    assert [o.recipient for o in read_report(raw, "t").outcomes] == ["alias@mail.test"]


def test_delivered_and_delayed_are_no_hard_bounce() -> None:
    delivered = read_report(dsn("Final-Recipient: rfc822; a@mail.test\nAction: delivered\nStatus: 2.0.0"), "t")
    delayed = read_report(dsn("Final-Recipient: rfc822; a@mail.test\nAction: delayed\nStatus: 4.4.1"), "t")
    assert [(o.kind, o.failure_class) for o in delivered.outcomes] == [("delivered", NOT_FAILURE)]
    assert [(o.kind, o.failure_class) for o in delayed.outcomes] == [("delay", MAILBOX_TROUBLE)]


def test_a_feedback_report_is_a_complaint_about_its_original_recipient() -> None:
    raw = b"""From: fbl@isp.test\r
To: bounces+tok9@bounce.test\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r
\r
--F\r
Content-Type: text/plain\r
\r
This is an abuse report.\r
--F\r
Content-Type: message/feedback-report\r
\r
Feedback-Type: abuse\r
User-Agent: isp-fbl/1.0\r
Version: 1\r
Original-Rcpt-To: <Lead@Example.com>\r
\r
--F\r
Content-Type: message/rfc822\r
\r
From: news@shop.test\r
To: lead@example.com\r
Message-ID: <m2@shop.test>\r
\r
hello\r
--F--\r
"""
    (outcome,) = read_report(raw, "imap").outcomes
    assert (outcome.kind, outcome.failure_class, outcome.recipient) == ("complaint", COMPLAINT, "lead@example.com")
    assert (outcome.token, outcome.message_id) == ("tok9", "<m2@shop.test>")


def test_an_out_of_office_reply_is_no_failure_and_ordinary_mail_is_no_report() -> None:
    vacation = b"From: ann@mail.test\r\nTo: news@shop.test\r\nAuto-Submitted: auto-replied\r\n"
    vacation += b"Subject: Out of office\r\n\r\nBack on Monday.\r\n"
    ordinary = b"From: ann@mail.test\r\nTo: news@shop.test\r\nSubject: a question\r\n\r\nHow much is it?\r\n"
    assert [(o.kind, o.failure_class) for o in read_report(vacation, "t").outcomes] == [("auto_reply", NOT_FAILURE)]
    assert read_report(ordinary, "t").kind == NOT_REPORT
    assert read_report(ordinary, "t").outcomes == ()


def test_a_broken_message_is_unreadable_not_an_error() -> None:
    report = read_report(b"\xff\xfe" * 10 + b"Content-Type: multipart/report; boundary=\r\n\r\n--", "t")
    assert report.kind in (UNREADABLE, NOT_REPORT)


ADDRESSES = st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.test", fullmatch=True)
FIELD_TEXT = st.text(string.ascii_letters + string.digits + " .;:<>@#-_", max_size=60)


@settings(max_examples=150, deadline=None)
@given(
    named=st.lists(ADDRESSES, min_size=0, max_size=3),
    statuses=st.lists(st.sampled_from(["5.1.1", "5.2.2", "5.7.1", "4.4.1", "2.0.0", "5.0.0", "9.9", ""]), max_size=3),
    noise=FIELD_TEXT,
    cut=st.integers(min_value=0, max_value=2000),
    flip=st.integers(min_value=0, max_value=2000),
)
def test_random_and_mutated_reports_never_raise_nor_condemn_an_address_they_do_not_name(
    named: list[str], statuses: list[str], noise: str, cut: int, flip: int
) -> None:
    blocks = [
        f"Final-Recipient: rfc822; {address}\nAction: failed\nStatus: {status}\nDiagnostic-Code: smtp; {noise}"
        for address, status in zip(named, statuses, strict=False)
    ]
    raw = bytearray(dsn(*blocks) if blocks else dsn(noise))
    if raw:
        raw[flip % len(raw)] ^= 0x20
        raw = raw[: len(raw) - cut % len(raw)]
    report = read_report(bytes(raw), "t")
    text = bytes(raw).decode("utf-8", "replace").lower()
    for outcome in report.outcomes:
        if outcome.failure_class in (ADDRESS_GONE, COMPLAINT):
            assert outcome.recipient is not None and outcome.recipient in text
