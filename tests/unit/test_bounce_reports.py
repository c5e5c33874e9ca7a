"""Reading returned messages: the shapes of delivery status notifications (RFC 3464), feedback reports
(RFC 5965 and Hotmail's JMRP), non-standard bounces, delay warnings and auto-replies (RFC 3834), and
what a report says about the message it returns (VERP token, Message-ID)."""

from __future__ import annotations

import pytest

from engine.core.bounce_reports import Recipient, Report, ReportKind, read_report
from engine.core.failure_classes import FailureClass

GONE = FailureClass.ADDRESS_GONE
TROUBLE = FailureClass.MAILBOX_TROUBLE
SENDER = FailureClass.SENDER_FAULT


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


POSTFIX_DSN = """\
Return-Path: <>
Delivered-To: bounces+m42.sig@bounce.example.com
Received: from mx.example.org by bounce.example.com
From: MAILER-DAEMON@mx.example.org (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: bounces+m42.sig@bounce.example.com
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B1"
Message-Id: <20240101.report@mx.example.org>

--B1
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.org.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<ann@example.org>: host mail.example.org said: 550 5.1.1 <ann@example.org>:
    Recipient address rejected: User unknown (in reply to RCPT TO command)

<bob@example.net>: host mx.example.net said: 554 5.7.1 Service unavailable;
    Client host [192.0.2.10] blocked using zen.spamhaus.org (in reply to RCPT TO command)

--B1
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org
X-Postfix-Queue-ID: 4ABCD
Arrival-Date: Mon,  1 Jan 2024 10:00:00 +0000 (UTC)

Final-Recipient: rfc822; ann@example.org
Original-Recipient: rfc822;Ann@Example.org
Action: failed
Status: 5.1.1
Remote-MTA: dns; mail.example.org
Diagnostic-Code: smtp; 550 5.1.1 <ann@example.org>: Recipient address rejected:
    User unknown

Final-Recipient: rfc822; bob@example.net
Action: failed
Status: 5.7.1
Diagnostic-Code: smtp; 554 5.7.1 Service unavailable; Client host [192.0.2.10]
    blocked using zen.spamhaus.org

Final-Recipient: rfc822; cat@example.com
Action: delayed
Status: 4.2.2
Diagnostic-Code: smtp; 452 4.2.2 Mailbox full

--B1
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <bounces+m42.sig@bounce.example.com>
From: News <news@example.com>
To: ann@example.org
Subject: Welcome
Message-ID: <m42@mail.example.com>

--B1--
"""


def test_a_dsn_gives_each_recipient_its_status_action_diagnostic_and_class() -> None:
    report = read_report(crlf(POSTFIX_DSN))
    assert report.kind is ReportKind.DSN
    assert report.recipients == (
        Recipient(
            "ann@example.org",
            "5.1.1",
            "failed",
            "550 5.1.1 <ann@example.org>: Recipient address rejected: User unknown",
            GONE,
        ),
        Recipient(
            "bob@example.net",
            "5.7.1",
            "failed",
            "554 5.7.1 Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org",
            SENDER,
        ),
        Recipient("cat@example.com", "4.2.2", "delayed", "452 4.2.2 Mailbox full", TROUBLE),
    )
    assert report.failure_class is GONE  # the first failed recipient's
    assert report.message_id == "<m42@mail.example.com>"
    assert report.verp_token == "m42.sig"
    assert report.auto_submitted == "auto-replied"


def test_the_original_recipient_is_the_address_the_sender_used() -> None:
    raw = POSTFIX_DSN.replace(
        "Original-Recipient: rfc822;Ann@Example.org", "Original-Recipient: rfc822;list@example.org"
    )
    report = read_report(crlf(raw))
    assert report.recipients[0].address == "list@example.org"


def test_a_dsn_whose_every_recipient_is_delayed_is_a_delay() -> None:
    raw = POSTFIX_DSN.replace("Action: failed", "Action: delayed").replace("Status: 5.", "Status: 4.")
    report = read_report(crlf(raw))
    assert report.kind is ReportKind.DELAY
    assert {r.failure_class for r in report.recipients} == {TROUBLE}
    assert report.failure_class is TROUBLE


@pytest.mark.parametrize("action", ["delivered", "relayed", "expanded"])
def test_a_successful_dsn_is_not_a_failure(action: str) -> None:
    raw = f"""\
From: MAILER-DAEMON@mx.example.org
To: bounces@bounce.example.com
Subject: Successful Mail Delivery Report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Your message was successfully delivered to the destination(s) listed below.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; ann@example.org
Action: {action}
Status: 2.0.0
Diagnostic-Code: smtp; 250 2.0.0 Ok: queued as 12345

--B--
"""
    report = read_report(crlf(raw))
    assert report.kind is ReportKind.DSN
    assert [(r.address, r.failure_class) for r in report.recipients] == [("ann@example.org", FailureClass.NOT_FAILURE)]
    assert report.failure_class is FailureClass.NOT_FAILURE


def test_a_generic_status_is_read_by_the_code_in_the_diagnostic_and_then_by_the_notice() -> None:
    generic = POSTFIX_DSN.replace("Status: 5.1.1", "Status: 5.0.0")
    assert read_report(crlf(generic)).recipients[0].failure_class is GONE
    # No code and no words in the Diagnostic-Code: the human-readable notice near the address decides.
    silent = generic.replace(
        "Diagnostic-Code: smtp; 550 5.1.1 <ann@example.org>: Recipient address rejected:\n    User unknown",
        "Diagnostic-Code: X-Unknown; Reason 1",
    )
    assert read_report(crlf(silent)).recipients[0].failure_class is GONE


OFFICE_365 = """\
From: Microsoft Outlook <postmaster@contoso.onmicrosoft.com>
To: <bounces+t1@bounce.example.com>
Subject: Undeliverable: Your order
Content-Type: multipart/report; report-type=delivery-status; boundary="b2"
MIME-Version: 1.0

--b2
Content-Type: multipart/alternative; boundary="b3"

--b3
Content-Type: text/html; charset="us-ascii"

<html><body><p><b>Your message to dave@contoso.com couldn't be delivered.</b></p>
<p>dave wasn't found at contoso.com.</p></body></html>

--b3--

--b2
Content-Type: message/delivery-status

Reporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.exchangelabs.com
Received-From-MTA: dns;mail.example.com

Final-Recipient: rfc822;dave@contoso.com
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient
 dave@contoso.com not found by SMTP address lookup

--b2
Content-Type: message/rfc822

Message-ID: <t1@mail.example.com>
From: <news@example.com>
To: <dave@contoso.com>
Subject: Your order

Hello

--b2--
"""


def test_an_office_365_report_with_null_mx_style_code() -> None:
    report = read_report(crlf(OFFICE_365))
    assert [(r.address, r.status, r.failure_class) for r in report.recipients] == [("dave@contoso.com", "5.1.10", GONE)]
    assert report.message_id == "<t1@mail.example.com>"
    assert report.verp_token == "t1"


def test_a_report_forwarded_inside_another_message_is_still_read() -> None:
    outer = f"""\
From: gateway@example.org
To: bounces@bounce.example.com
Subject: FW: Undeliverable
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="F"

--F
Content-Type: text/plain

Disclaimer: this e-mail is confidential.

--F
Content-Type: message/rfc822

{OFFICE_365}
--F--
"""
    report = read_report(crlf(outer))
    assert [(r.address, r.failure_class) for r in report.recipients] == [("dave@contoso.com", GONE)]


ARF = """\
From: <abuse@isp.example>
To: <fbl@example.com>
Subject: FW: Earn money
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="part1"

--part1
Content-Type: text/plain; charset="US-ASCII"

This is an email abuse report for an email message received from IP 192.0.2.1.

--part1
Content-Type: message/feedback-report

Feedback-Type: {type}
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <bounces+a7@bounce.example.com>
{rcpt}Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT
Source-IP: 192.0.2.1

--part1
Content-Type: message/rfc822
Content-Disposition: inline

From: <news@example.com>
Received: from mailserver.example.net by mail.example.com
To: {to}
Subject: Earn money
Message-ID: <a7@mail.example.com>
Date: Thu, 8 Mar 2005 14:00:00 EDT

Spam Spam Spam

--part1--
"""


def arf(feedback_type: str = "abuse", rcpt: str = "", to: str = "<eve@isp.example>") -> bytes:
    return crlf(ARF.format(type=feedback_type, rcpt=rcpt, to=to))


def test_an_arf_abuse_report_is_a_complaint_about_the_recipient_it_names() -> None:
    report = read_report(arf(rcpt="Original-Rcpt-To: <eve@isp.example>\n", to="<someone-else@isp.example>"))
    assert report.kind is ReportKind.COMPLAINT
    assert report.feedback_type == "abuse"
    assert [(r.address, r.failure_class) for r in report.recipients] == [("eve@isp.example", FailureClass.COMPLAINT)]
    assert report.failure_class is FailureClass.COMPLAINT
    assert report.message_id == "<a7@mail.example.com>"


def test_an_arf_report_without_original_rcpt_to_names_the_returned_messages_one_recipient() -> None:
    assert [r.address for r in read_report(arf()).recipients] == ["eve@isp.example"]
    # A redacted recipient (AOL, Comcast) is no address: the report is matched by its Message-ID.
    redacted = read_report(arf(to="redacted@isp.example"))
    assert redacted.recipients == ()
    assert redacted.failure_class is FailureClass.COMPLAINT
    assert redacted.message_id == "<a7@mail.example.com>"


@pytest.mark.parametrize(
    ("feedback_type", "expected"),
    [
        ("abuse", FailureClass.COMPLAINT),
        ("opt-out", FailureClass.COMPLAINT),
        ("fraud", FailureClass.COMPLAINT),
        ("not-spam", FailureClass.NOT_FAILURE),
        ("auth-failure", SENDER),
        ("virus", SENDER),
    ],
)
def test_feedback_types(feedback_type: str, expected: FailureClass) -> None:
    report = read_report(arf(feedback_type))
    assert report.feedback_type == feedback_type
    assert report.failure_class is expected


def test_a_hotmail_jmrp_complaint_names_the_complainant() -> None:
    raw = """\
From: staff@hotmail.com
To: fbl@example.com
Subject: complaint about message from 192.0.2.1
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="J"

--J
Content-Type: message/rfc822
Content-Disposition: inline

X-HmXmrOriginalRecipient: frank@hotmail.com
From: News <news@example.com>
To: "frank" <frank@hotmail.com>
Message-ID: <j1@mail.example.com>
Subject: News

Hello
--J--
"""
    report = read_report(crlf(raw))
    assert report.kind is ReportKind.COMPLAINT
    assert [(r.address, r.failure_class) for r in report.recipients] == [("frank@hotmail.com", FailureClass.COMPLAINT)]
    assert report.message_id == "<j1@mail.example.com>"


EXIM = """\
Return-path: <>
Envelope-to: bounces+x9@bounce.example.com
From: Mail Delivery System <Mailer-Daemon@mx.example.org>
To: bounces+x9@bounce.example.com
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: gil@example.org
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  gil@example.org
    host mx.example.org [192.0.2.3]
    SMTP error from remote mail server after RCPT TO:<gil@example.org>:
    550 No Such User Here

------ This is a copy of the message, including all the headers. ------

Return-path: <bounces+x9@bounce.example.com>
Message-ID: <x9@mail.example.com>
From: news@example.com
To: gil@example.org
Subject: Hi

Hello
"""

QMAIL = """\
Return-Path: <>
Delivered-To: bounces+q5@bounce.example.com
From: MAILER-DAEMON@mx.example.net
To: bounces+q5@bounce.example.com
Subject: failure notice

Hi. This is the qmail-send program at mx.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<hal@example.net>:
192.0.2.5 does not like recipient.
Remote host said: 552 5.2.2 Quota exceeded (mailbox for user is full)
Giving up on 192.0.2.5.

--- Below this line is a copy of the message.

Return-Path: <bounces+q5@bounce.example.com>
Message-ID: <q5@mail.example.com>
From: news@example.com
To: hal@example.net
"""


@pytest.mark.parametrize(
    ("raw", "address", "failure_class", "token", "message_id"),
    [
        (EXIM, "gil@example.org", GONE, "x9", "<x9@mail.example.com>"),
        (QMAIL, "hal@example.net", TROUBLE, "q5", "<q5@mail.example.com>"),
    ],
)
def test_non_standard_bounces(raw: str, address: str, failure_class: FailureClass, token: str, message_id: str) -> None:
    report = read_report(crlf(raw))
    assert report.kind is ReportKind.NON_STANDARD
    assert [(r.address, r.action, r.failure_class) for r in report.recipients] == [(address, "failed", failure_class)]
    assert report.verp_token == token
    assert report.message_id == message_id


def test_a_plain_bounce_the_detectors_do_not_know_names_the_address_in_its_text() -> None:
    raw = """\
From: Postmaster <postmaster@example.org>
To: bounces+p3@bounce.example.com
Subject: Undeliverable Mail

Delivery failed 10 attempts: ivy@example.org
The address does not exist at this site.

Original message follows.

From: news@example.com
To: ivy@example.org
Message-ID: <p3@mail.example.com>
"""
    report = read_report(crlf(raw))
    assert [(r.address, r.failure_class) for r in report.recipients] == [("ivy@example.org", GONE)]
    assert report.message_id == "<p3@mail.example.com>"


def test_a_delay_warning_without_a_delivery_status_part() -> None:
    raw = """\
From: Mail Delivery System <Mailer-Daemon@mx.example.org>
To: bounces+d1@bounce.example.com
Subject: Warning: message 1abc delayed 24 hours
X-Failed-Recipients: jan@example.org

This message was created automatically by mail delivery software.
A message that you sent has not yet been delivered to one or more of its
recipients after more than 24 hours on the queue on mx.example.org.

  jan@example.org
    Mailbox is full: retry timeout not exceeded

No action is required on your part. Delivery attempts will continue for
some time, and this warning may be repeated at intervals if the message
remains undelivered. Eventually the mail delivery software will give up,
and when that happens, the message will be returned to you.
"""
    report = read_report(crlf(raw))
    assert report.kind is ReportKind.DELAY
    assert [(r.address, r.action, r.failure_class) for r in report.recipients] == [
        ("jan@example.org", "delayed", TROUBLE)
    ]


@pytest.mark.parametrize(
    "headers",
    [
        "Auto-Submitted: auto-replied\nSubject: Re: Welcome",
        "Return-Path: <>\nAuto-Submitted: auto-replied\nSubject: Re: Welcome",  # RFC 3834's null return path
        "Subject: Out of Office: Welcome",
        "Subject: Automatic reply: Welcome\nX-Auto-Response-Suppress: All",
        "Subject: Re: Welcome\nPrecedence: auto_reply",
        "Subject: Re: Welcome\nX-Autoreply: yes",
    ],
)
def test_auto_replies_are_not_failures(headers: str) -> None:
    raw = f"""\
From: Kim <kim@example.org>
To: news@example.com
{headers}

I am away until Monday with no access to email. For urgent matters write to lee@example.org.
"""
    report = read_report(crlf(raw))
    assert report.kind is ReportKind.AUTO_REPLY
    assert report.recipients == ()
    assert report.failure_class is FailureClass.NOT_FAILURE


def test_mail_that_is_not_a_report() -> None:
    raw = """\
Return-Path: <>
From: Lee <lee@example.org>
To: bounces@bounce.example.com
Subject: Question about pricing

Hi, could you send me the price list? My colleague mo@example.org is interested too.
"""
    report = read_report(crlf(raw))
    assert report == Report(ReportKind.NOT_REPORT, FailureClass.NOT_FAILURE, auto_submitted=None)


@pytest.mark.parametrize("raw", [b"", b"\x00\xff\xfe garbage without a header", b"\r\n\r\n"])
def test_what_cannot_be_read_is_unreadable(raw: bytes) -> None:
    assert read_report(raw).kind is ReportKind.UNREADABLE


@pytest.mark.parametrize(
    ("header", "verp_local", "token"),
    [
        ("Delivered-To: bounces+abc123@bounce.example.com", "bounces", "abc123"),
        ("X-Original-To: bounces+abc123@bounce.example.com", "bounces", "abc123"),
        ("Envelope-To: <bounces+abc123@bounce.example.com>", "bounces", "abc123"),
        ("Delivered-To: rp+Z-9.x@bounce.example.com", "rp", "Z-9.x"),
        ("Delivered-To: notbounces+abc123@bounce.example.com", "bounces", None),
        ("Delivered-To: bounces@bounce.example.com", "bounces", None),
    ],
)
def test_the_verp_token_of_the_address_the_report_came_to(header: str, verp_local: str, token: str | None) -> None:
    raw = f"{header}\nFrom: MAILER-DAEMON@mx.example.org\nSubject: failure notice\n\nnothing\n"
    assert read_report(crlf(raw), verp_local=verp_local).verp_token == token


def test_the_message_id_of_the_returned_message_never_the_reports_own() -> None:
    report = read_report(crlf(POSTFIX_DSN.replace("Message-ID: <m42@mail.example.com>\n", "")))
    assert report.message_id is None


SENDMAIL = """\
From: Mail Delivery Subsystem <MAILER-DAEMON@host.example.org>
To: bounces@bounce.example.com
Subject: Returned mail: see transcript for details
Auto-Submitted: auto-generated (failure)

The original message was received at Mon, 1 Jan 2024 10:00:00 GMT
from [192.0.2.1]

   ----- The following addresses had permanent fatal errors -----
<kai@example.org>
    (reason: 550 5.1.1 <kai@example.org>... User unknown)

   ----- Transcript of session follows -----
... while talking to mx.example.org.:
>>> RCPT To:<kai@example.org>
<<< 550 5.1.1 <kai@example.org>... User unknown
550 5.1.1 <kai@example.org>... User unknown
"""

YAHOO = """\
From: MAILER-DAEMON@yahoo.com
To: bounces@bounce.example.com
Subject: Failure Notice

Sorry, we were unable to deliver your message to the following address.

<lou@yahoo.com>:
Remote host said: 554 delivery error: dd This user doesn't have a yahoo.com account (lou@yahoo.com) [0] - mta1 [RCPT_TO]

--- Below this line is a copy of the message.

To: lou@yahoo.com
"""

EXCHANGE_2003 = """\
From: System Administrator <postmaster@example.org>
To: bounces@bounce.example.com
Subject: Undeliverable: Newsletter

Your message did not reach some or all of the intended recipients.

      Subject:  Newsletter
      Sent:     1/1/2024 10:00 AM

The following recipient(s) cannot be reached:

      'Max Mustermann' on 1/1/2024 10:00 AM
            The e-mail account does not exist at the organization this message was sent to.
            <mx.example.org #5.1.1>
"""

COURIER = """\
From: Courier mail server at mx.example.org <@>
To: bounces@bounce.example.com
Subject: NOTICE: mail delivery status.
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="C"

--C
Content-Type: text/plain; charset="iso-8859-1"

This is a delivery status notification from mx.example.org.

--C
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; nia@example.org
Action: failed
Status: 5.0.0
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; 550 Unrouteable address

--C--
"""

DOMINO = """\
From: Postmaster@example.org
To: bounces@bounce.example.com
Subject: DELIVERY FAILURE: User ola (ola@example.org) not listed in Domino Directory

Your message

  Subject: Newsletter

was not delivered to:

  ola@example.org

because:

  User ola (ola@example.org) not listed in Domino Directory
"""

QMAIL_HOST = """\
From: MAILER-DAEMON@mx.example.net
To: bounces@bounce.example.com
Subject: failure notice

Hi. This is the qmail-send program at mx.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<pia@example.invalid>:
Sorry, I couldn't find any host named example.invalid. (#5.1.2)
"""

EXIM_EXPIRED = """\
From: Mail Delivery System <Mailer-Daemon@mx.example.org>
To: bounces@bounce.example.com
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: rui@example.org
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  rui@example.org
    retry timeout exceeded
"""

SES_BLOCKED = """\
From: MAILER-DAEMON@amazonses.com
To: bounces+s1@bounce.example.com
Subject: Delivery Status Notification (Failure)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="S"

--S
Content-Type: text/plain; charset=UTF-8

An error occurred while trying to deliver the mail to the following recipients:
sam@example.org

--S
Content-Type: message/delivery-status

Reporting-MTA: dns; a1-2.smtp-out.amazonses.com

Final-Recipient: rfc822; sam@example.org
Action: failed
Status: 5.7.1
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; 554 5.7.1 Service unavailable; Client host [192.0.2.7] blocked using Spamhaus

--S--
"""

GMAIL_FULL = """\
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: bounces+g1@bounce.example.com
Subject: Delivery Status Notification (Failure)
MIME-Version: 1.0
Content-Type: multipart/report; boundary="G"; report-type=delivery-status

--G
Content-Type: text/plain; charset="UTF-8"

Address not found? No: The recipient's inbox is full and can't accept messages now.

--G
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com

Final-Recipient: rfc822; tia@gmail.com
Action: failed
Status: 5.2.2
Diagnostic-Code: smtp; 552-5.2.2 The email account that you tried to reach is over quota.

--G--
"""


@pytest.mark.parametrize(
    ("raw", "kind", "addresses", "failure_class"),
    [
        (SENDMAIL, ReportKind.NON_STANDARD, ["kai@example.org"], GONE),
        (YAHOO, ReportKind.NON_STANDARD, ["lou@yahoo.com"], GONE),
        (EXCHANGE_2003, ReportKind.NON_STANDARD, [], GONE),  # names no address: matched by its message
        (COURIER, ReportKind.DSN, ["nia@example.org"], GONE),
        (DOMINO, ReportKind.NON_STANDARD, ["ola@example.org"], GONE),
        (QMAIL_HOST, ReportKind.NON_STANDARD, ["pia@example.invalid"], GONE),
        (EXIM_EXPIRED, ReportKind.NON_STANDARD, ["rui@example.org"], TROUBLE),
        (SES_BLOCKED, ReportKind.DSN, ["sam@example.org"], SENDER),
        (GMAIL_FULL, ReportKind.DSN, ["tia@gmail.com"], TROUBLE),
    ],
    ids=["sendmail", "yahoo", "exchange-2003", "courier", "domino", "qmail", "exim-expired", "ses", "gmail"],
)
def test_the_formats_of_common_mail_systems(
    raw: str, kind: ReportKind, addresses: list[str], failure_class: FailureClass
) -> None:
    report = read_report(crlf(raw))
    assert report.kind is kind
    assert [r.address for r in report.recipients] == addresses
    assert report.failure_class is failure_class
