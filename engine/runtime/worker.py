"""The tick: events and due enrollments through the pure core, each decision committed with its
consequences (new state, stage transitions, outbox rows) in one transaction.

The scheduler only calls `tick`; correctness never depends on when or how often. Two workers may
tick at once: PostgreSQL hands each a disjoint batch (SKIP LOCKED) and row locks serialise the rest;
SQLite has a single writer, so each transaction is the lock (a batch of events is decided on a snapshot
and written under the lock only if that snapshot still holds, see `Worker.process_events`).

Events and due enrollments are both handled a batch at a time: the batch's rows read (and locked) at
once, each decided by the pure core, and every decision of the batch written together by the one
decision writer (`engine.store.decisions`) before the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from engine.core import journey
from engine.core.definition import Funnel
from engine.core.versions import migrate_enrollment
from engine.runtime.experiment_rounds import ExperimentRounds
from engine.store import leads as store
from engine.store.database import READ_ONLY, Connection, Engine, data_version
from engine.store.decisions import apply_decisions

log = logging.getLogger("engine.worker")


def _same(decision: journey.Decision) -> journey.Decision:
    return decision


@dataclass
class TickResult:
    events: int = 0
    advanced: int = 0
    enrolled: int = 0
    transitions: int = 0
    emails_queued: int = 0
    migrated: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def work(self) -> int:
        return self.events + self.advanced

    def add(self, other: TickResult) -> None:
        self.events += other.events
        self.advanced += other.advanced
        self.enrolled += other.enrolled
        self.transitions += other.transitions
        self.emails_queued += other.emails_queued
        self.migrated += other.migrated
        self.errors.extend(other.errors)


@dataclass
class _EventBatch:
    """Claimed events, the leads and enrollments as read for them, and what the core decided."""

    pending: list[store.PendingEvent]
    leads: dict[int, journey.Lead]
    states: dict[tuple[int, str], journey.Enrollment]
    decisions: list[tuple[int, journey.Decision]] = field(default_factory=list)
    result: TickResult = field(default_factory=TickResult)


class Worker:
    def __init__(self, engine: Engine, funnels: Mapping[str, Funnel], batch_size: int = 500) -> None:
        self.engine = engine
        self.funnels = dict(funnels)
        self.batch_size = batch_size
        self._old: dict[tuple[str, str], Funnel | None] = {}  # earlier definitions, for edits
        # Decided experiments: the arm new leads get (`promoted` to the journey); decides what is due.
        self.experiments = ExperimentRounds(engine, self.funnels)

    def publish(self, now: datetime | None = None) -> None:
        """Record the loaded definitions (content-hashed) so `funnel plan` and ops can compare versions."""
        with self.engine.begin() as conn:
            for funnel in self.funnels.values():
                store.save_funnel_version(conn, funnel)
                # Leads on an earlier version are looked at on the next ticks, so an edit that removed
                # their step or stage moves them now, not when their old wait would have ended.
                store.wake_outdated(conn, funnel.id, funnel.version, now or datetime.now(UTC))

    def tick(self, now: datetime) -> TickResult:
        """One pass: experiments due a decision, pending events (they may change what is due), then due
        enrollments."""
        self.experiments.round(now)
        result = TickResult()
        result.add(self.process_events(now))
        result.add(self.process_due(now))
        return result

    def run_until_idle(self, now: datetime, max_ticks: int = 10_000) -> TickResult:
        total = TickResult()
        for _ in range(max_ticks):
            result = self.tick(now)
            total.add(result)
            if result.work == 0:
                break
        return total

    # -- events ---------------------------------------------------------------------------------

    def process_events(self, now: datetime) -> TickResult:
        """A batch of pending events through the core, in received order, written at once: the batch's
        leads and enrollments are read (and locked) up front, each decision updates them in memory for
        the next event of the same lead, and all decisions are written together before the commit.

        SQLite has a single writer, and holding it while the core decides would keep the HTTP app from
        recording events all that time. So there the batch is decided on a snapshot, without the lock,
        and written under it only if the events, leads and enrollments it was decided from are still
        what the database holds (else it is decided again, holding the lock): the same outcome as
        deciding under the lock. When no other connection has committed since the snapshot, it holds
        without reading it again. PostgreSQL locks the batch's rows instead and decides holding them."""
        if self.engine.dialect.name == "sqlite":
            # One connection for both transactions: SQLite's data_version, which moves when another
            # connection commits, is only comparable within a connection.
            with self.engine.connect() as conn:
                with conn.execution_options(**{READ_ONLY: True}).begin():
                    seen = data_version(conn)  # the snapshot's: it is the transaction's first read
                    batch = self._decide(conn, now)
                if batch is None:
                    return TickResult()
                with conn.execution_options(**{READ_ONLY: False}).begin():
                    if data_version(conn) != seen and not self._unchanged(conn, batch):
                        batch = self._decide(conn, now)
                    return self._write(conn, batch, now) if batch is not None else TickResult()
        with self.engine.begin() as conn:
            batch = self._decide(conn, now)
            return self._write(conn, batch, now) if batch is not None else TickResult()

    def _decide(self, conn: Connection, now: datetime) -> _EventBatch | None:
        pending = store.claim_pending_events(conn, self.batch_size)
        if not pending:
            return None
        # After the claim: these events were recorded before it, so a decision committed before them is seen.
        self.experiments.refresh(conn)
        # A per-lead mutex: two workers holding two events of a lead not yet enrolled would both
        # find no enrollment row to lock and both enrol it. Taken in id order, so two workers
        # never wait on each other in a cycle.
        leads = store.lock_leads(conn, {row.lead_id for row in pending})
        # The row locks serialise this with a tick that claimed the same enrollments.
        states = store.lock_enrollments(conn, leads, list(self.funnels))
        batch = _EventBatch(pending, dict(leads), dict(states))
        for row in pending:
            lead = leads.get(row.lead_id)
            if lead is None:  # erased since: nothing left to move
                continue
            for funnel in self.funnels.values():
                lead = self._event_in_funnel(conn, funnel, row, lead, states, now, batch.result, batch.decisions)
            leads[row.lead_id] = lead
            batch.result.events += 1
        return batch

    def _unchanged(self, conn: Connection, batch: _EventBatch) -> bool:
        """Whether the database still holds what `batch` was decided from (read again under the lock).
        Events recorded since come after the batch's in received order: they wait for the next batch."""
        return (
            store.claim_pending_events(conn, len(batch.pending)) == batch.pending
            and store.lock_leads(conn, {row.lead_id for row in batch.pending}) == batch.leads
            and store.lock_enrollments(conn, batch.leads, list(self.funnels)) == batch.states
        )

    def _write(self, conn: Connection, batch: _EventBatch, now: datetime) -> TickResult:
        written = apply_decisions(conn, batch.decisions, now)
        batch.result.transitions += written.transitions
        batch.result.emails_queued += written.queued
        store.mark_events_processed(conn, [row.pk for row in batch.pending], now)
        return batch.result

    def _event_in_funnel(
        self,
        conn: Connection,
        funnel: Funnel,
        row: store.PendingEvent,
        lead: journey.Lead,
        states: dict[tuple[int, str], journey.Enrollment],
        now: datetime,
        result: TickResult,
        decisions: list[tuple[int, journey.Decision]],
    ) -> journey.Lead:
        state = states.get((row.lead_id, funnel.id))
        # An event is handled at the time it happened, but never before what the lead has already
        # lived through in this funnel (the core's timeline only moves forward) nor after now.
        at = min(row.event.at, now)
        if state is not None and state.status == "active":
            state, edited = self._current(conn, funnel, state, now, result)
            at = max(at, state.stage_entered_at, state.due)
            promoted = self.experiments.arms_for(funnel.id)
            decision = edited(journey.on_event(funnel, lead, state, replace(row.event, at=at), promoted))
        else:
            cause = journey.entry_trigger(funnel, lead, row.event)
            if cause is None or not journey.may_reenter(funnel, state, at):
                return lead
            if state is not None and state.exited_at is not None:
                at = max(at, state.exited_at)
            decision = journey.enroll(
                funnel, lead, at, cause, previous=state, promoted=self.experiments.arms_for(funnel.id)
            )
            result.enrolled += 1
        assert decision.enrollment is not None
        states[(row.lead_id, funnel.id)] = decision.enrollment
        decisions.append((row.lead_id, decision))
        return decision.lead

    # -- due enrollments --------------------------------------------------------------------------

    def process_due(self, now: datetime) -> TickResult:
        result = TickResult()
        with self.engine.begin() as conn:
            claimed = store.claim_due_enrollments(conn, now, self.batch_size, list(self.funnels))
            if not claimed:
                return result
            self.experiments.refresh(conn)
            leads = store.load_leads(conn, [c.lead_id for c in claimed], lock=True)
            decisions: list[tuple[int, journey.Decision]] = []
            for item in claimed:
                funnel = self.funnels.get(item.enrollment.funnel)
                lead = leads.get(item.lead_id)
                if lead is None:
                    continue  # an event of this lead is being handled right now; the next tick has it
                if funnel is None:
                    # A funnel file removed while leads were in it: the rows stay as they are, to be
                    # picked up again when the funnel is back.
                    result.errors.append(f"no funnel {item.enrollment.funnel!r} loaded for a due enrollment")
                    continue
                state, edited = self._current(conn, funnel, item.enrollment, now, result)
                decisions.append(
                    (
                        item.lead_id,
                        edited(journey.on_clock(funnel, lead, state, now, self.experiments.arms_for(funnel.id))),
                    )
                )
                result.advanced += 1
            written = apply_decisions(conn, decisions, now)
            result.transitions += written.transitions
            result.emails_queued += written.queued
        return result

    # -- shared ---------------------------------------------------------------------------------

    def _current(
        self, conn: Connection, funnel: Funnel, state: journey.Enrollment, now: datetime, result: TickResult
    ) -> tuple[journey.Enrollment, Callable[[journey.Decision], journey.Decision]]:
        """Move an enrollment made under an older definition onto the loaded one (by step id). The
        second value adds the stage change the edit made, if any, to the decision's records."""
        if state.version == funnel.version:
            return state, _same
        result.migrated += 1
        migration = migrate_enrollment(state, funnel, self._definition(conn, funnel.id, state.version), now)
        record = migration.transition
        if record is None:
            return migration.enrollment, _same
        return migration.enrollment, lambda d: replace(d, commands=(record, *d.commands))

    def _definition(self, conn: Connection, funnel_id: str, version: str) -> Funnel | None:
        key = (funnel_id, version)
        if key not in self._old:
            raw = store.get_funnel_definition(conn, funnel_id, version)
            self._old[key] = Funnel.model_validate(raw) if raw else None
        return self._old[key]
