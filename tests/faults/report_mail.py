"""Reports as receiving systems write them, about a message the engine sent: a delivery status
notification (RFC 3464, as postfix writes one) and a feedback report (RFC 5965 ARF, as a mailbox
provider's feedback loop sends one)."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime

DIAGNOSTICS = {
    "5.1.1": "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
    "5.2.2": "552 5.2.2 <{rcpt}>: Mailbox full, over quota",
    "4.4.7": "451 4.4.7 Temporary lookup failure, will retry",
    "5.7.1": "550 5.7.1 Service unavailable; client host blocked using a blocklist",
}


def dsn(serial: str, to: str, rcpt: str, message_id: str, status: str, when: datetime) -> bytes:
    """A report about one recipient of the message `message_id`, sent to `to` (its return path)."""
    delayed = status.startswith("4")
    diagnostic = DIAGNOSTICS[status].format(rcpt=rcpt)
    boundary = f"{serial}/mx.receiver.example"
    return (
        "From: MAILER-DAEMON@mx.receiver.example (Mail Delivery System)\r\n"
        f"To: {to}\r\n"
        f"Subject: {'Delayed Mail (still being retried)' if delayed else 'Undelivered Mail Returned to Sender'}\r\n"
        f"Date: {format_datetime(when)}\r\n"
        f"Message-ID: <{serial}@mx.receiver.example>\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"This is the mail system at host mx.receiver.example.\r\n\r\n<{rcpt}>: {diagnostic}\r\n\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.receiver.example\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: {'delayed' if delayed else 'failed'}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: hello@greenleaf.example\r\nTo: {rcpt}\r\nSubject: Welcome\r\nMessage-ID: {message_id}\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def complaint(serial: str, to: str, rcpt: str, message_id: str, when: datetime) -> bytes:
    """A feedback loop's abuse report: the recipient marked the message as spam."""
    boundary = f"{serial}-arf"
    return (
        "From: feedback@fbl.receiver.example\r\n"
        f"To: {to}\r\nSubject: Abuse report\r\nDate: {format_datetime(when)}\r\n"
        f"Message-ID: <{serial}@fbl.receiver.example>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is an email abuse report for an email message received from you.\r\n\r\n"
        f"--{boundary}\r\nContent-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\n"
        f"Original-Rcpt-To: {rcpt}\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: hello@greenleaf.example\r\nTo: {rcpt}\r\nSubject: Welcome\r\nMessage-ID: {message_id}\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode()
