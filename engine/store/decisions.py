"""The one decision writer: the journey core's decisions written to the database, a batch at a time.

A decision (`journey.Decision`) is a lead's new place in one funnel and the commands that go with it:
emails to send or to record as skipped, stage transitions, lead updates, webhook calls, goals.
`apply_decisions` writes a batch of them (the worker's batch of events, or of due enrollments) in the
caller's transaction, with the effects of writing each in turn, and whatever the batch holds it costs
the same statements: one per kind of row (an executemany), never one per decision.

- enrollments: the last state of each (lead, funnel), upserted on that key;
- leads: each lead's updates applied in order as deltas to its current row (read once, locked on
  PostgreSQL), the score added in SQL, so two funnels updating one lead do not overwrite each other;
- stage transitions: appended in the order they were decided;
- outbox: sends (`ON CONFLICT ... DO UPDATE ... WHERE status = 'skipped'`: a send takes over a recorded
  skip, any other row wins), skips (`DO NOTHING`) and, for a lead leaving a funnel by unsubscribing,
  the skipping of what waits in it. These depend on their order only where they touch the same message
  (or the same lead and funnel, for a cancel), so `outbox_rounds` groups them into rounds of three
  statements that keep that order; a batch needs more than one round only when a message is touched
  again after something of another kind touched it;
- webhook calls and goals: `ON CONFLICT DO NOTHING` on their keys (the first one stays);
- experiment assignments: an `experiment_assigned` event of the lead, already processed (it moves no
  journey; the lead's timeline shows it), keyed by (lead, funnel, step, experiment) so the first stays.

The database keeps the promises: at most one outbox row per (lead, funnel, step) by its unique key, and
writing a decision twice changes nothing more than writing it once. Every lead a batch touches is
locked by the worker before the batch is decided (events: waiting, in id order; ticks: skipping a lead
another worker holds), so these writes never wait on another worker's rows in a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from engine.core import journey
from engine.core.experiments import AssignArm
from engine.core.own_events import ENGINE, EXPERIMENT_ASSIGNED, engine_id
from engine.store import leads as store
from engine.store import tables

OutboxKind = Literal["skip", "send", "cancel"]
# The order of the three statements within a round.
_RANK: dict[OutboxKind, int] = {"skip": 0, "send": 1, "cancel": 2}

_QUEUED = (
    "template", "stage", "transactional", "status", "due_at", "attempts", "next_attempt_at", "created_at",
    "skip_reason",
)  # fmt: skip
_ENROLLMENT_STATE = (
    "version", "status", "stage", "step", "phase", "due", "wake_at", "entered_at", "stage_entered_at",
    "sent", "spent_timers", "goal_reached_at", "exit_reason", "exited_at", "updated_at",
)  # fmt: skip

_MESSAGE_KEY = "ON CONFLICT (lead_id, funnel_id, step)"
_SEND = (
    f"{_MESSAGE_KEY} DO UPDATE SET {', '.join(f'{k} = excluded.{k}' for k in _QUEUED)} WHERE outbox.status = 'skipped'"
)
_SKIP = f"{_MESSAGE_KEY} DO NOTHING"
_ENROLLMENT = (
    f"ON CONFLICT (lead_id, funnel_id) DO UPDATE SET {', '.join(f'{k} = excluded.{k}' for k in _ENROLLMENT_STATE)}"
)
_WEBHOOK = "ON CONFLICT (lead_id, funnel_id, step) DO NOTHING"
_GOAL = "ON CONFLICT (lead_id, funnel_id, goal) DO NOTHING"
_ASSIGNED = "ON CONFLICT (event_id) DO NOTHING"


@dataclass(frozen=True, slots=True)
class Written:
    """What `apply_decisions` wrote: emails newly queued (a step that already had its message is not
    counted; one that takes over a recorded skip is) and stage transitions."""

    queued: int = 0
    transitions: int = 0


@dataclass(frozen=True, slots=True)
class OutboxChange:
    """One change to the outbox a decision makes: a send, a recorded skip (of one step), or the skipping
    of every marketing email of the (lead, funnel) still waiting (`step` None)."""

    kind: OutboxKind
    lead_id: int
    funnel_id: str
    step: str | None
    params: Mapping[str, Any]


@dataclass
class Plan:
    """Every row a batch of decisions writes, by table, in the order it is written."""

    enrollments: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    updates: dict[int, list[journey.UpdateLead]] = field(default_factory=dict)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[OutboxChange] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)
    assignments: list[dict[str, Any]] = field(default_factory=list)


def apply_decisions(conn: sa.Connection, decisions: Sequence[tuple[int, journey.Decision]], now: datetime) -> Written:
    """Write decisions (lead id, decision), in order, in the caller's transaction; `now` is when they are
    written (`updated_at`, `created_at`). A decision without an enrollment is refused (ValueError naming
    it) before anything is written."""
    plan = plan_writes(decisions, now)
    if plan.enrollments:
        store.insert_rows(conn, tables.enrollments, list(plan.enrollments.values()), _ENROLLMENT)
    if plan.updates:
        _update_leads(conn, plan.updates, now)
    if plan.transitions:
        conn.execute(sa.insert(tables.stage_transitions), plan.transitions)
    queued = 0
    for kind, rows in outbox_rounds(plan.outbox):
        if kind == "send":
            queued += store.insert_rows(conn, tables.outbox, rows, _SEND)
        elif kind == "skip":
            store.insert_rows(conn, tables.outbox, rows, _SKIP)
        else:
            conn.execute(store.CANCEL_MARKETING, list(rows))
    store.insert_rows(conn, tables.webhook_calls, plan.webhooks, _WEBHOOK)
    store.insert_rows(conn, tables.goals, plan.goals, _GOAL)
    store.insert_rows(conn, tables.events, plan.assignments, _ASSIGNED)
    return Written(queued=queued, transitions=len(plan.transitions))


# --------------------------------------------------------------------------------------------------
# Deciding what to write (pure)
# --------------------------------------------------------------------------------------------------


def plan_writes(decisions: Sequence[tuple[int, journey.Decision]], now: datetime) -> Plan:
    """The rows `decisions` write, table by table, in decision order."""
    plan = Plan()
    for number, (lead_id, decision) in enumerate(decisions, start=1):
        state = decision.enrollment
        if state is None:
            raise ValueError(
                f"decision {number} of {len(decisions)} (lead id {lead_id}) has no enrollment: nothing says"
                " which funnel it belongs to"
            )
        plan.enrollments[(lead_id, state.funnel)] = _enrollment_row(lead_id, state, now)
        for command in decision.commands:
            _plan_command(plan, lead_id, state, command, now)
    return plan


def _plan_command(plan: Plan, lead_id: int, state: journey.Enrollment, c: journey.Command, now: datetime) -> None:
    funnel = state.funnel
    if isinstance(c, journey.SendEmail):
        row = _message(lead_id, funnel, c.step, c.template, c.stage, c.transactional, "queued", c.at, c.at, now, None)
        plan.outbox.append(OutboxChange("send", lead_id, funnel, c.step, row))
    elif isinstance(c, journey.SkipEmail):
        row = _message(lead_id, funnel, c.step, c.template, c.stage, False, "skipped", c.at, None, now, c.reason)
        plan.outbox.append(OutboxChange("skip", lead_id, funnel, c.step, row))
    elif isinstance(c, journey.RecordTransition):
        plan.transitions.append(
            {"lead_id": lead_id, "funnel_id": funnel, "version": state.version, "from_stage": c.from_stage,
             "to_stage": c.to_stage, "cause_kind": c.cause.kind, "cause_ref": c.cause.ref, "at": c.at,
             "exit_reason": c.exit_reason}
        )  # fmt: skip
        if c.to_stage is None and c.exit_reason == "unsubscribed":
            # A lead who leaves by unsubscribing gets nothing more from the funnel, even what was queued.
            cancel = {"lead": lead_id, "funnel": funnel, "reason": "unsubscribed"}
            plan.outbox.append(OutboxChange("cancel", lead_id, funnel, None, cancel))
    elif isinstance(c, journey.UpdateLead):
        plan.updates.setdefault(lead_id, []).append(c)
    elif isinstance(c, journey.CallWebhook):
        plan.webhooks.append(
            {"lead_id": lead_id, "funnel_id": funnel, "step": c.step, "url": c.url, "payload": dict(c.payload),
             "status": "queued", "attempts": 0, "next_attempt_at": c.at, "created_at": now}
        )  # fmt: skip
    elif isinstance(c, journey.GoalReached):
        plan.goals.append(
            {"lead_id": lead_id, "funnel_id": funnel, "goal": c.goal, "at": c.at, "within_window": c.within_window}
        )
    elif isinstance(c, AssignArm):
        plan.assignments.append(_assignment(lead_id, funnel, c, now))
    else:  # pragma: no cover - mypy sees every command above
        raise TypeError(f"no writer for the command {c!r}")


def _assignment(lead_id: int, funnel: str, c: AssignArm, now: datetime) -> dict[str, Any]:
    properties: dict[str, Any] = {"funnel": funnel, "step": c.step, "experiment": c.experiment, "arm": c.arm}
    if c.template is not None:
        properties["template"] = c.template
    if c.holdout:
        properties["holdout"] = True
    if c.promoted:
        properties["promoted"] = True
    return {
        "event_id": engine_id("experiment", lead_id, funnel, c.step, c.experiment),
        "lead_id": lead_id,
        "name": EXPERIMENT_ASSIGNED,
        "properties": properties,
        "occurred_at": c.at,
        "received_at": now,
        "processed_at": now,
        "source": ENGINE,
    }


def _enrollment_row(lead_id: int, s: journey.Enrollment, now: datetime) -> dict[str, Any]:
    return {
        "lead_id": lead_id, "funnel_id": s.funnel, "version": s.version, "status": s.status, "stage": s.stage,
        "step": s.step, "phase": s.phase, "due": s.due, "wake_at": s.wake_at, "entered_at": s.entered_at,
        "stage_entered_at": s.stage_entered_at, "sent": sorted(s.sent), "spent_timers": sorted(s.spent_timers),
        "goal_reached_at": s.goal_reached_at, "exit_reason": s.exit_reason, "exited_at": s.exited_at,
        "updated_at": now,
    }  # fmt: skip


def _message(
    lead_id: int,
    funnel_id: str,
    step: str,
    template: str,
    stage: str,
    transactional: bool,
    status: str,
    due_at: datetime,
    next_attempt_at: datetime | None,
    now: datetime,
    skip_reason: str | None,
) -> dict[str, Any]:
    return {
        "lead_id": lead_id, "funnel_id": funnel_id, "step": step, "template": template, "stage": stage,
        "transactional": transactional, "status": status, "due_at": due_at, "attempts": 0,
        "next_attempt_at": next_attempt_at, "created_at": now, "skip_reason": skip_reason,
    }  # fmt: skip


Slot = tuple[int, int]  # (round, rank of the statement within it)


def _first_slot_after(after: Slot | None, rank: int) -> Slot:
    """The first statement of this rank after the slot `after` (or the very first one), the same
    statement included when it is of this rank (its rows run in order)."""
    if after is None:
        return (0, rank)
    return (after[0], rank) if rank >= after[1] else (after[0] + 1, rank)


def outbox_rounds(changes: Iterable[OutboxChange]) -> list[tuple[OutboxKind, list[Mapping[str, Any]]]]:
    """The outbox changes as statements (kind, rows), in the order to run them, with the effect of
    running each change in turn. Two changes depend on their order when they touch the same message, or
    when one is a cancel of the (lead, funnel) the other touches; everything else commutes. So each
    change goes into the first statement of its kind after every earlier change it depends on; within
    a statement, rows keep their order (an executemany runs them one after the other)."""
    slots: dict[Slot, list[Mapping[str, Any]]] = {}
    message: dict[tuple[int, str, str], Slot] = {}  # the last slot that touched a message
    cancelled: dict[tuple[int, str], Slot] = {}  # the last cancel of a (lead, funnel)
    touched: dict[tuple[int, str], Slot] = {}  # the last slot that touched anything of a (lead, funnel)
    for change in changes:
        pair = (change.lead_id, change.funnel_id)
        if change.step is None:
            after = touched.get(pair)
        else:
            after = max(message.get((*pair, change.step), (-1, 0)), cancelled.get(pair, (-1, 0)))
            after = None if after[0] < 0 else after
        slot = _first_slot_after(after, _RANK[change.kind])
        slots.setdefault(slot, []).append(change.params)
        if change.step is None:
            cancelled[pair] = slot
        else:
            message[(*pair, change.step)] = slot
        touched[pair] = max(touched.get(pair, slot), slot)
    kinds = {rank: kind for kind, rank in _RANK.items()}
    return [(kinds[slot[1]], slots[slot]) for slot in sorted(slots)]


# --------------------------------------------------------------------------------------------------
# Lead updates
# --------------------------------------------------------------------------------------------------


def _update_leads_statement() -> sa.Update:
    leads = tables.leads
    return (
        sa.update(leads)
        .where(leads.c.id == sa.bindparam("lead"))
        .values(
            attributes=sa.bindparam("new_attributes"),
            tags=sa.bindparam("new_tags"),
            score=leads.c.score + sa.bindparam("score_delta", type_=sa.Integer()),
            updated_at=sa.bindparam("at"),
        )
    )


_UPDATE_LEADS = _update_leads_statement()


def _update_leads(conn: sa.Connection, updates: Mapping[int, list[journey.UpdateLead]], now: datetime) -> None:
    """Each lead's updates applied in order as deltas to its current row, one executemany for them all."""
    leads = tables.leads
    current: dict[int, sa.Row[Any]] = {}
    for chunk in store.id_chunks(updates):
        stmt = sa.select(leads.c.id, leads.c.attributes, leads.c.tags).where(leads.c.id.in_(chunk))
        current.update((row.id, row) for row in conn.execute(store.locking(conn, stmt.order_by(leads.c.id))))
    params: list[dict[str, Any]] = []
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
        params.append(
            {"lead": lead_id, "new_attributes": attributes, "new_tags": sorted(tags), "score_delta": score, "at": now}
        )
    if params:
        conn.execute(_UPDATE_LEADS, params)
