"""Bounce and complaint events from email providers' webhooks: whether a request is the provider's own,
and the `Outcome`s it reports. Pure: no IO and no clock; the caller says what time it is and hands in
the bytes, headers and certificates.

Four providers, each with its own proof (docs/bounces.md, "Provider webhooks"):
- Amazon SES through SNS: an RSA signature (SignatureVersion 1 SHA1withRSA, 2 SHA256withRSA) over the
  message's canonical string, by a certificate whose URL names an SNS host; the topic must be listed.
- SendGrid: ECDSA P-256 over the timestamp header followed by the raw body.
- Postmark: no signature; HTTP basic auth with credentials from the settings.
- Mailgun: HMAC-SHA256 of timestamp and token with the webhook signing key, inside the JSON body.

Each event becomes `Outcome`s classified by what failed (RFC 3463's subject of the enhanced status code,
the provider's own reading where the code says nothing), never by the first digit alone: a provider's
"hard bounce" for a blocklisting is the sender's fault, and never suppresses the lead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from engine.core import failure_classes as classes
from engine.core.bounce_outcome import (
    ADDRESS_GONE,
    COMPLAINT,
    MAILBOX_TROUBLE,
    NOT_FAILURE,
    SENDER_FAULT,
    Outcome,
)

PROVIDERS = ("ses", "sendgrid", "postmark", "mailgun")
SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
_DIAGNOSTIC_MAX = 500  # one line for the outbox row and the timeline, not the remote server's essay


class Refusal(StrEnum):
    """Why a request was refused. For the receiver's logs only: the sender is told none of it."""

    UNSIGNED = "no signature, or one that is not in the provider's format"
    MISMATCH = "the signature does not match the content"
    STALE = "the timestamp is outside the tolerance"
    CERTIFICATE_URL = "the signing certificate's URL is not https on an SNS host"
    UNTRUSTED = "the signing certificate is not trusted (issuer, validity or pin)"
    TOPIC = "the SNS topic is not one of the configured topics"
    CREDENTIALS = "no or wrong basic auth credentials"


class Malformed(ValueError):
    """The request is the provider's own (or needs no proof yet) but its payload is not as documented."""


# --- classification ------------------------------------------------------------------------------
#
# A provider's bounce is classed by the rules of a DSN (`engine.core.failure_classes`): its status and
# diagnostic are what a DSN's `Status:` and `Diagnostic-Code:` would say, a transient event is a DSN
# whose Action is `delayed`. The provider's own reading (its bounce type) counts only where those rules
# find nothing specific: no specific code, and no words that cost the lead less.


def status_in(text: str | None) -> str | None:
    """The enhanced status code (RFC 3463) that `text` carries, as a DSN's diagnostic is read: a specific
    code before a generic one, one where a server writes its code before one elsewhere; or None."""
    return classes.status_in(text) if text else None


def _specific(status: str | None) -> classes.Status | None:
    code = classes.Status.parse(status)
    return code if code is not None and not code.generic else None


def failure_class(
    status: str | None, diagnostic: str | None, *, hint: str | None = None, transient: bool = False
) -> str | None:
    """The class of one failure, by the DSN rules (`classify`): a specific enhanced code (the given one,
    else one in the diagnostic) decides; else the words; else a transient failure or one nothing explains
    is a soft bounce. The provider's own reading (`hint`) takes the place of that last guess when the
    words say nothing, and stands against the words unless they make it the sender's fault or spare an
    address the hint would suppress (a "hard bounce" worded "mailbox full", or "user unknown" said to the
    whole message after DATA)."""
    given = classes.Status.parse(status)
    if given is not None and given.klass == 2:
        return NOT_FAILURE
    text = diagnostic or ""
    code = _specific(status) or _specific(status_in(text))
    dsn = classes.classify(str(code) if code else status, text, "delayed" if transient else "failed")
    if code is not None or hint is None:
        return str(dsn)
    if classes.text_class(text) is None:
        return hint
    if dsn is classes.FailureClass.SENDER_FAULT or (hint in (ADDRESS_GONE, COMPLAINT) and not dsn.suppresses):
        return str(dsn)
    return hint


def _one_line(text: object) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return None
    line = " ".join(text.split())
    return line if len(line) <= _DIAGNOSTIC_MAX else line[: _DIAGNOSTIC_MAX - 1] + "…"


def _angled(message_id: object) -> str | None:
    """A Message-ID as the engine writes it (`<local@domain>`); a provider's own id stays as it is."""
    if not isinstance(message_id, str) or not message_id.strip():
        return None
    value = message_id.strip()
    if "@" in value and not value.startswith("<"):
        return f"<{value}>"
    return value


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _object(body: bytes | str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("the body is not JSON") from None
    if not isinstance(value, dict):
        raise Malformed("the body is not a JSON object")
    return value


def _text(mapping: Mapping[str, Any], key: str) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise Malformed(f"{key} is missing or not a string")
    return value


def _optional_text(mapping: Mapping[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Malformed(f"{key} is not a string")
    return value


def _mapping(mapping: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = mapping.get(key, {})
    if not isinstance(value, dict):
        raise Malformed(f"{key} is not an object")
    return value


def _list(mapping: Mapping[str, Any], key: str) -> list[Any]:
    value = mapping.get(key, [])
    if not isinstance(value, list):
        raise Malformed(f"{key} is not a list")
    return value


def _raw(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


# --- Amazon SES through SNS ------------------------------------------------------------------------

_SNS_HOST = re.compile(r"sns\.[a-z]{2}(-[a-z]+)+-\d\.amazonaws\.com(\.cn)?")
_SNS_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
_SNS_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


@dataclass(frozen=True)
class SnsMessage:
    """An SNS message as posted to an HTTP endpoint, before it is proven."""

    type: str
    message_id: str
    topic_arn: str
    message: str
    timestamp: datetime
    timestamp_text: str
    signature_version: str
    signature: bytes
    signing_cert_url: str
    subject: str | None = None
    subscribe_url: str | None = None
    token: str | None = None


def read_sns(body: bytes) -> SnsMessage:
    """The SNS message in a request body; `Malformed` when it is not one (raw message delivery included:
    such a body carries no signature and cannot be taken)."""
    data = _object(body)
    kind = _text(data, "Type")
    if kind not in _SNS_TYPES:
        raise Malformed(f"unknown SNS message type {kind!r}")
    version = _text(data, "SignatureVersion")
    if version not in _SNS_HASHES:
        raise Malformed(f"unknown SignatureVersion {version!r}")
    stamp = _text(data, "Timestamp")
    try:
        timestamp = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        signature = base64.b64decode(_text(data, "Signature"), validate=True)
    except (ValueError, binascii.Error):
        raise Malformed("Timestamp or Signature is not well formed") from None
    if timestamp.tzinfo is None:
        raise Malformed("Timestamp has no time zone")
    confirming = kind != "Notification"
    return SnsMessage(
        type=kind,
        message_id=_text(data, "MessageId"),
        topic_arn=_text(data, "TopicArn"),
        message=_text(data, "Message"),
        timestamp=timestamp,
        timestamp_text=stamp,
        signature_version=version,
        signature=signature,
        signing_cert_url=_text(data, "SigningCertURL"),
        subject=_optional_text(data, "Subject"),
        subscribe_url=_text(data, "SubscribeURL") if confirming else None,
        token=_text(data, "Token") if confirming else None,
    )


def sns_string_to_sign(message: SnsMessage) -> bytes:
    """The canonical string SNS signs: `name\\nvalue\\n` for each signed field in byte order of the
    names, Subject only when present (notifications), SubscribeURL and Token for confirmations."""
    if message.type == "Notification":
        fields: list[tuple[str, str | None]] = [
            ("Message", message.message),
            ("MessageId", message.message_id),
            ("Subject", message.subject),
            ("Timestamp", message.timestamp_text),
            ("TopicArn", message.topic_arn),
            ("Type", message.type),
        ]
    else:
        fields = [
            ("Message", message.message),
            ("MessageId", message.message_id),
            ("SubscribeURL", message.subscribe_url),
            ("Timestamp", message.timestamp_text),
            ("Token", message.token),
            ("TopicArn", message.topic_arn),
            ("Type", message.type),
        ]
    return "".join(f"{name}\n{value}\n" for name, value in fields if value is not None).encode()


def sns_certificate_url_ok(url: str) -> bool:
    """Whether a SigningCertURL may be fetched: https, on `sns.<region>.amazonaws.com` (or `.com.cn`),
    default port, no credentials, a `.pem` path. Anything else could be a certificate of the sender's."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and port in (None, 443)
        and parts.username is None
        and _SNS_HOST.fullmatch(parts.hostname or "") is not None
        and parts.path.endswith(".pem")
        and not parts.query
    )


def sns_subscribe_url_ok(url: str) -> bool:
    """Whether a SubscribeURL may be visited: https on an SNS host, like the certificate's."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme == "https" and _SNS_HOST.fullmatch(parts.hostname or "") is not None


def _valid_at(certificate: x509.Certificate, now: datetime) -> bool:
    return certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc


def _issued_by_trust(certificate: x509.Certificate, trust: Sequence[x509.Certificate], now: datetime) -> bool:
    """Whether `certificate` chains up to a certificate of `trust` (roots and intermediates), each link
    signed by the next and valid now. A walk of at most len(trust) steps: no loop can keep it going."""
    current = certificate
    for _ in range(len(trust) + 1):
        issuers = [c for c in trust if c.subject == current.issuer and _valid_at(c, now)]
        issuer = next((c for c in issuers if _signed_by(current, c)), None)
        if issuer is None:
            return False
        if issuer.subject == issuer.issuer or issuer is current:
            return True  # a self-signed anchor of the trust file
        current = issuer
    return False


def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM file; `Malformed` when there are none."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise Malformed("not a PEM file of certificates") from None


def verify_sns(
    message: SnsMessage,
    candidates: Sequence[x509.Certificate],
    trust: Sequence[x509.Certificate] | None,
    topics: Iterable[str],
    now: datetime,
    tolerance_s: int,
) -> Refusal | None:
    """Whether `message` is SNS's own: from a listed topic, recent, and signed by one of `candidates`
    (the certificate fetched from its URL, or the pinned ones) that is valid now and, when `trust` is
    given, issued by it. None: proven."""
    if message.topic_arn not in set(topics):
        return Refusal.TOPIC
    if abs((now - message.timestamp).total_seconds()) > tolerance_s:
        return Refusal.STALE
    signed = sns_string_to_sign(message)
    algorithm = _SNS_HASHES[message.signature_version]()
    usable = [c for c in candidates if _valid_at(c, now) and (trust is None or _issued_by_trust(c, trust, now))]
    if not usable:
        return Refusal.UNTRUSTED
    for certificate in usable:
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            continue
        try:
            key.verify(message.signature, signed, padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            continue
        return None
    return Refusal.MISMATCH


# SES's own reading of a bounce, where the enhanced code says nothing more (its bounce types and
# subtypes, and a delivery delay's type). Absent: the code and the words decide.
_SES_BOUNCE_HINTS = {
    ("Permanent", "NoEmail"): ADDRESS_GONE,
    ("Permanent", "Suppressed"): ADDRESS_GONE,  # on SES's list for a recent hard bounce to this address
    ("Transient", "MailboxFull"): MAILBOX_TROUBLE,
    ("Transient", "MessageTooLarge"): SENDER_FAULT,
    ("Transient", "ContentRejected"): SENDER_FAULT,
    ("Transient", "AttachmentRejected"): SENDER_FAULT,
}
_SES_DELAY_HINTS = {
    "MailboxFull": MAILBOX_TROUBLE,
    "SpamDetected": SENDER_FAULT,
    "IPFailure": SENDER_FAULT,
    "SendingDeferral": SENDER_FAULT,
}


def _ses_message_id(mail: Mapping[str, Any]) -> str | None:
    """The original Message-ID from the returned headers, else SES's own message id."""
    for header in mail.get("headers", []) if isinstance(mail.get("headers"), list) else []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id":
            return _angled(header.get("value"))
    common = mail.get("commonHeaders")
    if isinstance(common, dict) and isinstance(common.get("messageId"), str) and "@" in common["messageId"]:
        return _angled(common["messageId"])
    return _angled(mail.get("messageId"))


@dataclass(frozen=True)
class _SesMail:
    """What every outcome of one SES notification shares."""

    message_id: str | None
    raw: bytes

    def outcome(self, key: str, kind: str, cls: str | None, recipient: Any, **more: Any) -> Outcome:
        if not isinstance(recipient, str) or not recipient.strip():
            raise Malformed("a recipient is missing")
        return Outcome(
            f"ses:{key}", "ses", kind, cls, recipient.strip(), message_id=self.message_id, raw=self.raw, **more
        )

    def failures(self, key: str, kind: str, entries: list[Any], hint: str | None, transient: bool) -> list[Outcome]:
        """The outcomes of bounced or delayed recipients, each with its own status and diagnostic."""
        found = []
        for entry in entries:
            fields = entry if isinstance(entry, dict) else {}
            status, diagnostic = _optional_text(fields, "status"), _one_line(fields.get("diagnosticCode"))
            cls = failure_class(status, diagnostic, hint=hint, transient=transient)
            status = status or status_in(diagnostic)
            found.append(self.outcome(key, kind, cls, fields.get("emailAddress"), status=status, diagnostic=diagnostic))
        return found


def ses_outcomes(notification: str, sns_message_id: str) -> list[Outcome]:
    """The outcomes of one SES notification (the SNS message's `Message`): a bounce's recipients, a
    complaint's, a delivery's, a delay's, a rejection's; other events (sends, opens, clicks) none."""
    data = _object(notification)
    event = data.get("notificationType") or data.get("eventType")
    mail = _mapping(data, "mail")
    ses = _SesMail(_ses_message_id(mail), notification.encode())
    if event == "Bounce":
        bounce = _mapping(data, "bounce")
        hint = _SES_BOUNCE_HINTS.get((str(bounce.get("bounceType")), str(bounce.get("bounceSubType"))))
        key = str(bounce.get("feedbackId") or sns_message_id)
        # A bounce, even a `Transient` one, is SES giving up on the message: a DSN whose Action is
        # `failed` (as its recipients say), read by its code; without one, a soft bounce.
        return ses.failures(key, "dsn", _list(bounce, "bouncedRecipients"), hint, False)
    if event == "DeliveryDelay":
        delay = _mapping(data, "deliveryDelay")
        hint = _SES_DELAY_HINTS.get(str(delay.get("delayType")))
        return ses.failures(sns_message_id, "delay", _list(delay, "delayedRecipients"), hint, True)
    if event == "Complaint":
        complaint = _mapping(data, "complaint")
        key = str(complaint.get("feedbackId") or sns_message_id)
        # OnAccountSuppressionList: SES did not send, the address being on the account's list for a bounce
        # or a complaint it does not say: kept for an operator rather than guessed an opt-out.
        cls = None if complaint.get("complaintSubType") == "OnAccountSuppressionList" else COMPLAINT
        feedback = _one_line(complaint.get("complaintFeedbackType"))
        return [
            ses.outcome(
                key, "complaint", cls, r.get("emailAddress") if isinstance(r, dict) else None, diagnostic=feedback
            )
            for r in _list(complaint, "complainedRecipients")
        ]
    if event == "Delivery":
        delivery = _mapping(data, "delivery")
        response = _one_line(delivery.get("smtpResponse"))
        return [
            ses.outcome(sns_message_id, "delivered", NOT_FAILURE, r, status=status_in(response), diagnostic=response)
            for r in _list(delivery, "recipients")
        ]
    if event == "Reject":
        reason = _one_line(_mapping(data, "reject").get("reason"))
        return [
            ses.outcome(sns_message_id, "dsn", SENDER_FAULT, r, diagnostic=reason) for r in _list(mail, "destination")
        ]
    return []


# --- SendGrid ---------------------------------------------------------------------------------------


def sendgrid_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """The key of the settings (base64 DER as SendGrid shows it, or PEM); ValueError if not P-256."""
    text = value.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise ValueError("not a public key in base64 DER or PEM") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not an ECDSA P-256 public key")
    return key


def sendgrid_key_problem(value: str) -> str | None:
    """What is wrong with a SendGrid verification key from the settings, or None."""
    try:
        sendgrid_public_key(value)
    except ValueError as problem:
        return f"the SendGrid verification key is {problem}"
    return None


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    now: datetime,
    tolerance_s: int,
) -> Refusal | None:
    """Whether `signature` (base64 DER ECDSA) signs `timestamp` followed by the raw `body` with `key`,
    and the timestamp is within the tolerance of `now`. None: proven."""
    if not signature or not timestamp or not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return Refusal.UNSIGNED
    try:
        decoded = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        return Refusal.UNSIGNED
    if abs(now.timestamp() - int(timestamp)) > tolerance_s:
        return Refusal.STALE
    try:
        key.verify(decoded, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return Refusal.MISMATCH
    return None


# SendGrid's bounce_classification, where the code and the words say nothing more.
_SENDGRID_CLASSIFICATIONS = {
    "Invalid Address": ADDRESS_GONE,
    "Mailbox Unavailable": MAILBOX_TROUBLE,
    "Reputation": SENDER_FAULT,
    "Content": SENDER_FAULT,
    "Frequency or Volume Too High": SENDER_FAULT,
    "Technical Failure": SENDER_FAULT,
}
# Why SendGrid dropped a message without sending it: its suppression lists, or its own checks.
_SENDGRID_DROPS = {
    "Bounced Address": ADDRESS_GONE,  # on SendGrid's bounce list: a hard bounce to this address before
    "Invalid": ADDRESS_GONE,  # not an address at all
    "Spam Reporting Address": COMPLAINT,  # on SendGrid's spam report list: the lead said spam before
    "Unsubscribed Address": None,  # SendGrid's own unsubscribe list: for an operator, not guessed
}
_SENDGRID_IGNORED = frozenset(
    {"processed", "open", "click", "unsubscribe", "group_unsubscribe", "group_resubscribe", "machine_opened"}
)


def _sendgrid_event(event: Any, index: int) -> Outcome | None:
    if not isinstance(event, dict):
        raise Malformed(f"event {index} is not an object")
    name = event.get("event")
    if not isinstance(name, str):
        raise Malformed(f"event {index} has no event name")
    if name in _SENDGRID_IGNORED:
        return None
    key = f"sendgrid:{event.get('sg_event_id') or _digest(event)}"
    recipient = event.get("email")
    if not isinstance(recipient, str) or not recipient.strip():
        raise Malformed(f"event {index} has no email")
    message_id = _angled(event.get("smtp-id")) or _angled(event.get("sg_message_id"))
    seed = Outcome(key, "sendgrid", "dsn", None, recipient.strip(), message_id=message_id, raw=_raw(event))
    if name == "bounce":
        status, reason = _optional_text(event, "status"), _one_line(event.get("reason"))
        if event.get("type") == "blocked":
            hint: str | None = SENDER_FAULT  # a block: the receiver refused the sender, not the address
        else:
            hint = _SENDGRID_CLASSIFICATIONS.get(str(event.get("bounce_classification")))
        cls = failure_class(status, reason, hint=hint)
        return replace(seed, kind="dsn", failure_class=cls, status=status or status_in(reason), diagnostic=reason)
    if name == "dropped":
        reason = _one_line(event.get("reason"))
        cls = _SENDGRID_DROPS.get(reason or "", SENDER_FAULT)
        return replace(seed, kind="dsn", failure_class=cls, diagnostic=reason)
    if name == "deferred":
        response = _one_line(event.get("response"))
        cls = failure_class(status_in(response), response, transient=True)
        return replace(seed, kind="delay", failure_class=cls, status=status_in(response), diagnostic=response)
    if name == "spamreport":
        return replace(seed, kind="complaint", failure_class=COMPLAINT)
    if name == "delivered":
        response = _one_line(event.get("response"))
        return replace(seed, kind="delivered", failure_class=NOT_FAILURE, diagnostic=response)
    return None  # an event SendGrid adds later: nothing the engine acts on


def sendgrid_outcomes(body: bytes) -> list[Outcome]:
    """The outcomes of a SendGrid post: a JSON array of events; opens, clicks and the rest none."""
    try:
        events = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("the body is not JSON") from None
    if not isinstance(events, list):
        raise Malformed("the body is not a JSON array of events")
    return [o for i, event in enumerate(events) if (o := _sendgrid_event(event, i)) is not None]


# --- Postmark ---------------------------------------------------------------------------------------


def postmark_authorized(authorization: str | None, username: str, password: str) -> bool:
    """Whether an Authorization header carries exactly these basic auth credentials. Both are compared
    in constant time, and both always: how long a refusal takes says nothing about which was wrong."""
    scheme, _, encoded = (authorization or "").partition(" ")
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (ValueError, binascii.Error):
        given = b""
    user, _, secret = given.partition(b":")
    same_user = hmac.compare_digest(user, username.encode())
    same_secret = hmac.compare_digest(secret, password.encode())
    return scheme.lower() == "basic" and same_user and same_secret


# Postmark's bounce Type, where the code and the words say nothing more. Absent: unclassified.
_POSTMARK_TYPES = {
    "HardBounce": ADDRESS_GONE,  # "unknown user, mailbox not found", unless the code says otherwise
    "BadEmailAddress": ADDRESS_GONE,
    "SoftBounce": MAILBOX_TROUBLE,
    "Transient": MAILBOX_TROUBLE,
    "DnsError": MAILBOX_TROUBLE,
    "Blocked": SENDER_FAULT,
    "DMARCPolicy": SENDER_FAULT,
    "SpamNotification": SENDER_FAULT,  # the receiver's filter, not the lead's complaint
    "VirusNotification": SENDER_FAULT,
    "SMTPApiError": SENDER_FAULT,
    "TemplateRenderingFailed": SENDER_FAULT,
    "ContentRelated": SENDER_FAULT,
}
_POSTMARK_AUTO_REPLIES = frozenset({"AutoResponder", "AddressChange", "ChallengeVerification", "OpenRelayTest"})
_POSTMARK_TRANSIENT = frozenset({"SoftBounce", "Transient", "DnsError"})


def postmark_outcomes(body: bytes) -> list[Outcome]:
    """The outcome of a Postmark post: a Bounce, a SpamComplaint or a Delivery record; others none."""
    data = _object(body)
    record = data.get("RecordType")
    recipient = data.get("Email") or data.get("Recipient")
    if record not in ("Bounce", "SpamComplaint", "Delivery"):
        return []
    if not isinstance(recipient, str) or not recipient.strip():
        raise Malformed("Email is missing")
    key = f"postmark:{data['ID']}" if isinstance(data.get("ID"), int | str) else f"postmark:{_digest(data)}"
    seed = Outcome(key, "postmark", "dsn", None, recipient.strip(), message_id=_angled(data.get("MessageID")), raw=body)
    if record == "Delivery":
        return [replace(seed, kind="delivered", failure_class=NOT_FAILURE, diagnostic=_one_line(data.get("Details")))]
    kind = str(data.get("Type"))
    details = _one_line(data.get("Details")) or _one_line(data.get("Description"))
    if record == "SpamComplaint" or kind == "SpamComplaint":
        return [replace(seed, kind="complaint", failure_class=COMPLAINT, diagnostic=details)]
    if kind in _POSTMARK_AUTO_REPLIES:
        return [replace(seed, kind="auto_reply", failure_class=NOT_FAILURE, diagnostic=details)]
    status = status_in(details)
    transient = kind in _POSTMARK_TRANSIENT
    cls = failure_class(status, details, hint=_POSTMARK_TYPES.get(kind), transient=transient)
    return [replace(seed, kind="delay" if transient else "dsn", failure_class=cls, status=status, diagnostic=details)]


# --- Mailgun ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailgunSignature:
    timestamp: str
    token: str
    signature: str


def read_mailgun(body: bytes) -> tuple[MailgunSignature, dict[str, Any]]:
    """The signature block and the event data of a Mailgun post; `Malformed` when either is missing."""
    data = _object(body)
    block = _mapping(data, "signature")
    timestamp = block.get("timestamp")
    signature = MailgunSignature(
        str(timestamp) if isinstance(timestamp, int | str) else "",
        str(block.get("token", "")),
        str(block.get("signature", "")),
    )
    event = data.get("event-data")
    if not isinstance(event, dict):
        raise Malformed("event-data is missing")
    return signature, event


def verify_mailgun(key: str, signature: MailgunSignature, now: datetime, tolerance_s: int) -> Refusal | None:
    """Whether the signature is the HMAC-SHA256 of timestamp and token with the signing key, and the
    timestamp within the tolerance of `now`. None: proven."""
    stamp = signature.timestamp
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12 or not signature.token or not key:
        return Refusal.UNSIGNED
    if abs(now.timestamp() - int(stamp)) > tolerance_s:
        return Refusal.STALE
    expected = hmac.new(key.encode(), (stamp + signature.token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.signature.lower().encode()):
        return Refusal.MISMATCH
    return None


# Mailgun's reason for a failure it decided itself, without trying the receiver.
_MAILGUN_REASONS = {
    "suppress-bounce": ADDRESS_GONE,  # on Mailgun's bounce list: a hard bounce to this address before
    "suppress-complaint": COMPLAINT,  # on Mailgun's complaint list: the lead said spam before
    "suppress-unsubscribe": None,  # Mailgun's own unsubscribe list: for an operator, not guessed
}


def mailgun_outcomes(event: Mapping[str, Any]) -> list[Outcome]:
    """The outcome of a Mailgun event: failed (permanent or temporary), complained, delivered; others none."""
    name = event.get("event")
    if name not in ("failed", "complained", "delivered"):
        return []
    recipient = event.get("recipient")
    if not isinstance(recipient, str) or not recipient.strip():
        raise Malformed("recipient is missing")
    event_id = event.get("id")
    # Mailgun's event id is unique within a day only: with the event's time it names one event.
    key = f"mailgun:{event_id}:{event.get('timestamp')}" if isinstance(event_id, str) else f"mailgun:{_digest(event)}"
    headers = _mapping(_mapping(event, "message"), "headers")
    message_id = _angled(headers.get("message-id"))
    seed = Outcome(key, "mailgun", "dsn", None, recipient.strip(), message_id=message_id, raw=_raw(event))
    if name == "complained":
        return [replace(seed, kind="complaint", failure_class=COMPLAINT)]
    status_block = _mapping(event, "delivery-status")
    message = _one_line(status_block.get("message")) or _one_line(status_block.get("description"))
    code = status_block.get("enhanced-code")
    status = code if isinstance(code, str) and code else status_in(message)
    if name == "delivered":
        return [replace(seed, kind="delivered", failure_class=NOT_FAILURE, status=status, diagnostic=message)]
    reason = str(event.get("reason"))
    temporary = event.get("severity") == "temporary"
    if reason in _MAILGUN_REASONS and not temporary:
        cls = _MAILGUN_REASONS[reason]
    else:
        cls = failure_class(status, message, transient=temporary)
    kind = "delay" if temporary else "dsn"
    return [replace(seed, kind=kind, failure_class=cls, status=status, diagnostic=message)]
