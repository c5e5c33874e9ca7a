"""Who may change a lead's consent, and how (pure): what a form post does, when a confirmation may go
or be used, the limits on confirmations, and what an operator may set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.signup import (
    OPTED_OUT,
    ConfirmationLimits,
    SignupOutcome,
    confirmation_due,
    confirmation_key,
    confirmation_of,
    confirmation_refusal,
    confirmation_state,
    lift_refusal,
    may_confirm_to,
    may_restart,
    operator_refusal,
    signup_outcome,
    status_after_confirming,
    status_after_lift,
)
from engine.store.tables import CONSENT_STATUSES

T = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)
statuses = st.sampled_from(CONSENT_STATUSES)


@pytest.mark.parametrize(
    ("current", "double", "expected"),
    [
        (None, False, SignupOutcome("subscribe", "subscribed")),
        (None, True, SignupOutcome("confirm", "pending")),
        ("pending", True, SignupOutcome("confirm", None)),
        ("pending", False, SignupOutcome("confirm", None)),
        ("unsubscribed", True, SignupOutcome("confirm", None)),
        ("unsubscribed", False, SignupOutcome("confirm", None)),
        ("subscribed", True, SignupOutcome("confirm", None)),
        ("subscribed", False, SignupOutcome("confirm", None)),
        ("bounced", True, SignupOutcome("confirm", None)),  # the owner's confirmation lifts a bounce
        ("complained", False, SignupOutcome("ignore", None)),
        ("erased", False, SignupOutcome("ignore", None)),
    ],
)
def test_signup_outcome(current: str | None, double: bool, expected: SignupOutcome) -> None:
    assert signup_outcome(current, double) == expected


@given(current=statuses, double=st.booleans())
def test_a_post_about_an_existing_lead_changes_nothing_of_it(current: str, double: bool) -> None:
    outcome = signup_outcome(current, double)
    assert outcome.new_status is None and outcome.action in ("confirm", "ignore")


def test_a_new_confirmation_only_once_the_last_one_has_expired_or_was_used() -> None:
    assert confirmation_due(None, False, T, DAY)
    assert not confirmation_due(T, False, T + DAY, DAY)
    assert confirmation_due(T, False, T + DAY + timedelta(seconds=1), DAY)
    assert confirmation_due(T, True, T + timedelta(minutes=1), DAY)


def test_confirmations_are_limited_per_address_then_per_client() -> None:
    limits = ConfirmationLimits(per_address=3, per_ip=20, window=DAY)
    assert confirmation_refusal(2, 19, limits) is None
    assert confirmation_refusal(3, 0, limits) == "3 confirmations to this address in 1 day (limit 3)"
    assert confirmation_refusal(0, 20, limits) == "20 confirmations caused from this client in 1 day (limit 20)"


def test_confirmation_state() -> None:
    assert confirmation_state(T, T + DAY, DAY, already_confirmed=False) == "confirm"
    assert confirmation_state(T, T + DAY + timedelta(seconds=1), DAY, already_confirmed=False) == "expired"
    assert confirmation_state(T, T + 9 * DAY, DAY, already_confirmed=True) == "done"


def test_a_confirmation_lifts_a_pending_signup_an_unsubscribe_or_a_bounce_but_not_a_complaint() -> None:
    lifted = ("pending", "unsubscribed", "subscribed", "bounced")
    assert [status_after_confirming(s) for s in lifted] == ["subscribed"] * 4
    assert [status_after_confirming(s) for s in ("complained", "erased")] == ["complained", "erased"]


@pytest.mark.parametrize(
    ("consent", "suppression", "refused"),
    [
        ("subscribed", "bounced", None),
        ("bounced", None, None),
        ("bounced", "bounced", None),
        ("unsubscribed", "bounced", None),  # the bounce goes; the lead stays unsubscribed
        ("complained", "complained", "complained"),
        ("subscribed", "complained", "complained"),
        ("unsubscribed", None, "unsubscribed"),
        ("subscribed", "unsubscribed", "unsubscribed"),
        ("subscribed", "erased", "erased"),
        (None, "bounced", "no lead"),
        ("subscribed", None, "not bounced"),
        ("pending", None, "not bounced"),
    ],
)
def test_an_operator_lifts_only_a_bounce(consent: str | None, suppression: str | None, refused: str | None) -> None:
    why = lift_refusal(consent, suppression)
    assert (why is None) if refused is None else (why is not None and refused in why)


def test_a_lifted_bounced_status_goes_back_to_what_it_was_and_others_stay() -> None:
    assert status_after_lift("bounced", "pending") == "pending"
    assert status_after_lift("bounced", None) == "subscribed"
    assert status_after_lift("bounced", "complained") == "subscribed"
    assert status_after_lift("unsubscribed", None) == "unsubscribed"
    assert [may_confirm_to(r) for r in (None, "bounced", "complained", "unsubscribed", "erased")] == [
        True, True, False, False, False
    ]  # fmt: skip


@given(current=st.none() | statuses, wanted=statuses)
def test_an_operator_only_makes_an_existing_leads_consent_stricter(current: str | None, wanted: str) -> None:
    refused = operator_refusal(current, wanted) is not None
    lifts_opt_out = current in OPTED_OUT and wanted not in OPTED_OUT
    skips_confirmation = current == "pending" and wanted == "subscribed"
    assert refused == (lifts_opt_out or skips_confirmation)
    if current is None or current == wanted:
        assert not refused


def test_only_a_lead_that_was_subscribed_may_start_again_from_its_preference_page() -> None:
    assert may_restart("subscribed") and may_restart(None)
    assert not may_restart("pending")


@given(form=st.from_regex(r"[a-z0-9][a-z0-9_-]{0,90}", fullmatch=True), request=st.integers(1, 2**62))
def test_a_confirmations_outbox_key_reads_back(form: str, request: int) -> None:
    assert confirmation_of(*confirmation_key(form, request)) == (form, request)


@pytest.mark.parametrize(
    ("funnel", "step"),
    [("lead-magnet", "confirm-1"), ("form:x", "report"), ("form:x", "confirm-"), ("form:x", "confirm-²")],
)
def test_other_outbox_rows_are_not_confirmations(funnel: str, step: str) -> None:
    assert confirmation_of(funnel, step) is None
