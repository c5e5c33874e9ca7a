"""Outbound webhooks: stage transitions and goals to the subscriptions of `[webhooks.<name>]`, and the
calls of funnel `webhook` steps, signed, retried, in order per lead, beside the engine and never in its way.

Three movements, each its own short transaction; none is held open across an HTTP request:
- **fan-out** copies new `stage_transitions` and `goals` rows (by id, after each subscription's cursor)
  into `webhook_deliveries`, in the transaction that moves the cursor, and hands queued `webhook_calls`
  over the same way. The engine's write path is untouched: it only appends rows, as before.
- **claim** leases due deliveries that are first in their lane (subscription, lead): a delivery waits
  while an earlier one of its lane is unfinished; other lanes go on. `FOR UPDATE SKIP LOCKED` on
  PostgreSQL, the writer lock on SQLite.
- **record** writes an attempt's outcome, only if the lease is still the one taken (a worker that
  overran its lease does not overwrite the attempt that took over).

A worker that dies holding a lease loses nothing: the lease ends and another worker sends again. So a
receiver may get a delivery twice (at least once) and deduplicates by the `Funnel-Delivery` header.
The decisions (payloads, retries, cursors) are `engine.webhook_policy`'s; docs/webhooks.md tells a
receiver what to expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from engine import tables
from engine import webhook_policy as policy
from engine.database import connect_read_only
from engine.webhook_policy import STEP_CALLS, Cursor, WebhookSettings

log = logging.getLogger("engine.webhooks_out")

_SOURCES: dict[str, sa.Table] = {"transition": tables.stage_transitions, "goal": tables.goals}
# At one instant, a transition is sent before a goal (their ids are in different tables).
_RANK = {"transition": 0, "goal": 1, "call": 2}
_DETAIL_BYTES = 300


@dataclass
class WebhookResult:
    """What a pass did: rows fanned out into deliveries, and attempts by how they ended. `errors` are
    the deliveries that ended unsent, for the operator (the runner logs them)."""

    fanned_out: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def work(self) -> int:
        return self.fanned_out + self.sent + self.retried + self.failed

    def add(self, other: WebhookResult) -> None:
        self.fanned_out += other.fanned_out
        self.sent += other.sent
        self.retried += other.retried
        self.failed += other.failed
        self.errors.extend(other.errors)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery leased for one attempt (`attempts` counts this one)."""

    id: int
    subscription: str
    source: str
    source_id: int
    url: str | None
    payload: Mapping[str, Any]
    attempts: int
    created_at: datetime
    lease_until: datetime


# --------------------------------------------------------------------------------------------------
# Fan-out
# --------------------------------------------------------------------------------------------------


def _insert(conn: sa.Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)


def _queued(column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    # The constant inline, not bound: SQLite only uses a partial index its WHERE visibly implies.
    return column == sa.literal_column("'queued'")


def _source_select(kind: str) -> sa.Select[Any]:
    """A source table's rows with their lead's address and attributes, the attributes last."""
    source, leads = _SOURCES[kind], tables.leads
    s = source.c
    columns: list[Any] = [s.id, s.lead_id, s.funnel_id, s.at]
    if kind == "transition":
        columns += [s.version, s.from_stage, s.to_stage, s.cause_kind, s.cause_ref, s.exit_reason]
    else:
        columns += [s.goal, s.within_window]
    return sa.select(*columns, leads.c.email, leads.c.attributes).join(leads, leads.c.id == s.lead_id)


def _key(row: Any) -> str:
    # The row's own columns but its id (what the key is checked against); not the lead's address and
    # attributes, so no trace of an erased lead's data is left in the cursor.
    return policy.row_key(tuple(row)[1:-2])


def _row_key(conn: sa.Connection, kind: str, row_id: int) -> str | None:
    row = conn.execute(_source_select(kind).where(_SOURCES[kind].c.id == row_id)).first()
    return _key(row) if row is not None else None


def _load_cursor(row: Any) -> Cursor:
    return Cursor(row.start_id, row.last_id, row.last_key, policy.gaps_from_json(row.gaps))


def _cursor_for_update(conn: sa.Connection, subscription: str, kind: str, start: str, now: datetime) -> Cursor | None:
    """The subscription's cursor on `kind`, locked for this transaction; made on first use, at the
    newest row (`start = "now"`) or before the first. None: another worker is fanning it out now."""
    c = tables.webhook_cursors
    where = sa.and_(c.c.subscription == subscription, c.c.source == kind)
    select = sa.select(c).where(where)
    if conn.dialect.name == "postgresql":
        select = select.with_for_update(skip_locked=True)
    row = conn.execute(select).first()
    if row is None:
        source = _SOURCES[kind]
        head = conn.execute(sa.select(sa.func.max(source.c.id))).scalar() if start == "now" else None
        first = int(head or 0)
        conn.execute(
            _insert(conn, c)
            .values(
                subscription=subscription,
                source=kind,
                start_id=first,
                last_id=first,
                last_key=_row_key(conn, kind, first) if first else None,
                gaps=[],
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["subscription", "source"])
        )
        row = conn.execute(select).first()
    return _load_cursor(row) if row is not None else None


def _save_cursor(conn: sa.Connection, subscription: str, kind: str, cursor: Cursor, now: datetime) -> None:
    c = tables.webhook_cursors
    conn.execute(
        sa.update(c)
        .where(c.c.subscription == subscription, c.c.source == kind)
        .values(
            last_id=cursor.last_id,
            last_key=cursor.last_key,
            gaps=policy.gaps_to_json(cursor.gaps),
            updated_at=now,
        )
    )


def _source_rows(conn: sa.Connection, kind: str, cursor: Cursor, limit: int) -> list[Any]:
    """Rows after the cursor and rows in its gaps, in id order, with their lead's address and attributes.
    One statement: on PostgreSQL it sees one snapshot, so an id missing between two it returns was not
    committed yet (or never will be)."""
    source = _SOURCES[kind]
    wanted = [source.c.id > cursor.last_id, *(source.c.id.between(g.first, g.last) for g in cursor.gaps)]
    return list(conn.execute(_source_select(kind).where(sa.or_(*wanted)).order_by(source.c.id).limit(limit)))


def _event(kind: str, row: Any, lead: Mapping[str, Any]) -> dict[str, Any]:
    if kind == "transition":
        return policy.transition_event(
            row.id,
            lead=lead,
            funnel_id=row.funnel_id,
            version=row.version,
            from_stage=row.from_stage,
            to_stage=row.to_stage,
            cause_kind=row.cause_kind,
            cause_ref=row.cause_ref,
            exit_reason=row.exit_reason,
            at=row.at,
        )
    return policy.goal_event(
        row.id, lead=lead, funnel_id=row.funnel_id, goal=row.goal, within_window=row.within_window, at=row.at
    )


@dataclass
class _Pass:
    read: int = 0
    full: bool = False  # a batch came back full: more rows are waiting
    deliveries: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def add(self, order: tuple[Any, ...], values: dict[str, Any]) -> None:
        self.deliveries.append((order, values))


def fan_out(conn: sa.Connection, settings: WebhookSettings, now: datetime, batch: int = 500) -> tuple[int, bool]:
    """One fan-out pass in the caller's transaction: every subscription's new transitions and goals,
    and queued step calls, become deliveries; the cursors move in the same transaction. Returns how
    many deliveries were queued, and whether more rows are waiting (a batch was full)."""
    done = _Pass()
    for name, subscription in sorted(settings.subscriptions.items()):
        for kind in sorted(set(subscription.events)):
            cursor = _cursor_for_update(conn, name, kind, subscription.start, now)
            if cursor is None:
                continue
            reading = policy.look_back(cursor, _row_key(conn, kind, cursor.last_id))
            rows = _source_rows(conn, kind, reading, batch)
            done.read += len(rows)
            done.full |= len(rows) == batch
            for row in rows:
                if not subscription.wants(kind, row.funnel_id):
                    continue
                lead = policy.lead_part(
                    row.lead_id,
                    row.email,
                    row.attributes or {},
                    include_email=subscription.include_email,
                    names=subscription.attributes,
                )
                values = _delivery(name, kind, row.id, row.lead_id, None, _event(kind, row, lead), now)
                done.add((name, row.at, _RANK[kind], row.id), values)
            last_key = _key(rows[-1]) if rows else None
            moved = policy.advance(reading, [r.id for r in rows], last_key, now)
            if moved != cursor:
                _save_cursor(conn, name, kind, moved, now)
    _hand_over_step_calls(conn, settings, now, batch, done)
    return _write_deliveries(conn, done), done.full


def _delivery(
    subscription: str, source: str, source_id: int, lead_id: int, url: str | None, event: dict[str, Any], now: datetime
) -> dict[str, Any]:
    return {
        "subscription": subscription,
        "source": source,
        "source_id": source_id,
        "lead_id": lead_id,
        "url": url,
        "payload": event,
        "status": "queued",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


def _hand_over_step_calls(
    conn: sa.Connection, settings: WebhookSettings, now: datetime, batch: int, done: _Pass
) -> None:
    """Queued `webhook_calls` (written by funnel `webhook` steps) become deliveries of the step lane;
    the call is `sending` from then on, and mirrors its delivery's outcome (see `_mirror_call`)."""
    calls, leads = tables.webhook_calls, tables.leads
    select = (
        sa.select(
            calls.c.id,
            calls.c.lead_id,
            calls.c.funnel_id,
            calls.c.step,
            calls.c.url,
            calls.c.payload,
            calls.c.next_attempt_at,
            leads.c.email,
        )
        .join(leads, leads.c.id == calls.c.lead_id)
        .where(_queued(calls.c.status), calls.c.next_attempt_at <= now)
        .order_by(calls.c.id)
        .limit(batch)
    )
    if conn.dialect.name == "postgresql":
        select = select.with_for_update(of=calls, skip_locked=True)
    rows = list(conn.execute(select))
    if not rows:
        return
    done.read += len(rows)
    done.full |= len(rows) == batch
    for row in rows:
        lead = policy.lead_part(row.lead_id, row.email, {}, include_email=settings.step_include_email, names=())
        event = policy.step_event(
            row.id, lead=lead, funnel_id=row.funnel_id, step=row.step, payload=row.payload or {}, at=row.next_attempt_at
        )
        done.add(
            (STEP_CALLS, row.next_attempt_at, _RANK["call"], row.id),
            _delivery(STEP_CALLS, "call", row.id, row.lead_id, row.url, event, now),
        )
    conn.execute(sa.update(calls).where(calls.c.id.in_([r.id for r in rows])).values(status="sending"))


def _write_deliveries(conn: sa.Connection, done: _Pass) -> int:
    """Insert in time order, so that within a lane ids follow what happened; a row fanned out before
    (a cursor that looked back) is skipped by the unique key."""
    if not done.deliveries:
        return 0
    d = tables.webhook_deliveries
    ordered = [values for _, values in sorted(done.deliveries, key=lambda item: item[0])]
    stmt = (
        _insert(conn, d)
        .on_conflict_do_nothing(index_elements=["subscription", "source", "source_id"])
        .returning(d.c.id)
    )
    written = 0
    for values in ordered:  # one by one: the ids must follow this order, which a multi-row insert does not promise
        written += conn.execute(stmt.values(**values)).first() is not None
    return written


def has_fan_out_work(conn: sa.Connection, settings: WebhookSettings, now: datetime) -> bool:
    """Whether a fan-out pass would do anything: read-only and cheap (a few index lookups), so an idle
    sender never takes SQLite's writer lock."""
    c = tables.webhook_cursors
    cursors = {(r.subscription, r.source): _load_cursor(r) for r in conn.execute(sa.select(c))}
    heads: dict[str, int | None] = {}
    for name, subscription in settings.subscriptions.items():
        for kind in set(subscription.events):
            cursor = cursors.get((name, kind))
            if cursor is None:
                return True
            if kind not in heads:
                heads[kind] = conn.execute(sa.select(sa.func.max(_SOURCES[kind].c.id))).scalar()
            if policy.needs_pass(cursor, heads[kind], _row_key(conn, kind, cursor.last_id)):
                return True
    calls = tables.webhook_calls
    waiting = conn.execute(
        sa.select(calls.c.id).where(_queued(calls.c.status), calls.c.next_attempt_at <= now).limit(1)
    ).first()
    return waiting is not None


# --------------------------------------------------------------------------------------------------
# Claims and outcomes
# --------------------------------------------------------------------------------------------------


def claim(conn: sa.Connection, subscription: str, now: datetime, limit: int, lease: timedelta) -> list[Claimed]:
    """Lease up to `limit` due deliveries of `subscription`, each the first unfinished one of its lead
    (an earlier one still `queued`, waiting for a retry or in flight elsewhere, holds the lane)."""
    d = tables.webhook_deliveries
    candidate, earlier = d.alias("candidate"), d.alias("earlier")
    blocked = sa.exists().where(
        earlier.c.subscription == candidate.c.subscription,
        earlier.c.lead_id == candidate.c.lead_id,
        _queued(earlier.c.status),
        earlier.c.id < candidate.c.id,
    )
    pick = (
        sa.select(candidate.c.id)
        .where(
            _queued(candidate.c.status),
            candidate.c.subscription == subscription,
            candidate.c.next_attempt_at <= now,
            sa.or_(candidate.c.lease_until.is_(None), candidate.c.lease_until < now),
            ~blocked,
        )
        .order_by(candidate.c.next_attempt_at, candidate.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(of=candidate, skip_locked=True)
    rows = conn.execute(
        sa.update(d)
        .where(d.c.id.in_(pick))
        .values(attempts=d.c.attempts + 1, lease_until=now + lease)
        .returning(
            d.c.id,
            d.c.subscription,
            d.c.source,
            d.c.source_id,
            d.c.url,
            d.c.payload,
            d.c.attempts,
            d.c.created_at,
            d.c.lease_until,
        )
    ).all()
    return sorted(
        (
            Claimed(
                r.id, r.subscription, r.source, r.source_id, r.url, r.payload, r.attempts, r.created_at, r.lease_until
            )
            for r in rows
        ),
        key=lambda c: c.id,
    )


def record(conn: sa.Connection, item: Claimed, outcome: policy.Next, now: datetime) -> bool:
    """Write how an attempt ended, if `item`'s lease is still the delivery's. False: the lease ran out and
    another worker took the delivery over; its attempt's outcome is the one that counts."""
    d = tables.webhook_deliveries
    values: dict[str, Any] = {"lease_until": None}
    if isinstance(outcome, policy.Delivered):
        values |= {"status": "sent", "last_status": outcome.status, "last_error": None, "finished_at": now}
    elif isinstance(outcome, policy.RetryAt):
        values |= {"next_attempt_at": outcome.at, "last_status": outcome.status, "last_error": outcome.error}
    else:
        values |= {"status": "failed", "last_status": outcome.status, "last_error": outcome.error, "finished_at": now}
    result = conn.execute(
        sa.update(d).where(d.c.id == item.id, _queued(d.c.status), d.c.lease_until == item.lease_until).values(**values)
    )
    if not result.rowcount:
        return False
    if item.source == "call":
        _mirror_call(conn, item, outcome)
    return True


def _mirror_call(conn: sa.Connection, item: Claimed, outcome: policy.Next) -> None:
    # `webhook_calls` stays the place to look for a step's call: `sending` while it is retried.
    calls = tables.webhook_calls
    values: dict[str, Any] = {"attempts": item.attempts}
    if isinstance(outcome, policy.Delivered):
        values |= {"status": "sent", "last_error": None, "next_attempt_at": None}
    elif isinstance(outcome, policy.RetryAt):
        values |= {"status": "sending", "last_error": outcome.error, "next_attempt_at": outcome.at}
    else:
        values |= {"status": "failed", "last_error": outcome.error, "next_attempt_at": None}
    conn.execute(sa.update(calls).where(calls.c.id == item.source_id).values(**values))


def failures(conn: sa.Connection, since: datetime | None = None) -> list[Any]:
    """Deliveries that ended unsent (refused for good or given up), newest first: for ops."""
    d = tables.webhook_deliveries
    query = sa.select(
        d.c.id,
        d.c.subscription,
        d.c.source,
        d.c.source_id,
        d.c.lead_id,
        d.c.attempts,
        d.c.last_status,
        d.c.last_error,
        d.c.finished_at,
    ).where(d.c.status == "failed")
    if since is not None:
        query = query.where(d.c.finished_at >= since)
    return list(conn.execute(query.order_by(d.c.finished_at.desc(), d.c.id.desc())))


# --------------------------------------------------------------------------------------------------
# The sender
# --------------------------------------------------------------------------------------------------


def _origin(url: str) -> str:
    # For logs: a receiver's URL may carry a token in its path or query.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def _detail(response: httpx.Response) -> str:
    """The start of a refusal's body, for `last_error`; the rest is not read."""
    if 200 <= response.status_code <= 299:
        return ""
    buffer = b""
    async for chunk in response.aiter_raw():
        buffer += chunk
        if len(buffer) >= _DETAIL_BYTES:
            break
    text = buffer[:_DETAIL_BYTES].decode("utf-8", errors="replace")
    return " ".join(text.split())[:200]


class WebhookSender:
    """Delivers webhooks beside the engine: `run(stop)` as its own asyncio task in `funnel run`, or
    `run_once()` to send what is due now and return.

    Database work runs in threads (`asyncio.to_thread`) in short transactions, HTTP on this loop with
    at most `concurrency` requests in flight per subscription: a slow or dead receiver holds its own
    slots and nothing else, neither the ticks, nor the mailer, nor other subscriptions."""

    def __init__(
        self,
        engine: sa.Engine,
        settings: WebhookSettings,
        clock: Callable[[], datetime] | None = None,
        *,
        batch_size: int = 500,
        jitter: Callable[[], float] = random.random,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(UTC))
        self.batch_size = batch_size
        self.jitter = jitter
        self.transport = transport
        self.totals = WebhookResult()  # counts since start, for metrics
        self._client: httpx.AsyncClient | None = None
        self._wake: asyncio.Event | None = None

    @property
    def lanes(self) -> list[str]:
        return [STEP_CALLS, *sorted(self.settings.subscriptions)]

    def start(self, now: datetime) -> None:
        """Fix where new subscriptions start (`start = "now"`: after the newest row at this moment). Call
        it before the engine's first tick, so what that tick records is sent; later calls change nothing."""
        self.fan_out_once(now)

    # -- the parts -------------------------------------------------------------------------------

    def fan_out_once(self, now: datetime) -> tuple[int, bool]:
        """A fan-out pass if there is anything to fan out (checked without the writer lock first)."""
        with connect_read_only(self.engine) as conn:
            if not has_fan_out_work(conn, self.settings, now):
                return 0, False
        with self.engine.begin() as conn:
            return fan_out(conn, self.settings, now, self.batch_size)

    def claim_lanes(self, free: Mapping[str, int], now: datetime) -> list[Claimed]:
        """Up to `free[lane]` deliveries of each lane, in one transaction."""
        claimed: list[Claimed] = []
        with self.engine.begin() as conn:
            for lane, limit in free.items():
                if limit > 0:
                    claimed += claim(conn, lane, now, limit, self.settings.lease)
        return claimed

    def _record(self, item: Claimed, outcome: policy.Next, now: datetime) -> bool:
        with self.engine.begin() as conn:
            return record(conn, item, outcome, now)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            lanes = len(self.settings.subscriptions) + 1
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.timeout_s),
                limits=httpx.Limits(max_connections=self.settings.concurrency * lanes, max_keepalive_connections=8),
                follow_redirects=False,
                transport=self.transport,
            )
        return self._client

    def _target(self, item: Claimed) -> tuple[str, list[str]]:
        if item.subscription == STEP_CALLS:
            settings = self.settings
            return item.url or "", policy.secrets_of(settings.step_secret, settings.step_previous_secret)
        subscription = self.settings.subscriptions[item.subscription]
        return subscription.url, policy.secrets_of(subscription.secret, subscription.previous_secret)

    async def send(self, item: Claimed) -> policy.Outcome:
        """One attempt: POST the signed body, and what came of it. The whole request, connection to
        last byte, has `timeout_s`; redirects are not followed."""
        url, secrets = self._target(item)
        body = policy.encode(item.payload)
        headers = policy.request_headers(item.payload, body, attempt=item.attempts, secrets=secrets, now=self.clock())
        timeout = self.settings.timeout_s
        try:
            async with asyncio.timeout(timeout):
                async with self._http().stream("POST", url, content=body, headers=headers) as response:
                    detail = await _detail(response)
                    retry_after = policy.parse_retry_after(response.headers.get("retry-after"), self.clock())
                    return policy.Answered(response.status_code, retry_after, detail)
        except (TimeoutError, httpx.TimeoutException):
            return policy.Unanswered(f"no answer within {timeout:g}s")
        except httpx.ConnectError as error:
            return policy.Unanswered(f"could not connect: {error}".rstrip(": "))
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:
            return policy.Unanswered(f"cannot call {url!r}: {error}", permanent=True)
        except httpx.HTTPError as error:
            return policy.Unanswered(f"{type(error).__name__}: {error}".rstrip(": "))

    async def deliver(self, item: Claimed) -> policy.Next:
        """Send one claimed delivery and record the outcome."""
        outcome = await self.send(item)
        now = self.clock()
        decided = policy.next_step(
            outcome,
            attempts=item.attempts,
            created_at=item.created_at,
            now=now,
            jitter=self.jitter(),
            policy=self.settings.retry,
        )
        if not await asyncio.to_thread(self._record, item, decided, now):
            log.warning("webhook delivery %d: lease ran out before its outcome was written", item.id)
        return decided

    def _count(self, item: Claimed, outcome: policy.Next, result: WebhookResult) -> None:
        if isinstance(outcome, policy.Delivered):
            result.sent += 1
            return
        if isinstance(outcome, policy.RetryAt):
            result.retried += 1
            return
        result.failed += 1
        url, _ = self._target(item)
        lane = item.subscription or "funnel step"
        message = (
            f"webhook {policy.event_id(item.source, item.source_id)} to {lane} ({_origin(url)}) not delivered: "
            f"{outcome.error}"
        )
        result.errors.append(message)

    # -- driving it ------------------------------------------------------------------------------

    async def run_once(self, max_rounds: int = 1000) -> WebhookResult:
        """Fan out, then send what is due now, round after round (the next delivery of a lane becomes due
        when the one before it is done) until nothing due is left. Retries set for later are not waited for."""
        result = WebhookResult()
        for _ in range(max_rounds):
            now = self.clock()
            queued, more = await asyncio.to_thread(self.fan_out_once, now)
            result.fanned_out += queued
            claimed = await asyncio.to_thread(
                self.claim_lanes, dict.fromkeys(self.lanes, self.settings.concurrency), now
            )
            if not claimed and not more:
                break
            outcomes = await asyncio.gather(*(self.deliver(item) for item in claimed), return_exceptions=True)
            for item, outcome in zip(claimed, outcomes, strict=True):
                if isinstance(outcome, sa.exc.SQLAlchemyError):
                    # Sent, but the outcome could not be written: the lease runs out and it is sent again.
                    result.errors.append(f"webhook delivery {item.id}: outcome not recorded: {outcome}")
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    self._count(item, outcome, result)
        self.totals.add(replace(result, errors=[]))
        return result

    def wake(self) -> None:
        """Look for new transitions now rather than at the next poll (the engine just wrote some).
        Call from the loop `run` runs on."""
        if self._wake is not None:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: fan out every `poll_s` (or when woken), and keep each lane's slots busy with
        due deliveries. On stop, requests in flight get `timeout_s` to finish; one cut short keeps its
        lease and is sent again after it (at least once)."""
        self._wake = asyncio.Event()
        in_flight: dict[asyncio.Task[policy.Next], Claimed] = {}
        stopping = asyncio.ensure_future(stop.wait())
        next_fan_out = 0.0
        try:
            while not stop.is_set():
                self._collect(in_flight)
                more = False
                if self._wake.is_set() or time.monotonic() >= next_fan_out:
                    self._wake.clear()
                    next_fan_out = time.monotonic() + self.settings.poll_s
                    more = await self._guarded(self._fan_out_step)
                await self._guarded(lambda: self._fill(in_flight))
                if more:
                    continue
                waking = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    {*in_flight, stopping, waking}, timeout=self.settings.poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                waking.cancel()
        finally:
            stopping.cancel()
            if in_flight:
                await asyncio.wait(set(in_flight), timeout=self.settings.timeout_s)
                for task in in_flight:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*in_flight, return_exceptions=True)
                self._collect(in_flight)

    async def _fan_out_step(self) -> bool:
        queued, more = await asyncio.to_thread(self.fan_out_once, self.clock())
        self.totals.fanned_out += queued
        return more

    async def _fill(self, in_flight: dict[asyncio.Task[policy.Next], Claimed]) -> None:
        busy: dict[str, int] = {}
        for item in in_flight.values():
            busy[item.subscription] = busy.get(item.subscription, 0) + 1
        free = {lane: self.settings.concurrency - busy.get(lane, 0) for lane in self.lanes}
        if any(n > 0 for n in free.values()):
            for item in await asyncio.to_thread(self.claim_lanes, free, self.clock()):
                in_flight[asyncio.create_task(self.deliver(item))] = item

    def _collect(self, in_flight: dict[asyncio.Task[policy.Next], Claimed]) -> None:
        for task in [t for t in in_flight if t.done()]:
            item = in_flight.pop(task)
            if task.cancelled():
                continue
            error = task.exception()
            if error is not None:
                # The outcome could not be written (the database went away): the lease runs out and the
                # delivery is sent again.
                log.error("webhook delivery %d: %s", item.id, error, exc_info=error)
                continue
            result = WebhookResult()
            self._count(item, task.result(), result)
            for message in result.errors:
                log.error("%s", message)
            self.totals.add(replace(result, errors=[]))  # a running total: the messages went to the log

    async def _guarded(self, step: Callable[[], Awaitable[bool | None]]) -> bool:
        # A database hiccup must not end the sender: it is logged and the next round tries again.
        try:
            return bool(await step())
        except sa.exc.SQLAlchemyError:
            log.exception("webhook sender: database error")
            return False

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def pending(conn: sa.Connection, subscriptions: Iterable[str] | None = None) -> dict[str, int]:
    """Queued deliveries per subscription ("" for funnel step calls): the backlog, for ops."""
    d = tables.webhook_deliveries
    query = sa.select(d.c.subscription, sa.func.count()).where(_queued(d.c.status)).group_by(d.c.subscription)
    if subscriptions is not None:
        query = query.where(d.c.subscription.in_(list(subscriptions)))
    return {name: int(count) for name, count in conn.execute(query)}
