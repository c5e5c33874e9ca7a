"""Who may use the ops dashboard: users from the settings, each with an argon2id hash of their password
(`funnel ops-user add NAME` prints the line to put in the config), and a signed session cookie.

The session is the cookie alone (nothing stored server-side): the user's name, a fingerprint of their
password hash, a CSRF token and an expiry, signed with the secret key under a salt of its own. Changing a
user's password or removing the user ends their sessions; changing `secret_key` ends everyone's.

CSRF: every POST of the dashboard carries the session's token in a form field, compared in constant time,
and a POST whose `Origin` names another host is refused as well. The cookie is `SameSite=Lax`, so a
browser does not send it with another site's POST in the first place: the token is the defence that does
not depend on the browser. The login form has the same protection without a session: a random value in a
short-lived cookie that the form must repeat (double submit), so another site cannot sign a browser in
to an account of its choosing.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature
from pydantic import BaseModel, Field, StringConstraints, field_validator

from engine.tokens import TokenSerializer

SESSION_COOKIE = "funnel_ops"
LOGIN_COOKIE = "funnel_ops_login"
COOKIE_PATH = "/ops"
LOGIN_COOKIE_SECONDS = 3600

UserName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]

_hasher = PasswordHasher()  # argon2id with argon2-cffi's defaults (RFC 9106's second recommendation)


@functools.cache
def _unknown_user_hash() -> str:
    """Verified against when the name is unknown, so that a wrong name costs as long as a wrong password.
    Made on first use: the settings import this module, and a hash takes a tenth of a second."""
    return _hasher.hash(secrets.token_hex(16))


class OpsSettings(BaseModel):
    """The ops dashboard at `/ops`: who may sign in, and for how long."""

    users: dict[UserName, str] = Field(
        default_factory=dict,
        description="Ops users by name, each with the argon2id hash `funnel ops-user add NAME` prints. "
        "No users: nobody can sign in.",
    )
    session_hours: float = Field(default=12, gt=0, le=24 * 30, description="How long a sign-in lasts.")
    feed_stream_seconds: float = Field(
        default=10,
        gt=0,
        le=300,
        description="How long one connection of the live feed lasts before the browser reconnects (and "
        "resumes where it was); a server shutting down waits at most this long for open feeds.",
    )

    @field_validator("users")
    @classmethod
    def _argon2id(cls, users: dict[str, str]) -> dict[str, str]:
        for name, hashed in users.items():
            if not hashed.startswith("$argon2id$"):
                raise ValueError(f"user {name!r}: expected an argon2id hash ($argon2id$...) from `funnel ops-user add`")
        return users


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(ops: OpsSettings, name: str, password: str) -> bool:
    """Whether `name` is a user and `password` is theirs. Slow on purpose (argon2), the same for an
    unknown name as for a wrong password."""
    hashed = ops.users.get(name)
    try:
        return _hasher.verify(hashed or _unknown_user_hash(), password) and hashed is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _fingerprint(hashed: str) -> str:
    return hashlib.sha256(hashed.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    csrf: str
    expires: datetime


class Sessions:
    """Signs and reads session cookies. `now` is the app's clock: expiry is measured on it."""

    def __init__(self, secret_key: str, ops: OpsSettings) -> None:
        self.ops = ops
        self._signer = TokenSerializer(secret_key, salt="funnel.ops-session")

    def issue(self, user: str, now: datetime) -> tuple[str, Session]:
        """A new session for `user` (who must exist): the cookie value and what it holds."""
        session = Session(user, secrets.token_urlsafe(24), now + timedelta(hours=self.ops.session_hours))
        payload = {
            "u": user,
            "k": _fingerprint(self.ops.users[user]),
            "c": session.csrf,
            "e": int(session.expires.timestamp()),
        }
        return str(self._signer.dumps(payload)), session

    def read(self, cookie: str | None, now: datetime) -> Session | None:
        """The session in the cookie, or None: missing, tampered with, expired, or for a user who has
        since been removed or has a new password."""
        if not cookie:
            return None
        try:
            payload: Any = self._signer.loads(cookie)
        except BadSignature:
            return None
        if not isinstance(payload, dict):
            return None
        user, key, csrf, expires = payload.get("u"), payload.get("k"), payload.get("c"), payload.get("e")
        if not (isinstance(user, str) and isinstance(csrf, str) and isinstance(expires, int)):
            return None
        hashed = self.ops.users.get(user)
        if hashed is None or not isinstance(key, str) or not same_token(_fingerprint(hashed), key):
            return None
        if now.timestamp() >= expires:
            return None
        return Session(user, csrf, datetime.fromtimestamp(expires, now.tzinfo))


def same_token(expected: str, given: object) -> bool:
    return isinstance(given, str) and bool(given) and hmac.compare_digest(expected.encode(), given.encode())


def foreign_origin(origin: str | None, host: str | None) -> bool:
    """Whether a request's `Origin` header names a host other than the one it was sent to. A missing
    Origin is not foreign (older browsers and plain clients send none: the token decides)."""
    if origin is None:
        return False
    if origin == "null":
        return True
    return urlsplit(origin).netloc.lower() != (host or "").lower()


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path only, never another site (`//evil.example`)."""
    if target and (target == COOKIE_PATH or target.startswith(f"{COOKIE_PATH}/")) and "\\" not in target:
        path = urlsplit(target)
        if not path.scheme and not path.netloc:
            return target
    return f"{COOKIE_PATH}/"


def cookie_options(base_url: str) -> dict[str, Any]:
    """HttpOnly (no script reads it), SameSite=Lax, Secure when the app is served over https, and only
    sent to the dashboard's paths."""
    return {
        "httponly": True,
        "samesite": "lax",
        "secure": base_url.lower().startswith("https://"),
        "path": COOKIE_PATH,
    }


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)
