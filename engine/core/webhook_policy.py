"""Outbound webhooks, the decisions: who subscribes to what, what a request carries, what an answer means,
when a failed delivery is tried again or given up, and how a fan-out cursor moves past ids that are not
visible yet. Pure: no IO and no clock; the caller says what time it is and brings the randomness.

The adapter that reads the tables and speaks HTTP is `engine.runtime.webhooks_out`; docs/webhooks.md is the
receiver's guide.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, model_validator

from engine.core import signatures
from engine.core.durations import in_words
from engine.core.secret_keys import SigningSecret

EventKind = Literal["transition", "goal", "alarm"]
# What a subscription gets unless it says: the leads' story. Domain alarms ("alarm": raised and over)
# are for an operator's pager or chat, asked for by name.
EVENT_KINDS: tuple[EventKind, ...] = ("transition", "goal")
# A subscription's name: a settings key and a database value. The funnel `webhook` steps use "", which
# no configured name can be.
SubscriptionName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,99}$")]
STEP_CALLS = ""

DELIVERY_HEADER = "Funnel-Delivery"
EVENT_HEADER = "Funnel-Event"
ATTEMPT_HEADER = "Funnel-Attempt"
USER_AGENT = "funnel-engine-webhooks/1"


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


class WebhookSubscription(BaseModel):
    """A receiver of stage transitions and goals, e.g. a CRM: `[webhooks.crm]` in config/funnel.toml."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        pattern=r"^https?://\S+$",
        description="Where to POST: a public address, or a host in allow_private_hosts; redirects are not followed.",
    )
    secret: SigningSecret = Field(
        description="Signs every request (Funnel-Signature, as inbound hooks are signed); make it with `funnel secret`."
    )
    previous_secret: SigningSecret | None = Field(
        default=None, description="While the receiver switches to a new secret: signs too, as a second v1."
    )
    events: list[EventKind] = Field(
        default_factory=lambda: list(EVENT_KINDS),
        description='What to send: "transition", "goal", "alarm" (domain alarms).',
    )
    funnels: list[str] = Field(default_factory=list, description="Only these funnels; empty: every funnel.")
    include_email: bool = Field(default=True, description="Send the lead's email address (a CRM's match key).")
    attributes: list[str] = Field(default_factory=list, description="Lead attributes to send along, by name.")
    start: Literal["now", "beginning"] = Field(
        default="now", description='"now": what happens from the first run on; "beginning": all history too.'
    )

    def wants(self, kind: str, funnel_id: str) -> bool:
        return kind in self.events and (not self.funnels or funnel_id in self.funnels)


class WebhookSettings(BaseModel):
    """Outbound webhooks: `[webhooks]` holds how they are sent, and every sub-table `[webhooks.<name>]` is
    a subscription (`[webhooks.subscriptions.<name>]` means the same)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=10.0, gt=0, le=300, description="Whole request, connect to last byte.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight per subscription and worker.")
    retry_first_s: float = Field(default=10.0, gt=0, description="Wait after the first failure; doubles each time.")
    retry_max_s: float = Field(default=3600.0, gt=0, description="The longest wait between two attempts.")
    max_attempts: int = Field(default=40, ge=1, description="Attempts before a delivery is given up.")
    give_up_after_h: float = Field(default=24.0, gt=0, description="Hours after which a delivery is given up.")
    poll_s: float = Field(default=2.0, gt=0, le=60, description="How often new transitions and goals are looked for.")
    step_secret: SigningSecret | None = Field(
        default=None, description="Signs the calls of funnel `webhook` steps; unset: they go unsigned."
    )
    step_previous_secret: SigningSecret | None = Field(
        default=None, description="While receivers switch to a new step secret: signs too, as a second v1."
    )
    step_include_email: bool = Field(default=True, description="Send the lead's email with `webhook` step calls.")
    allow_private_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts, as URLs write them (a name or an address), that webhooks may call although they are "
        "or resolve to a loopback, private, link-local or other non-public address, e.g. a CRM on the internal "
        "network. Every other host must resolve to public addresses only; the engine's own listeners are refused "
        "whatever this says.",
    )
    subscriptions: dict[SubscriptionName, WebhookSubscription] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _tables_are_subscriptions(cls, data: Any) -> Any:
        # `[webhooks.crm]` reads better than `[webhooks.subscriptions.crm]`: a key that is not a setting
        # and holds a table is a subscription. Any other unknown key is still an error (extra="forbid").
        if not isinstance(data, Mapping):
            return data
        found = dict(data)
        subscriptions = dict(found.pop("subscriptions", None) or {})
        for key in list(found):
            if key not in cls.model_fields and isinstance(found[key], Mapping):
                subscriptions[key] = found.pop(key)
        return {**found, "subscriptions": subscriptions}

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(
            first=timedelta(seconds=self.retry_first_s),
            cap=timedelta(seconds=max(self.retry_max_s, self.retry_first_s)),
            max_attempts=self.max_attempts,
            give_up_after=timedelta(hours=self.give_up_after_h),
        )

    @property
    def lease(self) -> timedelta:
        """How long a claimed delivery is left to its worker: the request's timeout with room for the
        database writes around it. A worker that died holding it is taken over after this long."""
        return timedelta(seconds=2 * self.timeout_s + 30)


# --------------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first: timedelta = timedelta(seconds=10)
    cap: timedelta = timedelta(hours=1)
    max_attempts: int = 40
    give_up_after: timedelta = timedelta(hours=24)


def retry_delay(attempts: int, jitter: float, policy: RetryPolicy, retry_after: timedelta | None = None) -> timedelta:
    """The wait after the `attempts`-th failed attempt: `first`, doubling each time, each wait spread
    ±25 % by `jitter` in [0, 1) so receivers that failed together are not retried together, never over
    `cap`. A receiver's Retry-After is honoured when longer, up to `cap` too."""
    if not 0 <= jitter < 1:
        raise ValueError(f"expected a jitter in [0, 1), found {jitter}")
    base = policy.first * (1 << min(max(attempts - 1, 0), 32))
    delay = min(base * (0.75 + 0.5 * jitter), policy.cap)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.cap))
    return delay


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """RFC 9110 Retry-After: delay seconds or an HTTP date. Anything unreadable counts as absent."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return timedelta(seconds=int(value[:9]))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))


@dataclass(frozen=True, slots=True)
class Answered:
    """The receiver answered with `status`. Its body is not read: a URL may serve anything, and what it
    serves is not the engine's to keep."""

    status: int
    retry_after: timedelta | None = None


def status_line(status: int) -> str:
    """How an answer is recorded: the code and its standard phrase (not the receiver's own words)."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


@dataclass(frozen=True, slots=True)
class Unanswered:
    """No HTTP answer: a timeout, a refused or dropped connection, a name that does not resolve; or
    (`permanent`) a request that cannot be made at all, such as a malformed URL."""

    reason: str
    permanent: bool = False


Outcome = Answered | Unanswered


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int


@dataclass(frozen=True, slots=True)
class RetryAt:
    at: datetime
    error: str
    status: int | None


@dataclass(frozen=True, slots=True)
class Failed:
    """Finished without success: refused for good (`permanent`), or given up after the retries."""

    error: str
    status: int | None
    permanent: bool


Next = Delivered | RetryAt | Failed


def is_temporary(status: int) -> bool:
    """408 and 429 say "later", 5xx "not now": worth another try. Any other non-2xx will not change by
    itself (a 3xx too: redirects are not followed, the URL needs fixing)."""
    return status in (408, 429) or 500 <= status <= 599


def next_step(
    outcome: Outcome, *, attempts: int, created_at: datetime, now: datetime, jitter: float, policy: RetryPolicy
) -> Next:
    """What becomes of a delivery after its `attempts`-th attempt ended with `outcome` at `now`."""
    if isinstance(outcome, Answered):
        if 200 <= outcome.status <= 299:
            return Delivered(outcome.status)
        error = status_line(outcome.status)
        if not is_temporary(outcome.status):
            return Failed(error, outcome.status, permanent=True)
        status: int | None = outcome.status
        retry_after = outcome.retry_after
    else:
        if outcome.permanent:
            return Failed(outcome.reason, None, permanent=True)
        error, status, retry_after = outcome.reason, None, None
    at = now + retry_delay(attempts, jitter, policy, retry_after)
    if attempts >= policy.max_attempts or at > created_at + policy.give_up_after:
        span = in_words(now - created_at, units=2)
        return Failed(f"gave up after {attempts} attempts in {span}; last: {error}", status, permanent=False)
    return RetryAt(at, error, status)


# --------------------------------------------------------------------------------------------------
# What a request carries
# --------------------------------------------------------------------------------------------------


def event_id(source: str, source_id: int) -> str:
    """The id receivers deduplicate by: the same for every attempt (delivery is at least once)."""
    return f"{source}-{source_id}"


def secrets_of(secret: SecretStr | None, previous: SecretStr | None) -> list[str]:
    return [value.get_secret_value() for value in (secret, previous) if value is not None]


def _time(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def lead_part(
    lead_id: int, email: str, attributes: Mapping[str, Any], *, include_email: bool, names: Iterable[str]
) -> dict[str, Any]:
    """The lead as a receiver sees it: our id always; the address and the named attributes only when the
    subscription asks for them (personal data goes nowhere it was not sent on purpose)."""
    part: dict[str, Any] = {"id": lead_id}
    if include_email:
        part["email"] = email
    picked = {name: attributes[name] for name in names if name in attributes}
    if picked:
        part["attributes"] = picked
    return part


def transition_event(
    source_id: int,
    *,
    lead: Mapping[str, Any],
    funnel_id: str,
    version: str,
    from_stage: str | None,
    to_stage: str | None,
    cause_kind: str,
    cause_ref: str | None,
    exit_reason: str | None,
    at: datetime,
) -> dict[str, Any]:
    """A stage transition: `from` null is entering the funnel, `to` null leaving it (`exit_reason` says
    why); `cause` is why it happened (invariant 9)."""
    return {
        "id": event_id("transition", source_id),
        "type": "transition",
        "occurred_at": _time(at),
        "funnel": {"id": funnel_id, "version": version},
        "lead": dict(lead),
        "transition": {
            "from": from_stage,
            "to": to_stage,
            "cause": {"kind": cause_kind, "ref": cause_ref},
            "exit_reason": exit_reason,
        },
    }


def goal_event(
    source_id: int, *, lead: Mapping[str, Any], funnel_id: str, goal: str, within_window: bool, at: datetime
) -> dict[str, Any]:
    return {
        "id": event_id("goal", source_id),
        "type": "goal",
        "occurred_at": _time(at),
        "funnel": {"id": funnel_id},
        "lead": dict(lead),
        "goal": {"id": goal, "within_window": within_window},
    }


def alarm_event(
    source: str,
    alarm_id: int,
    *,
    domain: str,
    reports: int,
    raised_at: datetime,
    ends_at: datetime,
    ended_at: datetime | None,
    cleared_by: str | None,
) -> dict[str, Any]:
    """A receiving domain refuses the sender (`source` "alarm": raised) or no longer does ("alarm_over":
    ended by itself, or cleared by an operator). About no lead: a domain and counts only."""
    over = source == "alarm_over"
    return {
        "id": event_id(source, alarm_id),
        "type": "alarm",
        "occurred_at": _time(ended_at if over and ended_at is not None else raised_at),
        "alarm": {
            "id": alarm_id,
            "state": "over" if over else "raised",
            "kind": "sender_fault",
            "domain": domain,
            "reports": reports,
            "raised_at": _time(raised_at),
            "ends_at": None if over else _time(ends_at),
            "cleared_by": cleared_by if over else None,
        },
    }


def step_event(
    source_id: int, *, lead: Mapping[str, Any], funnel_id: str, step: str, payload: Mapping[str, Any], at: datetime
) -> dict[str, Any]:
    """A funnel `webhook` step's call: the step's own `payload`, with where it came from."""
    return {
        "id": event_id("call", source_id),
        "type": "step",
        "occurred_at": _time(at),
        "funnel": {"id": funnel_id},
        "lead": dict(lead),
        "step": step,
        "payload": dict(payload),
    }


def encode(event: Mapping[str, Any]) -> bytes:
    """The body: compact JSON with sorted keys, the same bytes on every attempt."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def request_headers(
    event: Mapping[str, Any], body: bytes, *, attempt: int, secrets: Sequence[str], now: datetime
) -> dict[str, str]:
    """Headers of one attempt. The signature is made afresh each time (its timestamp is the attempt's),
    so a receiver's tolerance window applies to the attempt, not to when the event happened. With two
    secrets (one being replaced), the header carries a `v1` for each, and a receiver that knows either
    accepts it. No secret: no signature."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        DELIVERY_HEADER: str(event["id"]),
        EVENT_HEADER: str(event["type"]),
        ATTEMPT_HEADER: str(attempt),
    }
    if secrets:
        t = int(now.timestamp())
        values = [signatures.sign(secret, t, body).partition(",")[2] for secret in secrets]
        headers[signatures.HEADER] = ",".join([f"t={t}", *values])
    return headers


# --------------------------------------------------------------------------------------------------
# Fan-out cursors
# --------------------------------------------------------------------------------------------------

# How long an id that was skipped over (not visible when the cursor passed it) is looked for. A write
# transaction in this engine holds its ids for seconds; one still open after this long is not waited for.
GAP_GRACE = timedelta(minutes=10)
MAX_GAPS = 200
# How far back to look when the row at the cursor changed under it (its id reused).
REWIND = 1000


@dataclass(frozen=True, slots=True)
class Gap:
    """Ids `first`..`last` (inclusive) not visible when passed, since `since` (Unix seconds)."""

    first: int
    last: int
    since: float


@dataclass(frozen=True, slots=True)
class Cursor:
    start_id: int
    last_id: int
    last_key: str | None = None
    gaps: tuple[Gap, ...] = ()


def row_key(values: Iterable[Any]) -> str:
    """What tells a row from another that got its id later (SQLite reuses the largest rowid once the
    rows above it are deleted, and a lead's id too): a digest of everything the row says, its time to
    the microsecond, and for a transition caused by an event, the event's id, which is unique."""
    text = json.dumps([_time(v) if isinstance(v, datetime) else v for v in values], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def needs_pass(cursor: Cursor, head: int | None, key_at_last: str | None) -> bool:
    """Whether a fan-out pass has anything to do: new rows, ids still looked for, or a changed row."""
    return bool((head or 0) > cursor.last_id or cursor.gaps or changed(cursor, key_at_last))


def changed(cursor: Cursor, key_at_last: str | None) -> bool:
    return cursor.last_id > cursor.start_id and key_at_last != cursor.last_key


def look_back(cursor: Cursor, key_at_last: str | None) -> Cursor:
    """The cursor to read from. If the row at `last_id` is gone or is another row, the newest rows were
    deleted and their ids may have been given to new rows: read the last `REWIND` ids again (rows
    already fanned out are not fanned out twice: the deliveries' unique key refuses them), never
    behind where the subscription started."""
    if not changed(cursor, key_at_last):
        return cursor
    last = max(cursor.start_id, cursor.last_id - REWIND)
    return replace(cursor, last_id=last, last_key=None, gaps=tuple(g for g in cursor.gaps if g.last <= last))


def advance(cursor: Cursor, seen: Sequence[int], last_key: str | None, now: datetime) -> Cursor:
    """The cursor after a pass that read the ids `seen` (ascending, one query ordered by id): the
    ids of `cursor.gaps` that showed up, then new ids above `last_id`. An id missing between two new
    ones was not visible, so it becomes a gap, looked for again for `GAP_GRACE`. `last_key` is the key
    of the row with the largest id seen."""
    found = sorted(i for i in seen if i <= cursor.last_id)
    fresh = [i for i in seen if i > cursor.last_id]
    since = now.timestamp()
    gaps: list[Gap] = []
    for gap in cursor.gaps:
        if since - gap.since <= GAP_GRACE.total_seconds():
            gaps.extend(_without(gap, found))
    last_id, key = cursor.last_id, cursor.last_key
    if fresh:
        previous = cursor.last_id
        for i in fresh:
            if i > previous + 1:
                gaps.append(Gap(previous + 1, i - 1, since))
            previous = i
        last_id, key = fresh[-1], last_key
    # The oldest gaps go first: an id missed for that long belongs to a transaction that rolled back.
    return replace(cursor, last_id=last_id, last_key=key, gaps=tuple(gaps[-MAX_GAPS:]))


def _without(gap: Gap, found: Sequence[int]) -> list[Gap]:
    parts: list[Gap] = []
    first = gap.first
    for i in found:
        if i < first or i > gap.last:
            continue
        if i > first:
            parts.append(Gap(first, i - 1, gap.since))
        first = i + 1
    if first <= gap.last:
        parts.append(Gap(first, gap.last, gap.since))
    return parts


def gaps_to_json(gaps: Iterable[Gap]) -> list[list[float]]:
    return [[g.first, g.last, g.since] for g in gaps]


def gaps_from_json(value: Any) -> tuple[Gap, ...]:
    return tuple(Gap(int(first), int(last), float(since)) for first, last, since in value or ())
