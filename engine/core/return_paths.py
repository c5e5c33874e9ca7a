"""The return path that names its message (VERP): `bounces+TOKEN@bounce-domain`. Pure: no IO.

A bounce or a delay goes to the envelope sender, so a per-message envelope sender tells the engine
which message a report is about, even when the report quotes nothing of it (many non-standard bounces
do not) or names another address (the mailbox the lead forwards to). TOKEN is the outbox row's id in
base 36, then a 12-character tag: an HMAC of the id with the engine's secret key and a purpose of its
own, 60 bits in RFC 4648 base32. Only lowercase letters and digits, because some MTAs fold the local
part's case; the tag's alphabet has one case, so a folded token reads back as the same one.

A token is read strictly otherwise: the id without leading zeros, the tag of exactly its length, nothing
else around them. Anyone can write to the bounce domain: a forged token must match no message, and
`read_token` checks the tag against every key of the keyring (a report may come days after a key
rotation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import string
from collections.abc import Sequence

PURPOSE = b"funnel.return-path"
TAG_LENGTH = 12  # base32 characters: 60 bits
_DIGITS = string.digits + string.ascii_lowercase
_TOKEN = re.compile(rf"([1-9a-z][0-9a-z]{{0,12}})([a-z2-7]{{{TAG_LENGTH}}})")


def _base36(number: int) -> str:
    out = ""
    while number:
        number, digit = divmod(number, 36)
        out = _DIGITS[digit] + out
    return out or "0"


def _tag(outbox_id: int, key: str) -> str:
    mac = hmac.new(key.encode(), PURPOSE + b":" + str(outbox_id).encode(), hashlib.sha256).digest()
    return base64.b32encode(mac[:10]).decode("ascii").lower()[:TAG_LENGTH]


def token(outbox_id: int, key: str) -> str:
    """The signed token naming one outbox row (ids from 1)."""
    if outbox_id < 1:
        raise ValueError(f"expected an outbox id of 1 or more, found {outbox_id}")
    return _base36(outbox_id) + _tag(outbox_id, key)


def return_path(outbox_id: int, key: str, local_part: str, domain: str) -> str:
    """The envelope sender of one message: `local_part+TOKEN@domain`, the same on every retry."""
    return f"{local_part}+{token(outbox_id, key)}@{domain}"


def read_token(text: str, keys: Sequence[str]) -> int | None:
    """The outbox id a token names, or None: not a token, or signed by no key of `keys`."""
    found = _TOKEN.fullmatch(text.lower()) if text.isascii() else None
    if found is None:
        return None
    number, tag = found.groups()
    outbox_id = int(number, 36)
    if any(hmac.compare_digest(tag, _tag(outbox_id, key)) for key in keys):
        return outbox_id
    return None


def token_in(address: str, local_part: str, domain: str | None = None) -> str | None:
    """The TOKEN of `local_part+TOKEN@domain` (the address a report was sent to, e.g. a DSN's envelope
    recipient or the `To` of a bounce), or None for any other address. `domain` None: any domain."""
    local, at, where = address.strip().strip("<>").rpartition("@")
    if not at or (domain is not None and where.lower().rstrip(".") != domain.lower()):
        return None
    base, plus, tail = local.partition("+")
    if not plus or base.lower() != local_part.lower() or not tail:
        return None
    return tail
