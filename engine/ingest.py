"""Events in bulk: the leads they name and the events themselves, recorded with a few statements per
batch (the HTTP API's batches of up to 1,000, CSV imports), and the worker's batched reads and writes
for handling them.

`engine.store` says the same things one row at a time; here each batch is one executemany (or one
`IN` lookup) per kind of row, at the driver level where SQLAlchemy's per-row work would cost more than
the database's (as `engine.outbox` does for the send pipeline). Values still go through each column's
own type (aware UTC datetimes, JSON), so rows written here read back exactly like rows from the store.

Concurrency: every insert is `ON CONFLICT DO NOTHING` followed by a lookup, so two transactions racing
on a new address or an event id neither fail nor write it twice. On PostgreSQL the loser's insert
waits for the winner's commit and then does nothing; rows are inserted in one global order (addresses
sorted, events by lead) so two batches, or a batch and the worker's per-lead lock, never wait on each
other in a cycle. On SQLite the transaction holds the single writer lock (`BEGIN IMMEDIATE`).
"""

from __future__ import annotations

import json
import json.encoder
import json.scanner
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from engine import addresses, journey, store, tables

# Rows per lookup or statement: well under SQLite's limit of bound parameters per statement.
CHUNK = 1000

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Driver-level helpers
# --------------------------------------------------------------------------------------------------


def _mark(conn: sa.Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _in(conn: sa.Connection, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
    """`column IN (...)` and its parameters: one array parameter on PostgreSQL (one statement text
    whatever the count, so the server can reuse its plan), a list of placeholders on SQLite."""
    if conn.dialect.name == "postgresql":
        return f"{column} = ANY(%s)", (list(values),)
    return f"{column} IN ({', '.join('?' * len(values))})", tuple(values)


def rows_where_in(conn: sa.Connection, select: str, column: str, values: Sequence[Any]) -> Iterator[sa.Row[Any]]:
    """The rows of `select WHERE column IN values`, asked a chunk of values at a time. `select` and
    `column` are our own constants, never input; values are bound."""
    for chunk in _chunks(values):
        where, params = _in(conn, column, chunk)
        yield from conn.exec_driver_sql(f"{select} WHERE {where}", params)


_BINDS: dict[tuple[str, str, str], Callable[[Any], Any]] = {}
_READS: dict[tuple[str, str, str], Callable[[Any], Any]] = {}


def reader(conn: sa.Connection, column: sa.Column[Any]) -> Callable[[Any], Any]:
    """The column type's own conversion of a driver's value read back (JSON text on SQLite; psycopg
    already hands back objects)."""
    key = (conn.dialect.name, column.table.name, column.name)
    found = _READS.get(key)
    if found is None:
        impl = column.type.dialect_impl(conn.dialect)
        if conn.dialect.name == "sqlite" and isinstance(impl, tables.UtcDateTime):
            found = _READS[key] = _utc_from_text
        elif conn.dialect.name == "sqlite" and isinstance(impl, sa.JSON):
            found = _READS[key] = _json_from_text
        else:
            processor = impl.result_processor(conn.dialect, None)
            found = _READS[key] = processor if processor is not None else _same
    return found


def _utc_to_text(value: datetime | None) -> str | None:
    """The text `UtcDateTime` stores on SQLite (naive UTC, microseconds always written, so every value
    has one width and they sort and compare in SQL), without SQLAlchemy's layers of processors."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        offset = value.utcoffset()
        if offset is None:
            raise ValueError(f"expected an aware datetime, got naive {value.isoformat()}")
        if offset:
            value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def _utc_from_text(value: str | None) -> datetime | None:
    """What `UtcDateTime` reads from SQLite's text, without SQLAlchemy's layers of processors."""
    if value is None:
        return None
    try:
        # Naive UTC text, as UtcDateTime writes it. Parsed with its offset spelled out: five times
        # faster than parsing it naive and then replacing the tzinfo.
        return datetime.fromisoformat(value + "+00:00")
    except ValueError:  # written some other way (with an offset, or a date alone)
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# The decoder's own scanner (C in CPython), called directly: `json.loads` wraps it in checks and two
# whitespace matches that cost several times what decoding a short list or object does.
_scan: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _json_from_text(value: str | None) -> Any:
    """What `json.loads` makes of the JSON text SQLite keeps (written without surrounding space)."""
    if value is None:
        return None
    try:
        found, end = _scan(value, 0)
    except (StopIteration, ValueError):
        return json.loads(value)  # not JSON as written here: json.loads says what is wrong with it
    return found if end == len(value) else json.loads(value)


def binder(conn: sa.Connection, column: sa.Column[Any]) -> Callable[[Any], Any]:
    """The column type's own conversion to the driver's value for this dialect: naive UTC text on
    SQLite and aware datetimes on PostgreSQL, JSON text or psycopg's Jsonb."""
    key = (conn.dialect.name, column.table.name, column.name)
    found = _BINDS.get(key)
    if found is None:
        impl = column.type.dialect_impl(conn.dialect)
        if isinstance(impl, sa.JSON) and conn.dialect.name == "sqlite" and _json_text is not None:
            found = _BINDS[key] = _json_text
        elif isinstance(impl, tables.UtcDateTime) and conn.dialect.name == "sqlite":
            found = _BINDS[key] = _utc_to_text
        else:
            processor = impl.bind_processor(conn.dialect)
            found = _BINDS[key] = processor if processor is not None else _same
    return found


def _same(value: Any) -> Any:
    return value


def _json_encoder() -> Callable[[Any], str] | None:
    """The text `json.dumps(value)` makes, from the C encoder built once: `json.dumps` builds a new one
    for every value, which costs four times the encoding of a lead's attributes. None where the C
    encoder is missing."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        return None
    encode = make(None, None, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)

    def text(value: Any) -> str:
        return "".join(encode(value, 0))

    return text


_json_text = _json_encoder()


def _converted(
    table: sa.Table, columns: Sequence[str], rows: Sequence[Sequence[Any]], conn: sa.Connection
) -> list[tuple[Any, ...]]:
    """Rows with each value converted by its column's type, column by column. A timestamp column's
    repeated values (a batch's `now`, an event's time) are converted once."""
    values: list[Sequence[Any]] = list(zip(*rows, strict=True))
    for i, name in enumerate(columns):
        column = table.c[name]
        f = binder(conn, column)
        if f is _same:
            continue
        if isinstance(column.type, tables.UtcDateTime):
            memo: dict[datetime | None, Any] = {}
            values[i] = [memo[v] if v in memo else memo.setdefault(v, f(v)) for v in values[i]]
        else:
            values[i] = [f(v) for v in values[i]]
    return list(zip(*values, strict=True))


def insert_many(
    conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Sequence[Any]], tail: str = ""
) -> int:
    """`INSERT INTO table (columns) VALUES (...) tail` as one driver-level executemany, each value
    converted by its column's type. Returns the rows written: both drivers add up an executemany's
    counts, and a row that an `ON CONFLICT` clause left alone counts 0. `tail` and the names are our
    own constants, never input."""
    if not rows:
        return 0
    assert set(columns) <= set(table.c.keys())
    mark = _mark(conn)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))}) {tail}"  # noqa: S608
    written = int(conn.exec_driver_sql(sql, _converted(table, columns, rows, conn)).rowcount)
    if written < 0:  # pragma: no cover - a driver that does not count
        raise RuntimeError(f"the database driver did not say how many rows it wrote into {table.name}")
    return written


# PostgreSQL's "deadlock detected" and "could not serialize": the transaction was chosen to give way
# and did nothing; running it again is safe.
_GIVE_WAY = frozenset({"40P01", "40001"})


def in_transaction(engine: sa.Engine, work: Callable[[sa.Connection], T], attempts: int = 3) -> T:
    """`work` in one transaction, committed before this returns. On PostgreSQL two batches naming the
    same event ids in opposite orders can deadlock; the server rolls one back, and it runs again
    (by then the other's rows are committed, so its inserts find them)."""
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                return work(conn)
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) not in _GIVE_WAY or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------------------
# Leads by address
# --------------------------------------------------------------------------------------------------


def find_leads(conn: sa.Connection, emails: Sequence[str]) -> dict[str, int]:
    """Ids of the leads that exist among these (normalised) addresses."""
    return {
        email: int(lead_id) for email, lead_id in rows_where_in(conn, "SELECT email, id FROM leads", "email", emails)
    }


def lead_ids(conn: sa.Connection, emails: Iterable[str], now: datetime) -> dict[str, int]:
    """The id of the lead for each address, keyed by the normalised address (`addresses.normalise`, which
    raises `AddressError` for one it refuses). Missing leads are created as `store.upsert_lead` creates
    them without consent (subscribed, no attributes); existing leads are not touched."""
    wanted = sorted({addresses.normalise(e) for e in emails})
    found = find_leads(conn, wanted)
    missing = [e for e in wanted if e not in found]
    if missing:
        insert_many(
            conn, tables.leads, ("email", "attributes", "tags", "score", "consent_status", "created_at", "updated_at"),
            [(email, {}, [], 0, "subscribed", now, now) for email in missing], "ON CONFLICT (email) DO NOTHING",
        )  # fmt: skip
        # Inserted here, or by a concurrent transaction that committed first: either way it is there now.
        found.update(find_leads(conn, missing))
    return found


def set_timezones(conn: sa.Connection, zones: Mapping[int, str], batch: Iterable[int], now: datetime) -> None:
    """Set leads' time zones (events that carry one). On PostgreSQL every lead of the batch is locked
    first, in id order like every per-lead lock: the batch's events then wait for no lead another
    transaction holds while this one holds some, so two batches never wait on each other in a cycle."""
    lock_leads(conn, batch)
    at = binder(conn, tables.leads.c.updated_at)(now)
    mark = _mark(conn)
    conn.exec_driver_sql(
        f"UPDATE leads SET timezone = {mark}, updated_at = {mark} WHERE id = {mark}",  # noqa: S608
        [(zone, at, lead_id) for lead_id, zone in sorted(zones.items())],
    )


# --------------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------------

_EVENT_COLUMNS = ("event_id", "lead_id", "name", "properties", "occurred_at", "received_at", "source")


def record(conn: sa.Connection, new_events: Sequence[store.NewEvent], now: datetime) -> tuple[int, int]:
    """Insert events, ignoring ids already recorded (also ids repeated within the batch: the first one
    is kept); returns (inserted, duplicates), as `store.record_events` does.

    Rows go in by lead (in the given order within a lead, which is the order the worker handles
    them): on PostgreSQL each row's foreign key takes a share lock on its lead, and the worker locks
    leads in id order, so taking them in the same order can never deadlock with it."""
    if not new_events:
        return 0, 0
    rows = [
        (e.event_id, e.lead_id, e.name, dict(e.properties), e.occurred_at, now, e.source)
        for e in sorted(new_events, key=lambda e: e.lead_id)
    ]
    inserted = insert_many(conn, tables.events, _EVENT_COLUMNS, rows, "ON CONFLICT (event_id) DO NOTHING")
    return inserted, len(rows) - inserted


def recorded_event_ids(conn: sa.Connection, event_ids: Sequence[str]) -> set[str]:
    """The ids among these that are already recorded."""
    return {row[0] for row in rows_where_in(conn, "SELECT event_id FROM events", "event_id", event_ids)}


def mark_processed(conn: sa.Connection, pks: Sequence[int], now: datetime) -> None:
    at = binder(conn, tables.events.c.processed_at)(now)
    for chunk in _chunks(sorted(pks)):
        where, params = _in(conn, "id", chunk)
        conn.exec_driver_sql(f"UPDATE events SET processed_at = {_mark(conn)} WHERE {where}", (at, *params))  # noqa: S608


# --------------------------------------------------------------------------------------------------
# The worker's batch: its events, leads and enrollments read (and locked) at once, its decisions written
# --------------------------------------------------------------------------------------------------


def _reading(conn: sa.Connection, table: sa.Table, columns: Sequence[str]) -> Callable[[Sequence[Any]], list[Any]]:
    """A driver's row as the columns' types read it (only the columns whose type converts anything)."""
    convert = [(i, f) for i, name in enumerate(columns) if (f := reader(conn, table.c[name])) is not _same]

    def read(raw: Sequence[Any]) -> list[Any]:
        row = list(raw)
        for i, f in convert:
            row[i] = f(row[i])
        return row

    return read


_PENDING_COLUMNS = ("id", "event_id", "lead_id", "name", "properties", "occurred_at", "received_at", "source")


def claim_events(conn: sa.Connection, limit: int) -> list[store.PendingEvent]:
    """What `store.claim_pending_events` claims (unprocessed events in received order, locked until the
    caller's commit, SKIP LOCKED on PostgreSQL), read at the driver level: a batch's rows cost a
    fraction of what SQLAlchemy's row processing costs."""
    skip_locked = " FOR UPDATE SKIP LOCKED" if conn.dialect.name == "postgresql" else ""
    read = _reading(conn, tables.events, _PENDING_COLUMNS)
    rows = conn.exec_driver_sql(
        f"SELECT {', '.join(_PENDING_COLUMNS)} FROM events WHERE processed_at IS NULL"  # noqa: S608
        f" ORDER BY received_at, id LIMIT {_mark(conn)}{skip_locked}",
        (limit,),
    )
    claimed = []
    for raw in rows:
        pk, event_id, lead_id, name, properties, occurred_at, received_at, source = read(raw)
        event = journey.Event(id=event_id, name=name, at=occurred_at, properties=properties, source=source)
        claimed.append(store.PendingEvent(pk=pk, lead_id=lead_id, event=event, received_at=received_at, source=source))
    return claimed


_LEAD_COLUMNS = ("id", "email", "timezone", "attributes", "tags", "score", "consent_status")


def lock_leads(conn: sa.Connection, ids: Iterable[int]) -> dict[int, journey.Lead]:
    """The leads as the core sees them (`store.load_leads`), locked until the commit on PostgreSQL, in
    id order like every per-lead lock, so two workers never wait on each other in a cycle. (SQLite has
    no row locks: its writer lock covers the whole transaction.) An erased lead is missing."""
    wanted = sorted(set(ids))
    lock = " ORDER BY id FOR UPDATE" if conn.dialect.name == "postgresql" else ""
    read = _reading(conn, tables.leads, _LEAD_COLUMNS)
    found: dict[int, journey.Lead] = {}
    for chunk in _chunks(wanted):
        where, params = _in(conn, "id", chunk)
        for raw in conn.exec_driver_sql(f"SELECT {', '.join(_LEAD_COLUMNS)} FROM leads WHERE {where}{lock}", params):  # noqa: S608
            lead_id, email, timezone, attributes, tags, score, consent = read(raw)
            found[lead_id] = journey.Lead(
                id=email,
                timezone=timezone,
                attributes=dict(attributes),
                tags=frozenset(tags),
                score=score,
                consent=consent,
            )
    return found


_ENROLLMENT_READ = (
    "lead_id", "funnel_id", "version", "status", "stage", "step", "phase", "due", "wake_at", "entered_at",
    "stage_entered_at", "sent", "spent_timers", "goal_reached_at", "exit_reason", "exited_at",
)  # fmt: skip


def lock_enrollments(
    conn: sa.Connection, lead_ids: Iterable[int], funnel_ids: Sequence[str]
) -> dict[tuple[int, str], journey.Enrollment]:
    """The enrollments of these leads in these funnels (`store.get_enrollment` for each), by (lead id,
    funnel id), locked until the commit on PostgreSQL (a tick that claimed one first makes this wait
    for its commit)."""
    read = _reading(conn, tables.enrollments, _ENROLLMENT_READ)
    lock = " ORDER BY lead_id, funnel_id FOR UPDATE" if conn.dialect.name == "postgresql" else ""
    found: dict[tuple[int, str], journey.Enrollment] = {}
    if not funnel_ids:
        return found
    funnels, funnel_params = _in(conn, "funnel_id", funnel_ids)
    for chunk in _chunks(sorted(set(lead_ids))):
        where, params = _in(conn, "lead_id", chunk)
        sql = f"SELECT {', '.join(_ENROLLMENT_READ)} FROM enrollments WHERE {where} AND {funnels}{lock}"  # noqa: S608
        for raw in conn.exec_driver_sql(sql, (*params, *funnel_params)):
            (lead_id, funnel_id, version, status, stage, step, phase, due, wake_at, entered_at, stage_entered_at,
             sent, spent_timers, goal_reached_at, exit_reason, exited_at) = read(raw)  # fmt: skip
            found[(lead_id, funnel_id)] = journey.Enrollment(
                funnel=funnel_id,
                version=version,
                status=status,
                stage=stage,
                step=step,
                phase=phase,
                due=due,
                wake_at=wake_at,
                entered_at=entered_at,
                stage_entered_at=stage_entered_at,
                sent=frozenset(sent),
                spent_timers=frozenset(spent_timers),
                goal_reached_at=goal_reached_at,
                exit_reason=exit_reason,
                exited_at=exited_at,
            )
    return found


@dataclass
class Written:
    """What `apply_decisions` wrote: emails newly queued (a step that already had its message is not
    counted) and stage transitions."""

    queued: int = 0
    transitions: int = 0


_ENROLLMENT_STATE = (
    "version", "status", "stage", "step", "phase", "due", "wake_at", "entered_at", "stage_entered_at",
    "sent", "spent_timers", "goal_reached_at", "exit_reason", "exited_at", "updated_at",
)  # fmt: skip
_QUEUED = (
    "template", "stage", "transactional", "status", "due_at", "attempts", "next_attempt_at", "created_at",
    "skip_reason",
)  # fmt: skip


def _batchable(decision: journey.Decision) -> bool:
    """The everyday decisions (enter, move between stages, send, skip, update the lead), which are
    written here in bulk. Anything else (leaving the funnel, goals, webhooks) is rare and goes through
    `store.apply_decision` itself, with whatever else the store does for it."""
    return all(
        isinstance(c, journey.SendEmail | journey.SkipEmail | journey.UpdateLead)
        or (isinstance(c, journey.RecordTransition) and c.to_stage is not None)
        for c in decision.commands
    )


def apply_decisions(conn: sa.Connection, decisions: Sequence[tuple[int, journey.Decision]], now: datetime) -> Written:
    """Write many decisions (lead id, decision), in order, in the caller's transaction, with the effects
    `store.apply_decision` has applied to each in turn: each enrollment's last state, lead updates as
    deltas to the current row, transitions, outbox rows (a send takes over a recorded skip, any other
    existing row wins). Everyday decisions cost one statement per kind of row for the whole batch; a
    decision that is not one is handed to `store.apply_decision` after what came before it is written."""
    batch = _Batch(conn, now)
    for lead_id, decision in decisions:
        if decision.enrollment is None:
            raise ValueError("expected a decision with an enrollment; nothing says which funnel it belongs to")
        if _batchable(decision):
            batch.add(lead_id, decision)
            continue
        batch.flush()
        applied = store.apply_decision(conn, lead_id, decision, now=now)
        batch.written.queued += len(applied.queued)
        batch.written.transitions += applied.transitions
    batch.flush()
    return batch.written


class _Batch:
    """Everyday decisions' rows, held until `flush` writes each kind with one driver-level executemany."""

    def __init__(self, conn: sa.Connection, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.written = Written()
        self.states: dict[tuple[int, str], tuple[Any, ...]] = {}
        self.updates: dict[int, list[journey.UpdateLead]] = {}
        self.mail: list[tuple[int, str, journey.SendEmail | journey.SkipEmail]] = []
        self.transitions: list[tuple[Any, ...]] = []

    def add(self, lead_id: int, decision: journey.Decision) -> None:
        s = decision.enrollment
        assert s is not None
        # The last state of each enrollment is the one that counts.
        self.states[(lead_id, s.funnel)] = (
            lead_id, s.funnel, s.version, s.status, s.stage, s.step, s.phase, s.due, s.wake_at, s.entered_at,
            s.stage_entered_at, sorted(s.sent), sorted(s.spent_timers), s.goal_reached_at, s.exit_reason,
            s.exited_at, self.now,
        )  # fmt: skip
        for c in decision.commands:
            if isinstance(c, journey.SendEmail | journey.SkipEmail):
                self.mail.append((lead_id, s.funnel, c))
            elif isinstance(c, journey.UpdateLead):
                self.updates.setdefault(lead_id, []).append(c)
            elif isinstance(c, journey.RecordTransition):
                self.transitions.append(
                    (lead_id, s.funnel, s.version, c.from_stage, c.to_stage, c.cause.kind, c.cause.ref, c.at,
                     c.exit_reason)
                )  # fmt: skip

    def flush(self) -> None:
        conn = self.conn
        if self.states:
            update = ", ".join(f"{k} = excluded.{k}" for k in _ENROLLMENT_STATE)
            insert_many(
                conn, tables.enrollments, _ENROLLMENT_COLUMNS, list(self.states.values()),
                f"ON CONFLICT (lead_id, funnel_id) DO UPDATE SET {update}",
            )  # fmt: skip
        if self.updates:
            _update_leads(conn, self.updates, self.now)
        if self.transitions:
            insert_many(conn, tables.stage_transitions, _TRANSITION_COLUMNS, self.transitions)
            self.written.transitions += len(self.transitions)
        if self.mail:
            self.written.queued += _write_mail(conn, self.mail, self.now)
        self.states, self.updates, self.mail, self.transitions = {}, {}, [], []


_ENROLLMENT_COLUMNS = ("lead_id", "funnel_id", *_ENROLLMENT_STATE)
_TRANSITION_COLUMNS = (
    "lead_id", "funnel_id", "version", "from_stage", "to_stage", "cause_kind", "cause_ref", "at", "exit_reason",
)  # fmt: skip
_OUTBOX_COLUMNS = ("lead_id", "funnel_id", "step", *_QUEUED)


def _update_leads(conn: sa.Connection, updates: Mapping[int, list[journey.UpdateLead]], now: datetime) -> None:
    """Each lead's updates applied in order as deltas to its current row (the score in SQL), one
    executemany for all of them."""
    leads = tables.leads
    current = {
        row.id: row
        for chunk in _chunks(sorted(updates))
        for row in conn.execute(sa.select(leads.c.id, leads.c.attributes, leads.c.tags).where(leads.c.id.in_(chunk)))
    }
    attributes_value, tags_value = binder(conn, leads.c.attributes), binder(conn, leads.c.tags)
    params: list[tuple[Any, ...]] = []
    for lead_id, commands in updates.items():
        row = current.get(lead_id)
        if row is None:
            continue  # erased within this transaction: nothing left to update
        attributes = dict(row.attributes)
        tags = set(row.tags)
        score = 0
        for u in commands:
            for key in u.unset:
                attributes.pop(key, None)
            attributes.update(u.set)
            tags = (tags | set(u.add_tags)) - set(u.remove_tags)
            score += u.score
        params.append((attributes_value(attributes), tags_value(sorted(tags)), score, lead_id))
    if params:
        mark = _mark(conn)
        at = binder(conn, leads.c.updated_at)(now)
        conn.exec_driver_sql(
            f"UPDATE leads SET attributes = {mark}, tags = {mark}, score = score + {mark},"  # noqa: S608
            f" updated_at = {mark} WHERE id = {mark}",
            [(a, t, score, at, lead_id) for a, t, score, lead_id in params],
        )


def _write_mail(
    conn: sa.Connection, mail: Sequence[tuple[int, str, journey.SendEmail | journey.SkipEmail]], now: datetime
) -> int:
    """Sends and recorded skips in the order the decisions made them (a send may take over a skip
    recorded just before it), as runs of one kind. Returns how many sends created their message."""
    update = ", ".join(f"{k} = excluded.{k}" for k in _QUEUED)
    key = "ON CONFLICT (lead_id, funnel_id, step)"
    send_tail = f"{key} DO UPDATE SET {update} WHERE outbox.status = 'skipped'"
    queued = 0
    start = 0
    while start < len(mail):
        kind = type(mail[start][2])
        end = start
        while end < len(mail) and type(mail[end][2]) is kind:
            end += 1
        rows: list[tuple[Any, ...]] = []
        for lead_id, funnel_id, c in mail[start:end]:
            if isinstance(c, journey.SendEmail):
                rows.append((lead_id, funnel_id, c.step, c.template, c.stage, c.transactional, "queued", c.at, 0, c.at,
                             now, None))  # fmt: skip
            else:
                rows.append((lead_id, funnel_id, c.step, c.template, c.stage, False, "skipped", c.at, 0, None, now,
                             c.reason))  # fmt: skip
        if kind is journey.SendEmail:
            queued += insert_many(conn, tables.outbox, _OUTBOX_COLUMNS, rows, send_tail)
        else:
            insert_many(conn, tables.outbox, _OUTBOX_COLUMNS, rows, f"{key} DO NOTHING")
        start = end
    return queued
