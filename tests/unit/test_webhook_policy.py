"""Outbound webhook decisions: retry schedule, what an answer means, what a request carries, who gets
what, and fan-out cursors that never lose an id that shows up late."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from engine.core import signatures
from engine.core import webhook_policy as policy
from engine.core.webhook_policy import (
    GAP_GRACE,
    Answered,
    Cursor,
    Delivered,
    Failed,
    Gap,
    RetryAt,
    RetryPolicy,
    Unanswered,
    WebhookSettings,
)

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
DEFAULT = RetryPolicy()


# -- retry schedule ------------------------------------------------------------------------------


def test_waits_double_from_ten_seconds_to_an_hour() -> None:
    waits = [policy.retry_delay(n, 0.5, DEFAULT).total_seconds() for n in range(1, 13)]
    assert waits == [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600, 3600]


@pytest.mark.parametrize("attempts", [1, 3, 9, 10, 40, 10_000])
@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.999999])
def test_jitter_spreads_each_wait_by_a_quarter_and_never_past_the_cap(attempts: int, jitter: float) -> None:
    base = min(10 * 2 ** (attempts - 1), 10**12)
    wait = policy.retry_delay(attempts, jitter, DEFAULT).total_seconds()
    assert wait <= 3600
    assert wait >= min(0.75 * base, 3600) - 1e-6
    assert wait <= 1.25 * base + 1e-6


def test_jitter_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        policy.retry_delay(1, 1.0, DEFAULT)


def test_a_longer_retry_after_is_honoured_up_to_the_cap() -> None:
    assert policy.retry_delay(1, 0.5, DEFAULT, timedelta(seconds=90)) == timedelta(seconds=90)
    assert policy.retry_delay(1, 0.5, DEFAULT, timedelta(seconds=2)) == timedelta(seconds=10)
    assert policy.retry_delay(1, 0.5, DEFAULT, timedelta(days=2)) == timedelta(hours=1)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", timedelta(seconds=120)),
        (" 7 ", timedelta(seconds=7)),
        ("Tue, 24 Nov 2026 09:05:00 GMT", timedelta(minutes=5)),
        ("Mon, 23 Nov 2026 09:05:00 GMT", timedelta(0)),  # in the past: no wait
        ("soon", None),
        ("-5", None),
        (None, None),
    ],
)
def test_retry_after_is_seconds_or_an_http_date(header: str | None, expected: timedelta | None) -> None:
    assert policy.parse_retry_after(header, NOW) == expected


# -- what an answer means -------------------------------------------------------------------------


def decide(outcome: policy.Outcome, attempts: int = 1, created_at: datetime = NOW, now: datetime = NOW) -> policy.Next:
    return policy.next_step(outcome, attempts=attempts, created_at=created_at, now=now, jitter=0.5, policy=DEFAULT)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_is_delivered(status: int) -> None:
    assert decide(Answered(status)) == Delivered(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 413, 422, 301, 302, 304, 100])
def test_a_refusal_that_will_not_change_by_itself_fails_for_good(status: int) -> None:
    outcome = decide(Answered(status))
    assert isinstance(outcome, Failed)
    assert outcome.permanent and outcome.status == status
    assert outcome.error == policy.status_line(status)


def test_an_answer_is_recorded_by_its_status_line_only() -> None:
    assert policy.status_line(422) == "HTTP 422 Unprocessable Entity"
    assert policy.status_line(302) == "HTTP 302 Found"
    assert policy.status_line(599) == "HTTP 599"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_timeouts_throttling_and_server_errors_are_retried(status: int) -> None:
    expected = RetryAt(NOW + timedelta(seconds=20), policy.status_line(status), status)
    assert decide(Answered(status), attempts=2) == expected


def test_no_answer_is_retried_and_a_request_that_cannot_be_made_is_not() -> None:
    assert decide(Unanswered("could not connect")) == RetryAt(NOW + timedelta(seconds=10), "could not connect", None)
    assert decide(Unanswered("bad URL", permanent=True)) == Failed("bad URL", None, permanent=True)


def test_a_throttled_delivery_waits_as_long_as_the_receiver_asks() -> None:
    outcome = decide(Answered(429, retry_after=timedelta(minutes=5)))
    assert isinstance(outcome, RetryAt) and outcome.at == NOW + timedelta(minutes=5)


def test_given_up_after_the_last_attempt() -> None:
    short = RetryPolicy(max_attempts=3)
    assert isinstance(
        policy.next_step(Answered(503), attempts=2, created_at=NOW, now=NOW, jitter=0.5, policy=short), RetryAt
    )
    outcome = policy.next_step(Answered(503), attempts=3, created_at=NOW, now=NOW, jitter=0.5, policy=short)
    reason = "gave up after 3 attempts in 0 seconds; last: HTTP 503 Service Unavailable"
    assert outcome == Failed(reason, 503, permanent=False)


def test_given_up_when_the_next_try_would_come_after_a_day() -> None:
    created = NOW - timedelta(hours=23, minutes=30)
    outcome = decide(Answered(500), attempts=12, created_at=created)  # next wait: an hour
    assert isinstance(outcome, Failed) and not outcome.permanent
    assert outcome.error.startswith("gave up after 12 attempts in 23 hours 30 minutes")


def test_a_dead_receiver_is_tried_for_most_of_a_day_then_given_up() -> None:
    now, attempts = NOW, 0
    while True:
        attempts += 1
        outcome = decide(Unanswered("could not connect"), attempts=attempts, now=now)
        if isinstance(outcome, Failed):
            break
        assert isinstance(outcome, RetryAt)
        now = outcome.at
    # 10 s, 20 s ... 2560 s, then hourly: the 32nd attempt is at 23h25m, a 33rd would be past the day.
    assert attempts == 32
    assert now - NOW == timedelta(seconds=5110 + 22 * 3600)


# -- settings ------------------------------------------------------------------------------------

TOML = """
[webhooks]
timeout_s = 5
step_secret = "whsec_steps_FrLku7fc7QnfpUIBG6m_XlfGOfac-oiHLqf"

[webhooks.crm]
url = "https://crm.example.com/hooks/funnel"
secret = "whsec_crm_VwNz41bQc9z_nN6aatYkGBD5h3zNNLlqPhhm"
events = ["transition"]
funnels = ["lead-magnet"]
attributes = ["first_name", "company"]

[webhooks.analytics]
url = "https://stats.example.com/in"
secret = "whsec_stats_MP56PnSGiUDc1eGDsRoWAKPT1RHyMfl2Wc8"
include_email = false
"""


def test_each_table_under_webhooks_is_a_subscription() -> None:
    loaded = WebhookSettings.model_validate(tomllib.loads(TOML)["webhooks"])
    assert loaded.timeout_s == 5
    assert (
        loaded.step_secret is not None
        and loaded.step_secret.get_secret_value() == "whsec_steps_FrLku7fc7QnfpUIBG6m_XlfGOfac-oiHLqf"
    )
    assert sorted(loaded.subscriptions) == ["analytics", "crm"]
    crm, stats = loaded.subscriptions["crm"], loaded.subscriptions["analytics"]
    assert crm.wants("transition", "lead-magnet")
    assert not crm.wants("goal", "lead-magnet")
    assert not crm.wants("transition", "webinar")
    assert stats.wants("goal", "webinar") and stats.wants("transition", "lead-magnet")
    assert stats.start == "now" and not stats.include_email
    assert "whsec_crm_VwNz41bQc9z_nN6aatYkGBD5h3zNNLlqPhhm" not in repr(loaded)


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"timout_s": 5}, "timout_s"),
        ({"crm": {"url": "https://x.example", "secret": "s", "event": ["goal"]}}, "event"),
        ({"crm": {"url": "ftp://x.example", "secret": "s"}}, "url"),
        ({"crm": {"url": "https://x.example"}}, "secret"),
        ({"crm": {"url": "https://x.example", "secret": "s", "events": ["click"]}}, "events"),
        ({"CRM": {"url": "https://x.example", "secret": "s"}}, "CRM"),
        (
            {"crm": {"url": "https://x.example", "secret": ""}},
            "subscriptions.crm.secret\n  Value error, this secret is empty",
        ),
        (
            {"step_secret": "whsec_test"},
            "step_secret\n  Value error, this secret is an example printed in the documentation",
        ),
    ],
)
def test_a_settings_mistake_names_its_key(raw: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WebhookSettings.model_validate(raw)
    assert where in str(caught.value)


def test_a_lease_outlasts_the_request() -> None:
    assert WebhookSettings(timeout_s=10).lease == timedelta(seconds=50)


# -- what a request carries -------------------------------------------------------------------------


def test_the_lead_carries_its_email_and_named_attributes_only_when_asked() -> None:
    attributes = {"first_name": "Ana", "company": "Acme", "phone": "+44 1234"}
    assert policy.lead_part(7, "ana@example.com", attributes, include_email=False, names=()) == {"id": 7}
    assert policy.lead_part(7, "ana@example.com", attributes, include_email=True, names=["first_name", "vat"]) == {
        "id": 7,
        "email": "ana@example.com",
        "attributes": {"first_name": "Ana"},
    }


def test_a_transition_says_from_where_to_where_and_why() -> None:
    event = policy.transition_event(
        42,
        lead={"id": 7},
        funnel_id="lead-magnet",
        version="abc",
        from_stage="inquiry",
        to_stage="conversion",
        cause_kind="event",
        cause_ref="evt-9",
        exit_reason=None,
        at=datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC),
    )
    assert event == {
        "id": "transition-42",
        "type": "transition",
        "occurred_at": "2026-11-24T10:00:00.123456Z",
        "funnel": {"id": "lead-magnet", "version": "abc"},
        "lead": {"id": 7},
        "transition": {
            "from": "inquiry",
            "to": "conversion",
            "cause": {"kind": "event", "ref": "evt-9"},
            "exit_reason": None,
        },
    }


def test_the_body_is_the_same_bytes_every_time_and_the_signature_verifies() -> None:
    event = policy.goal_event(5, lead={"id": 1, "email": "zoë@example.com"}, funnel_id="f", goal="paid",
                              within_window=True, at=NOW)  # fmt: skip
    body = policy.encode(event)
    assert body == policy.encode(json.loads(body))
    assert "zoë".encode() in body
    headers = policy.request_headers(event, body, attempt=3, secrets=["whsec_x"], now=NOW)
    assert headers["Funnel-Delivery"] == "goal-5" and headers["Funnel-Event"] == "goal"
    assert headers["Funnel-Attempt"] == "3" and headers["Content-Type"] == "application/json"
    assert signatures.verify(["whsec_x"], headers["Funnel-Signature"], body, NOW) == signatures.Verified(
        int(NOW.timestamp())
    )
    assert signatures.verify(["whsec_x"], headers["Funnel-Signature"], body + b" ", NOW) is signatures.Refusal.MISMATCH


def test_without_a_secret_nothing_is_signed() -> None:
    event = policy.step_event(3, lead={"id": 1}, funnel_id="f", step="notify", payload={"a": 1}, at=NOW)
    headers = policy.request_headers(event, policy.encode(event), attempt=1, secrets=[], now=NOW)
    assert "Funnel-Signature" not in headers
    assert headers["Funnel-Delivery"] == "call-3" and event["payload"] == {"a": 1}


# -- fan-out cursors -------------------------------------------------------------------------------

T = NOW.timestamp()


def test_contiguous_ids_move_the_cursor_with_no_gap() -> None:
    moved = policy.advance(Cursor(0, 0), [1, 2, 3], "k3", NOW)
    assert moved == Cursor(0, 3, "k3", ())


def test_an_id_not_visible_yet_becomes_a_gap_until_it_shows_up() -> None:
    moved = policy.advance(Cursor(0, 10, "k10"), [11, 14, 15, 19], "k19", NOW)
    assert moved == Cursor(0, 19, "k19", (Gap(12, 13, T), Gap(16, 18, T)))
    later = NOW + timedelta(seconds=5)
    again = policy.advance(moved, [13, 17, 20], "k20", later)
    assert again == Cursor(0, 20, "k20", (Gap(12, 12, T), Gap(16, 16, T), Gap(18, 18, T)))


def test_a_gap_is_looked_for_during_the_grace_period_only() -> None:
    cursor = Cursor(0, 5, "k5", (Gap(3, 3, T),))
    assert policy.advance(cursor, [], None, NOW + GAP_GRACE).gaps == (Gap(3, 3, T),)
    assert policy.advance(cursor, [], None, NOW + GAP_GRACE + timedelta(seconds=1)).gaps == ()


def test_the_oldest_gaps_go_when_there_are_too_many() -> None:
    seen = list(range(2, 2 * policy.MAX_GAPS + 100, 2))
    moved = policy.advance(Cursor(0, 0), seen, "k", NOW)
    assert len(moved.gaps) == policy.MAX_GAPS
    assert moved.gaps[-1] == Gap(seen[-1] - 1, seen[-1] - 1, T)


def test_a_changed_row_at_the_cursor_makes_it_look_back_but_not_before_its_start() -> None:
    cursor = Cursor(900, 1500, "7@x", (Gap(950, 950, T), Gap(1490, 1490, T)))
    assert policy.look_back(cursor, "7@x") is cursor
    assert policy.look_back(cursor, "8@y") == Cursor(900, 900, None, ())
    far = Cursor(0, 5000, "7@x", (Gap(3000, 3000, T), Gap(4500, 4500, T)))
    assert policy.look_back(far, None) == Cursor(0, 4000, None, (Gap(3000, 3000, T),))
    assert policy.look_back(Cursor(12, 12, None), None) == Cursor(12, 12, None)  # nothing passed yet


def test_a_pass_is_needed_for_new_rows_gaps_or_a_changed_row_only() -> None:
    idle = Cursor(0, 10, "k")
    assert not policy.needs_pass(idle, 10, "k")
    assert policy.needs_pass(idle, 11, "k")
    assert policy.needs_pass(idle, 10, "other")
    assert policy.needs_pass(idle, 9, None)
    assert policy.needs_pass(Cursor(0, 10, "k", (Gap(4, 4, T),)), 10, "k")


def test_gaps_survive_the_database_as_json() -> None:
    gaps = (Gap(3, 4, T), Gap(9, 9, T + 0.5))
    assert policy.gaps_from_json(json.loads(json.dumps(policy.gaps_to_json(gaps)))) == gaps


@settings(max_examples=300, deadline=None)
@given(
    visible_at=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=40),
    batch=st.integers(min_value=1, max_value=7),
)
def test_every_id_that_commits_within_the_grace_period_is_fanned_out_exactly_once(
    visible_at: list[int], batch: int
) -> None:
    """Ids 1..n commit in any order (id i becomes visible at pass `visible_at[i-1]`); each pass reads what
    the fan-out query would (ids after the cursor or in its gaps, visible, in id order, `batch` at most).
    The passes are a second apart: well within the grace period."""
    n = len(visible_at)
    cursor = Cursor(0, 0)
    fanned: list[int] = []
    for step in range(60):
        now = NOW + timedelta(seconds=step)
        visible = [i for i in range(1, n + 1) if visible_at[i - 1] <= step]
        wanted = [i for i in visible if i > cursor.last_id or any(g.first <= i <= g.last for g in cursor.gaps)][:batch]
        fanned += wanted
        cursor = policy.advance(cursor, wanted, f"k{wanted[-1]}" if wanted else None, now)
    assert sorted(fanned) == list(range(1, n + 1))
    assert cursor.gaps == () and cursor.last_id == n


def test_a_row_key_tells_rows_apart_by_content_and_not_by_how_time_is_written() -> None:
    at = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    paris = at.astimezone(timezone(timedelta(hours=1)))
    same = policy.row_key([1, "trial", at, "event", "evt-1"])
    assert policy.row_key([1, "trial", paris, "event", "evt-1"]) == same
    assert policy.row_key([1, "trial", at, "event", "evt-2"]) != same
    assert policy.row_key([1, "trial", at + timedelta(microseconds=1), "event", "evt-1"]) != same


def test_while_a_secret_is_replaced_either_one_verifies() -> None:
    event = policy.goal_event(5, lead={"id": 1}, funnel_id="f", goal="paid", within_window=True, at=NOW)
    body = policy.encode(event)
    both = policy.secrets_of(SecretStr("whsec_new"), SecretStr("whsec_old"))
    header = policy.request_headers(event, body, attempt=1, secrets=both, now=NOW)["Funnel-Signature"]
    assert header.count("v1=") == 2
    for secret in ("whsec_new", "whsec_old"):
        assert isinstance(signatures.verify([secret], header, body, NOW), signatures.Verified)
    assert signatures.verify(["whsec_other"], header, body, NOW) is signatures.Refusal.MISMATCH
