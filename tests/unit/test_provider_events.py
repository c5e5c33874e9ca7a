"""The pure side of provider bounce webhooks: SNS messages signed by Amazon itself verify with Amazon's
certificate (so the canonical string is SNS's, not only this code's idea of it), certificate URLs
outside SNS are refused, and failures are classified by what failed.

The three SNS messages and the certificate are the test resources of the AWS SDK for Java 2.x
(github.com/aws/aws-sdk-java-v2, services-custom/sns-message-manager, Apache License 2.0): real
messages, signed by SNS in March 2026 with the certificate that was SNS's in us-west-2 then."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from engine.core import provider_events as events
from engine.core.bounce_outcome import ADDRESS_GONE, MAILBOX_TROUBLE, NOT_FAILURE, SENDER_FAULT
from engine.core.failure_classes import classify
from engine.http.provider_hooks import Replays

AWS_CERTIFICATE = b"""-----BEGIN CERTIFICATE-----
MIIFxTCCBK2gAwIBAgIQBkyRNHAyygLkObkxH5ju+zANBgkqhkiG9w0BAQsFADA8
MQswCQYDVQQGEwJVUzEPMA0GA1UEChMGQW1hem9uMRwwGgYDVQQDExNBbWF6b24g
UlNBIDIwNDggTTAxMB4XDTI1MTExMDAwMDAwMFoXDTI2MTAxNDIzNTk1OVowHDEa
MBgGA1UEAxMRc25zLmFtYXpvbmF3cy5jb20wggEiMA0GCSqGSIb3DQEBAQUAA4IB
DwAwggEKAoIBAQChbVNQ+DEaT5WN+l+bg0iEeF666Z6LDFc1KJr4lNl0odcXQSsk
KsZYCMVdp4I/Ikk9zWyckRTMkmQGYimpD+bTsMCP5C/sJIU0E9Y2OXjjl5Videkq
qnRL9VdE5N41Rvks7S/5MpYcSmCsmaHfwcv82Gvx2zm9CrA5Xu7K2ZqhzRQPCRSP
mHTHQr4ED63ujE+qTpPgQZ0TvgmcrAc08Z75Z7Zzs17aTNc3YhAtQx9WowN8uiHk
kgc+ONNdtwKvWZNmnbmxMHYtYc291WCP1K1Nh4TV5XNyjIebzQKDrqTCN0ItAr1x
e6Bl3BYS3SG9XHAy0q3ekITzQsKypcuaK6dTAgMBAAGjggLhMIIC3TAfBgNVHSME
GDAWgBSBuA5jiokSGOX6OztQlZ/m5ZAThTAdBgNVHQ4EFgQUBQEUzzzuVJAKzAlR
d0Q//W6HvZUwHAYDVR0RBBUwE4IRc25zLmFtYXpvbmF3cy5jb20wEwYDVR0gBAww
CjAIBgZngQwBAgEwDgYDVR0PAQH/BAQDAgWgMBMGA1UdJQQMMAoGCCsGAQUFBwMB
MDsGA1UdHwQ0MDIwMKAuoCyGKmh0dHA6Ly9jcmwucjJtMDEuYW1hem9udHJ1c3Qu
Y29tL3IybTAxLmNybDB1BggrBgEFBQcBAQRpMGcwLQYIKwYBBQUHMAGGIWh0dHA6
Ly9vY3NwLnIybTAxLmFtYXpvbnRydXN0LmNvbTA2BggrBgEFBQcwAoYqaHR0cDov
L2NydC5yMm0wMS5hbWF6b250cnVzdC5jb20vcjJtMDEuY2VyMAwGA1UdEwEB/wQC
MAAwggF/BgorBgEEAdZ5AgQCBIIBbwSCAWsBaQB3ANdtfRDRp/V3wsfpX9cAv/mC
yTNaZeHQswFzF8DIxWl3AAABmnAb33MAAAQDAEgwRgIhANXAgMEZWU326cqxqwnf
ntD0XcBjRbmvVMOp3hZ8boPXAiEAkI3NTMXcdLCChHak1ipOae7K7r3spMGUMk6Q
cEUKqBEAdgDCMX5XRRmjRe5/ON6ykEHrx8IhWiK/f9W1rXaa2Q5SzQAAAZpwG9+u
AAAEAwBHMEUCIQD+Qyok8NYaFuQkccW+XIMmxHxj6Yka2wjtg6UN/tbU5wIgcp4z
8MyC/dUfeLRuHAt0owtVgEu7xXqrMBOYlbXrfC4AdgDLOPcViXyEoURfW8Hd+8lu
8ppZzUcKaQWFsMsUwxRY5wAAAZpwG9+yAAAEAwBHMEUCIQCmu1jQUG9A2br7OqwM
FvQXtBX10yIvvDa6a2Ov1Zgg6gIgKlqRvN6WhX0pSHAN2bKmjRwIUI3X9kjS/A/m
DYULaV4wDQYJKoZIhvcNAQELBQADggEBAIbTQWQhqrG6SzwLq79tKCpI0aL0xlD+
/jrGPxpwTlK7rtAArHiEVh/bsmwLYRlIxPBiU+NE/kqeT0lhJA6/e3X3KRmnpJ6u
Z70PJGYwmZbSRsFom0vGFBMncX0qYx1iD0dooPeAkkSnM5j81rBh+FepV3HfF+tA
9gaglWLsU7Z/A0fdn9D32UPreVHloOut5EyEinvXRUAWZco9CRloyEXJr7Mxq9MZ
vYOK+5wuSPHnPij+fGlQsPxEgoTnCmU03PqNS49kL13jjEnYYdijqL+4rfHtuZbc
4hlVoZfttwg8wD3m5brhQ+GkBBNYN8HFtdVy/BnFi+SPJqv6BgB3Y00=
-----END CERTIFICATE-----
"""
TOPIC = "arn:aws:sns:us-west-2:131990247566:dongie-standard-topic"
CERT_URL = "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-7506a1e35b36ef5a444dd1a8e7cc3ed8.pem"
UNSUBSCRIBE_URL = (
    "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn="
    "arn:aws:sns:us-west-2:131990247566:dongie-standard-topic:b24e11a2-06bd-4e73-aa29-0ed2de3b41b5"
)
WITH_SUBJECT = {
    "Type": "Notification",
    "MessageId": "26858270-545e-5848-82a2-e05566af3dcf",
    "TopicArn": TOPIC,
    "Subject": "My message subject",
    "Message": "Hello! This message has a subject.",
    "Timestamp": "2026-03-06T19:53:21.424Z",
    "SignatureVersion": "1",
    "Signature": (
        "jvNSgHVOF9KUOKI3bmQZhURD0kDN6txhfjiyuvnV95Dw6b2SRa7nq3AhM8agP0KUCIrRgKHqUlN6K2XBA35Lzkx1eI5RT0oXIN00"
        "pvvzGxSz0ddnuSGmDJM7bd/b1vl2RlLjz+KvkhzEtspxLnxjLsGl2EpOmztt+um7owb4475sOLdGTx1QiFV/8HqB2J0DyjeWdRZv"
        "u7Xpsf1Yd2rgmijFoz8x89Vw8pIksjczr4q16pxdh/XKWjbN2uPoC+3EeYdljL8KUvLYH9ueHSs5E9qq2iLdze4+FtANnE73XRvv"
        "SGE0KI+FGOvz1igest6qon3g1/CVy4mq3n19TsCSmA=="
    ),
    "SigningCertURL": CERT_URL,
    "UnsubscribeURL": UNSUBSCRIBE_URL,
}
SIGNATURE_V2 = {
    "Type": "Notification",
    "MessageId": "9d2c5580-b61d-550c-8583-37a582870907",
    "TopicArn": TOPIC,
    "Message": "This message uses signature version 2.",
    "Timestamp": "2026-03-06T20:00:26.893Z",
    "SignatureVersion": "2",
    "Signature": (
        "kGNJ7FIM5DJxRv9bdoSJBty2WHpADFWrJ0ZQU/A2sALy6tBE5hqfUvPRlklTJ+PACFMguoFOO7W6ac/Bs4gR+JBRFhx4598X8/HW"
        "zrmaLrtB2f7nzViHbpzYN+u+OewXhxjj2lNsu0bLKv6fogkACytDIOhjZylbfJoPphDYAB7T3Ila7u+K3m2wLHH4k1cPYKyBf5FI"
        "/kAoQAVsY6qFHeb6CWfHsdM98I2gwyEvwJSzW0iyYBfqckmthQwH3Ex53jrhQlZylXFDYmstSJAdvbLeGqIUxKyk+O25wYgBjbbb"
        "eR+2qE2UCGEQrk1Bq018wmTxdHZmDhoBjJXiGmFkfg=="
    ),
    "SigningCertURL": CERT_URL,
    "UnsubscribeURL": UNSUBSCRIBE_URL,
}
TOKEN = (
    "2336412f37fb687f5d51e6e2425929f52e8e353134fe72d55ef8b330217d82da14007cbccefffd35b695feb8f0294d01fd9644f41e1ddfad2"
    "61519a2c0bac743ff375eeb64530147d2da57f3acc54739da14c8dbd48a9d58ce996eff0d498ea6b4b9f58720d8959b52b99b8de148081720d"
    "7da17434e376614a00c992e7823e4"
)
CONFIRMATION = {
    "Type": "SubscriptionConfirmation",
    "MessageId": "f3f2fc87-c426-4c2f-9044-b55890c0939c",
    "Token": TOKEN,
    "TopicArn": TOPIC,
    "Message": f"You have chosen to subscribe to the topic {TOPIC}.\n"
    "To confirm the subscription, visit the SubscribeURL included in this message.",
    "SubscribeURL": f"https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={TOKEN}",
    "Timestamp": "2026-03-06T19:31:32.895Z",
    "SignatureVersion": "1",
    "Signature": (
        "Ce2Ax8UbEq0RrVH7gsjP9WZ9bzif7dUkAY4OH99Pv7FSrvs8cK+uiH3a6ig54rXWUnZRUejk8K6KeK5Q80O9iJp8KbPRKdQ0PkJ3"
        "YASdabhfK0e7evC05YR2pFoS6nNaqNzT7HrR1d1Z9iLoFxluo2Dzb7kWVB7e9jp/y+ZBXRzRIaZgscM84kahBc6QgXOFJA1/PFA4"
        "cB5qaa6tBcUFtTE63o9vJ4wMmKk93W9MoszC+dNJeVFr8VHmt3toR+3JauBCZnGdgXgsDhni4PduSfWJJxEpuOK41iYf1hW+xFNF"
        "Fsv46siTFiHdHiYDfI7/VlaY4spMgkq3EndRr7rHzQ=="
    ),
    "SigningCertURL": CERT_URL,
}


def _verify(message: dict[str, str], now: datetime | None = None) -> events.Refusal | None:
    read = events.read_sns(json.dumps(message).encode())
    certificates = events.load_certificates(AWS_CERTIFICATE)
    return events.verify_sns(read, certificates, None, [TOPIC], now or read.timestamp + timedelta(seconds=5), 3600)


@pytest.mark.parametrize("message", [WITH_SUBJECT, SIGNATURE_V2, CONFIRMATION], ids=["v1-subject", "v2", "confirm"])
def test_messages_signed_by_sns_verify_with_its_certificate(message: dict[str, str]) -> None:
    assert _verify(message) is None
    assert events.sns_certificate_url_ok(message["SigningCertURL"])


@pytest.mark.parametrize(
    "change",
    [
        {"Message": "Hello! This message has a subject!"},
        {"Subject": "My message subject."},
        {"MessageId": "26858270-545e-5848-82a2-e05566af3dce"},
        {"Timestamp": "2026-03-06T19:53:21.425Z"},
        {"SignatureVersion": "2"},
    ],
    ids=repr,
)
def test_any_change_to_a_signed_field_breaks_the_signature(change: dict[str, str]) -> None:
    assert _verify({**WITH_SUBJECT, **change}) is events.Refusal.MISMATCH


def test_a_subject_dropped_or_a_topic_not_listed_is_refused() -> None:
    without_subject = {k: v for k, v in WITH_SUBJECT.items() if k != "Subject"}
    assert _verify(without_subject) is events.Refusal.MISMATCH
    read = events.read_sns(json.dumps(SIGNATURE_V2).encode())
    certificates = events.load_certificates(AWS_CERTIFICATE)
    other_topic = events.verify_sns(read, certificates, None, [TOPIC + "-x"], read.timestamp, 3600)
    assert other_topic is events.Refusal.TOPIC


def test_an_old_message_or_an_expired_certificate_is_refused() -> None:
    at = datetime(2026, 3, 6, 19, 53, 21, tzinfo=UTC)
    assert _verify(WITH_SUBJECT, now=at + timedelta(hours=2)) is events.Refusal.STALE
    # The certificate's validity ends 2026-10-14: a message stamped later with it is not SNS's.
    late = {**WITH_SUBJECT, "Timestamp": "2026-11-01T00:00:00.000Z"}
    assert _verify(late) is events.Refusal.UNTRUSTED


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sqs.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
        "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-1.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem?x=.pem",
        "https://sns.us-east-1.amazonaws.com/cert.txt",
        "https://sns.us-east-1.amazonaws.com:bad/x.pem",
    ],
)
def test_a_certificate_url_off_sns_is_never_fetched(url: str) -> None:
    assert not events.sns_certificate_url_ok(url)


def test_certificate_urls_of_every_partition_are_taken() -> None:
    for host in ("sns.eu-west-1.amazonaws.com", "sns.us-gov-west-1.amazonaws.com", "sns.cn-north-1.amazonaws.com.cn"):
        assert events.sns_certificate_url_ok(f"https://{host}/SimpleNotificationService-abc.pem"), host


@pytest.mark.parametrize(
    ("status", "diagnostic", "hint", "transient", "expected"),
    [
        ("5.1.1", "550 5.1.1 user unknown", None, False, ADDRESS_GONE),
        ("5.1.10", "null MX", None, False, ADDRESS_GONE),
        ("5.4.4", "no route to domain", None, False, ADDRESS_GONE),
        ("5.2.2", "mailbox full", None, False, MAILBOX_TROUBLE),
        ("4.2.2", "over quota", None, True, MAILBOX_TROUBLE),
        ("4.4.1", "no answer", None, True, MAILBOX_TROUBLE),
        ("5.7.1", "blocked using a blocklist", ADDRESS_GONE, False, SENDER_FAULT),  # the code beats the hint
        ("5.1.7", "bad sender's mailbox address syntax", None, False, SENDER_FAULT),
        ("5.3.4", "message too big", None, False, SENDER_FAULT),
        ("5.6.0", "content refused", None, False, SENDER_FAULT),
        ("2.0.0", "250 ok", None, False, NOT_FAILURE),
        ("5.0.0", "550 5.1.1 The email account that you tried to reach does not exist", None, False, ADDRESS_GONE),
        ("5.0.0", "550 Client host blocked by Spamhaus", ADDRESS_GONE, False, SENDER_FAULT),  # words beat the hint
        ("5.0.0", "Test bounce details", ADDRESS_GONE, False, ADDRESS_GONE),  # the provider's reading
        ("5.0.0", "500 unknown recipient", None, False, ADDRESS_GONE),
        (None, "552 mailbox is full", None, False, MAILBOX_TROUBLE),
        (None, "421 try again later", None, True, MAILBOX_TROUBLE),
    ],
)
def test_failures_are_classified_by_what_failed(
    status: str | None, diagnostic: str | None, hint: str | None, transient: bool, expected: str | None
) -> None:
    assert events.failure_class(status, diagnostic, hint=hint, transient=transient) == expected


@pytest.mark.parametrize(
    ("status", "diagnostic", "hint", "transient", "expected", "before"),
    [
        # A transient failure is a soft bounce whatever its subject, as a DSN whose Action is `delayed`.
        ("4.7.0", "try again later: rate limited", None, True, MAILBOX_TROUBLE, SENDER_FAULT),
        # A failure nothing explains is a soft bounce, as in a DSN, not a report for an operator.
        ("5.0.0", "550 rejected", None, False, MAILBOX_TROUBLE, None),
        (None, None, None, False, MAILBOX_TROUBLE, None),
        # 5.4.7, delivery time expired: the mailbox never answered, not the sender's fault.
        ("5.4.7", "delivery time expired", None, False, MAILBOX_TROUBLE, SENDER_FAULT),
        # 5.1.0, other address status, is about the address.
        ("5.1.0", "550 5.1.0 address rejected", None, False, ADDRESS_GONE, None),
        # The specific code in the text, not the first one.
        ("5.0.0", "550 5.0.0 refused (#5.1.1)", None, False, ADDRESS_GONE, None),
        # "User unknown" said to the whole message after DATA is a content filter's answer.
        ("5.0.0", "550 user unknown (in reply to end of DATA command)", None, False, MAILBOX_TROUBLE, ADDRESS_GONE),
        ("5.0.0", "550 user unknown (in reply to end of DATA command)", ADDRESS_GONE, False, MAILBOX_TROUBLE,
         ADDRESS_GONE),
        # "Too many messages" is a full mailbox, not a rate limit on the sender.
        ("5.0.0", "552 too many messages in this mailbox", None, False, MAILBOX_TROUBLE, SENDER_FAULT),
        # A provider's "hard bounce" worded as a full mailbox spares the address.
        (None, "Mailbox is full", ADDRESS_GONE, False, MAILBOX_TROUBLE, ADDRESS_GONE),
    ],
)  # fmt: skip
def test_a_providers_failure_is_classed_as_the_same_failure_in_a_dsn(
    status: str | None, diagnostic: str | None, hint: str | None, transient: bool, expected: str, before: str | None
) -> None:
    """Where the providers' own classifier and the DSN rules disagreed, the DSN rules now decide."""
    found = events.failure_class(status, diagnostic, hint=hint, transient=transient)
    assert found == expected != before
    if hint is None:  # what the same words make of a DSN
        action = "delayed" if transient else "failed"
        assert found == str(classify(status, diagnostic or "", action))


def test_an_enhanced_code_is_found_in_text_but_not_in_numbers() -> None:
    assert events.status_in("smtp; 550-5.1.1 The email account") == "5.1.1"
    assert events.status_in("host 10.5.1.12 said 451 4.3.0 busy") == "4.3.0"
    assert events.status_in("version 1.2.3.4") is None
    assert events.status_in(None) is None


def test_a_replay_is_refused_until_its_time_is_up_and_a_release_forgets_it() -> None:
    replays, now = Replays(limit=3), datetime(2026, 1, 1, tzinfo=UTC)
    assert replays.claim("a", now, 60)
    assert not replays.claim("a", now + timedelta(seconds=59), 60)
    assert replays.claim("a", now + timedelta(seconds=61), 60)
    replays.release("a")
    assert replays.claim("a", now + timedelta(seconds=62), 60)
    for key in "bcd":  # over the limit: the oldest goes first
        assert replays.claim(key, now + timedelta(seconds=63), 60)
    assert replays.claim("a", now + timedelta(seconds=64), 60)


def test_a_sendgrid_key_must_be_p256() -> None:
    def spki(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    p256 = ec.generate_private_key(ec.SECP256R1())
    pem = p256.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert events.sendgrid_key_problem(spki(p256)) is None
    assert events.sendgrid_key_problem(pem.decode()) is None
    assert events.sendgrid_key_problem(spki(ec.generate_private_key(ec.SECP384R1()))) is not None
    assert events.sendgrid_key_problem(spki(rsa.generate_private_key(public_exponent=65537, key_size=2048))) is not None
    assert events.sendgrid_key_problem("not a key") is not None


MAIL = {"messageId": "0100018c-ses-id", "destination": ["ann@example.com", "bob@example.com"]}


def test_ses_delays_rejections_and_suppressed_complaints() -> None:
    delay = {
        "eventType": "DeliveryDelay",
        "mail": MAIL,
        "deliveryDelay": {
            "delayType": "TransientCommunicationFailure",
            "delayedRecipients": [
                {"emailAddress": "ann@example.com", "status": "4.4.1", "diagnosticCode": "smtp; 421 4.4.1 timeout"},
                {"emailAddress": "bob@example.com", "status": "4.7.0", "diagnosticCode": "smtp; 421 4.7.0 rate limit"},
            ],
        },
    }
    reject = {"eventType": "Reject", "mail": MAIL, "reject": {"reason": "Bad content"}}
    suppressed = {
        "notificationType": "Complaint",
        "mail": MAIL,
        "complaint": {
            "complainedRecipients": [{"emailAddress": "ann@example.com"}],
            "complaintSubType": "OnAccountSuppressionList",
            "feedbackId": "f1",
        },
    }
    got = [
        (o.kind, o.failure_class, o.recipient, o.report_key)
        for payload in (delay, reject, suppressed)
        for o in events.ses_outcomes(json.dumps(payload), "sns-1")
    ]
    assert got == [
        ("delay", MAILBOX_TROUBLE, "ann@example.com", "ses:sns-1"),
        ("delay", MAILBOX_TROUBLE, "bob@example.com", "ses:sns-1"),  # a delay: a soft bounce, as in a DSN
        ("dsn", SENDER_FAULT, "ann@example.com", "ses:sns-1"),
        ("dsn", SENDER_FAULT, "bob@example.com", "ses:sns-1"),
        ("complaint", None, "ann@example.com", "ses:f1"),  # SES did not send: not the lead's complaint now
    ]
    assert {o.message_id for o in events.ses_outcomes(json.dumps(reject), "sns-1")} == {"0100018c-ses-id"}
    assert events.ses_outcomes(json.dumps({"eventType": "Open", "mail": MAIL}), "sns-1") == []


def test_mailgun_and_sendgrid_unsubscribe_lists_are_left_for_an_operator() -> None:
    mailgun = {"event": "failed", "id": "a", "timestamp": 1.5, "severity": "permanent",
               "reason": "suppress-unsubscribe", "recipient": "ann@example.com"}  # fmt: skip
    sendgrid = [{"event": "dropped", "email": "ann@example.com", "reason": "Unsubscribed Address"}]
    [from_mailgun] = events.mailgun_outcomes(mailgun)
    [from_sendgrid] = events.sendgrid_outcomes(json.dumps(sendgrid).encode())
    assert (from_mailgun.failure_class, from_sendgrid.failure_class) == (None, None)
    assert from_sendgrid.report_key.startswith("sendgrid:")  # no event id: a digest of the event


def test_an_ses_transient_bounce_is_ses_giving_up_read_by_its_code() -> None:
    """SES's `Transient` bounce is final (a DSN whose Action is failed): its code decides, as in a DSN."""
    bounce = {
        "notificationType": "Bounce",
        "mail": MAIL,
        "bounce": {
            "bounceType": "Transient",
            "bounceSubType": "General",
            "feedbackId": "f2",
            "bouncedRecipients": [
                {"emailAddress": "ann@example.com", "status": "5.7.1", "diagnosticCode": "smtp; 554 5.7.1 blocked"},
                {"emailAddress": "bob@example.com", "status": "4.4.7", "diagnosticCode": "smtp; expired"},
                {"emailAddress": "cy@example.com"},
            ],
        },
    }
    got = [(o.recipient, o.failure_class) for o in events.ses_outcomes(json.dumps(bounce), "sns-2")]
    assert got == [
        ("ann@example.com", SENDER_FAULT),
        ("bob@example.com", MAILBOX_TROUBLE),
        ("cy@example.com", MAILBOX_TROUBLE),  # nothing explains it: a soft bounce
    ]
