"""The store: leads, events, enrollments, transitions, suppressions and funnel versions read and written
as SQLAlchemy Core statements, and the batched inserts the other writers share (`insert_rows`).

Not everything is here: the journey core's decisions are written by `engine.store.decisions` (the one writer,
in batches), events and leads in bulk by `engine.store.ingest`, and the send pipeline's queries are in
`engine.store.outbox`; docs/database.md says which module writes what.

Each function takes a `sqlalchemy.Connection` inside the caller's transaction (`engine.begin()`), so
one commit covers an enrollment's new state, its stage transitions and its outbox rows (no lost
intent), and a rollback drops all of them. Claims lock what they return: `FOR UPDATE SKIP LOCKED` on
PostgreSQL, the writer lock taken by `BEGIN IMMEDIATE` on SQLite (see `engine.store.database`).

The hot paths (claims, event ingestion, decisions) are Core, not ORM: no identity map, no per-row
objects to flush, statements the reader can match to the SQL in docs/database.md.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from engine.core import addresses, journey
from engine.core.definition import Funnel
from engine.core.languages import canonical
from engine.store import tables
from engine.store.tables import CONSENT_STATUSES

Insert = postgresql.Insert | sqlite.Insert
T = TypeVar("T")


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def _insert(conn: sa.Connection, table: sa.Table) -> Insert:
    """INSERT with ON CONFLICT support; both backends speak the same clause."""
    return _insert_for(conn.dialect.name, table)


def _insert_for(dialect: str, table: sa.Table) -> Insert:
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignoring(conn: sa.Connection, table: sa.Table, unique: Sequence[str], values: Mapping[str, Any]) -> bool:
    """Insert a row unless one with the same unique key is there; whether it was written."""
    stmt = _insert_ignoring_sql(table, tuple(unique), tuple(values))
    return conn.execute(stmt, dict(values)).first() is not None


@functools.lru_cache(maxsize=64)
def _insert_ignoring_sql(table: sa.Table, unique: tuple[str, ...], columns: tuple[str, ...]) -> sa.TextClause:
    """`INSERT ... ON CONFLICT (unique) DO NOTHING RETURNING id`, written once per shape of row. Both
    backends speak this SQL; SQLAlchemy's dialect inserts with ON CONFLICT have no cache key, so they
    were compiled anew on every call (a third of the cost of recording a bounce report). The columns'
    types bind the values, as they would in a Core insert. RETURNING says whether a row was written:
    a driver's rowcount is not reliable for these statements (psycopg reports -1 for some)."""
    quote = '"{}"'.format
    columns = tuple(table.c[name].name for name in columns)  # real columns only: nothing else reaches the SQL
    target = f"{quote(table.name)} ({', '.join(map(quote, columns))})"
    values = ", ".join(":" + c for c in columns)
    conflict = ", ".join(map(quote, unique))
    # Names of the schema's own table and columns; the values are bound.
    sql = f"INSERT INTO {target} VALUES ({values}) ON CONFLICT ({conflict}) DO NOTHING RETURNING id"  # noqa: S608
    return sa.text(sql).bindparams(*(sa.bindparam(c, type_=table.c[c].type) for c in columns))


def _wrote(conn: sa.Connection, stmt: Insert) -> bool:
    """Whether an INSERT ... ON CONFLICT wrote a row. Asked with RETURNING, because a driver's
    rowcount is not reliable for these statements (psycopg reports -1 for some)."""
    table = stmt.table
    return conn.execute(stmt.returning(table.c.id)).first() is not None


def locking(conn: sa.Connection, stmt: sa.Select[Any], *, skip_locked: bool = False) -> sa.Select[Any]:
    """`stmt` locking the rows it reads until the commit, on PostgreSQL. SQLite has no row locks: its
    transaction already holds the single writer lock."""
    if conn.dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=skip_locked)
    return stmt


def _is(column: sa.ColumnElement[Any], *values: str) -> sa.ColumnElement[bool]:
    """`column = 'x'` with the constant inline, not as a parameter: SQLite only uses a partial index
    when the query's WHERE visibly implies the index's WHERE."""
    literals: list[sa.ColumnElement[Any]] = [sa.literal_column(f"'{v}'") for v in values]
    return column == literals[0] if len(literals) == 1 else column.in_(literals)


# --------------------------------------------------------------------------------------------------
# Leads
# --------------------------------------------------------------------------------------------------


def email_hash(email: str) -> str:
    """What the suppression list keeps of an address: SHA-256 of the form it is found under."""
    return hashlib.sha256(addresses.lookup_key(email).encode()).hexdigest()


def upsert_lead(
    conn: sa.Connection,
    email: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    tags: Iterable[str] | None = None,
    timezone: str | None = None,
    consent: str | None = None,
    consent_source: str | None = None,
    now: datetime | None = None,
    language: str | None = None,
) -> int:
    """Create the lead or update it; returns its id. Attributes are merged (given keys win), tags are
    added, timezone, language and consent are set when given. A new lead without `consent` is
    subscribed. The address is found as `addresses.lookup_key` says; a new lead needs one
    `addresses.normalise` takes (else `AddressError`). A language is kept in canonical case (a tag
    `languages.canonical` refuses raises its LanguageError)."""
    if consent is not None and consent not in CONSENT_STATUSES:
        raise ValueError(f"expected consent to be one of {', '.join(CONSENT_STATUSES)}, found {consent!r}")
    if language is not None:
        language = canonical(language)
    address = addresses.lookup_key(email)
    now = _now(now)
    leads = tables.leads
    consent_values: dict[str, Any] = {}
    if consent is not None:
        consent_values = {"consent_status": consent, "consent_source": consent_source, "consent_at": now}
    for _ in range(2):  # a concurrent insert of the same address makes the first try a no-op
        row = conn.execute(
            locking(conn, sa.select(leads.c.id, leads.c.attributes, leads.c.tags).where(leads.c.email == address))
        ).first()
        if row is None:
            inserted = create_lead(
                conn,
                address,
                attributes=attributes,
                tags=tags,
                timezone=timezone,
                consent=consent or "subscribed",
                consent_source=consent_source,
                now=now,
                language=language,
            )
            if inserted is not None:
                return inserted
            continue
        values: dict[str, Any] = {"updated_at": now, **consent_values}
        if attributes:
            values["attributes"] = {**row.attributes, **attributes}
        if tags:
            values["tags"] = sorted(set(row.tags) | set(tags))
        if timezone is not None:
            values["timezone"] = timezone
        if language is not None:
            values["language"] = language
        conn.execute(sa.update(leads).where(leads.c.id == row.id).values(**values))
        return int(row.id)
    raise RuntimeError(f"could not insert or find lead {address!r}")  # pragma: no cover


def create_lead(
    conn: sa.Connection,
    email: str,
    *,
    consent: str,
    consent_source: str | None,
    attributes: Mapping[str, Any] | None = None,
    tags: Iterable[str] | None = None,
    timezone: str | None = None,
    now: datetime | None = None,
    language: str | None = None,
) -> int | None:
    """Make a new lead; returns its id, or None when the address has a lead already (then nothing of
    that lead changes: for input that may only ever create)."""
    if consent not in CONSENT_STATUSES:
        raise ValueError(f"expected consent to be one of {', '.join(CONSENT_STATUSES)}, found {consent!r}")
    now = _now(now)
    leads = tables.leads
    inserted = conn.execute(
        _insert(conn, leads)
        .values(
            email=addresses.normalise(email),  # a lead is only ever made for an address the rules take
            attributes=dict(attributes or {}),
            tags=sorted(set(tags or ())),
            score=0,
            timezone=timezone,
            language=canonical(language) if language is not None else None,
            consent_status=consent,
            consent_source=consent_source,
            consent_at=now,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(leads.c.id)
    ).scalar()
    return int(inserted) if inserted is not None else None


def find_lead_id(conn: sa.Connection, email: str) -> int | None:
    leads = tables.leads
    found = conn.execute(sa.select(leads.c.id).where(leads.c.email == addresses.lookup_key(email))).scalar()
    return int(found) if found is not None else None


def _to_lead(row: sa.Row[Any]) -> journey.Lead:
    return journey.Lead(
        id=row.email,
        timezone=row.timezone,
        attributes=dict(row.attributes),
        tags=frozenset(row.tags),
        score=row.score,
        consent=row.consent_status,
        language=row.language,
    )


def get_lead(conn: sa.Connection, lead_id: int, *, for_update: bool = False) -> journey.Lead | None:
    """The lead as the core sees it (`Lead.id` is the email). `for_update` locks the row on
    PostgreSQL: a per-lead mutex for work that touches several of its enrollments."""
    leads = tables.leads
    stmt = sa.select(leads).where(leads.c.id == lead_id)
    row = conn.execute(locking(conn, stmt) if for_update else stmt).first()
    return _to_lead(row) if row is not None else None


# Values per `IN` list: well under SQLite's limit of bound parameters per statement.
CHUNK = 1000


def chunks(values: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def id_chunks(ids: Iterable[int]) -> Iterator[Sequence[int]]:
    """Ids sorted (the order every lock is taken in), a chunk at a time."""
    return chunks(sorted(set(ids)))


def load_leads(conn: sa.Connection, ids: Iterable[int], *, lock: bool = False) -> dict[int, journey.Lead]:
    """Leads by id. `lock`: lock their rows, skipping (leaving out) rows another transaction holds, so a
    tick never waits on an event being handled for the same lead (which holds the lead, then waits on
    the enrollment: waiting here would be a deadlock)."""
    leads = tables.leads
    found: dict[int, journey.Lead] = {}
    for chunk in id_chunks(ids):
        stmt = sa.select(leads).where(leads.c.id.in_(chunk))
        for row in conn.execute(locking(conn, stmt, skip_locked=True) if lock else stmt):
            found[row.id] = _to_lead(row)
    return found


def lock_leads(conn: sa.Connection, ids: Iterable[int]) -> dict[int, journey.Lead]:
    """Leads by id, locked until the commit on PostgreSQL, waiting for a transaction that holds one, in
    id order like every per-lead lock, so two workers never wait on each other in a cycle. (SQLite has
    no row locks: its writer lock covers the whole transaction.) An erased lead is missing."""
    leads = tables.leads
    found: dict[int, journey.Lead] = {}
    for chunk in id_chunks(ids):
        stmt = locking(conn, sa.select(leads).where(leads.c.id.in_(chunk)).order_by(leads.c.id))
        for row in conn.execute(stmt):
            found[row.id] = _to_lead(row)
    return found


# --------------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to record. `event_id` is the sender's idempotency key."""

    event_id: str
    lead_id: int
    name: str
    occurred_at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None


@dataclass(frozen=True, slots=True)
class PendingEvent:
    pk: int
    lead_id: int
    event: journey.Event
    received_at: datetime
    source: str | None


def record_events(
    conn: sa.Connection, new_events: Sequence[NewEvent], *, now: datetime | None = None
) -> tuple[int, int]:
    """Insert events, ignoring ids already recorded; returns (inserted, duplicates)."""
    now = _now(now)
    events = tables.events
    inserted = 0
    for item in new_events:
        inserted += _wrote(
            conn,
            _insert(conn, events)
            .values(
                event_id=item.event_id,
                lead_id=item.lead_id,
                name=item.name,
                properties=dict(item.properties),
                occurred_at=item.occurred_at,
                received_at=now,
                source=item.source,
            )
            .on_conflict_do_nothing(index_elements=["event_id"]),
        )
    return inserted, len(new_events) - inserted


def claim_pending_events(conn: sa.Connection, limit: int) -> list[PendingEvent]:
    """Unprocessed events in received order, locked until the caller's commit (SKIP LOCKED on PG)."""
    events = tables.events
    stmt = (
        sa.select(events)
        .where(events.c.processed_at.is_(None))
        .order_by(events.c.received_at, events.c.id)
        .limit(limit)
    )
    return [
        PendingEvent(
            pk=row.id,
            lead_id=row.lead_id,
            event=journey.Event(
                id=row.event_id, name=row.name, at=row.occurred_at, properties=row.properties, source=row.source
            ),
            received_at=row.received_at,
            source=row.source,
        )
        for row in conn.execute(locking(conn, stmt, skip_locked=True))
    ]


def mark_events_processed(conn: sa.Connection, event_pks: Iterable[int], now: datetime) -> None:
    events = tables.events
    for chunk in id_chunks(event_pks):
        conn.execute(sa.update(events).where(events.c.id.in_(chunk)).values(processed_at=now))


# --------------------------------------------------------------------------------------------------
# Enrollments
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DueEnrollment:
    lead_id: int
    enrollment: journey.Enrollment


def _to_enrollment(row: sa.Row[Any]) -> journey.Enrollment:
    return journey.Enrollment(
        funnel=row.funnel_id,
        version=row.version,
        status=row.status,
        stage=row.stage,
        step=row.step,
        phase=row.phase,
        due=row.due,
        wake_at=row.wake_at,
        entered_at=row.entered_at,
        stage_entered_at=row.stage_entered_at,
        sent=frozenset(row.sent),
        spent_timers=frozenset(row.spent_timers),
        goal_reached_at=row.goal_reached_at,
        exit_reason=row.exit_reason,
        exited_at=row.exited_at,
    )


def due_enrollments_query(
    conn: sa.Connection, now: datetime, limit: int, funnel_ids: Sequence[str] | None = None
) -> sa.Select[Any]:
    """The tick's claim: a range scan of the partial index `ix_enrollments_wake_active`."""
    e = tables.enrollments
    stmt = sa.select(e).where(_is(e.c.status, "active"), e.c.wake_at <= now)
    if funnel_ids is not None:
        stmt = stmt.where(e.c.funnel_id.in_(list(funnel_ids)))
    return locking(conn, stmt.order_by(e.c.wake_at).limit(limit), skip_locked=True)


def claim_due_enrollments(
    conn: sa.Connection, now: datetime, limit: int, funnel_ids: Sequence[str] | None = None
) -> list[DueEnrollment]:
    """Active enrollments whose wake time has come, earliest first, locked until the caller's commit.
    Another worker's claim skips them (PostgreSQL) or waits for the commit (SQLite). `funnel_ids`: only
    these funnels (the ones a worker has loaded: leads of a funnel file that is gone wait untouched)."""
    rows = conn.execute(due_enrollments_query(conn, now, limit, funnel_ids))
    return [DueEnrollment(row.lead_id, _to_enrollment(row)) for row in rows]


def get_enrollments(conn: sa.Connection, lead_id: int, *, for_update: bool = False) -> list[journey.Enrollment]:
    e = tables.enrollments
    stmt = sa.select(e).where(e.c.lead_id == lead_id).order_by(e.c.funnel_id)
    return [_to_enrollment(row) for row in conn.execute(locking(conn, stmt) if for_update else stmt)]


def get_enrollment(
    conn: sa.Connection, lead_id: int, funnel_id: str, *, for_update: bool = False
) -> journey.Enrollment | None:
    e = tables.enrollments
    stmt = sa.select(e).where(e.c.lead_id == lead_id, e.c.funnel_id == funnel_id)
    row = conn.execute(locking(conn, stmt) if for_update else stmt).first()
    return _to_enrollment(row) if row is not None else None


def lock_enrollments(
    conn: sa.Connection, lead_ids: Iterable[int], funnel_ids: Sequence[str]
) -> dict[tuple[int, str], journey.Enrollment]:
    """The enrollments of these leads in these funnels, by (lead id, funnel id), locked until the commit
    on PostgreSQL (a tick that claimed one first makes this wait for its commit), in key order."""
    e = tables.enrollments
    found: dict[tuple[int, str], journey.Enrollment] = {}
    if not funnel_ids:
        return found
    for chunk in id_chunks(lead_ids):
        stmt = (
            sa.select(e)
            .where(e.c.lead_id.in_(chunk), e.c.funnel_id.in_(list(funnel_ids)))
            .order_by(e.c.lead_id, e.c.funnel_id)
        )
        for row in conn.execute(locking(conn, stmt)):
            found[(row.lead_id, row.funnel_id)] = _to_enrollment(row)
    return found


# --------------------------------------------------------------------------------------------------
# Writing rows in batches (the decision writer, `engine.store.decisions`, and the bulk paths in `engine.store.ingest`
# and `engine.runtime.importer`)
# --------------------------------------------------------------------------------------------------


@functools.cache
def _insert_text(table: sa.Table, columns: tuple[str, ...], on_conflict: str) -> sa.TextClause:
    """`INSERT INTO table (columns) VALUES (...) on_conflict` as SQL text whose parameters carry their
    columns' types, so SQLAlchemy converts each value as for any of its statements (aware UTC datetimes,
    JSON) and compiles it once into its statement cache. (It caches no dialect `insert()` with an
    ON CONFLICT clause: that would be compiled again for every batch.) The names and the clause are our
    own constants, never input."""
    unknown = set(columns) - set(table.c.keys())
    if unknown:
        raise ValueError(f"table {table.name} has no column {', '.join(sorted(unknown))}")
    values = ", ".join(f":{c}" for c in columns)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({values}) {on_conflict}"  # noqa: S608
    return sa.text(sql).bindparams(*(sa.bindparam(c, type_=table.c[c].type) for c in columns))


def insert_rows(conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], on_conflict: str) -> int:
    """Rows (mappings of the same columns) inserted by one executemany, in order, `on_conflict` deciding
    what a row whose key exists does (`ON CONFLICT (...) DO NOTHING` or `DO UPDATE ...`: both backends
    speak it). Returns the rows written: both drivers add up an executemany's counts, and a row that the
    clause left alone counts 0."""
    if not rows:
        return 0
    written = conn.execute(_insert_text(table, tuple(rows[0]), on_conflict), list(rows)).rowcount
    if written < 0:  # pragma: no cover - a driver that does not count
        raise RuntimeError(f"the database driver did not say how many rows it wrote into {table.name}")
    return written


def _cancel_marketing_statement() -> sa.Update:
    o = tables.outbox
    return (
        sa.update(o)
        .where(
            o.c.lead_id == sa.bindparam("lead"),
            o.c.funnel_id == sa.bindparam("funnel"),
            _is(o.c.status, "queued", "deferred"),
            o.c.transactional.is_(False),
        )
        .values(status="skipped", skip_reason=sa.bindparam("reason"))
    )


CANCEL_MARKETING = _cancel_marketing_statement()


def cancel_marketing(conn: sa.Connection, lead_id: int, funnel_id: str, reason: str) -> int:
    """Skip the lead's marketing emails of this funnel that are still waiting to go: a lead who leaves a
    funnel gets nothing more from it, even what was queued. One being sent right now is past this
    point; the mailer only sends what it could move from queued to sending. (`CANCEL_MARKETING` takes
    many (lead, funnel, reason) at once, as `engine.store.decisions` runs it.)"""
    return int(conn.execute(CANCEL_MARKETING, {"lead": lead_id, "funnel": funnel_id, "reason": reason}).rowcount)


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    funnel_id: str
    version: str
    from_stage: str | None
    to_stage: str | None
    cause: journey.Cause
    at: datetime
    exit_reason: str | None


def get_transitions(conn: sa.Connection, lead_id: int, funnel_id: str | None = None) -> list[TransitionRecord]:
    """The lead's stage history, oldest first: why it is where it is."""
    t = tables.stage_transitions
    stmt = sa.select(t).where(t.c.lead_id == lead_id).order_by(t.c.at, t.c.id)
    if funnel_id is not None:
        stmt = stmt.where(t.c.funnel_id == funnel_id)
    return [
        TransitionRecord(
            r.funnel_id,
            r.version,
            r.from_stage,
            r.to_stage,
            journey.Cause(r.cause_kind, r.cause_ref),
            r.at,
            r.exit_reason,
        )
        for r in conn.execute(stmt)
    ]


# --------------------------------------------------------------------------------------------------
# Outbox (for the mailer)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    lead_id: int
    funnel_id: str
    step: str
    template: str
    stage: str
    transactional: bool
    status: str
    due_at: datetime
    attempts: int
    next_attempt_at: datetime | None
    claimed_at: datetime | None
    message_id: str | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    skip_reason: str | None
    language: str | None  # the language it was written in, once sent


def _to_outbox(row: sa.Row[Any]) -> OutboxItem:
    return OutboxItem(**{name: getattr(row, name) for name in OutboxItem.__dataclass_fields__})


def get_outbox(conn: sa.Connection, lead_id: int, funnel_id: str | None = None) -> list[OutboxItem]:
    o = tables.outbox
    stmt = sa.select(o).where(o.c.lead_id == lead_id).order_by(o.c.due_at, o.c.id)
    if funnel_id is not None:
        stmt = stmt.where(o.c.funnel_id == funnel_id)
    return [_to_outbox(row) for row in conn.execute(stmt)]


# --------------------------------------------------------------------------------------------------
# Suppressions and funnel versions
# --------------------------------------------------------------------------------------------------


def suppress(conn: sa.Connection, email: str, reason: str, *, now: datetime | None = None) -> bool:
    """Never mail this address again (kept as a hash, so it outlives erasure). True if new."""
    row = {"email_hash": email_hash(email), "reason": reason, "created_at": _now(now)}
    return insert_ignoring(conn, tables.suppressions, ("email_hash",), row)


def is_suppressed(conn: sa.Connection, email: str) -> bool:
    s = tables.suppressions
    return conn.execute(sa.select(s.c.id).where(s.c.email_hash == email_hash(email))).first() is not None


def save_funnel_version(conn: sa.Connection, funnel: Funnel, *, now: datetime | None = None) -> bool:
    """Keep the definition each version hash stands for. True if this version is new."""
    stmt = (
        _insert(conn, tables.funnel_versions)
        .values(
            funnel_id=funnel.id,
            version=funnel.version,
            definition=funnel.model_dump(mode="json", by_alias=True),
            created_at=_now(now),
        )
        .on_conflict_do_nothing(index_elements=["funnel_id", "version"])
    )
    return _wrote(conn, stmt)


def get_funnel_definition(conn: sa.Connection, funnel_id: str, version: str) -> dict[str, Any] | None:
    f = tables.funnel_versions
    found = conn.execute(sa.select(f.c.definition).where(f.c.funnel_id == funnel_id, f.c.version == version)).scalar()
    return cast(dict[str, Any], found) if found is not None else None


# --------------------------------------------------------------------------------------------------
# Query plans (for ops and for the test that the claim is an index scan)
# --------------------------------------------------------------------------------------------------


class _Explain(sa.sql.expression.Executable, sa.sql.expression.ClauseElement):
    inherit_cache = False

    def __init__(self, statement: sa.Select[Any]) -> None:
        self.statement = statement


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler: SQLCompiler, **kw: Any) -> str:
    prefix = "EXPLAIN QUERY PLAN " if compiler.dialect.name == "sqlite" else "EXPLAIN "
    return prefix + compiler.process(element.statement, **kw)


def explain_due_claim(conn: sa.Connection, now: datetime, limit: int) -> str:
    """The database's plan for the tick's claim, one line per plan node."""
    rows = conn.execute(_Explain(due_enrollments_query(conn, now, limit))).all()
    return "\n".join(str(row[-1]) for row in rows)


@dataclass(frozen=True, slots=True)
class Position:
    """How many active leads of a funnel wait at one place (for `funnel plan`)."""

    funnel_id: str
    version: str
    stage: str
    step: str | None
    phase: str
    leads: int


def positions(conn: sa.Connection, funnel_id: str | None = None) -> list[Position]:
    e = tables.enrollments
    stmt = (
        sa.select(e.c.funnel_id, e.c.version, e.c.stage, e.c.step, e.c.phase, sa.func.count())
        .where(_is(e.c.status, "active"))
        .group_by(e.c.funnel_id, e.c.version, e.c.stage, e.c.step, e.c.phase)
        .order_by(e.c.funnel_id, e.c.stage, e.c.step)
    )
    if funnel_id is not None:
        stmt = stmt.where(e.c.funnel_id == funnel_id)
    return [Position(*row) for row in conn.execute(stmt)]


def wake_outdated(conn: sa.Connection, funnel_id: str, version: str, now: datetime) -> int:
    """Make active enrollments of an earlier definition due now, so the next ticks move them onto
    `version` (engine.core.versions decides where they go)."""
    e = tables.enrollments
    result = conn.execute(
        sa.update(e)
        .where(_is(e.c.status, "active"), e.c.funnel_id == funnel_id, e.c.version != version)
        .values(wake_at=now)
    )
    return int(result.rowcount or 0)


# --------------------------------------------------------------------------------------------------
# A lead's language (engine.core.languages)
# --------------------------------------------------------------------------------------------------


def language_of(conn: sa.Connection, email: str) -> str | None:
    """The language of the address's lead (a canonical BCP 47 tag); None for no lead or no language."""
    leads = tables.leads
    found = conn.execute(sa.select(leads.c.language).where(leads.c.email == addresses.lookup_key(email))).scalar()
    return str(found) if found is not None else None


def set_language(conn: sa.Connection, lead_id: int, language: str, now: datetime | None = None) -> None:
    """Set a lead's language; `language` is a canonical tag the caller has checked against the funnel's."""
    leads = tables.leads
    conn.execute(sa.update(leads).where(leads.c.id == lead_id).values(language=language, updated_at=_now(now)))
