"""Keys that sign: the rule each one must meet, and a fresh one.

Every HMAC key of the engine (`secret_key` and `previous_secret_keys` for links and sessions, the
secrets of inbound hooks, outbound subscriptions and `webhook` steps) proves only as much as it is hard
to guess. A key passes when it is printable ASCII without spaces, is none of the values this project
publishes, carries at least 256 random bits judged by its length and the smallest usual alphabet its
characters fit in, and does not repeat a few characters. Randomness cannot be measured from one value:
a key that only looks random still passes, so keys are made with `funnel secret`. Pure: no IO.
"""

from __future__ import annotations

import math
import secrets
import string
from typing import Annotated

from pydantic import AfterValidator, SecretStr

# Public, so never acceptable where anyone else can reach the app.
DEFAULT_SECRET_KEY = "change-me-in-production"  # noqa: S105 (public on purpose, and refused beyond loopback)

MIN_BITS = 256  # 32 random bytes: what HMAC-SHA256 can use, and what `funnel secret` makes
MIN_DISTINCT = 8

# Every value the docs, the README and the sample settings print where a key could go, and every long
# random-looking string they print (a reader may copy one into a setting): anyone can read them.
# tests/unit/test_secret_keys.py keeps this list complete.
PUBLISHED = frozenset(
    {
        DEFAULT_SECRET_KEY,
        "q3Vn0c2Jx8wT5m1KfYpR7hLzA9bE4uGdS6oWiN2vXk0",  # once the sample environment file's key
        "whsec_test",
        "the shop's secret",
        "set FUNNEL_HOOKS__SHOP__SECRET instead of writing it here",
        "set FUNNEL_WEBHOOKS__CRM__SECRET instead of writing it here",
        "7+mznFhZSrhO9knbN/5AgyhiowoDbEwR72238YIeFlk",  # the tail of the sample argon2 hash
        "8aed85972cde1f838ad16fc0e9ef4550605d41ac6e2c341e7f093b4d9ee4ad56",  # the sample signature
    }
)

_UPPER_BASE32 = string.ascii_uppercase + "234567"
# The alphabets keys are usually written in, smallest first: (what it is called, its size, its characters).
_ALPHABETS: tuple[tuple[str, int, frozenset[str]], ...] = (
    ("decimal digits", 10, frozenset(string.digits)),
    ("hex digits", 16, frozenset(string.hexdigits)),
    ("base32", 32, frozenset(_UPPER_BASE32)),
    ("base32", 32, frozenset(_UPPER_BASE32.lower())),
    ("lowercase letters and digits", 36, frozenset(string.ascii_lowercase + string.digits)),
    ("uppercase letters and digits", 36, frozenset(string.ascii_uppercase + string.digits)),
    ("letters and digits", 62, frozenset(string.ascii_letters + string.digits)),
    ("base64", 64, frozenset(string.ascii_letters + string.digits + "+/=-_")),
    ("printable ASCII", 94, frozenset(string.printable) - frozenset(string.whitespace)),
)


def new_key() -> str:
    """32 random bytes as URL-safe base64 (43 characters): what `funnel secret` prints."""
    return secrets.token_urlsafe(32)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def key_problem(key: str) -> str | None:
    """What makes `key` guessable, as a phrase to follow the setting's name ("secret_key is empty"), or
    None for a key that passes. The phrase never quotes the key."""
    if not key:
        return "is empty"
    if key == DEFAULT_SECRET_KEY:
        return "is the public default key"
    if key in PUBLISHED:
        return "is an example printed in the documentation"
    name, size, _ = next(((n, s, chars) for n, s, chars in _ALPHABETS if chars.issuperset(key)), ("", 0, frozenset()))
    if not size:
        return "holds a space or a character outside printable ASCII"
    bits = len(key) * math.log2(size)
    if bits < MIN_BITS:
        return (
            f"is too short: {_plural(len(key), 'character')} of {name} carry at most {int(bits)} random bits, "
            f"expected at least {MIN_BITS} (32 random bytes)"
        )
    distinct = len(set(key))
    if distinct < MIN_DISTINCT:
        return (
            f"repeats too few characters: {_plural(distinct, 'different character')}, expected at least {MIN_DISTINCT}"
        )
    for period in range(1, len(key) // 2 + 1):
        if key == (key[:period] * (len(key) // period + 1))[: len(key)]:
            return f"is a run of {_plural(period, 'character')} repeated"
    return None


def _signing_secret(value: SecretStr) -> SecretStr:
    problem = key_problem(value.get_secret_value())
    if problem is not None:
        raise ValueError(f"this secret {problem}: anyone could forge its signatures; make one with `funnel secret`")
    return value


# A secret shared with another system to sign requests (inbound hooks, outbound webhooks): refused when
# the settings load, wherever the app listens, since the other side may be anywhere.
SigningSecret = Annotated[SecretStr, AfterValidator(_signing_secret)]
