"""Who may use the ops dashboard: users from the settings, each with an argon2id hash of their password
(`funnel ops-user add NAME` prints the line to put in the config), a signed session cookie, and how
failed sign-ins lock a name or a client out. Pure: the database side is `engine.store.ops_sessions`.

The cookie holds the user's name, a fingerprint of their password hash, the session's id, a CSRF token
and an expiry, signed with the secret key under a salt of its own. The session is also a row in the
database, which a sign-out ends: a copy of the cookie opens nothing afterwards, on any process of the
app. Changing a user's password or removing the user ends their sessions; changing `secret_key` ends
everyone's.

Failed sign-ins count against the name tried (known or not: the answer must not tell) and against the
client's address. From the `after`-th failure on, each failure locks that name or client out for a
while that doubles with every further failure, up to an hour; a sign-in that succeeds clears both
counts, and a count is forgotten a day after its last failure. While locked, a sign-in is refused
before its password is checked, the same way for every name.

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
import ipaddress
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature
from pydantic import BaseModel, Field, StringConstraints, field_validator

from engine.core.tokens import TokenSerializer

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
    id: str
    """Names the session's row in the database (`engine.store.ops_sessions`), which a sign-out ends."""


class Sessions:
    """Signs and reads session cookies. `now` is the app's clock: expiry is measured on it."""

    def __init__(self, secret_key: str, ops: OpsSettings) -> None:
        self.ops = ops
        self._signer = TokenSerializer(secret_key, salt="funnel.ops-session")

    def issue(self, user: str, now: datetime) -> tuple[str, Session]:
        """A new session for `user` (who must exist): the cookie value and what it holds."""
        expires = now + timedelta(hours=self.ops.session_hours)
        session = Session(user, secrets.token_urlsafe(24), expires, secrets.token_urlsafe(24))
        payload = {
            "u": user,
            "k": _fingerprint(self.ops.users[user]),
            "s": session.id,
            "c": session.csrf,
            "e": int(session.expires.timestamp()),
        }
        return str(self._signer.dumps(payload)), session

    def read(self, cookie: str | None, now: datetime) -> Session | None:
        """The session in the cookie, or None: missing, tampered with, expired, or for a user who has
        since been removed or has a new password. Whether it was ended since is the database's to say."""
        if not cookie:
            return None
        try:
            payload: Any = self._signer.loads(cookie)
        except BadSignature:
            return None
        if not isinstance(payload, dict):
            return None
        user, key, csrf, expires = payload.get("u"), payload.get("k"), payload.get("c"), payload.get("e")
        session_id = payload.get("s")
        if not (isinstance(user, str) and isinstance(csrf, str) and isinstance(expires, int)):
            return None
        if not isinstance(session_id, str) or not session_id:
            return None
        hashed = self.ops.users.get(user)
        if hashed is None or not isinstance(key, str) or not same_token(_fingerprint(hashed), key):
            return None
        if now.timestamp() >= expires:
            return None
        return Session(user, csrf, datetime.fromtimestamp(expires, now.tzinfo), session_id)


# --------------------------------------------------------------------------------------------------
# Failed sign-ins
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lockout:
    """From the `after`-th failed sign-in on, each failure locks out for `first`, doubled with every
    further failure, up to `longest`."""

    after: int
    first: timedelta = timedelta(minutes=1)
    longest: timedelta = timedelta(hours=1)

    def lock_for(self, failures: int) -> timedelta | None:
        if failures < self.after:
            return None
        return min(self.first * (1 << min(failures - self.after, 16)), self.longest)


# A name has one owner: a few tries. A client address may be shared (an office behind one NAT), and a
# guesser going through many names from it is slowed as a whole.
PER_NAME = Lockout(after=5)
PER_CLIENT = Lockout(after=20)
# A failure this long after the last one counts from one again.
FAILURES_FORGOTTEN_AFTER = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Counted:
    """What one sign-in attempt counts against: `key` in the database, `shown` in the log."""

    key: str
    shown: str
    lockout: Lockout


def counted(name: str, client: str | None) -> list[Counted]:
    """The name tried, kept by a hash (a name field sometimes holds a password typed in the wrong box),
    and the client's address; an IPv6 client by its /64, which one machine usually has whole."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:40]
    found = [Counted(f"name:{digest}", f"name {name[:64]!r}", PER_NAME)]
    if client:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            where = client[:64]
        else:
            where = str(ipaddress.ip_network(f"{address}/64", strict=False) if address.version == 6 else address)
        found.append(Counted(f"client:{where}", f"client {where}", PER_CLIENT))
    return found


def wait_seconds(until: datetime, now: datetime) -> int:
    """Whole seconds until a lockout ends (a `Retry-After`), at least one."""
    return max(1, math.ceil((until - now).total_seconds()))


def wait_words(seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"


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
