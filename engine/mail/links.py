"""Signed links: unsubscribe, preferences, click tracking and opt-in each carry a token with its own
purpose (salt), so a token made for one can never be used as another (invariant 11), and each is valid
only as it was written (`engine.core.tokens`)."""

from __future__ import annotations

from typing import Any

from itsdangerous import BadSignature
from itsdangerous.encoding import base64_encode

from engine.core.tokens import TokenSerializer
from engine.settings import Settings

PURPOSES = ("unsubscribe", "preferences", "click", "open", "opt-in")


class _Uncompressed(TokenSerializer):
    """Tokens as itsdangerous writes them, minus the zlib attempt: our payloads are a few dozen bytes,
    compression never pays, and every email signs two. Still read by the standard `loads`."""

    def dump_payload(self, obj: Any) -> bytes:
        return base64_encode(self.serializer.dumps(obj, **self.serializer_kwargs).encode("utf-8"))


class Links:
    def __init__(self, settings: Settings) -> None:
        self.base = settings.base_url.rstrip("/")
        # itsdangerous signs with the last key and accepts any of them: rotation without breaking the
        # unsubscribe links of emails already delivered.
        keys = [k.get_secret_value() for k in (*settings.previous_secret_keys, settings.secret_key)]
        self._signers = {p: _Uncompressed(keys, salt=f"funnel.{p}") for p in PURPOSES}

    def sign(self, purpose: str, payload: Any) -> str:
        return str(self._signers[purpose].dumps(payload))

    def verify(self, purpose: str, token: str) -> Any | None:
        """The payload, or None for a token that is tampered with or made for another purpose."""
        try:
            return self._signers[purpose].loads(token)
        except BadSignature:
            return None

    def unsubscribe_url(self, email: str, funnel_id: str | None) -> str:
        return f"{self.base}/u/{self.sign('unsubscribe', {'e': email, 'f': funnel_id})}"

    def click_url(self, email: str, funnel_id: str, step: str, name: str, url: str) -> str:
        """A redirect to `url` that records the click. The URL is inside the signed token, so the redirect
        can only ever lead where the email did (no open redirect)."""
        token = self.sign("click", {"e": email, "f": funnel_id, "s": step, "n": name, "u": url})
        return f"{self.base}/c/{token}"

    def open_url(self, email: str, funnel_id: str, step: str) -> str:
        """The open pixel of one email (one per lead, funnel and step)."""
        return f"{self.base}/o/{self.sign('open', {'e': email, 'f': funnel_id, 's': step})}.gif"

    def preferences_url(self, email: str) -> str:
        return f"{self.base}/p/{self.sign('preferences', {'e': email})}"

    def confirm_url(self, email: str, form_id: str, request_id: int) -> str:
        """The double opt-in link of one signup request. It expires with the request: the server
        compares the request's time in the database with the form's `confirm_within_hours`."""
        return f"{self.base}/confirm/{self.sign('opt-in', {'e': email, 'f': form_id, 'r': request_id})}"
