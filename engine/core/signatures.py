"""Signatures of inbound webhooks: what a sender puts in `Funnel-Signature`, and whether a request's
header matches its raw body. Pure: no IO and no clock, the caller says what time it is.

    Funnel-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.".encode() + raw body)>

The timestamp is inside the signed bytes, so an old request cannot be given a fresh time; a header may
carry several `v1` values (a sender that rotates its secret signs with the old and the new one), and
keys other than `t` and `v1` are ignored, so a later scheme can be added beside `v1`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

HEADER = "Funnel-Signature"
SCHEME = "v1"
_HEX_DIGITS = frozenset("0123456789abcdef")
_MAX_TIMESTAMP_DIGITS = 12  # year 33658: longer is garbage, and refusing it early bounds the int parse


class Refusal(StrEnum):
    """Why a request was refused. For the receiver's logs only: the sender is told none of it."""

    MISSING = "no signature header"
    MALFORMED = "the signature header is not t=<seconds>,v1=<hex>"
    STALE = "the timestamp is outside the tolerance"
    MISMATCH = "no v1 signature matches the body with a known secret"


@dataclass(frozen=True, slots=True)
class Verified:
    timestamp: int


def signed_payload(timestamp: int, body: bytes) -> bytes:
    return f"{timestamp}.".encode() + body


def _digest(secret: str | bytes, timestamp: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, signed_payload(timestamp, body), hashlib.sha256).hexdigest()


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The `Funnel-Signature` header value for `body` sent at `timestamp` (unix seconds)."""
    if not secret:
        raise ValueError("cannot sign with an empty secret: anyone could make the same signature")
    return f"t={timestamp},{SCHEME}={_digest(secret, timestamp, body)}"


@dataclass(frozen=True, slots=True)
class _Header:
    timestamp: int
    signatures: tuple[str, ...]


def _parse(header: str) -> _Header | None:
    timestamps: list[str] = []
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            return None
        if key == "t":
            timestamps.append(value)
        elif key == SCHEME:
            value = value.lower()
            if len(value) != 64 or not _HEX_DIGITS.issuperset(value):
                return None
            signatures.append(value)
    if len(timestamps) != 1 or not signatures:
        return None
    t = timestamps[0]
    if not t.isascii() or not t.isdigit() or len(t) > _MAX_TIMESTAMP_DIGITS:
        return None
    return _Header(int(t), tuple(signatures))


def header_refusal(header: str | None) -> Refusal | None:
    """Why `header` cannot sign any body (missing or malformed), or None. Needs no body and no secret,
    so a receiver can refuse such a request before reading its body, whichever source it names."""
    if header is None or not header.strip():
        return Refusal.MISSING
    return Refusal.MALFORMED if _parse(header) is None else None


def verify(
    secrets: Iterable[str | bytes], header: str | None, body: bytes, now: datetime, tolerance_s: int = 300
) -> Verified | Refusal:
    """Whether `header` signs exactly `body` with one of `secrets`, at a time no further than
    `tolerance_s` from `now` in either direction (a sender's clock may run ahead of ours)."""
    refusal = header_refusal(header)
    if refusal is not None:
        return refusal
    parsed = _parse(header or "")
    if parsed is None:
        return Refusal.MALFORMED
    if abs(now.timestamp() - parsed.timestamp) > tolerance_s:
        return Refusal.STALE
    matched = False
    # An HMAC keyed with nothing is a checksum anyone can compute: an empty secret proves no sender. The
    # settings refuse one; this keeps a caller that forgot from accepting every request.
    for secret in (s for s in secrets if s):
        expected = _digest(secret, parsed.timestamp, body)
        for candidate in parsed.signatures:
            # Every comparison runs, in constant time each: how long a refusal takes says nothing about
            # which value came closest.
            matched |= hmac.compare_digest(expected, candidate)
    return Verified(parsed.timestamp) if matched else Refusal.MISMATCH


def receipt(source: str, timestamp: int, body: bytes) -> str:
    """The key a request is remembered by to refuse its replay: hex SHA-256 of the source and the signed
    bytes. It does not depend on which secret signed them, so a replay that keeps only another of the
    request's `v1` values (or reorders them) is still the same request."""
    return hashlib.sha256(source.encode() + b"\n" + signed_payload(timestamp, body)).hexdigest()
