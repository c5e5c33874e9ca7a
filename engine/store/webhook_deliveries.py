"""The queries of outbound webhooks: fan-out of stage transitions, goals, step calls and domain alarms
into `webhook_deliveries`, claims, outcomes, and what ops look at. Each function works in the caller's
transaction (`engine.begin()`); `engine.runtime.webhooks_out` drives them around its HTTP requests.

- **fan-out** copies new `stage_transitions` and `goals` rows (by id, after each subscription's cursor)
  into `webhook_deliveries`, in the transaction that moves the cursor, and hands queued `webhook_calls`
  over the same way. The engine's write path is untouched: it only appends rows, as before.
- **claim** leases due deliveries that are first in their lane (subscription, lead): a delivery waits
  while an earlier one of its lane is unfinished; other lanes go on. `FOR UPDATE SKIP LOCKED` on
  PostgreSQL, the writer lock on SQLite.
- **record** writes an attempt's outcome, only if the lease is still the one taken (a worker that
  overran its lease does not overwrite the attempt that took over).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from engine.core import webhook_policy as policy
from engine.core.webhook_policy import STEP_CALLS, Cursor, WebhookSettings
from engine.store import tables

_SOURCES: dict[str, sa.Table] = {"transition": tables.stage_transitions, "goal": tables.goals}
# At one instant, a transition is sent before a goal (their ids are in different tables).
_RANK = {"transition": 0, "goal": 1, "call": 2, "alarm": 3, "alarm_over": 4}
ALARM = "alarm"
# Domain alarms are not read with a cursor (a few rows, updated while open): those open or ended within
# this long, and not yet queued for the subscription, are (a subscription added later hears of them too).
ALARM_LOOKBACK = timedelta(days=1)
# Built once: an alias made per claim (one a tick) is a new set of column objects each time, which
# SQLAlchemy keeps around as it caches the statement, so a long-running sender would slowly grow.
_CANDIDATE = tables.webhook_deliveries.alias("candidate")
_EARLIER = tables.webhook_deliveries.alias("earlier")


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
        if ALARM in subscription.events:
            _fan_out_alarms(conn, name, now, batch, done)
        for kind in sorted(set(subscription.events) - {ALARM}):
            cursor = _cursor_for_update(conn, name, kind, subscription.start, now)
            if cursor is None:
                continue
            reading = policy.look_back(cursor, _row_key(conn, kind, cursor.last_id))
            if reading != cursor:  # it looked back: the row it now stands on is its new reference
                reading = replace(reading, last_key=_row_key(conn, kind, reading.last_id))
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


def _alarms_unsent(name: str, source: str, now: datetime, batch: int) -> sa.Select[Any]:
    """Domain alarms raised (`alarm`) or over (`alarm_over`) lately, not yet queued for the subscription."""
    a, d = tables.domain_alarms, tables.webhook_deliveries
    queued = sa.exists().where(d.c.subscription == name, d.c.source == source, d.c.source_id == a.c.id)
    recent = sa.or_(a.c.open_key.is_not(None), a.c.ended_at >= now - ALARM_LOOKBACK)
    stmt = sa.select(a).where(recent, ~queued).order_by(a.c.id).limit(batch)
    return stmt.where(a.c.ended_at.is_not(None)) if source == "alarm_over" else stmt


def _fan_out_alarms(conn: sa.Connection, name: str, now: datetime, batch: int, done: _Pass) -> None:
    """Domain alarms become deliveries of no lead (each its own lane); the unique key makes a pass by two
    workers at once queue each once."""
    for source in ("alarm", "alarm_over"):
        rows = list(conn.execute(_alarms_unsent(name, source, now, batch)))
        done.read += len(rows)
        done.full |= len(rows) == batch
        for row in rows:
            event = policy.alarm_event(
                source, row.id, domain=row.domain, reports=row.reports, raised_at=row.raised_at,
                ends_at=row.ends_at, ended_at=row.ended_at, cleared_by=row.cleared_by,
            )  # fmt: skip
            at = row.ended_at if source == "alarm_over" else row.raised_at
            done.add((name, at, _RANK[source], row.id), _delivery(name, source, row.id, None, None, event, now))


def _delivery(
    subscription: str,
    source: str,
    source_id: int,
    lead_id: int | None,
    url: str | None,
    event: dict[str, Any],
    now: datetime,
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
        if ALARM in subscription.events:
            for source in ("alarm", "alarm_over"):
                if conn.execute(_alarms_unsent(name, source, now, 1)).first() is not None:
                    return True
        for kind in set(subscription.events) - {ALARM}:
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
    candidate, earlier = _CANDIDATE, _EARLIER
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


def pending(conn: sa.Connection, subscriptions: Iterable[str] | None = None) -> dict[str, int]:
    """Queued deliveries per subscription ("" for funnel step calls): the backlog, for ops."""
    d = tables.webhook_deliveries
    query = sa.select(d.c.subscription, sa.func.count()).where(_queued(d.c.status)).group_by(d.c.subscription)
    if subscriptions is not None:
        query = query.where(d.c.subscription.in_(list(subscriptions)))
    return {name: int(count) for name, count in conn.execute(query)}
