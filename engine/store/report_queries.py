"""The SQL behind `funnel report` and `funnel watch`, for SQLite and PostgreSQL.

The report's queries count in the database and return groups, not leads: a million leads make a few
hundred rows. Each reads its table once (a report looks at everything, so a scan is the plan); the
one per-row lookup, the email an unsubscribe followed, goes through the outbox's (lead, ...) key.
Time in stage comes back as a histogram of whole minutes, so `engine.views.report` can take exact
percentiles without fetching every stay. What came back after the relay's 250 is read from the bounce
reports joined to their messages: soft bounces and complaints per email (`report_outcomes`), and the
leads each funnel lost to a bounce or a complaint (`losses`), which `exits` leaves out so that no lead
is counted twice.

The watch follows appended rows by id (stage transitions, new outbox rows) and, for email outcomes,
the rows that are about to be sent: the head of the ready index and the messages being sent (both
partial indexes), looked up again by id until they settle. No poll scans a table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.core.bounce_outcome import COMPLAINT, MAILBOX_TROUBLE
from engine.core.report_rows import (
    KINDS,
    EmailLanguage,
    EmailStatus,
    Engagement,
    ExitRow,
    Followed,
    Layout,
    Reached,
    Rows,
    StageCount,
    Stays,
    from_entries,
    merged,
)
from engine.store import tables

OPENED, CLICKED = "email_opened", "email_clicked"
UNSUBSCRIBED, FUNNEL_UNSUBSCRIBED = "unsubscribed", "funnel_unsubscribed"
# Seen by the lead (or maybe): an unsubscribe is put down to the last of these before it.
REACHED_INBOX = ("sending", "sent", "unknown")
BOUNCED = "bounced"
# What a report did that loses the lead's address (engine.store.bounces): it bounced, or it complained.
SUPPRESSED_BY_REPORT = ("suppressed", "suppressed after soft bounces")
COMPLAINED = "complained"
# An exit whose cause is the engine's own `complained` event (an exit rule on it): its id is `complaint:...`.
COMPLAINT_EVENT_IDS = "complaint:%"
# A rollup's language for leads without one (a unique key cannot hold NULL as one value on PostgreSQL).
NO_LANGUAGE = ""
SETTLED = ("sent", "bounced", "failed", "unknown", "skipped")


@dataclass(frozen=True, slots=True)
class Scope:
    """Which leads a report covers: one funnel or all, the cohort that entered on or after `since`, and
    the leads of one `language` (RFC 4647 basic filtering: `de` covers `de` and `de-AT`; canonical tags).
    `unset_reads` is the language a lead without one reads (the funnel's default): those leads count
    when it falls under `language`."""

    funnel: str | None = None
    since: datetime | None = None
    language: str | None = None
    unset_reads: str | None = None
    # Rolling up (engine.store.rollups): only these leads' raw rows, and no rollups.
    leads: tuple[int, ...] | None = None
    # Whether some enrollments are rolled up: then their rows up to then count in `report_rollups`, not
    # here. Set by `read_rows` and `exits` from the rollups table (small), so a database that never
    # pruned pays nothing for it.
    rolled: bool = False


def _speaks(language: str, tag: Any) -> Any:
    # `_` and `%` cannot occur in a canonical tag, so LIKE matches the prefix and a dash, nothing more.
    return sa.or_(tag == language, tag.like(f"{language}-%"))


def _of_language(scope: Scope, lead_id: sa.ColumnElement[Any]) -> list[Any]:
    """WHERE terms keeping the leads of `scope.language`, if it is given."""
    if scope.language is None:
        return []
    lead = tables.leads
    spoken = _speaks(scope.language, lead.c.language)
    unset = scope.unset_reads
    if unset is not None and (unset == scope.language or unset.startswith(f"{scope.language}-")):
        spoken = sa.or_(spoken, lead.c.language.is_(None))
    return [sa.exists().where(lead.c.id == lead_id, spoken)]


def _cohort(scope: Scope, lead_id: sa.ColumnElement[Any], funnel_id: sa.ColumnElement[Any], stamped: Any) -> list[Any]:
    """WHERE terms keeping rows of the funnel in scope, of leads who entered it since `since`, of the
    language in scope, that no rollup counts already (`stamped`: when the engine wrote the row)."""
    terms: list[Any] = _of_language(scope, lead_id)
    if scope.leads is not None:
        terms.append(lead_id.in_(scope.leads))
    if scope.rolled:
        e = tables.enrollments
        terms.append(
            ~sa.exists().where(e.c.lead_id == lead_id, e.c.funnel_id == funnel_id, e.c.rolled_up_at >= stamped)
        )
    if scope.funnel is not None:
        terms.append(funnel_id == scope.funnel)
    if scope.since is not None:
        e = tables.enrollments
        terms.append(
            sa.exists().where(e.c.lead_id == lead_id, e.c.funnel_id == funnel_id, e.c.entered_at >= scope.since)
        )
    return terms


def read_rows(conn: sa.Connection, scope: Scope) -> Rows:
    """The report's rows: what the raw tables hold plus what was rolled up before pruning them."""
    scope = replace(scope, rolled=_any_rolled_up(conn))
    raw = raw_rows(conn, scope)
    return merged(raw, _rolled_up(conn, scope, tuple(k for k in KINDS if k != "exits"))) if scope.rolled else raw


def exits(conn: sa.Connection, scope: Scope) -> list[ExitRow]:
    """Leads who left each funnel, grouped by the stage they left from, the exit reason and cause, whether
    they had reached the goal, and the last email of that stage they got before leaving (the customer
    journey map's drop-off). Not here, but in `losses`: a lead that lost its address to an email of the
    funnel (a bounce, a complaint), counted once at that email, not again when it leaves later; and an
    exit caused by the engine's `complained` event (an exit rule on it, after a complaint about another
    funnel's email)."""
    scope = replace(scope, rolled=_any_rolled_up(conn))
    raw = _exits(conn, scope, by_complaint=False)
    if not scope.rolled:
        return raw
    return list(merged(Rows(exits=raw), _rolled_up(conn, scope, ("exits",))).exits)


def raw_rows(conn: sa.Connection, scope: Scope, with_exits: bool = False) -> Rows:
    """The report's rows in the raw tables alone (`with_exits`: the journey map's exits too)."""
    return Rows(
        stage_counts=stage_counts(conn, scope),
        reached=reached(conn, scope),
        followed=followed(conn, scope),
        stays=stays(conn, scope),
        email_statuses=email_statuses(conn, scope),
        engagement=[*engagement(conn, scope), *unsubscribes(conn, scope), *report_outcomes(conn, scope)],
        losses=losses(conn, scope),
        email_languages=email_languages(conn, scope),
        exits=_exits(conn, scope, by_complaint=False) if with_exits else (),
    )


def _any_rolled_up(conn: sa.Connection) -> bool:
    return conn.execute(sa.select(tables.report_rollups.c.id).limit(1)).first() is not None


def _rolled_up(conn: sa.Connection, scope: Scope, kinds: tuple[str, ...]) -> Rows:
    """The rolled-up rows of `kinds` in scope: of its funnel, of the days since `since` (a UTC date, so
    whole days), of leads of its language (a lead without one counted as `unset_reads`)."""
    r = tables.report_rollups
    stmt = sa.select(r.c.kind, r.c.key, sa.func.sum(r.c.count)).where(r.c.kind.in_(kinds)).group_by(r.c.kind, r.c.key)
    if scope.funnel is not None:
        stmt = stmt.where(r.c.funnel_id == scope.funnel)
    if scope.since is not None:
        stmt = stmt.where(r.c.day >= scope.since.date().isoformat())
    if scope.language is not None:
        spoken = _speaks(scope.language, r.c.language)
        unset = scope.unset_reads
        if unset is not None and (unset == scope.language or unset.startswith(f"{scope.language}-")):
            spoken = sa.or_(spoken, r.c.language == NO_LANGUAGE)
        stmt = stmt.where(spoken)
    return from_entries((kind, json.loads(key), int(n)) for kind, key, n in conn.execute(stmt))


def stage_counts(conn: sa.Connection, scope: Scope) -> list[StageCount]:
    e = tables.enrollments
    stmt = sa.select(e.c.funnel_id, e.c.stage, e.c.status, e.c.exit_reason, sa.func.count()).group_by(
        e.c.funnel_id, e.c.stage, e.c.status, e.c.exit_reason
    )
    if scope.funnel is not None:
        stmt = stmt.where(e.c.funnel_id == scope.funnel)
    if scope.since is not None:
        stmt = stmt.where(e.c.entered_at >= scope.since)
    if scope.leads is not None:
        stmt = stmt.where(e.c.lead_id.in_(scope.leads))
    stmt = stmt.where(*_of_language(scope, e.c.lead_id))
    return [StageCount(*row) for row in conn.execute(stmt)]


def _transitions(scope: Scope) -> tuple[sa.Table, list[Any]]:
    t = tables.stage_transitions
    terms = _cohort(scope, t.c.lead_id, t.c.funnel_id, t.c.at)
    if scope.since is not None:
        terms.append(t.c.at >= scope.since)
    return t, terms


def _first_visits(scope: Scope) -> sa.CTE:
    """Each lead's first entry into each stage, by transition id: the order the engine lived it in
    (several transitions can share one instant)."""
    t, terms = _transitions(scope)
    return (
        sa.select(t.c.lead_id, t.c.funnel_id, t.c.to_stage.label("stage"), sa.func.min(t.c.id).label("first"))
        .where(t.c.to_stage.is_not(None), *terms)
        .group_by(t.c.lead_id, t.c.funnel_id, t.c.to_stage)
        .cte("first_visits")
    )


def reached(conn: sa.Connection, scope: Scope) -> list[Reached]:
    v = _first_visits(scope)
    stmt = sa.select(v.c.funnel_id, v.c.stage, sa.func.count()).group_by(v.c.funnel_id, v.c.stage)
    return [Reached(*row) for row in conn.execute(stmt)]


def followed(conn: sa.Connection, scope: Scope) -> list[Followed]:
    """For every pair of stages, the leads who first reached one and later the other."""
    v = _first_visits(scope)
    a, b = v.alias("a"), v.alias("b")
    stmt = (
        sa.select(a.c.funnel_id, a.c.stage, b.c.stage, sa.func.count())
        .select_from(
            a.join(b, sa.and_(b.c.lead_id == a.c.lead_id, b.c.funnel_id == a.c.funnel_id, b.c.first > a.c.first))
        )
        .group_by(a.c.funnel_id, a.c.stage, b.c.stage)
    )
    return [Followed(*row) for row in conn.execute(stmt)]


def _minutes(conn: sa.Connection, start: Any, end: Any) -> sa.ColumnElement[int]:
    """Whole minutes from `start` to `end` (UTC text on SQLite, timestamptz on PostgreSQL)."""
    if conn.dialect.name == "sqlite":
        span = (sa.func.julianday(end) - sa.func.julianday(start)) * 1440.0
    else:
        span = sa.extract("epoch", end - start) / 60.0
    return sa.cast(sa.func.round(span), sa.Integer)


def stays(conn: sa.Connection, scope: Scope) -> list[Stays]:
    """Completed stays: from a transition into a stage to the lead's next transition in that funnel."""
    t, terms = _transitions(scope)
    left_at = sa.func.lead(t.c.at).over(partition_by=(t.c.lead_id, t.c.funnel_id), order_by=(t.c.at, t.c.id))
    visits = (
        sa.select(t.c.funnel_id, t.c.to_stage.label("stage"), t.c.at.label("at"), left_at.label("left_at"))
        .where(*terms)
        .subquery()
    )
    spans = (
        sa.select(visits.c.funnel_id, visits.c.stage, _minutes(conn, visits.c.at, visits.c.left_at).label("minutes"))
        .where(visits.c.stage.is_not(None), visits.c.left_at.is_not(None))
        .subquery()
    )
    stmt = sa.select(spans.c.funnel_id, spans.c.stage, spans.c.minutes, sa.func.count()).group_by(
        spans.c.funnel_id, spans.c.stage, spans.c.minutes
    )
    return [Stays(*row) for row in conn.execute(stmt)]


def email_statuses(conn: sa.Connection, scope: Scope) -> list[EmailStatus]:
    o = tables.outbox
    stmt = (
        sa.select(o.c.funnel_id, o.c.step, o.c.template, o.c.status, sa.func.count())
        .where(*_cohort(scope, o.c.lead_id, o.c.funnel_id, o.c.created_at))
        .group_by(o.c.funnel_id, o.c.step, o.c.template, o.c.status)
    )
    return [EmailStatus(*row) for row in conn.execute(stmt)]


def email_languages(conn: sa.Connection, scope: Scope) -> list[EmailLanguage]:
    """The emails of each step by the language they were written in (`outbox.language`) and status."""
    o = tables.outbox
    stmt = (
        sa.select(o.c.funnel_id, o.c.step, o.c.language, o.c.status, sa.func.count())
        .where(*_cohort(scope, o.c.lead_id, o.c.funnel_id, o.c.created_at))
        .group_by(o.c.funnel_id, o.c.step, o.c.language, o.c.status)
    )
    return [EmailLanguage(*row) for row in conn.execute(stmt)]


def _named(events: Sequence[str]) -> Any:
    ev = tables.events
    return ev.c.name.in_([sa.literal_column(f"'{name}'") for name in events])


def engagement(conn: sa.Connection, scope: Scope) -> list[Engagement]:
    """Opens and clicks: distinct leads per email, from the tracking events' {funnel, step}."""
    ev = tables.events
    funnel = ev.c.properties["funnel"].as_string()
    # Grouped outside: PostgreSQL does not see two bound JSON keys as the same expression.
    tracked = sa.select(
        funnel.label("funnel"), ev.c.properties["step"].as_string().label("step"), ev.c.name, ev.c.lead_id
    ).where(_named((OPENED, CLICKED)), *_cohort(scope, ev.c.lead_id, funnel, ev.c.received_at))
    if scope.since is not None:
        tracked = tracked.where(ev.c.occurred_at >= scope.since)
    sub = tracked.subquery()
    stmt = sa.select(sub.c.funnel, sub.c.step, sub.c.name, sa.func.count(sa.distinct(sub.c.lead_id))).group_by(
        sub.c.funnel, sub.c.step, sub.c.name
    )
    kinds = {OPENED: "opened", CLICKED: "clicked"}
    return [Engagement(f, s, kinds[name], n) for f, s, name, n in conn.execute(stmt) if f is not None and s is not None]


def unsubscribes(conn: sa.Connection, scope: Scope) -> list[Engagement]:
    """Unsubscribes, each put down to the last email the lead got before it (of the funnel it left, for
    a per-funnel unsubscribe): the email after which they said "no more"."""
    ev, o = tables.events, tables.outbox
    last = o.alias("last_email")
    left = ev.c.properties["funnel"].as_string()
    last_email = (
        sa.select(last.c.id)
        .where(
            last.c.lead_id == ev.c.lead_id,
            last.c.sent_at <= ev.c.occurred_at,
            last.c.status.in_(REACHED_INBOX),
            sa.or_(ev.c.name == UNSUBSCRIBED, last.c.funnel_id == left),
        )
        .order_by(last.c.sent_at.desc(), last.c.id.desc())
        .limit(1)
        .correlate(ev)
        .scalar_subquery()
    )
    leaving = sa.select(ev.c.lead_id, ev.c.received_at, last_email.label("email_id")).where(
        _named((UNSUBSCRIBED, FUNNEL_UNSUBSCRIBED))
    )
    if scope.since is not None:
        leaving = leaving.where(ev.c.occurred_at >= scope.since)
    sub = leaving.subquery()
    stmt = (
        sa.select(o.c.funnel_id, o.c.step, sa.func.count(sa.distinct(sub.c.lead_id)))
        .select_from(sub.join(o, o.c.id == sub.c.email_id))
        .where(*_cohort(scope, o.c.lead_id, o.c.funnel_id, sub.c.received_at))
        .group_by(o.c.funnel_id, o.c.step)
    )
    return [Engagement(f, s, "unsubscribed", n) for f, s, n in conn.execute(stmt)]


def report_outcomes(conn: sa.Connection, scope: Scope) -> list[Engagement]:
    """Soft bounces and complaints per email: distinct leads with a report of that class matched to the
    email (the hard bounces are the outbox's `bounced` status, whether the relay refused the address or a
    report said so later). Every mailbox-trouble report counts, delays included, as the soft limit does."""
    b, o = tables.bounce_reports, tables.outbox
    stmt = (
        sa.select(o.c.funnel_id, o.c.step, b.c.failure_class, sa.func.count(sa.distinct(o.c.lead_id)))
        .select_from(b.join(o, o.c.id == b.c.outbox_id))
        .where(
            b.c.failure_class.in_((MAILBOX_TROUBLE, COMPLAINT)),
            *_cohort(scope, o.c.lead_id, o.c.funnel_id, b.c.received_at),
        )
        .group_by(o.c.funnel_id, o.c.step, b.c.failure_class)
    )
    if scope.since is not None:
        stmt = stmt.where(b.c.received_at >= scope.since)
    kinds = {MAILBOX_TROUBLE: "soft bounced", COMPLAINT: "complained"}
    return [Engagement(f, s, kinds[klass], n) for f, s, klass, n in conn.execute(stmt)]


def _lost_messages() -> sa.Subquery:
    """Every message that cost its lead the address: (lead, funnel, message, 0 bounced | 1 complained).
    Bounced: the outbox says `bounced` (the relay refused the address, or a report said it is gone), or a
    report about it suppressed the address (the soft bounce that passed the limit). Complained: a
    complaint about it."""
    o, b = tables.outbox, tables.bounce_reports
    bounced = sa.select(o.c.lead_id, o.c.funnel_id, o.c.id.label("message"), sa.literal(0).label("kind")).where(
        o.c.status == BOUNCED
    )
    reported = sa.select(
        o.c.lead_id,
        o.c.funnel_id,
        o.c.id.label("message"),
        sa.case((b.c.action == COMPLAINED, 1), else_=0).label("kind"),
    ).select_from(b.join(o, o.c.id == b.c.outbox_id))
    reported = reported.where(b.c.action.in_((*SUPPRESSED_BY_REPORT, COMPLAINED)))
    return sa.union_all(bounced, reported).subquery("lost")


def _lost_in(funnel_id: Any, lead_id: Any) -> Any:
    """Whether the lead lost its address to a message of this funnel (see `_lost_messages`)."""
    o, b = tables.outbox, tables.bounce_reports
    bounced = sa.exists().where(o.c.lead_id == lead_id, o.c.funnel_id == funnel_id, o.c.status == BOUNCED)
    about = o.alias("about")
    reported = (
        sa.select(b.c.id)
        .select_from(b.join(about, about.c.id == b.c.outbox_id))
        .where(
            b.c.lead_id == lead_id,
            about.c.funnel_id == funnel_id,
            b.c.action.in_((*SUPPRESSED_BY_REPORT, COMPLAINED)),
        )
        .exists()
    )
    return sa.or_(bounced, reported)


def _exits(conn: sa.Connection, scope: Scope, by_complaint: bool) -> list[ExitRow]:
    t, o, g = tables.stage_transitions, tables.outbox, tables.goals
    _, terms = _transitions(scope)
    last = o.alias("last_email")
    after = (
        sa.select(last.c.step)
        .where(
            last.c.lead_id == t.c.lead_id,
            last.c.funnel_id == t.c.funnel_id,
            last.c.stage == t.c.from_stage,
            last.c.status.in_(REACHED_INBOX),
            last.c.sent_at <= t.c.at,
        )
        .order_by(last.c.sent_at.desc(), last.c.id.desc())
        .limit(1)
        .correlate(t)
        .scalar_subquery()
    )
    reached = sa.exists().where(g.c.lead_id == t.c.lead_id, g.c.funnel_id == t.c.funnel_id, g.c.at <= t.c.at)
    complained = sa.and_(
        t.c.cause_kind == "exit_rule", sa.func.coalesce(t.c.cause_ref, "").like(COMPLAINT_EVENT_IDS)
    )  # never NULL: NOT of it keeps every other exit
    leaving = (
        sa.select(
            t.c.funnel_id,
            t.c.from_stage.label("stage"),
            sa.func.coalesce(t.c.exit_reason, "exited").label("reason"),
            t.c.cause_kind,
            sa.case((reached, 1), else_=0).label("goal"),
            after.label("after"),
        )
        .where(
            t.c.to_stage.is_(None),
            t.c.from_stage.is_not(None),
            complained if by_complaint else sa.not_(complained),
            ~_lost_in(t.c.funnel_id, t.c.lead_id),
            *terms,
        )
        .subquery()
    )
    # Grouped outside: the correlated subquery is computed once per exit, then counted.
    stmt = sa.select(
        leaving.c.funnel_id, leaving.c.stage, leaving.c.reason, leaving.c.cause_kind, leaving.c.goal, leaving.c.after,
        sa.func.count(),
    ).group_by(
        leaving.c.funnel_id, leaving.c.stage, leaving.c.reason, leaving.c.cause_kind, leaving.c.goal, leaving.c.after
    )  # fmt: skip
    return [
        ExitRow(f, stage, reason, "complaint" if by_complaint else cause, bool(goal), step, n)
        for f, stage, reason, cause, goal, step, n in conn.execute(stmt)
    ]


def losses(conn: sa.Connection, scope: Scope) -> list[ExitRow]:
    """Leads a funnel lost to a bounce or a complaint, by stage and email as exits are: those who lost
    their address to an email of the funnel, at the first such email (after it no marketing email reaches
    them: the address is suppressed), `bounced` (cause `bounce`) or `complained` (cause `complaint`); and
    those who left it on an exit rule for the engine's `complained` event (cause `complaint`, the rule's
    reason), after a complaint about another funnel's email."""
    o = tables.outbox
    lost = _lost_messages()
    first = sa.func.row_number().over(
        partition_by=(lost.c.lead_id, lost.c.funnel_id), order_by=(lost.c.message, lost.c.kind)
    )
    ranked = sa.select(lost.c.message, lost.c.kind, first.label("nth")).subquery("ranked")
    stmt = (
        sa.select(o.c.funnel_id, o.c.stage, o.c.step, ranked.c.kind, sa.func.count())
        .select_from(ranked.join(o, o.c.id == ranked.c.message))
        .where(ranked.c.nth == 1, *_cohort(scope, o.c.lead_id, o.c.funnel_id, o.c.created_at))
        .group_by(o.c.funnel_id, o.c.stage, o.c.step, ranked.c.kind)
    )
    named = {0: ("bounced", "bounce"), 1: ("complained", "complaint")}
    at_emails = [ExitRow(f, stage, *named[int(kind)], False, step, n) for f, stage, step, kind, n in conn.execute(stmt)]
    return [*at_emails, *_exits(conn, scope, by_complaint=True)]


def newest_definition(conn: sa.Connection, funnel_id: str) -> dict[str, Any] | None:
    """The definition the engine published last for this funnel (what it runs), as stored."""
    f = tables.funnel_versions
    stmt = (
        sa.select(f.c.definition)
        .where(f.c.funnel_id == funnel_id)
        .order_by(f.c.created_at.desc(), f.c.id.desc())
        .limit(1)
    )
    found = conn.execute(stmt).scalar()
    return dict(found) if found is not None else None


def layouts(conn: sa.Connection, funnel_ids: Iterable[str]) -> dict[str, Layout]:
    """Stage and email order from the newest published definition of each funnel."""
    f = tables.funnel_versions
    wanted = sorted(set(funnel_ids))
    rows = conn.execute(
        sa.select(f.c.funnel_id, f.c.definition).where(f.c.funnel_id.in_(wanted)).order_by(f.c.created_at, f.c.id)
    )
    newest = {funnel_id: definition for funnel_id, definition in rows}
    out = {}
    for funnel_id, definition in newest.items():
        stages = [s for s in definition.get("stages", []) if isinstance(s, dict)]
        out[funnel_id] = Layout(
            stages=tuple(str(s.get("id")) for s in stages),
            emails=tuple(str(step["id"]) for s in stages for step in s.get("steps", []) if step.get("send")),
        )
    return out


# --------------------------------------------------------------------------------------------------
# The live feed (`funnel watch`)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransitionSeen:
    id: int
    at: datetime
    lead: str
    funnel: str
    from_stage: str | None
    to_stage: str | None
    cause_kind: str
    cause_ref: str | None
    exit_reason: str | None
    event: str | None = None  # the name of the event the cause names, when it is one
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EmailSeen:
    id: int
    at: datetime
    lead: str
    funnel: str
    step: str
    template: str
    status: str
    detail: str | None  # why skipped, or the server's answer


class Feed:
    """Follows the database from a starting point; `poll` returns what is new since the last call."""

    def __init__(self, funnel: str | None = None, from_start: bool = False, batch: int = 1000) -> None:
        self.funnel = funnel
        self.batch = batch
        self.transitions = 0 if from_start else None  # last id seen; None: not started
        self.emails = 0 if from_start else None
        self.tracked: set[int] = set()  # outbox rows seen waiting, to report when they settle

    def poll(self, conn: sa.Connection) -> list[TransitionSeen | EmailSeen]:
        t, o = tables.stage_transitions, tables.outbox
        newest_transition = conn.execute(sa.select(sa.func.coalesce(sa.func.max(t.c.id), 0))).scalar_one()
        newest_email = conn.execute(sa.select(sa.func.coalesce(sa.func.max(o.c.id), 0))).scalar_one()
        # Starting now; or the newest rows were erased and SQLite will hand their ids out again.
        if self.transitions is None or newest_transition < self.transitions:
            self.transitions = newest_transition
        if self.emails is None or newest_email < self.emails:
            self.emails = newest_email
        seen: list[TransitionSeen | EmailSeen] = [*self._transitions(conn), *self._new_emails(conn)]
        self._watch_heads(conn)
        seen += self._settled(conn)
        seen.sort(key=lambda item: (item.at, isinstance(item, EmailSeen), item.id))
        return seen

    def _transitions(self, conn: sa.Connection) -> list[TransitionSeen]:
        t, leads, ev = tables.stage_transitions, tables.leads, tables.events
        stmt = (
            sa.select(t, leads.c.email)
            .select_from(t.join(leads, leads.c.id == t.c.lead_id))
            .where(t.c.id > self.transitions)
            .order_by(t.c.id)
            .limit(self.batch)
        )
        if self.funnel is not None:
            stmt = stmt.where(t.c.funnel_id == self.funnel)
        rows = conn.execute(stmt).all()
        if rows:
            self.transitions = rows[-1].id
        refs = sorted({r.cause_ref for r in rows if r.cause_ref and r.cause_kind in ("event", "exit_rule", "goal")})
        causes: dict[str, tuple[str, dict[str, Any]]] = {}
        if refs:
            found = conn.execute(sa.select(ev.c.event_id, ev.c.name, ev.c.properties).where(ev.c.event_id.in_(refs)))
            causes = {r.event_id: (r.name, dict(r.properties)) for r in found}
        return [
            TransitionSeen(
                r.id,
                r.at,
                r.email,
                r.funnel_id,
                r.from_stage,
                r.to_stage,
                r.cause_kind,
                r.cause_ref,
                r.exit_reason,
                *causes.get(r.cause_ref or "", (None, {})),
            )
            for r in rows
        ]

    def _email_rows(self, conn: sa.Connection, *terms: Any, limit: int | None = None) -> list[sa.Row[Any]]:
        o, leads = tables.outbox, tables.leads
        stmt = sa.select(
            o.c.id, o.c.funnel_id, o.c.step, o.c.template, o.c.status, o.c.skip_reason, o.c.last_error,
            o.c.created_at, o.c.sent_at, o.c.due_at, leads.c.email,
        ).select_from(o.join(leads, leads.c.id == o.c.lead_id)).where(*terms)  # fmt: skip
        if self.funnel is not None:
            stmt = stmt.where(o.c.funnel_id == self.funnel)
        return list(conn.execute(stmt.order_by(o.c.id).limit(limit)))

    def _new_emails(self, conn: sa.Connection) -> list[EmailSeen]:
        rows = self._email_rows(conn, tables.outbox.c.id > self.emails, limit=self.batch)
        if rows:
            self.emails = rows[-1].id
        out = []
        for r in rows:
            if r.status in SETTLED:
                out.append(_email(r))
            else:
                self.tracked.add(r.id)
                if r.status != "sending":
                    out.append(EmailSeen(r.id, r.created_at, r.email, r.funnel_id, r.step, r.template, "queued", None))
        return out

    def _watch_heads(self, conn: sa.Connection) -> None:
        """Track the next messages to go (the head of the ready index) and those being sent."""
        o = tables.outbox
        ready = sa.select(o.c.id).where(
            o.c.status.in_([sa.literal_column("'queued'"), sa.literal_column("'deferred'")])
        )
        sending = sa.select(o.c.id).where(o.c.status == sa.literal_column("'sending'"))
        if self.funnel is not None:
            ready, sending = ready.where(o.c.funnel_id == self.funnel), sending.where(o.c.funnel_id == self.funnel)
        self.tracked.update(conn.execute(ready.order_by(o.c.next_attempt_at).limit(self.batch)).scalars())
        self.tracked.update(conn.execute(sending.limit(self.batch)).scalars())

    def _settled(self, conn: sa.Connection) -> list[EmailSeen]:
        wanted = sorted(self.tracked)
        out = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            found = {r.id: r for r in self._email_rows(conn, tables.outbox.c.id.in_(chunk))}
            for message_id in chunk:
                row = found.get(message_id)
                if row is None:
                    self.tracked.discard(message_id)  # erased with its lead
                elif row.status in SETTLED:
                    self.tracked.discard(message_id)
                    out.append(_email(row))
        return out


def _email(r: sa.Row[Any]) -> EmailSeen:
    detail = r.skip_reason if r.status == "skipped" else r.last_error
    at = r.sent_at or r.due_at
    return EmailSeen(r.id, at, r.email, r.funnel_id, r.step, r.template, r.status, detail)
