"""The store: every read and write the engine and the mailer make, as SQLAlchemy Core statements.

Each function takes a `sqlalchemy.Connection` inside the caller's transaction (`engine.begin()`), so
one commit covers an enrollment's new state, its stage transitions and its outbox rows (no lost
intent), and a rollback drops all of them. Claims lock what they return: `FOR UPDATE SKIP LOCKED` on
PostgreSQL, the writer lock taken by `BEGIN IMMEDIATE` on SQLite (see `engine.database`).

The hot paths (claims, `apply_decision`, event ingestion) are Core, not ORM: no identity map, no
per-row objects to flush, statements the reader can match to the SQL in docs/database.md.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from engine import addresses, journey, tables
from engine.definition import Funnel
from engine.tables import CONSENT_STATUSES

Insert = postgresql.Insert | sqlite.Insert


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def _insert(conn: sa.Connection, table: sa.Table) -> Insert:
    """INSERT with ON CONFLICT support; both backends speak the same clause."""
    return _insert_for(conn.dialect.name, table)


def _insert_for(dialect: str, table: sa.Table) -> Insert:
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _wrote(conn: sa.Connection, stmt: Insert) -> bool:
    """Whether an INSERT ... ON CONFLICT wrote a row. Asked with RETURNING, because a driver's
    rowcount is not reliable for these statements (psycopg reports -1 for some)."""
    table = stmt.table
    return conn.execute(stmt.returning(table.c.id)).first() is not None


def _locking(conn: sa.Connection, stmt: sa.Select[Any], *, skip_locked: bool = False) -> sa.Select[Any]:
    # SQLite has no row locks; its transaction already holds the single writer lock.
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
) -> int:
    """Create the lead or update it; returns its id. Attributes are merged (given keys win), tags are
    added, timezone and consent are set when given. A new lead without `consent` is subscribed. The
    address is found as `addresses.lookup_key` says; a new lead needs one `addresses.normalise` takes
    (else `AddressError`)."""
    if consent is not None and consent not in CONSENT_STATUSES:
        raise ValueError(f"expected consent to be one of {', '.join(CONSENT_STATUSES)}, found {consent!r}")
    address = addresses.lookup_key(email)
    now = _now(now)
    leads = tables.leads
    consent_values: dict[str, Any] = {}
    if consent is not None:
        consent_values = {"consent_status": consent, "consent_source": consent_source, "consent_at": now}
    for _ in range(2):  # a concurrent insert of the same address makes the first try a no-op
        row = conn.execute(
            _locking(conn, sa.select(leads.c.id, leads.c.attributes, leads.c.tags).where(leads.c.email == address))
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
    )


def get_lead(conn: sa.Connection, lead_id: int, *, for_update: bool = False) -> journey.Lead | None:
    """The lead as the core sees it (`Lead.id` is the email). `for_update` locks the row on
    PostgreSQL: a per-lead mutex for work that touches several of its enrollments."""
    leads = tables.leads
    stmt = sa.select(leads).where(leads.c.id == lead_id)
    row = conn.execute(_locking(conn, stmt) if for_update else stmt).first()
    return _to_lead(row) if row is not None else None


def load_leads(conn: sa.Connection, ids: Iterable[int], *, lock: bool = False) -> dict[int, journey.Lead]:
    """Leads by id. `lock`: lock their rows, skipping (leaving out) rows another transaction holds, so a
    tick never waits on an event being handled for the same lead (which holds the lead, then waits on
    the enrollment: waiting here would be a deadlock)."""
    wanted = sorted(set(ids))
    leads = tables.leads
    found: dict[int, journey.Lead] = {}
    for start in range(0, len(wanted), 1000):  # keep IN lists well under SQLite's parameter limit
        chunk = wanted[start : start + 1000]
        stmt = sa.select(leads).where(leads.c.id.in_(chunk))
        for row in conn.execute(_locking(conn, stmt, skip_locked=True) if lock else stmt):
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
        for row in conn.execute(_locking(conn, stmt, skip_locked=True))
    ]


def mark_event_processed(conn: sa.Connection, event_pk: int, now: datetime) -> None:
    events = tables.events
    conn.execute(sa.update(events).where(events.c.id == event_pk).values(processed_at=now))


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
    return _locking(conn, stmt.order_by(e.c.wake_at).limit(limit), skip_locked=True)


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
    return [_to_enrollment(row) for row in conn.execute(_locking(conn, stmt) if for_update else stmt)]


def get_enrollment(
    conn: sa.Connection, lead_id: int, funnel_id: str, *, for_update: bool = False
) -> journey.Enrollment | None:
    e = tables.enrollments
    stmt = sa.select(e).where(e.c.lead_id == lead_id, e.c.funnel_id == funnel_id)
    row = conn.execute(_locking(conn, stmt) if for_update else stmt).first()
    return _to_enrollment(row) if row is not None else None


# --------------------------------------------------------------------------------------------------
# Applying a decision
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """What `apply_decision` wrote. `duplicates` are email steps that already had an outbox row
    (the database refused a second one); they are not errors."""

    queued: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    transitions: int = 0
    webhooks: int = 0
    goals: int = 0


def apply_decision(
    conn: sa.Connection, lead_id: int, decision: journey.Decision, *, now: datetime | None = None
) -> Applied:
    """Write a decision in the caller's transaction: the enrollment row, lead updates, transitions,
    outbox rows (sends and recorded skips), webhook calls and goals."""
    state = decision.enrollment
    if state is None:
        raise ValueError("expected a decision with an enrollment; nothing says which funnel it belongs to")
    now = _now(now)
    _save_enrollment(conn, lead_id, state, now)
    updates = [c for c in decision.commands if isinstance(c, journey.UpdateLead)]
    if updates:
        _update_lead(conn, lead_id, updates, now)

    queued: list[str] = []
    skipped: list[str] = []
    duplicates: list[str] = []
    transitions = webhooks = goals = 0
    for command in decision.commands:
        if isinstance(command, journey.SendEmail):
            (queued if _queue_email(conn, lead_id, state.funnel, command, now) else duplicates).append(command.step)
        elif isinstance(command, journey.SkipEmail):
            (skipped if _record_skip(conn, lead_id, state.funnel, command, now) else duplicates).append(command.step)
        elif isinstance(command, journey.RecordTransition):
            _record_transition(conn, lead_id, state, command)
            transitions += 1
        elif isinstance(command, journey.CallWebhook):
            webhooks += _queue_webhook(conn, lead_id, state.funnel, command, now)
        elif isinstance(command, journey.GoalReached):
            goals += _record_goal(conn, lead_id, state.funnel, command)
    return Applied(tuple(queued), tuple(skipped), tuple(duplicates), transitions, webhooks, goals)


_ENROLLMENT_STATE = (
    "version", "status", "stage", "step", "phase", "due", "wake_at", "entered_at", "stage_entered_at",
    "sent", "spent_timers", "goal_reached_at", "exit_reason", "exited_at", "updated_at",
)


def _prepared(stmt: Any, dialect: str) -> sa.TextClause:
    """An INSERT ... ON CONFLICT compiled once into typed SQL text. SQLAlchemy does not cache the
    dialects' ON CONFLICT inserts (`inherit_cache = False`), and compiling one costs more than running
    it; these statements run for every lead a tick moves."""
    named: sa.Dialect = (
        postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]
        if dialect == "postgresql"
        else sqlite.dialect(paramstyle="named")
    )
    compiled = stmt.compile(dialect=named)
    table: sa.Table = stmt.table
    types = {c.name: c.type for c in table.columns}
    # Column parameters come from the caller; anything else (a WHERE constant) is bound here.
    params = [
        sa.bindparam(name, type_=types[name]) if name in types else sa.bindparam(name, value=value)
        for name, value in compiled.params.items()
    ]
    # text() cannot read PostgreSQL's `:name::JSONB` cast; spell it as CAST(:name AS JSONB).
    sql = re.sub(r":(\w+)::(\w+)", r"CAST(:\1 AS \2)", str(compiled))
    text = sa.text(sql).bindparams(*params)
    returning = getattr(stmt, "_returning", ())
    return text.columns(*returning) if returning else text  # type: ignore[return-value]


@functools.cache
def _enrollment_upsert(dialect: str) -> sa.TextClause:
    stmt = _insert_for(dialect, tables.enrollments)
    stmt = stmt.values({c.name: sa.bindparam(c.name) for c in tables.enrollments.columns if c.name != "id"})
    return _prepared(
        stmt.on_conflict_do_update(
            index_elements=["lead_id", "funnel_id"], set_={k: stmt.excluded[k] for k in _ENROLLMENT_STATE}
        ),
        dialect,
    )


def _save_enrollment(conn: sa.Connection, lead_id: int, state: journey.Enrollment, now: datetime) -> None:
    conn.execute(
        _enrollment_upsert(conn.dialect.name),
        {
            "lead_id": lead_id,
            "funnel_id": state.funnel,
            "version": state.version,
            "status": state.status,
            "stage": state.stage,
            "step": state.step,
            "phase": state.phase,
            "due": state.due,
            "wake_at": state.wake_at,
            "entered_at": state.entered_at,
            "stage_entered_at": state.stage_entered_at,
            "sent": sorted(state.sent),
            "spent_timers": sorted(state.spent_timers),
            "goal_reached_at": state.goal_reached_at,
            "exit_reason": state.exit_reason,
            "exited_at": state.exited_at,
            "updated_at": now,
        },
    )


def _update_lead(conn: sa.Connection, lead_id: int, updates: list[journey.UpdateLead], now: datetime) -> None:
    """Apply the updates as deltas to the current row, so decisions of other funnels for the same
    lead in the same tick are not overwritten."""
    leads = tables.leads
    row = conn.execute(_locking(conn, sa.select(leads.c.attributes, leads.c.tags).where(leads.c.id == lead_id))).one()
    attributes = dict(row.attributes)
    tags = set(row.tags)
    score = 0
    for u in updates:
        for key in u.unset:
            attributes.pop(key, None)
        attributes.update(u.set)
        tags = (tags | set(u.add_tags)) - set(u.remove_tags)
        score += u.score
    conn.execute(
        sa.update(leads)
        .where(leads.c.id == lead_id)
        .values(attributes=attributes, tags=sorted(tags), score=leads.c.score + score, updated_at=now)
    )


_QUEUED = ("template", "stage", "transactional", "status", "due_at", "attempts", "next_attempt_at", "created_at",
           "skip_reason")


@functools.cache
def _queue_email_stmt(dialect: str) -> sa.TextClause:
    o = tables.outbox
    stmt = _insert_for(dialect, o)
    stmt = stmt.values({k: sa.bindparam(k) for k in ("lead_id", "funnel_id", "step", *_QUEUED)})
    return _prepared(
        stmt.on_conflict_do_update(
            index_elements=["lead_id", "funnel_id", "step"],
            set_={k: stmt.excluded[k] for k in _QUEUED},
            where=o.c.status == "skipped",
        ).returning(o.c.id),
        dialect,
    )


def _queue_email(conn: sa.Connection, lead_id: int, funnel_id: str, c: journey.SendEmail, now: datetime) -> bool:
    """True when this created the message. A step whose earlier row was only a recorded skip may take
    the row once (e.g. a lead who re-enters after opting back in); any other row wins."""
    params = {
        "lead_id": lead_id,
        "funnel_id": funnel_id,
        "step": c.step,
        "template": c.template,
        "stage": c.stage,
        "transactional": c.transactional,
        "status": "queued",
        "due_at": c.at,
        "attempts": 0,
        "next_attempt_at": c.at,
        "created_at": now,
        "skip_reason": None,
    }
    return conn.execute(_queue_email_stmt(conn.dialect.name), params).first() is not None


def _record_skip(conn: sa.Connection, lead_id: int, funnel_id: str, c: journey.SkipEmail, now: datetime) -> bool:
    o = tables.outbox
    stmt = (
        _insert(conn, o)
        .values(
            lead_id=lead_id,
            funnel_id=funnel_id,
            step=c.step,
            template=c.template,
            stage=c.stage,
            transactional=False,
            status="skipped",
            due_at=c.at,
            attempts=0,
            created_at=now,
            skip_reason=c.reason,
        )
        .on_conflict_do_nothing(index_elements=["lead_id", "funnel_id", "step"])
    )
    return _wrote(conn, stmt)


def _record_transition(
    conn: sa.Connection, lead_id: int, state: journey.Enrollment, c: journey.RecordTransition
) -> None:
    conn.execute(
        tables.stage_transitions.insert(),
        dict(
            lead_id=lead_id,
            funnel_id=state.funnel,
            version=state.version,
            from_stage=c.from_stage,
            to_stage=c.to_stage,
            cause_kind=c.cause.kind,
            cause_ref=c.cause.ref,
            at=c.at,
            exit_reason=c.exit_reason,
        ),
    )
    if c.to_stage is None and c.exit_reason == "unsubscribed":
        cancel_marketing(conn, lead_id, state.funnel, "unsubscribed")


def cancel_marketing(conn: sa.Connection, lead_id: int, funnel_id: str, reason: str) -> int:
    """Skip the lead's marketing emails of this funnel that are still waiting to go: a lead who leaves a
    funnel gets nothing more from it, even what was queued. One being sent right now is past this
    point; the mailer only sends what it could move from queued to sending."""
    o = tables.outbox
    return conn.execute(
        sa.update(o)
        .where(
            o.c.lead_id == lead_id,
            o.c.funnel_id == funnel_id,
            o.c.status.in_(("queued", "deferred")),
            o.c.transactional.is_(False),
        )
        .values(status="skipped", skip_reason=reason)
    ).rowcount


def _queue_webhook(conn: sa.Connection, lead_id: int, funnel_id: str, c: journey.CallWebhook, now: datetime) -> int:
    stmt = (
        _insert(conn, tables.webhook_calls)
        .values(
            lead_id=lead_id,
            funnel_id=funnel_id,
            step=c.step,
            url=c.url,
            payload=dict(c.payload),
            status="queued",
            attempts=0,
            next_attempt_at=c.at,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["lead_id", "funnel_id", "step"])
    )
    return int(_wrote(conn, stmt))


def _record_goal(conn: sa.Connection, lead_id: int, funnel_id: str, c: journey.GoalReached) -> int:
    stmt = (
        _insert(conn, tables.goals)
        .values(lead_id=lead_id, funnel_id=funnel_id, goal=c.goal, at=c.at, within_window=c.within_window)
        .on_conflict_do_nothing(index_elements=["lead_id", "funnel_id", "goal"])
    )
    return int(_wrote(conn, stmt))


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
    stmt = (
        _insert(conn, tables.suppressions)
        .values(email_hash=email_hash(email), reason=reason, created_at=_now(now))
        .on_conflict_do_nothing(index_elements=["email_hash"])
    )
    return _wrote(conn, stmt)


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
    `version` (engine.versions decides where they go)."""
    e = tables.enrollments
    result = conn.execute(
        sa.update(e)
        .where(_is(e.c.status, "active"), e.c.funnel_id == funnel_id, e.c.version != version)
        .values(wake_at=now)
    )
    return int(result.rowcount or 0)
