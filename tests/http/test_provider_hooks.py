"""Provider bounce webhooks over a real socket: Amazon SES through SNS, SendGrid, Postmark and Mailgun
post what their documentation shows, signed with keys this test makes (an SNS signing certificate
issued by a CA of the test, which the settings trust), and the outcomes reach the app's recorder
classified by what failed. Forged, stale, replayed and malformed requests are refused, and refused
alike; a provider not configured is 404; the recorder failing leaves the request to be sent again."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from engine.core.bounce_outcome import ADDRESS_GONE, COMPLAINT, MAILBOX_TROUBLE, NOT_FAILURE, SENDER_FAULT, Outcome
from engine.http import provider_hooks
from engine.http.api import create_app
from engine.settings import (
    BodyLimits,
    BounceProviders,
    BounceSettings,
    HttpSettings,
    MailgunProvider,
    PostmarkProvider,
    SendgridProvider,
    SesProvider,
    Settings,
)
from engine.store import tables
from engine.store.database import create_engine_for, upgrade
from tests.http.conftest import NOW, Clock, start_server
from tests.smtp_server import _free_port

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-bounces"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-7506a1e35b36ef5a444dd1a8e7cc3ed8.pem"
POSTMARK_USER = "postmark"
POSTMARK_PASSWORD = secrets.token_urlsafe(32)
MAILGUN_KEY = secrets.token_hex(16) + "-" + secrets.token_hex(4) + "-" + secrets.token_hex(4)


# --- keys and certificates the test makes -----------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: rsa.RSAPrivateKey, issuer: tuple[str, rsa.RSAPrivateKey] | None = None, ca: bool = False
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (subject, key)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=30))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


@dataclass(frozen=True)
class Keys:
    ca: x509.Certificate
    signer: rsa.RSAPrivateKey
    signing: x509.Certificate  # issued by `ca`, CN as AWS names its own
    stranger: rsa.RSAPrivateKey
    stranger_signing: x509.Certificate  # issued by a CA the settings do not trust
    sendgrid: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = _certificate("Test Root CA", ca_key, ca=True)
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing = _certificate("sns.amazonaws.com", signer, ("Test Root CA", ca_key))
    other_ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # The same issuer name as the trusted CA: only its signature tells them apart.
    stranger_signing = _certificate("sns.amazonaws.com", stranger, ("Test Root CA", other_ca_key))
    return Keys(ca, signer, signing, stranger, stranger_signing, ec.generate_private_key(ec.SECP256R1()))


def _sendgrid_public_key(keys: Keys) -> str:
    der = keys.sendgrid.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


# --- the app -----------------------------------------------------------------------------------------


@dataclass
class Hooks:
    url: str
    clock: Clock
    recorded: list[list[Outcome]]
    fetched: list[str]
    app: Any
    fail_next: list[BaseException] = field(default_factory=list)
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def post(self, provider: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(
            f"/hooks/bounces/{provider}", content=body, headers={"Content-Type": "application/json", **(headers or {})}
        )

    @property
    def outcomes(self) -> list[Outcome]:
        return [o for batch in self.recorded for o in batch]


def _providers(tmp_path: Path, keys: Keys, **ses: Any) -> BounceProviders:
    (tmp_path / "trust.pem").write_bytes(_pem(keys.ca))
    (tmp_path / "pinned.pem").write_bytes(_pem(keys.signing))
    ses_options: dict[str, Any] = {
        "topic_arns": [TOPIC],
        "trust_file": tmp_path / "trust.pem",
        "signing_certificates_file": tmp_path / "pinned.pem",
        **ses,
    }
    return BounceProviders(
        ses=SesProvider(**ses_options),
        sendgrid=SendgridProvider(public_key=_sendgrid_public_key(keys)),
        postmark=PostmarkProvider(username=POSTMARK_USER, password=SecretStr(POSTMARK_PASSWORD)),
        mailgun=MailgunProvider(signing_key=SecretStr(MAILGUN_KEY)),
    )


@pytest.fixture
def serve_hooks(tmp_path: Path, keys: Keys) -> Iterator[Callable[..., Hooks]]:
    """Start the app with these bounce providers (default: all four, SES pinned) and a recorder that
    keeps what it is handed; stopped after the test."""
    stops: list[Callable[[], None]] = []

    def start(providers: BounceProviders | None = None, body_limit: int | None = None, fetch: bool = False) -> Hooks:
        url = f"sqlite:///{tmp_path / 'funnel.db'}"
        upgrade(url)
        engine = create_engine_for(url)
        port = _free_port("127.0.0.1")
        limits = BodyLimits(events=body_limit) if body_limit else BodyLimits()
        settings = Settings(
            data_dir=tmp_path,
            base_url=f"http://127.0.0.1:{port}",
            http=HttpSettings(body_limits=limits),
            bounces=BounceSettings(providers=providers or _providers(tmp_path, keys)),
        )
        clock = Clock()
        recorded: list[list[Outcome]] = []
        fetched: list[str] = []
        failures: list[BaseException] = []

        def record(outcomes: list[Outcome]) -> None:
            if failures:
                raise failures.pop()
            recorded.append(outcomes)

        app = create_app(settings, engine, clock=clock, record_outcomes=record)
        if fetch:
            # What SNS serves at a certificate URL, for the app that fetches: the test's signing
            # certificate. This stands in for the HTTPS GET only; the URL check before it is the app's.
            async def from_sns(url: str) -> bytes:
                fetched.append(url)
                return _pem(keys.signing)

            hooks_state = provider_hooks.ProviderHooks.of(settings.bounces.providers, clock, record, fetch=from_sns)
            provider_hooks.install(app, hooks_state)
        server, thread = start_server(app, port)
        hooks = Hooks(f"http://127.0.0.1:{port}", clock, recorded, fetched, app, failures)

        def stop() -> None:
            hooks.client.close()
            server.should_exit = True
            thread.join(timeout=10)
            engine.dispose()

        stops.append(stop)
        return hooks

    try:
        yield start
    finally:
        for stop in stops:
            stop()


@pytest.fixture
def hooks(serve_hooks: Callable[..., Hooks]) -> Hooks:
    return serve_hooks()


# --- Amazon SES through SNS -------------------------------------------------------------------------

# The bounce notification with a DSN of Amazon SES's "Amazon SNS notification examples".
SES_BOUNCE = {
    "notificationType": "Bounce",
    "bounce": {
        "bounceType": "Permanent",
        "reportingMTA": "dns; email.example.com",
        "bouncedRecipients": [
            {
                "emailAddress": "jane@example.com",
                "status": "5.1.1",
                "action": "failed",
                "diagnosticCode": "smtp; 550 5.1.1 <jane@example.com>... User",
            }
        ],
        "bounceSubType": "General",
        "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000",
        "remoteMtaIp": "127.0.2.0",
    },
    "mail": {
        "timestamp": "2016-01-27T14:59:38.237Z",
        "source": "john@example.com",
        "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/example.com",
        "sourceIp": "127.0.3.0",
        "sendingAccountId": "123456789012",
        "callerIdentity": "IAM_user_or_role_name",
        "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
        "destination": ["jane@example.com", "mary@example.com", "richard@example.com"],
        "headersTruncated": False,
        "headers": [
            {"name": "From", "value": '"John Doe" <john@example.com>'},
            {"name": "To", "value": '"Jane Doe" <jane@example.com>'},
            {"name": "Message-ID", "value": "<0f3c2d4e9a8b7c6d5e4f3a2b@greenleaf.example>"},
            {"name": "Subject", "value": "Hello"},
        ],
        "commonHeaders": {
            "from": ["John Doe <john@example.com>"],
            "date": "Wed, 27 Jan 2016 14:05:45 +0000",
            "to": ["Jane Doe <jane@example.com>"],
            "messageId": "<0f3c2d4e9a8b7c6d5e4f3a2b@greenleaf.example>",
            "subject": "Hello",
        },
    },
}

# The complaint notification of the same page.
SES_COMPLAINT = {
    "notificationType": "Complaint",
    "complaint": {
        "userAgent": "AnyCompany Feedback Loop (V0.01)",
        "complainedRecipients": [{"emailAddress": "richard@example.com"}],
        "complaintFeedbackType": "abuse",
        "arrivalDate": "2016-01-27T14:59:38.237Z",
        "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000",
    },
    "mail": {
        "timestamp": "2016-01-27T14:59:38.237Z",
        "messageId": "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000",
        "source": "john@example.com",
        "destination": ["jane@example.com", "mary@example.com", "richard@example.com"],
    },
}


def _sns_canonical(message: dict[str, str]) -> bytes:
    """The string SNS signs, as its documentation describes it (written here independently)."""
    if message["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{name}\n{message[name]}\n" for name in names if name in message).encode()


def sns(
    keys: Keys,
    payload: dict[str, Any] | str,
    *,
    version: str = "1",
    kind: str = "Notification",
    at: datetime = NOW - timedelta(seconds=30),
    topic: str = TOPIC,
    cert_url: str = CERT_URL,
    signer: rsa.RSAPrivateKey | None = None,
    subject: str | None = None,
    tamper: Callable[[dict[str, str]], None] | None = None,
) -> bytes:
    """An SNS HTTP post carrying `payload`, signed by the test's signing key (or `signer`)."""
    message: dict[str, str] = {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": payload if isinstance(payload, str) else json.dumps(payload),
        "Timestamp": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
        "SignatureVersion": version,
        "SigningCertURL": cert_url,
    }
    if subject is not None:
        message["Subject"] = subject
    if kind == "Notification":
        message["UnsubscribeURL"] = "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x"
    else:
        message["Token"] = "2336412f37fb687f5d51e6e2425dacbba6e1ea5ee2d8e7b3f7e0f7b8d7"
        message["SubscribeURL"] = (
            f"https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={topic}&Token={message['Token']}"
        )
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = (signer or keys.signer).sign(_sns_canonical(message), padding.PKCS1v15(), algorithm)
    message["Signature"] = base64.b64encode(signature).decode()
    if tamper is not None:
        tamper(message)
    return json.dumps(message).encode()


def test_an_ses_bounce_becomes_an_address_gone_outcome(hooks: Hooks, keys: Keys) -> None:
    response = hooks.post("ses", sns(keys, SES_BOUNCE, subject="Amazon SES Email Event Notification"))
    assert (response.status_code, response.json()) == (200, {"outcomes": 1})
    [outcome] = hooks.outcomes
    assert outcome.report_key == "ses:00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000"
    assert (outcome.source, outcome.kind, outcome.failure_class) == ("ses", "dsn", ADDRESS_GONE)
    assert (outcome.recipient, outcome.status) == ("jane@example.com", "5.1.1")
    assert outcome.diagnostic == "smtp; 550 5.1.1 <jane@example.com>... User"
    assert outcome.message_id == "<0f3c2d4e9a8b7c6d5e4f3a2b@greenleaf.example>"
    assert outcome.raw is not None and json.loads(outcome.raw) == SES_BOUNCE


def test_an_ses_complaint_signed_with_sha256_becomes_a_complaint(hooks: Hooks, keys: Keys) -> None:
    response = hooks.post("ses", sns(keys, SES_COMPLAINT, version="2"))
    assert response.status_code == 200
    [outcome] = hooks.outcomes
    assert (outcome.kind, outcome.failure_class, outcome.recipient) == ("complaint", COMPLAINT, "richard@example.com")
    assert outcome.report_key == "ses:000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000"
    # No original headers returned: SES's own message id is what there is to match by.
    assert outcome.message_id == "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000"


def test_an_ses_hard_bounce_for_a_blocklisting_is_the_senders_fault(hooks: Hooks, keys: Keys) -> None:
    blocked = json.loads(json.dumps(SES_BOUNCE))
    blocked["bounce"]["bouncedRecipients"][0].update(
        status="5.7.1", diagnosticCode="smtp; 550 5.7.1 Client host [192.0.2.7] blocked using zen.spamhaus.org"
    )
    transient = json.loads(json.dumps(SES_BOUNCE))
    transient["bounce"].update(bounceType="Transient", bounceSubType="MailboxFull", feedbackId="f2")
    transient["bounce"]["bouncedRecipients"][0].update(status="4.2.2", diagnosticCode="smtp; 452 4.2.2 Over quota")
    assert hooks.post("ses", sns(keys, blocked)).status_code == 200
    assert hooks.post("ses", sns(keys, transient)).status_code == 200
    assert [(o.failure_class, o.status) for o in hooks.outcomes] == [
        (SENDER_FAULT, "5.7.1"),
        (MAILBOX_TROUBLE, "4.2.2"),
    ]


def test_ses_deliveries_are_not_failures_and_opens_are_ignored(hooks: Hooks, keys: Keys) -> None:
    delivery = {
        "notificationType": "Delivery",
        "mail": SES_BOUNCE["mail"],
        "delivery": {
            "timestamp": "2016-01-27T14:59:38.237Z",
            "recipients": ["jane@example.com"],
            "processingTimeMillis": 546,
            "reportingMTA": "a8-70.smtp-out.amazonses.com",
            "smtpResponse": "250 ok:  Message 64111812 accepted",
            "remoteMtaIp": "127.0.2.0",
        },
    }
    opened = {"eventType": "Open", "mail": SES_BOUNCE["mail"], "open": {"ipAddress": "192.0.2.1"}}
    assert hooks.post("ses", sns(keys, delivery)).json() == {"outcomes": 1}
    assert hooks.post("ses", sns(keys, opened)).json() == {"outcomes": 0}
    assert [(o.kind, o.failure_class) for o in hooks.outcomes] == [("delivered", NOT_FAILURE)]
    assert len(hooks.recorded) == 1  # nothing to record: the recorder is not called


def test_the_same_sns_message_again_is_409_and_changes_nothing(hooks: Hooks, keys: Keys) -> None:
    body = sns(keys, SES_BOUNCE)
    assert hooks.post("ses", body).status_code == 200
    hooks.clock.at = NOW + timedelta(minutes=5)
    replay = hooks.post("ses", body)
    assert (replay.status_code, replay.json()) == (409, {"detail": "already received"})
    assert len(hooks.outcomes) == 1


def test_copies_of_one_sns_message_sent_at_once_are_taken_once(hooks: Hooks, keys: Keys) -> None:
    body = sns(keys, SES_BOUNCE)
    start = threading.Barrier(6)

    def send() -> int:
        with httpx.Client(base_url=hooks.url, timeout=30) as client:
            start.wait()
            return client.post("/hooks/bounces/ses", content=body).status_code

    with ThreadPoolExecutor(6) as pool:
        assert sorted(pool.map(lambda _: send(), range(6))) == [200, 409, 409, 409, 409, 409]
    assert len(hooks.outcomes) == 1


def test_forged_and_stale_sns_messages_are_refused_alike(hooks: Hooks, keys: Keys) -> None:
    def change_recipient(message: dict[str, str]) -> None:
        message["Message"] = message["Message"].replace("jane@example.com", "ann@example.com")

    refusals = {
        "tampered message": sns(keys, SES_BOUNCE, tamper=change_recipient),
        "signed by an untrusted certificate's key": sns(keys, SES_BOUNCE, signer=keys.stranger),
        "topic not configured": sns(keys, SES_BOUNCE, topic="arn:aws:sns:us-east-1:999999999999:other"),
        "certificate not on an SNS host": sns(keys, SES_BOUNCE, cert_url="https://sns.evil.example/cert.pem"),
        "certificate over http": sns(keys, SES_BOUNCE, cert_url=CERT_URL.replace("https:", "http:")),
        "old": sns(keys, SES_BOUNCE, at=NOW - timedelta(seconds=3601)),
        "from the future": sns(keys, SES_BOUNCE, at=NOW + timedelta(seconds=3601)),
        "version 2 claimed, version 1 signed": sns(keys, SES_BOUNCE, tamper=lambda m: m.update(SignatureVersion="2")),
    }
    for reason, body in refusals.items():
        response = hooks.post("ses", body)
        assert (reason, response.status_code, response.json()) == (reason, 403, {"detail": "Forbidden"})
    assert hooks.outcomes == []


def test_a_certificate_pinned_but_not_issued_by_the_trust_file_is_refused(
    serve_hooks: Callable[..., Hooks], keys: Keys, tmp_path: Path
) -> None:
    (tmp_path / "stranger.pem").write_bytes(_pem(keys.stranger_signing))
    providers = _providers(tmp_path, keys)
    assert providers.ses is not None
    providers.ses.signing_certificates_file = tmp_path / "stranger.pem"
    hooks = serve_hooks(providers)
    response = hooks.post("ses", sns(keys, SES_BOUNCE, signer=keys.stranger))
    assert response.status_code == 403
    assert hooks.outcomes == []


def test_a_certificate_is_fetched_once_and_only_from_an_sns_host(
    serve_hooks: Callable[..., Hooks], keys: Keys, tmp_path: Path
) -> None:
    providers = _providers(tmp_path, keys, signing_certificates_file=None)
    hooks = serve_hooks(providers, fetch=True)
    assert hooks.post("ses", sns(keys, SES_BOUNCE)).status_code == 200
    assert hooks.post("ses", sns(keys, SES_COMPLAINT)).status_code == 200
    evil = "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem"
    assert hooks.post("ses", sns(keys, SES_BOUNCE, cert_url=evil)).status_code == 403
    assert hooks.post("ses", sns(keys, SES_BOUNCE, signer=keys.stranger)).status_code == 403
    assert hooks.fetched == [CERT_URL]  # kept after the first; the other host never asked
    assert len(hooks.outcomes) == 2


def test_a_subscription_confirmation_is_logged_for_the_operator_or_confirmed(
    serve_hooks: Callable[..., Hooks], keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    confirmation = {"Message": "You have chosen to subscribe to the topic " + TOPIC}
    hooks = serve_hooks()
    with caplog.at_level(logging.WARNING, logger="engine.provider_hooks"):
        response = hooks.post("ses", sns(keys, confirmation["Message"], kind="SubscriptionConfirmation"))
    assert (response.status_code, response.json()) == (200, {"outcomes": 0})
    assert "Action=ConfirmSubscription" in caplog.text
    assert hooks.fetched == []

    confirming = serve_hooks(_providers(tmp_path, keys, confirm_subscriptions=True), fetch=True)
    forged = sns(keys, confirmation["Message"], kind="SubscriptionConfirmation", signer=keys.stranger)
    assert confirming.post("ses", forged).status_code == 403
    assert confirming.fetched == []
    body = sns(keys, confirmation["Message"], kind="SubscriptionConfirmation")
    assert confirming.post("ses", body).status_code == 200
    [visited] = confirming.fetched
    assert visited.startswith("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&")


# --- SendGrid ---------------------------------------------------------------------------------------

# From SendGrid's Event Webhook reference: one event of each kind the engine reads, and some it ignores.
SENDGRID_EVENTS = [
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "processed",
        "category": "cat facts",
        "sg_event_id": "rbtnWrG1DVDGGGFHFyun0A==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "deferred",
        "category": "cat facts",
        "sg_event_id": "t7LEShmowp86DTdUW8M-GQ==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000",
        "response": "400 try again later",
        "attempt": "5",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "delivered",
        "category": "cat facts",
        "sg_event_id": "rWVYmVk90MjZJ9iohOBa3w==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000",
        "response": "250 OK",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "bounce",
        "category": "cat facts",
        "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000",
        "reason": "500 unknown recipient",
        "status": "5.0.0",
        "type": "bounce",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "bounce",
        "category": "cat facts",
        "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPx==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000",
        "reason": "550 5.7.1 Service unavailable; client host blocked using Spamhaus",
        "status": "5.7.1",
        "type": "blocked",
        "bounce_classification": "Reputation",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "dropped",
        "category": "cat facts",
        "sg_event_id": "zmzJhfJgAfUSOW80yEbPyw==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000",
        "reason": "Bounced Address",
        "status": "5.0.0",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "event": "spamreport",
        "sg_event_id": "37nvH5QBz858KGVYCM4uOA==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "event": "open",
        "sg_event_id": "FOTFFO0ecsBE-zxFXfs6WA==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000",
        "useragent": "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; .NET CLR 2.0.50727)",
        "ip": "255.255.255.255",
    },
]


def sendgrid_headers(
    keys: Keys, body: bytes, at: datetime = NOW, key: ec.EllipticCurvePrivateKey | None = None
) -> dict[str, str]:
    timestamp = str(int(at.timestamp()))
    signature = (key or keys.sendgrid).sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def test_sendgrid_events_become_outcomes_by_what_failed(hooks: Hooks, keys: Keys) -> None:
    body = json.dumps(SENDGRID_EVENTS).encode()
    response = hooks.post("sendgrid", body, sendgrid_headers(keys, body))
    assert (response.status_code, response.json()) == (200, {"outcomes": 6})
    assert [(o.kind, o.failure_class, o.status) for o in hooks.outcomes] == [
        ("delay", MAILBOX_TROUBLE, None),
        ("delivered", NOT_FAILURE, None),
        ("dsn", ADDRESS_GONE, "5.0.0"),  # a generic code, and the words say "unknown recipient"
        ("dsn", SENDER_FAULT, "5.7.1"),  # a block: never the lead's address
        ("dsn", ADDRESS_GONE, None),  # dropped for SendGrid's bounce list
        ("complaint", COMPLAINT, None),
    ]
    assert {o.recipient for o in hooks.outcomes} == {"example@test.com"}
    assert hooks.outcomes[0].report_key == "sendgrid:t7LEShmowp86DTdUW8M-GQ=="
    assert hooks.outcomes[0].message_id == "<14c5d75ce93.dfd.64b469@ismtpd-555>"


def test_forged_stale_and_replayed_sendgrid_posts_are_refused(hooks: Hooks, keys: Keys) -> None:
    body = json.dumps(SENDGRID_EVENTS[3:4]).encode()
    good = sendgrid_headers(keys, body)
    other_key = ec.generate_private_key(ec.SECP256R1())
    refusals = {
        "no headers": hooks.post("sendgrid", body),
        "tampered body": hooks.post("sendgrid", body.replace(b"example@test.com", b"ann@test.com"), good),
        "another timestamp": hooks.post(
            "sendgrid", body, {**good, "X-Twilio-Email-Event-Webhook-Timestamp": str(int(NOW.timestamp()) + 1)}
        ),
        "another key": hooks.post("sendgrid", body, sendgrid_headers(keys, body, key=other_key)),
        "stale": hooks.post("sendgrid", body, sendgrid_headers(keys, body, at=NOW - timedelta(hours=26))),
        "not base64": hooks.post("sendgrid", body, {**good, "X-Twilio-Email-Event-Webhook-Signature": "not!b64"}),
    }
    for reason, response in refusals.items():
        assert (reason, response.status_code, response.json()) == (reason, 403, {"detail": "Forbidden"})
    assert hooks.post("sendgrid", body, good).status_code == 200
    assert hooks.post("sendgrid", body, good).status_code == 409
    assert len(hooks.outcomes) == 1


def test_a_signed_sendgrid_post_that_is_not_a_list_of_events_is_400(hooks: Hooks, keys: Keys) -> None:
    for body in (b'{"event": "bounce"}', b"[not json", b'[{"event": "bounce"}]'):
        response = hooks.post("sendgrid", body, sendgrid_headers(keys, body))
        assert response.status_code == 400, body
    assert hooks.outcomes == []


# --- Postmark ---------------------------------------------------------------------------------------

# Postmark's bounce webhook example.
POSTMARK_BOUNCE = {
    "RecordType": "Bounce",
    "MessageStream": "outbound",
    "ID": 4323372036854775807,
    "Type": "HardBounce",
    "TypeCode": 1,
    "Name": "Hard bounce",
    "Tag": "Test",
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "Metadata": {"a_key": "a_value", "b_key": "b_value"},
    "ServerID": 23,
    "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
    "Details": "Test bounce details",
    "Email": "john@example.com",
    "From": "sender@example.com",
    "BouncedAt": "2019-11-05T16:33:54.9070259Z",
    "DumpAvailable": True,
    "Inactive": True,
    "CanActivate": True,
    "Subject": "Test subject",
    "Content": "<Full dump of bounce>",
}
# Postmark's spam complaint webhook example.
POSTMARK_COMPLAINT = {
    **POSTMARK_BOUNCE,
    "RecordType": "SpamComplaint",
    "ID": 42,
    "Type": "SpamComplaint",
    "TypeCode": 512,
    "Name": "Spam complaint",
    "Description": "The subscriber explicitly marked this message as spam.",
    "Details": "Test spam complaint details",
}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_postmark_bounces_and_complaints_with_basic_auth(hooks: Hooks) -> None:
    blocked = {**POSTMARK_BOUNCE, "ID": 7, "Details": "smtp;550 5.7.1 Message rejected due to DMARC policy"}
    soft = {**POSTMARK_BOUNCE, "ID": 8, "Type": "SoftBounce", "TypeCode": 4096, "Details": "mailbox full"}
    auth = basic(POSTMARK_USER, POSTMARK_PASSWORD)
    for payload in (POSTMARK_BOUNCE, POSTMARK_COMPLAINT, blocked, soft):
        assert hooks.post("postmark", json.dumps(payload).encode(), auth).json() == {"outcomes": 1}
    assert [(o.report_key, o.kind, o.failure_class) for o in hooks.outcomes] == [
        ("postmark:4323372036854775807", "dsn", ADDRESS_GONE),
        ("postmark:42", "complaint", COMPLAINT),
        ("postmark:7", "dsn", SENDER_FAULT),  # a "hard bounce" that says 5.7.1 keeps the lead
        ("postmark:8", "delay", MAILBOX_TROUBLE),
    ]
    assert hooks.outcomes[0].message_id == "883953f4-6105-42a2-a16a-77a8eac79483"


def test_postmark_without_the_right_credentials_is_401(hooks: Hooks) -> None:
    body = json.dumps(POSTMARK_BOUNCE).encode()
    for headers in (
        {},
        basic(POSTMARK_USER, "guess"),
        basic("someone", POSTMARK_PASSWORD),
        basic(POSTMARK_USER, POSTMARK_PASSWORD + "x"),
        {"Authorization": "Bearer " + POSTMARK_PASSWORD},
        {"Authorization": "Basic !!!"},
    ):
        response = hooks.post("postmark", body, headers)
        assert (response.status_code, response.json()) == (401, {"detail": "Unauthorized"}), headers
        assert response.headers["www-authenticate"].startswith("Basic")
    assert hooks.outcomes == []


# --- Mailgun ----------------------------------------------------------------------------------------


def mailgun_post(event: dict[str, Any], at: datetime = NOW, token: str | None = None, key: str = MAILGUN_KEY) -> bytes:
    timestamp, token = str(int(at.timestamp())), token or secrets.token_hex(25)
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {"signature": {"timestamp": timestamp, "token": token, "signature": signature}, "event-data": event}
    ).encode()


# Mailgun's "failed (permanent)" webhook example: a previously bounced address.
MAILGUN_PERMANENT = {
    "event": "failed",
    "id": "G9Bn5sl1TC6nu79C8C0bwg",
    "timestamp": 1521233195.375624,
    "log-level": "error",
    "severity": "permanent",
    "reason": "suppress-bounce",
    "envelope": {"sender": "bob@sandbox.mailgun.org", "transport": "smtp", "targets": "alice@example.com"},
    "flags": {"is-routed": False, "is-authenticated": True, "is-system-test": False, "is-test-mode": False},
    "delivery-status": {
        "attempt-no": 1,
        "message": "",
        "code": 605,
        "description": "Not delivering to previously bounced address",
        "session-seconds": 0.0,
    },
    "message": {
        "headers": {
            "to": "Alice <alice@example.com>",
            "message-id": "20130503182626.18666.16540@sandbox.mailgun.org",
            "from": "Bob <bob@sandbox.mailgun.org>",
            "subject": "Test permanent_fail webhook",
        },
        "attachments": [],
        "size": 111,
    },
    "recipient": "alice@example.com",
    "recipient-domain": "example.com",
}
# Mailgun's "failed (temporary)" webhook example, and one refused by the receiver for the address.
MAILGUN_TEMPORARY = {
    **MAILGUN_PERMANENT,
    "id": "Fs7-5t81S2ueNJ5LDRWwJg",
    "severity": "temporary",
    "reason": "generic",
    "log-level": "warn",
    "delivery-status": {
        "attempt-no": 1,
        "message": "4.2.2 The email account that you tried to reach is over quota. Please direct\n"
        "4.2.2 the recipient to: https://support.google.com/mail/?p=OverQuotaTemp",
        "code": 452,
        "enhanced-code": "4.2.2",
        "description": "",
        "session-seconds": 0.5,
    },
}
MAILGUN_UNKNOWN_USER = {
    **MAILGUN_PERMANENT,
    "id": "Xx7-5t81S2ueNJ5LDRWwJg",
    "reason": "bounce",
    "delivery-status": {
        "attempt-no": 1,
        "message": "5.1.1 The email account that you tried to reach does not exist.",
        "code": 550,
        "enhanced-code": "5.1.1",
        "description": "",
    },
}
MAILGUN_COMPLAINED = {
    "event": "complained",
    "id": "-Agny091SquKnsrW2NEKUA",
    "timestamp": 1521233123.501324,
    "log-level": "warn",
    "envelope": {"sending-ip": "173.193.210.33"},
    "message": {"headers": {"to": "Alice <alice@example.com>", "message-id": "20110215055645.25246.63817@example.com"}},
    "recipient": "alice@example.com",
}


def test_mailgun_failures_and_complaints_become_outcomes(hooks: Hooks) -> None:
    for event in (MAILGUN_PERMANENT, MAILGUN_TEMPORARY, MAILGUN_UNKNOWN_USER, MAILGUN_COMPLAINED):
        assert hooks.post("mailgun", mailgun_post(event)).json() == {"outcomes": 1}
    assert [(o.kind, o.failure_class, o.status) for o in hooks.outcomes] == [
        ("dsn", ADDRESS_GONE, None),  # Mailgun's bounce list
        ("delay", MAILBOX_TROUBLE, "4.2.2"),
        ("dsn", ADDRESS_GONE, "5.1.1"),
        ("complaint", COMPLAINT, None),
    ]
    first = hooks.outcomes[0]
    assert first.report_key == "mailgun:G9Bn5sl1TC6nu79C8C0bwg:1521233195.375624"
    assert first.message_id == "<20130503182626.18666.16540@sandbox.mailgun.org>"
    assert first.recipient == "alice@example.com"


def test_forged_stale_and_replayed_mailgun_posts_are_refused(hooks: Hooks) -> None:
    good = mailgun_post(MAILGUN_PERMANENT, token="a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0")
    tampered = json.loads(good)
    tampered["event-data"]["recipient"] = "bob@example.com"
    refusals = {
        "wrong key": mailgun_post(MAILGUN_PERMANENT, key="key-" + secrets.token_hex(16)),
        "another token": json.dumps(
            {**json.loads(good), "signature": {**json.loads(good)["signature"], "token": "x" * 50}}
        ).encode(),
        "stale": mailgun_post(MAILGUN_PERMANENT, at=NOW - timedelta(hours=10)),
        "no signature": json.dumps({"event-data": MAILGUN_PERMANENT}).encode(),
    }
    for reason, body in refusals.items():
        response = hooks.post("mailgun", body)
        assert (reason, response.status_code, response.json()) == (reason, 403, {"detail": "Forbidden"})
    # The signature covers the token and the time, not the event: what proves the event is the token
    # being Mailgun's and used once.
    assert hooks.post("mailgun", good).status_code == 200
    assert hooks.post("mailgun", good).status_code == 409
    assert hooks.post("mailgun", json.dumps(tampered).encode()).status_code == 409
    assert len(hooks.outcomes) == 1


# --- every provider ---------------------------------------------------------------------------------


def test_a_provider_not_configured_is_404(serve_hooks: Callable[..., Hooks], keys: Keys) -> None:
    hooks = serve_hooks(BounceProviders(mailgun=MailgunProvider(signing_key=SecretStr(MAILGUN_KEY))))
    for provider in ("ses", "sendgrid", "postmark", "sparkpost", "__class__"):
        response = hooks.post(provider, b"{}")
        assert (provider, response.status_code) == (provider, 404)
    assert hooks.post("mailgun", mailgun_post(MAILGUN_COMPLAINED)).status_code == 200


def test_a_proven_request_that_is_not_as_documented_is_400(hooks: Hooks, keys: Keys) -> None:
    assert hooks.post("ses", sns(keys, "not json")).status_code == 400
    assert (
        hooks.post("ses", sns(keys, {"notificationType": "Bounce", "bounce": {"bouncedRecipients": [{}]}})).status_code
        == 400
    )
    assert hooks.post("ses", b"raw message delivery: no envelope").status_code == 400
    auth = basic(POSTMARK_USER, POSTMARK_PASSWORD)
    assert hooks.post("postmark", b"[1, 2]", auth).status_code == 400
    assert hooks.post("postmark", json.dumps({"RecordType": "Bounce"}).encode(), auth).status_code == 400
    assert hooks.post("mailgun", mailgun_post({"event": "failed"})).status_code == 400
    assert hooks.outcomes == []


def test_a_body_over_the_limit_is_413_before_anything_else(serve_hooks: Callable[..., Hooks], keys: Keys) -> None:
    hooks = serve_hooks(body_limit=4096)
    events = [SENDGRID_EVENTS[3]] * 20
    body = json.dumps(events).encode()
    assert len(body) > 4096
    assert hooks.post("sendgrid", body, sendgrid_headers(keys, body)).status_code == 413
    assert hooks.outcomes == []


def test_when_recording_fails_the_provider_can_send_the_same_request_again(hooks: Hooks, keys: Keys) -> None:
    body = sns(keys, SES_BOUNCE)
    hooks.fail_next.append(RuntimeError("the database went away"))
    with httpx.Client(base_url=hooks.url, timeout=10) as client:
        failed = client.post("/hooks/bounces/ses", content=body)
    assert failed.status_code == 500
    assert hooks.outcomes == []
    assert hooks.post("ses", body).status_code == 200  # not taken for a replay
    assert len(hooks.outcomes) == 1


def test_by_default_the_app_records_a_providers_outcomes_in_the_store(
    tmp_path: Path, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    settings = Settings(data_dir=tmp_path, bounces=BounceSettings(providers=_providers(tmp_path, keys)))
    app = create_app(settings, engine, clock=Clock())
    port = _free_port("127.0.0.1")
    server, thread = start_server(app, port)
    try:
        response = httpx.post(f"http://127.0.0.1:{port}/hooks/bounces/ses", content=sns(keys, SES_BOUNCE))
        assert (response.status_code, response.json()) == (200, {"outcomes": 1})
        with engine.connect() as conn:
            kept = conn.execute(sa.select(tables.bounce_reports.c.source, tables.bounce_reports.c.kind)).all()
        # The bounced address has no message here: the report is kept for an operator, not lost.
        assert [row.source for row in kept] == ["ses"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


def test_a_providers_bounce_is_classed_as_the_same_failure_in_a_dsn(hooks: Hooks) -> None:
    """Where Postmark's "hard bounce" and the DSN rules disagreed, the DSN rules decide: a "user unknown"
    said to the whole message after DATA (a content filter's answer) and a full mailbox keep the address."""
    after_data = {**POSTMARK_BOUNCE, "ID": 11, "Details": "smtp;550 user unknown (in reply to end of DATA command)"}
    full = {**POSTMARK_BOUNCE, "ID": 12, "Details": "Mailbox is full"}
    gone = {**POSTMARK_BOUNCE, "ID": 13, "Details": "smtp;550 5.0.0 refused (#5.1.1)"}  # the specific code
    auth = basic(POSTMARK_USER, POSTMARK_PASSWORD)
    for payload in (after_data, full, gone):
        assert hooks.post("postmark", json.dumps(payload).encode(), auth).json() == {"outcomes": 1}
    assert [(o.report_key, o.failure_class, o.status) for o in hooks.outcomes] == [
        ("postmark:11", MAILBOX_TROUBLE, None),
        ("postmark:12", MAILBOX_TROUBLE, None),
        ("postmark:13", ADDRESS_GONE, "5.1.1"),
    ]
