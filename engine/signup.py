"""What a form signup does to a lead's consent, and when a double opt-in may be confirmed. Pure: the
form route reads the state, asks here, and writes what is decided."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

# Statuses a form post must not lift: a bouncing address stays bouncing, a complaint stays a complaint.
STICKY = ("bounced", "complained", "erased")


@dataclass(frozen=True, slots=True)
class SignupOutcome:
    consent: str | None
    """The lead's new consent status, or None to keep the current one."""
    confirm: bool
    """Ask for confirmation first (double opt-in) instead of emitting the entry event now."""


def signup_outcome(current: str | None, double_opt_in: bool) -> SignupOutcome:
    """`current` is None for a new lead. A lead already subscribed has proved the address before: no
    confirmation round trip. Anyone else signing up on a double opt-in form is `pending` until the
    link in the confirmation email is followed: only transactional email (the confirmation) goes."""
    if current in STICKY:
        return SignupOutcome(None, False)
    if current == "subscribed":
        return SignupOutcome(None, False)
    if double_opt_in:
        return SignupOutcome("pending" if current != "pending" else None, True)
    return SignupOutcome("subscribed", False)


def confirmation_due(last_request_at: datetime | None, now: datetime, valid_for: timedelta) -> bool:
    """A new confirmation email only when no earlier one is still valid: posting the form ten times
    (or a bot posting someone else's address) sends one email per validity period, not ten."""
    return last_request_at is None or now - last_request_at > valid_for


def confirmation_state(
    request_at: datetime, now: datetime, valid_for: timedelta, already_confirmed: bool
) -> Literal["confirm", "done", "expired"]:
    """A second click on a link already used is fine (`done`); a link past its validity is `expired`."""
    if already_confirmed:
        return "done"
    if now - request_at > valid_for:
        return "expired"
    return "confirm"
