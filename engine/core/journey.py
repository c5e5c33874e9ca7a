"""The journey core: where every stage transition and every step is decided.

Pure: (funnel, lead, enrollment state, input) -> Decision(new state, new lead, commands). The input is
an event, or "the clock says it is T". No clock is read, no IO is done, nothing is random, so
`funnel simulate`, `funnel test` and the engine all get the same answers.

Time is logical: a step reached after a wait is due at the wait's end, even if the engine only looks at
it later (after downtime). Due steps therefore run in order, and a send whose due time is older than
the funnel's allowed lateness is skipped and recorded instead of arriving days late.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from engine.core.conditions import EventFilter, evaluate, event_matches
from engine.core.definition import (
    BranchStep,
    ConditionTrigger,
    EventTrigger,
    ExitStep,
    Funnel,
    ManualTrigger,
    MoveStep,
    OnEndMove,
    Outcome,
    SendStep,
    SplitStep,
    Stage,
    UpdateStep,
    WaitForStep,
    WaitStep,
    WaitUntilStep,
    WebhookStep,
)
from engine.core.experiments import AssignArm, choose
from engine.core.localtime import next_local_time, window_open_at, zone
from engine.core.own_events import FUNNEL_UNSUBSCRIBED, MANUAL_ENROLL, OPERATOR, UNSUBSCRIBED

# A funnel can loop with `goto`, but every loop must wait somewhere; validation refuses loops without a
# wait, and this bound keeps a bad definition that slipped through from spinning forever. It counts the
# steps and stage changes at one logical instant: a catch-up after downtime legitimately runs many
# rounds of a waiting loop, each at a later instant, and must not trip it.
MAX_STEPS_PER_DECISION = 200


# --------------------------------------------------------------------------------------------------
# Inputs and state
# --------------------------------------------------------------------------------------------------


# A lead opting out is never what lets it into a funnel, whatever its fields say.
_OPT_OUTS = frozenset({UNSUBSCRIBED, FUNNEL_UNSUBSCRIBED})


@dataclass(frozen=True, slots=True)
class Lead:
    """What the core may read of a lead. `consent` is 'subscribed' unless the lead opted out."""

    id: str
    timezone: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    score: int = 0
    consent: str = "subscribed"
    language: str | None = None  # a BCP 47 tag (engine.core.languages); None: the funnel's default


@dataclass(frozen=True, slots=True)
class Event:
    """An event as recorded: `source` says who recorded it (`engine.core.own_events`); None in simulations."""

    id: str
    name: str
    at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None


@dataclass(frozen=True, slots=True)
class Cause:
    """Why a transition happened: an event (its id), a timeout, the end of a sequence, a step, ..."""

    kind: Literal["entry", "event", "timeout", "sequence_end", "step", "goal", "exit_rule", "manual", "guard", "edit"]
    ref: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.ref}" if self.ref else self.kind


# "ready": the step is to run (only ever stored by a funnel edit that moved the lead, see
# engine.core.versions); "waiting": the step waits; "ended": the stage's sequence ended and its on_end is
# still to follow (also only stored by an edit that removed the rest of the sequence).
Phase = Literal["ready", "waiting", "ended"]


@dataclass(frozen=True, slots=True)
class Enrollment:
    """A lead's place in one funnel. `step` is None when the stage's sequence has ended (stay)."""

    funnel: str
    version: str
    status: Literal["active", "exited"]
    stage: str
    step: str | None
    phase: Phase
    due: datetime  # logical time at which the current step became due
    wake_at: datetime | None  # when the core next wants the clock; None = only an event can move it
    entered_at: datetime
    stage_entered_at: datetime
    sent: frozenset[str] = frozenset()
    spent_timers: frozenset[str] = frozenset()  # guarded `after` transitions judged false in this stay
    goal_reached_at: datetime | None = None
    exit_reason: str | None = None
    exited_at: datetime | None = None


# --------------------------------------------------------------------------------------------------
# Commands: what the adapters must do. The store writes them in the same transaction as the state.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendEmail:
    step: str
    template: str
    stage: str
    at: datetime
    transactional: bool = False


@dataclass(frozen=True, slots=True)
class SkipEmail:
    step: str
    template: str
    stage: str
    at: datetime
    reason: Literal["late", "no-consent", "already-sent"]


@dataclass(frozen=True, slots=True)
class RecordTransition:
    from_stage: str | None  # None: entering the funnel
    to_stage: str | None  # None: leaving the funnel
    cause: Cause
    at: datetime
    exit_reason: str | None = None


@dataclass(frozen=True, slots=True)
class CallWebhook:
    step: str
    url: str
    payload: Mapping[str, Any]
    at: datetime


@dataclass(frozen=True, slots=True)
class UpdateLead:
    step: str
    set: Mapping[str, Any]
    unset: tuple[str, ...]
    add_tags: tuple[str, ...]
    remove_tags: tuple[str, ...]
    score: int
    at: datetime


@dataclass(frozen=True, slots=True)
class GoalReached:
    goal: str
    at: datetime
    within_window: bool


Command = SendEmail | SkipEmail | RecordTransition | CallWebhook | UpdateLead | GoalReached | AssignArm

# No experiment decided: every assignment comes from the hash (engine.core.experiments).
NOTHING_PROMOTED: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True)
class Decision:
    enrollment: Enrollment | None
    lead: Lead
    commands: tuple[Command, ...]

    @property
    def wake_at(self) -> datetime | None:
        return self.enrollment.wake_at if self.enrollment else None


# --------------------------------------------------------------------------------------------------
# Entry
# --------------------------------------------------------------------------------------------------


def entry_trigger(funnel: Funnel, lead: Lead, event: Event | None) -> Cause | None:
    """Which entry trigger lets this lead in now: an event trigger for `event`, an operator's manual entry,
    or a condition trigger on the lead's fields, judged whenever the engine hears of the lead (any of its
    events, including `lead_updated`), except when what it hears is the lead opting out. A manual entry
    is taken only from an operator: a `manual_enroll` with any other source is not one, however it got in."""
    for trigger in funnel.entry.triggers:
        if isinstance(trigger, EventTrigger) and event is not None and _matches(trigger, event):
            return Cause("event", event.id)
        if (
            isinstance(trigger, ManualTrigger)
            and event is not None
            and event.name == MANUAL_ENROLL
            and event.source == OPERATOR
            and event.properties.get("funnel") == funnel.id
        ):
            return Cause("manual", str(event.properties.get("by") or event.id))
        if (
            isinstance(trigger, ConditionTrigger)
            and (event is None or event.name not in _OPT_OUTS)
            and evaluate(trigger.condition, lead)
        ):
            return Cause("entry", "condition")
    return None


def may_reenter(funnel: Funnel, previous: Enrollment | None, now: datetime) -> bool:
    if previous is None:
        return True
    if previous.status == "active" or funnel.entry.reentry == "never":
        return False
    cooldown = funnel.entry.cooldown
    return cooldown is None or previous.exited_at is None or now - previous.exited_at >= cooldown


def enroll(
    funnel: Funnel,
    lead: Lead,
    at: datetime,
    cause: Cause,
    previous: Enrollment | None = None,
    promoted: Mapping[str, str] = NOTHING_PROMOTED,
) -> Decision:
    """Put a lead in the funnel's entry stage and run its first steps. Emails already sent in an
    earlier enrollment stay sent: at most one email per (lead, funnel, step), even across re-entry."""
    stage = funnel.entry.stage or funnel.stages[0].id
    state = Enrollment(
        funnel=funnel.id,
        version=funnel.version,
        status="active",
        stage=stage,
        step=None,
        phase="ready",
        due=at,
        wake_at=None,
        entered_at=at,
        stage_entered_at=at,
        sent=previous.sent if previous else frozenset(),
        goal_reached_at=previous.goal_reached_at if previous else None,
    )
    run = _Run(funnel, lead, state, promoted).at_clock(at)
    run.emit(RecordTransition(None, stage, cause, at))
    run.enter_stage(stage, at)
    run.execute(at)
    return run.decision()


# --------------------------------------------------------------------------------------------------
# Clock and events
# --------------------------------------------------------------------------------------------------


def on_clock(
    funnel: Funnel, lead: Lead, state: Enrollment, now: datetime, promoted: Mapping[str, str] = NOTHING_PROMOTED
) -> Decision:
    """Everything that falls due up to `now`, in time order. `promoted`: experiment id -> the arm new
    assignments go to once the experiment is decided (leads already assigned keep theirs)."""
    run = _Run(funnel, lead, state, promoted).at_clock(now)
    run.catch_up(now)
    return run.decision()


def on_event(
    funnel: Funnel, lead: Lead, state: Enrollment, event: Event, promoted: Mapping[str, str] = NOTHING_PROMOTED
) -> Decision:
    """React to an event at its time, after first doing what fell due before it."""
    run = _Run(funnel, lead, state, promoted).at_clock(event.at)
    run.catch_up(event.at)
    if run.state.status == "active":
        run.handle_event(event)
    return run.decision()


def move(
    funnel: Funnel,
    lead: Lead,
    state: Enrollment,
    stage: str,
    at: datetime,
    ref: str | None,
    promoted: Mapping[str, str] = NOTHING_PROMOTED,
) -> Decision:
    """A manual move by an operator, recorded with cause `manual`."""
    run = _Run(funnel, lead, state, promoted).at_clock(at)
    run.catch_up(at)
    if run.state.status == "active":
        run.transition(stage, Cause("manual", ref), at)
        run.execute(at)
    return run.decision()


# --------------------------------------------------------------------------------------------------
# The interpreter
# --------------------------------------------------------------------------------------------------


class _Run:
    """One decision's working copy; mutable locally, the result is frozen."""

    def __init__(
        self, funnel: Funnel, lead: Lead, state: Enrollment, promoted: Mapping[str, str] = NOTHING_PROMOTED
    ) -> None:
        self.funnel = funnel
        self.promoted = promoted
        self.lead = lead
        self.state = state
        self.commands: list[Command] = []
        self.budget = MAX_STEPS_PER_DECISION
        self.budget_at: datetime | None = None  # the logical instant the budget is being spent at
        # The stage's sequence has ended and its on_end is still to follow. `execute` follows it in its
        # loop, so stages without steps that lead into each other cannot recurse without bound.
        self.sequence_ended = False
        self.tz = zone(lead.timezone or funnel.timezone)
        self.now = state.due  # the clock as the input tells it; set by the entry points

    def at_clock(self, now: datetime) -> _Run:
        self.now = now
        return self

    def emit(self, command: Command) -> None:
        self.commands.append(command)

    def decision(self) -> Decision:
        assert not self.sequence_ended, "every stage entry is followed by execute"
        state = replace(self.state, wake_at=self._next_wake())  # None once exited: no timers
        return Decision(state, self.lead, tuple(self.commands))

    # -- time ----------------------------------------------------------------------------------

    def _timers(self) -> list[tuple[datetime, int, Any]]:
        """Pending timers: the cursor's wake (order 1) and `after` transitions of this stage (order 0:
        a stage timeout at the same instant as a step wins, as the lead has had its time)."""
        s = self.state
        timers: list[tuple[datetime, int, Any]] = []
        if s.status != "active":
            return timers
        for t in self.funnel.transitions:
            if t.after is not None and t.applies_to(s.stage) and t.to != s.stage and t.id not in s.spent_timers:
                timers.append((s.stage_entered_at + t.after, 0, t))
        step_wake = self._step_wake()
        if step_wake is not None:
            timers.append((step_wake, 1, None))
        return timers

    def _next_wake(self) -> datetime | None:
        timers = self._timers()
        return min(t[0] for t in timers) if timers else None

    def catch_up(self, now: datetime) -> None:
        s = self.state
        if s.status == "active" and s.due <= now:
            # A cursor an edit of the funnel left to be resumed (engine.core.versions).
            if s.phase == "ended":
                self.state = replace(s, phase="ready", step=None)
                self.sequence_ended = True
                self.execute(s.due)
            elif s.phase == "ready" and s.step is not None:
                self.execute(s.due)
        while self.state.status == "active":
            due = [t for t in self._timers() if t[0] <= now]
            if not due:
                return
            at, order, transition = min(due, key=lambda t: (t[0], t[1]))
            if order == 0:
                if transition.if_ is not None and not evaluate(transition.if_, self.lead):
                    # A guarded timeout is judged once, when due; if it does not hold it is spent for
                    # this stay in the stage (otherwise it would be due forever).
                    self.state = replace(self.state, spent_timers=self.state.spent_timers | {transition.id})
                    continue
                self.transition(transition.to, Cause("timeout", transition.id), at)
                self.execute(at)
            else:
                self._wake_step(at)

    # -- stage moves ---------------------------------------------------------------------------

    def _spend(self, at: datetime) -> bool:
        """Count one step or stage change at logical time `at`; False once the instant's budget is gone."""
        if self.budget_at is None or at > self.budget_at:
            self.budget_at, self.budget = at, MAX_STEPS_PER_DECISION
        self.budget -= 1
        return self.budget > 0

    def transition(self, to: str | None, cause: Cause, at: datetime, exit_reason: str | None = None) -> None:
        s = self.state
        self.sequence_ended = False
        if to is not None and not self._spend(at):
            to, cause, exit_reason = None, Cause("guard", s.step or s.stage), "step-limit"
        self.emit(RecordTransition(s.stage, to, cause, at, exit_reason))
        if to is None:
            self.state = replace(
                s, status="exited", step=None, phase="ready", exit_reason=exit_reason, exited_at=at, due=at
            )
            return
        self.enter_stage(to, at)

    def exit(self, reason: str, cause: Cause, at: datetime) -> None:
        self.transition(None, cause, at, exit_reason=reason)

    def enter_stage(self, stage_id: str, at: datetime) -> None:
        stage = self.funnel.stage(stage_id)
        first = stage.steps[0].id if stage.steps else None
        self.state = replace(
            self.state,
            stage=stage_id,
            stage_entered_at=at,
            step=first,
            phase="ready",
            due=at,
            wake_at=None,
            spent_timers=frozenset(),
        )
        self.sequence_ended = first is None

    def _end_of_sequence(self, stage: Stage, at: datetime) -> None:
        on_end = stage.on_end
        if on_end == "stay":
            self.state = replace(self.state, step=None, phase="ready", wake_at=None)
        elif on_end == "exit":
            self.exit("sequence-end", Cause("sequence_end", stage.id), at)
        elif isinstance(on_end, OnEndMove):
            self.transition(on_end.move_to, Cause("sequence_end", stage.id), at)
        else:
            nxt = self.funnel.next_stage(stage.id)
            if nxt is None:
                self.exit("completed", Cause("sequence_end", stage.id), at)
            else:
                self.transition(nxt, Cause("sequence_end", stage.id), at)

    # -- steps ---------------------------------------------------------------------------------

    def _advance(self, at: datetime) -> None:
        """Move the cursor past the current step (to the next one, or to the end of the sequence)."""
        s = self.state
        stage = self.funnel.stage(s.stage)
        assert s.step is not None
        index, _ = self.funnel.step(s.stage, s.step)
        if index + 1 < len(stage.steps):
            self.state = replace(s, step=stage.steps[index + 1].id, phase="ready", due=at, wake_at=None)
        else:
            self.state = replace(s, step=None, phase="ready", due=at, wake_at=None)
            self.sequence_ended = True

    def _follow(self, outcome: Outcome, cause: Cause, at: datetime) -> None:
        if outcome.goto is not None:
            self.state = replace(self.state, step=outcome.goto, phase="ready", due=at, wake_at=None)
        elif outcome.move_to is not None:
            self.transition(outcome.move_to, cause, at)
        elif outcome.exit is not None:
            self.exit(outcome.exit, cause, at)
        else:
            self._advance(at)

    def _wait(self) -> None:
        self.state = replace(self.state, phase="waiting")

    def _step_wake(self) -> datetime | None:
        """When the waiting step ends. Derived from the step and the time it became due, not read from
        `wake_at`: that one is the earliest of all timers, and a stage timeout judged false must not
        make a wait end early."""
        s = self.state
        if s.step is None or s.phase != "waiting":
            return None
        _, step = self.funnel.step(s.stage, s.step)
        at = s.due
        if isinstance(step, WaitStep):
            return at + step.wait
        if isinstance(step, WaitUntilStep):
            return next_local_time(at, step.wait_until.time, step.wait_until.days, self.tz)
        if isinstance(step, WaitForStep):
            return at + step.wait_for.timeout
        window = self.funnel.send_window
        if isinstance(step, SendStep) and window is not None:
            return window_open_at(at, window.days, window.start, window.end, self.tz)
        # Waiting at a step that no longer waits (the funnel was edited under it): go on at once.
        return at

    def _wake_step(self, at: datetime) -> None:
        s = self.state
        assert s.step is not None
        _, step = self.funnel.step(s.stage, s.step)
        if isinstance(step, SendStep):
            # A send that waited for its window: do it now (execute checks lateness against `at`).
            self.state = replace(s, phase="ready", due=at, wake_at=None)
            self.execute(at, window_checked=True)
            return
        if isinstance(step, WaitForStep):
            self._follow(step.wait_for.on_timeout, Cause("timeout", step.id), at)
        else:
            self._advance(at)
        self.execute(at)

    def execute(self, at: datetime, window_checked: bool = False) -> None:
        """Run ready steps at logical time `at` until one waits or the sequence ends."""
        while self.state.status == "active":
            s = self.state
            at = s.due
            if self.sequence_ended:
                self.sequence_ended = False
                self._end_of_sequence(self.funnel.stage(s.stage), at)
                continue
            if s.step is None or s.phase != "ready":
                return
            if not self._spend(at):
                self.exit("step-limit", Cause("guard", s.step), at)
                return
            _, step = self.funnel.step(s.stage, s.step)
            if isinstance(step, SendStep):
                if not self._send(step, at, window_checked):
                    return
                window_checked = False
                self._advance(at)
            elif isinstance(step, WaitStep | WaitUntilStep | WaitForStep):
                self._wait()
            elif isinstance(step, BranchStep):
                taken = step.branch.then if evaluate(step.branch.if_, self.lead) else step.branch.else_
                self._follow(taken, Cause("step", step.id), at)
            elif isinstance(step, SplitStep):
                self._split(step, at)
            elif isinstance(step, UpdateStep):
                self._update(step, at)
                self._advance(at)
            elif isinstance(step, MoveStep):
                self.transition(step.move_to, Cause("step", step.id), at)
            elif isinstance(step, WebhookStep):
                self.emit(CallWebhook(step.id, step.webhook.url, step.webhook.payload, at))
                self._advance(at)
            elif isinstance(step, ExitStep):
                self.exit(step.exit, Cause("step", step.id), at)
            else:  # pragma: no cover - the definition's union is closed
                raise AssertionError(f"unknown step {step!r}")

    def _split(self, step: SplitStep, at: datetime) -> None:
        """Take the lead down its arm's path (a holdout goes on where its `goto` says)."""
        chosen = choose(step.split, self.lead.id, self.funnel.id, step.id, self.promoted)
        arm = chosen.arm
        self.emit(AssignArm(step.id, chosen.experiment, arm.id, at, None, arm.holdout, chosen.promoted))
        self._follow(Outcome(goto=arm.goto), Cause("step", step.id), at)

    def _send(self, step: SendStep, at: datetime, window_checked: bool) -> bool:
        """Command the email, or record why not. False when the send must wait for its window. A variant
        send assigns the lead its arm once the email is queued, and queues the arm's template."""
        s = self.state
        window = self.funnel.send_window
        if window is not None and not step.transactional and not window_checked:
            opens = window_open_at(at, window.days, window.start, window.end, self.tz)
            if opens != at:
                self._wait()
                return False
        chosen = (
            None
            if step.experiment is None
            else choose(step.experiment, self.lead.id, self.funnel.id, step.id, self.promoted)
        )
        template = step.send if chosen is None else chosen.arm.send or step.send
        if self.now - at > self.funnel.allowed_lateness:
            self.emit(SkipEmail(step.id, template, s.stage, at, "late"))
            return True
        if step.id in s.sent:
            self.emit(SkipEmail(step.id, template, s.stage, at, "already-sent"))
        elif self.lead.consent != "subscribed":
            self.emit(SkipEmail(step.id, template, s.stage, at, "no-consent"))
        else:
            if chosen is not None:
                self.emit(AssignArm(step.id, chosen.experiment, chosen.arm.id, at, template, False, chosen.promoted))
            self.emit(SendEmail(step.id, template, s.stage, at, step.transactional))
            self.state = replace(s, sent=s.sent | {step.id})
        return True

    def _update(self, step: UpdateStep, at: datetime) -> None:
        u = step.update
        attributes = {k: v for k, v in self.lead.attributes.items() if k not in u.unset}
        attributes.update(u.set)
        tags = (self.lead.tags | set(u.add_tags)) - set(u.remove_tags)
        self.lead = replace(self.lead, attributes=attributes, tags=frozenset(tags), score=self.lead.score + u.score)
        self.emit(
            UpdateLead(step.id, dict(u.set), tuple(u.unset), tuple(u.add_tags), tuple(u.remove_tags), u.score, at)
        )

    # -- events --------------------------------------------------------------------------------

    def handle_event(self, event: Event) -> None:
        at = event.at
        funnel = self.funnel
        if event.name == FUNNEL_UNSUBSCRIBED and event.properties.get("funnel") == funnel.id:
            # Built in, whatever the funnel file says: the lead asked to leave this funnel (the preference
            # page), and other funnels and transactional email elsewhere are not affected.
            self.exit("unsubscribed", Cause("event", event.id), at)
            return
        for rule in funnel.exits:
            if _matches(rule, event):
                self.exit(rule.reason, Cause("exit_rule", event.id), at)
                return
        goal = funnel.goal
        if goal is not None and self.state.goal_reached_at is None and _matches(goal, event):
            within = goal.within is None or at - self.state.entered_at <= goal.within
            self.emit(GoalReached(goal.id, at, within))
            self.state = replace(self.state, goal_reached_at=at)
            if goal.exit:
                self.exit("goal-reached", Cause("goal", event.id), at)
                return
            if goal.move_to is not None and goal.move_to != self.state.stage:
                self.transition(goal.move_to, Cause("goal", event.id), at)
                self.execute(at)
                return
        for t in funnel.transitions:
            if (
                t.on is not None
                and t.applies_to(self.state.stage)
                and t.to != self.state.stage
                and _matches(t.on, event)
                and (t.if_ is None or evaluate(t.if_, self.lead))
            ):
                self.transition(t.to, Cause("event", event.id), at)
                self.execute(at)
                return
        s = self.state
        if s.step is not None and s.phase == "waiting":
            _, step = funnel.step(s.stage, s.step)
            if isinstance(step, WaitForStep) and _matches(step.wait_for, event):
                self.state = replace(s, phase="ready", wake_at=None)
                self._follow(step.wait_for.on_event, Cause("event", event.id), at)
                self.execute(at)


def _matches(match: EventFilter, event: Event) -> bool:
    return event_matches(match, event.name, event.properties)
