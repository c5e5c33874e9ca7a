"""Signed links: unsubscribe, preferences, click tracking and opt-in each carry a token with its own
purpose (salt), so a token made for one can never be used as another (invariant 11)."""

from __future__ import annotations

from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer, URLSafeTimedSerializer

from engine.settings import Settings

PURPOSES = ("unsubscribe", "preferences", "click", "open", "opt-in")


class Links:
    def __init__(self, settings: Settings) -> None:
        self.base = settings.base_url.rstrip("/")
        secret = settings.secret_key.get_secret_value()
        self._signers = {p: URLSafeSerializer(secret, salt=f"funnel.{p}") for p in PURPOSES}
        self._timed = URLSafeTimedSerializer(secret, salt="funnel.opt-in.timed")

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

    def preferences_url(self, email: str) -> str:
        return f"{self.base}/p/{self.sign('preferences', {'e': email})}"
