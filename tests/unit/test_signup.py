"""What a signup does to consent, and when a confirmation may go or be used (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.signup import SignupOutcome, confirmation_due, confirmation_state, signup_outcome

T = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("current", "double", "expected"),
    [
        (None, False, SignupOutcome("subscribed", False)),
        (None, True, SignupOutcome("pending", True)),
        ("pending", True, SignupOutcome(None, True)),
        ("pending", False, SignupOutcome("subscribed", False)),
        ("unsubscribed", True, SignupOutcome("pending", True)),
        ("unsubscribed", False, SignupOutcome("subscribed", False)),
        ("subscribed", True, SignupOutcome(None, False)),
        ("bounced", True, SignupOutcome(None, False)),
        ("complained", False, SignupOutcome(None, False)),
        ("erased", False, SignupOutcome(None, False)),
    ],
)
def test_signup_outcome(current: str | None, double: bool, expected: SignupOutcome) -> None:
    assert signup_outcome(current, double) == expected


def test_a_new_confirmation_only_once_the_last_one_has_expired() -> None:
    assert confirmation_due(None, T, DAY)
    assert not confirmation_due(T, T + DAY, DAY)
    assert confirmation_due(T, T + DAY + timedelta(seconds=1), DAY)


def test_confirmation_state() -> None:
    assert confirmation_state(T, T + DAY, DAY, already_confirmed=False) == "confirm"
    assert confirmation_state(T, T + DAY + timedelta(seconds=1), DAY, already_confirmed=False) == "expired"
    assert confirmation_state(T, T + 9 * DAY, DAY, already_confirmed=True) == "done"
