"""Signed tokens (itsdangerous: base64url payload, `.`, base64url HMAC), read strictly.

A lenient base64 reader takes several texts for the same bytes: the low bits of the last character are
padding, `=` may be added, characters outside the alphabet are dropped. itsdangerous reads a signature
that way, so without this one token had several spellings that all passed. Here a signature is valid
only in the one spelling the signer writes; the payload is covered by the signature as written, so it
has one spelling already.
"""

from __future__ import annotations

from itsdangerous import BadData, Signer, URLSafeSerializer
from itsdangerous.encoding import base64_decode, base64_encode


def canonical(text: str | bytes) -> bool:
    """Whether `text` is base64url exactly as it is written for the bytes it decodes to."""
    written = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    try:
        return base64_encode(base64_decode(written)) == written
    except BadData:
        return False


class StrictSigner(Signer):
    def verify_signature(self, value: str | bytes, sig: str | bytes) -> bool:
        return canonical(sig) and super().verify_signature(value, sig)


class TokenSerializer(URLSafeSerializer):
    """A URL-safe serializer whose signatures are read strictly (`StrictSigner`)."""

    default_signer = StrictSigner
