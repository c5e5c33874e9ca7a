"""Webhook signatures: what `sign` writes, `verify` accepts, and nothing else. Properties over any body,
secret and time; one known answer computed with openssl, the way docs/signed-webhooks.md shows senders."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.signatures import Refusal, Verified, receipt, sign, verify

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
T = int(NOW.timestamp())

bodies = st.binary(max_size=2000)
secrets = st.one_of(st.text(min_size=1, max_size=64), st.binary(min_size=1, max_size=64))
offsets = st.integers(min_value=-300, max_value=300)


def _v1(header: str) -> str:
    return header.split(",v1=")[1]


def test_the_header_is_the_one_openssl_computes() -> None:
    # printf '%s' "1795428000.$body" | openssl dgst -sha256 -hmac whsec_test
    body = b'{"id":"order-1001","type":"order_completed","email":"ann@example.com"}'
    expected = "8aed85972cde1f838ad16fc0e9ef4550605d41ac6e2c341e7f093b4d9ee4ad56"
    assert sign("whsec_test", T, body) == f"t={T},v1={expected}"
    assert verify(["whsec_test"], f"t={T},v1={expected}", body, NOW) == Verified(T)


@given(secret=secrets, body=bodies, offset=offsets)
def test_any_signed_body_verifies_within_the_tolerance_on_either_side(
    secret: str | bytes, body: bytes, offset: int
) -> None:
    header = sign(secret, T + offset, body)
    assert verify([secret], header, body, NOW) == Verified(T + offset)


@given(secret=secrets, body=bodies, late=st.integers(min_value=301, max_value=10**9))
def test_outside_the_tolerance_it_is_stale_in_either_direction(secret: str | bytes, body: bytes, late: int) -> None:
    assert verify([secret], sign(secret, T - late, body), body, NOW) is Refusal.STALE
    assert verify([secret], sign(secret, T + late, body), body, NOW) is Refusal.STALE
    assert verify([secret], sign(secret, T - 30, body), body, NOW, tolerance_s=29) is Refusal.STALE


@given(secret=secrets, body=bodies.filter(bool), data=st.data())
def test_any_change_of_one_byte_of_the_body_fails(secret: str | bytes, body: bytes, data: st.DataObject) -> None:
    header = sign(secret, T, body)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    assert verify([secret], header, tampered, NOW) is Refusal.MISMATCH


@given(secret=secrets, body=bodies)
def test_a_byte_added_or_removed_fails(secret: str | bytes, body: bytes) -> None:
    header = sign(secret, T, body)
    assert verify([secret], header, body + b" ", NOW) is Refusal.MISMATCH
    if body:
        assert verify([secret], header, body[:-1], NOW) is Refusal.MISMATCH


@given(secret=secrets, body=bodies, shift=st.integers(min_value=-300, max_value=300).filter(bool))
def test_a_changed_timestamp_fails_even_within_the_tolerance(secret: str | bytes, body: bytes, shift: int) -> None:
    header = sign(secret, T, body)
    moved = header.replace(f"t={T}", f"t={T + shift}")
    assert verify([secret], moved, body, NOW) is Refusal.MISMATCH


@given(secret=secrets, body=bodies, data=st.data())
def test_any_change_of_one_hex_digit_of_the_signature_fails(
    secret: str | bytes, body: bytes, data: st.DataObject
) -> None:
    header = sign(secret, T, body)
    digest = _v1(header)
    index = data.draw(st.integers(min_value=0, max_value=63))
    digit = data.draw(st.sampled_from("0123456789abcdef").filter(lambda d: d != digest[index]))
    changed = digest[:index] + digit + digest[index + 1 :]
    assert verify([secret], f"t={T},v1={changed}", body, NOW) is Refusal.MISMATCH


@given(secret=secrets, other=secrets, body=bodies)
def test_another_secret_fails(secret: str | bytes, other: str | bytes, body: bytes) -> None:
    key = secret.encode() if isinstance(secret, str) else secret
    other_key = other.encode() if isinstance(other, str) else other
    if key != other_key:
        assert verify([other], sign(secret, T, body), body, NOW) is Refusal.MISMATCH


def test_several_v1_values_and_several_secrets_any_match_is_enough() -> None:
    body = b'{"id":"e1"}'
    old, new = _v1(sign("old", T, body)), _v1(sign("new", T, body))
    header = f"t={T},v1={old},v1={new}"
    assert verify(["new"], header, body, NOW) == Verified(T)
    assert verify(["old"], header, body, NOW) == Verified(T)
    assert verify(["newer", "new"], f"t={T},v1={new}", body, NOW) == Verified(T)
    assert verify(["other"], header, body, NOW) is Refusal.MISMATCH
    # Spaces after commas, upper-case hex and unknown schemes are tolerated.
    assert verify(["new"], f"t={T}, v0=abc, v1={new.upper()}", body, NOW) == Verified(T)


def test_a_missing_or_malformed_header_is_refused_before_any_signature_is_computed() -> None:
    body = b"{}"
    good = _v1(sign("s", T, body))
    assert verify(["s"], None, body, NOW) is Refusal.MISSING
    assert verify(["s"], "  ", body, NOW) is Refusal.MISSING
    for header in (
        good,  # no t=
        f"t={T}",  # no v1=
        f"v1={good}",
        f"t={T},t={T},v1={good}",  # two timestamps
        f"t=,v1={good}",
        f"t=-{T},v1={good}",
        f"t={T}.5,v1={good}",
        f"t=１７９５４２８０００,v1={good}",  # digits, but not ASCII ones
        f"t=9{T:0>20},v1={good}",
        f"t={T},v1={good[:-1]}",  # 63 digits
        f"t={T},v1={good}0",
        f"t={T},v1={good[:-1]}g",
        f"t={T};v1={good}",
        f"t={T},v1={good},",
    ):
        assert verify(["s"], header, body, NOW) is Refusal.MALFORMED, header


def test_the_tolerance_is_counted_from_the_given_time() -> None:
    body = b"x"
    header = sign("s", T, body)
    assert verify(["s"], header, body, NOW + timedelta(days=365)) is Refusal.STALE
    assert verify(["s"], header, body, NOW + timedelta(seconds=300)) == Verified(T)


@given(body=bodies, t=st.integers(min_value=0, max_value=2**40))
def test_the_receipt_names_the_signed_request_whatever_secret_signed_it(body: bytes, t: int) -> None:
    key = receipt("shop", t, body)
    assert len(key) == 64
    assert key == receipt("shop", t, body)
    assert key != receipt("crm", t, body)
    assert key != receipt("shop", t + 1, body)
    assert key != receipt("shop", t, body + b"\n")


@given(body=bodies, offset=offsets)
def test_an_empty_secret_signs_nothing_and_verifies_nothing(body: bytes, offset: int) -> None:
    # An HMAC keyed with nothing is a checksum anyone can compute: it proves no sender.
    forged = f"t={T + offset},v1={hmac.new(b'', f'{T + offset}.'.encode() + body, hashlib.sha256).hexdigest()}"
    assert verify(["", b""], forged, body, NOW) == Refusal.MISMATCH
    with pytest.raises(ValueError, match="empty"):
        sign("", T, body)
