"""The customer journey map of a funnel (`funnel map`): for its persona, the stages as columns in order,
and in each the persona's question and needs, the emails that answer (subject, and when they go), the
moves in and out with their triggers, the steps as a graph, its experiments (a split marked as one, not
as a branch, and every experiment's arms with their shares), and with live figures the leads there, the
conversion to the next stage, the median stay, each email's open and click rates, where leads drop out
(why, and after which email), the leads of each experiment arm and the experiment's decision.

Pure: the funnel definition, the email subjects and optionally the figures read from the database go
in; a `JourneyMap` comes out. The renderers (`html`, `markdown`) only lay it out, so
the HTML page, the Markdown with its Mermaid diagram and the PNG always tell the same story.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from engine.core.definition import (
    BranchStep,
    ExitStep,
    Funnel,
    JourneyNotes,
    MoveStep,
    OnEndMove,
    Outcome,
    Persona,
    SendStep,
    SplitStep,
    Stage,
    UpdateStep,
    WaitForStep,
    WaitStep,
    WaitUntilStep,
    WebhookStep,
)
from engine.core.durations import in_words
from engine.core.own_events import FUNNEL_UNSUBSCRIBED
from engine.core.report_rows import ExitRow
from engine.views.journey_map import words
from engine.views.journey_map.experiments import Decided, ExperimentView, arm_words, experiment_views
from engine.views.journey_map.timing import when_sent
from engine.views.report import EmailFigures, FunnelReport, StageFigures

ANY_STAGE = "*"

# --------------------------------------------------------------------------------------------------
# Live figures in: the report's figures, and exits counted by `engine.store.report_queries`
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    report: FunnelReport | None  # None: no lead has entered the funnel yet
    exits: Sequence[ExitRow]
    at: datetime
    assigned: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (experiment, arm) -> leads
    decided: Mapping[str, Decided] = field(default_factory=dict)  # experiment -> its recorded decision


# --------------------------------------------------------------------------------------------------
# The map out
# --------------------------------------------------------------------------------------------------

DropKind = Literal["unsubscribed", "bounced", "complained", "timed out", "goal missed", "left"]


@dataclass(frozen=True, slots=True)
class DropOff:
    """Leads who dropped out of the funnel in a stage: why (`kind`, and the `reason` recorded), and after
    which of the stage's emails (None: before the stage sent them any)."""

    kind: DropKind
    reason: str
    after: str | None
    leads: int


@dataclass(frozen=True, slots=True)
class Touchpoint:
    """One email of a stage: what it says and when it goes (one phrase per way the sequence reaches it)."""

    step: str
    template: str
    subject: str | None  # as written in the template's front matter; None if it cannot be read
    when: tuple[str, ...]
    transactional: bool
    figures: EmailFigures | None = None
    dropped_after: int = 0  # leads whose last email in the stage this was when they dropped out
    experiment: ExperimentView | None = None  # a variant send: its arms
    # The funnel's languages the email exists in (every template of a variant send); empty in one language.
    languages: tuple[str, ...] = ()

    @property
    def open_rate(self) -> float | None:
        return self.figures.rate(self.figures.opened) if self.figures else None

    @property
    def click_rate(self) -> float | None:
        return self.figures.rate(self.figures.clicked) if self.figures else None


MoveKind = Literal["entry", "sequence_end", "step", "transition", "goal", "exit_rule"]


@dataclass(frozen=True, slots=True)
class Move:
    """A way between stages: `source` None is outside the funnel (entry), `ANY_STAGE` any stage;
    `target` None leaves the funnel (with `exit_reason`). `step` is the step that makes it, if one does."""

    kind: MoveKind
    source: str | None
    target: str | None
    trigger: str
    step: str | None = None
    exit_reason: str | None = None


Target = tuple[Literal["step", "stage", "exit", "stay"], str]


@dataclass(frozen=True, slots=True)
class StepView:
    """A step as a node of the journey diagram, with its ways on (target, label)."""

    id: str
    kind: str
    label: str
    next: tuple[tuple[Target, str], ...]


@dataclass(frozen=True, slots=True)
class Column:
    stage: str
    title: str
    description: str | None
    notes: JourneyNotes | None
    touchpoints: tuple[Touchpoint, ...]
    steps: tuple[StepView, ...]
    ins: tuple[Move, ...]
    outs: tuple[Move, ...]
    end: Target | None  # where the sequence's end leads; None for a stage without steps that stays
    figures: StageFigures | None = None
    drop_offs: tuple[DropOff, ...] = ()
    experiments: tuple[ExperimentView, ...] = ()  # variant sends and splits, in step order

    @property
    def pain_point(self) -> str | None:
        """The email after which most leads dropped out of this stage, if any did after an email."""
        worst = max(self.touchpoints, key=lambda t: t.dropped_after, default=None)
        return worst.step if worst is not None and worst.dropped_after else None


@dataclass(frozen=True)
class JourneyMap:
    funnel: str
    name: str
    description: str | None
    persona: Persona | None
    version: str
    entry_stage: str
    entry: tuple[str, ...]
    send_window: str | None
    goal: str | None
    exits: tuple[Move, ...]  # moves out of the funnel from any stage (exit rules)
    moves: tuple[Move, ...]  # every move between stages and out, for the diagram
    columns: tuple[Column, ...]
    live: Live | None = None
    languages: tuple[str, ...] = ()  # the funnel's, its default first; empty for a funnel in one language
    language: str | None = None  # the figures are those of the leads of this language only

    @property
    def leads(self) -> int | None:
        if self.live is None:
            return None
        return self.live.report.leads if self.live.report else 0


# --------------------------------------------------------------------------------------------------
# Building it
# --------------------------------------------------------------------------------------------------


def build(
    funnel: Funnel,
    subjects: Mapping[str, str],
    live: Live | None = None,
    translations: Mapping[str, Sequence[str]] | None = None,
    language: str | None = None,
) -> JourneyMap:
    """The map of `funnel`. `subjects`: template name -> subject; `live`: figures to show, if any, of the
    leads of `language` only when it is given; `translations`: template name -> the languages it exists in."""
    languages = funnel.languages.declared if funnel.languages is not None else ()
    moves = _moves(funnel)
    report = live.report if live else None
    stage_figures = {s.stage: s for s in report.stages} if report else {}
    email_figures = {e.step: e for e in report.emails} if report else {}
    drops = _drop_offs(funnel, live.exits) if live else {}
    columns = []
    for stage in funnel.stages:
        stage_drops = drops.get(stage.id, [])
        after = _dropped_after(stage_drops)
        delays = when_sent(stage)
        experiments = experiment_views(stage, subjects, live.assigned if live else None, live.decided if live else {})
        at_step = {e.step: e for e in experiments}
        touchpoints = tuple(
            Touchpoint(
                step=step.id,
                template=step.send,
                subject=_subject(step, subjects),
                when=tuple(delays.get(step.id, ())),
                transactional=step.transactional,
                figures=email_figures.get(step.id),
                dropped_after=after.get(step.id, 0),
                experiment=at_step.get(step.id),
                languages=_languages(step, languages, translations or {}),
            )
            for step in stage.steps
            if isinstance(step, SendStep)
        )
        columns.append(
            Column(
                stage=stage.id,
                title=stage.title,
                description=stage.description,
                notes=stage.journey,
                touchpoints=touchpoints,
                steps=_steps(funnel, stage, subjects, at_step),
                ins=tuple(m for m in moves if m.target == stage.id and m.source != stage.id),
                outs=tuple(
                    m
                    for m in moves
                    if (m.source == stage.id or (m.source == ANY_STAGE and m.target is not None))
                    and m.target != stage.id
                ),
                end=_end(funnel, stage),
                figures=stage_figures.get(stage.id) if live else None,
                drop_offs=tuple(stage_drops),
                experiments=experiments,
            )
        )
    return JourneyMap(
        funnel=funnel.id,
        name=funnel.name,
        description=funnel.description,
        persona=funnel.persona,
        version=funnel.version,
        entry_stage=funnel.entry.stage or funnel.stages[0].id,
        entry=tuple(words.trigger(t) for t in funnel.entry.triggers),
        send_window=_send_window(funnel),
        goal=_goal(funnel),
        exits=tuple(m for m in moves if m.source == ANY_STAGE and m.target is None),
        moves=tuple(moves),
        columns=tuple(columns),
        live=live,
        languages=languages,
        language=language,
    )


def _dropped_after(drops: Sequence[DropOff]) -> dict[str | None, int]:
    after: dict[str | None, int] = defaultdict(int)
    for d in drops:
        after[d.after] += d.leads
    return after


def _send_window(funnel: Funnel) -> str | None:
    window = funnel.send_window
    if window is None:
        return None
    return (
        f"{words.weekdays(window.days)}s {window.start:%H:%M}-{window.end:%H:%M} ({funnel.timezone},"
        " or the lead's own time zone)"
    )


def _languages(step: SendStep, declared: Sequence[str], translations: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The declared languages every template of the step exists in, in the funnel's order."""
    if not declared:
        return ()
    return tuple(lang for lang in declared if all(lang in translations.get(t, ()) for t in step.templates))


def _goal(funnel: Funnel) -> str | None:
    goal = funnel.goal
    if goal is None:
        return None
    named = "" if goal.id == "goal" else f"{goal.id}: "  # the default id says nothing
    text = f"{named}{words.event(goal.event, goal.where)}"
    if goal.within is not None:
        text += f" within {in_words(goal.within)} of entering"
    if goal.move_to is not None:
        text += f", then to {goal.move_to}"
    if goal.exit:
        text += ", then leaves the funnel"
    return text


# -- moves between stages ---------------------------------------------------------------------------


def _moves(funnel: Funnel) -> list[Move]:
    entry = funnel.entry.stage or funnel.stages[0].id
    moves = [Move("entry", None, entry, " or ".join(words.trigger(t) for t in funnel.entry.triggers))]
    for stage in funnel.stages:
        for step in stage.steps:
            moves += _step_moves(stage, step)
        end = _end(funnel, stage)
        if end is not None and end[0] == "stage":
            moves.append(Move("sequence_end", stage.id, end[1], "when its sequence ends"))
        elif end is not None and end[0] == "exit":
            moves.append(Move("sequence_end", stage.id, None, "when its sequence ends", exit_reason=end[1]))
    for t in funnel.transitions:
        if t.on is not None:
            trigger = f"on {words.event(t.on.event, t.on.where)}"
        else:
            assert t.after is not None  # validated: exactly one of on, after
            trigger = f"after {in_words(t.after)} in the stage"
        if t.if_ is not None:
            trigger += f" if {words.condition(t.if_)}"
        sources = [ANY_STAGE] if t.from_ == "*" else list(t.from_)
        moves += [Move("transition", source, t.to, trigger) for source in sources]
    if funnel.goal is not None and (funnel.goal.move_to is not None or funnel.goal.exit):
        named = "" if funnel.goal.id == "goal" else f" {funnel.goal.id}"
        trigger = f"goal{named}: {words.event(funnel.goal.event, funnel.goal.where)}"
        target = None if funnel.goal.exit else funnel.goal.move_to
        reason = "goal-reached" if target is None else None
        moves.append(Move("goal", ANY_STAGE, target, trigger, exit_reason=reason))
    for rule in funnel.exits:
        trigger = f"on {words.event(rule.event, rule.where)}"
        moves.append(Move("exit_rule", ANY_STAGE, None, trigger, exit_reason=rule.reason))
    # Built into every funnel: the preference page's "stop this series".
    trigger = f"on {FUNNEL_UNSUBSCRIBED} (preference page)"
    moves.append(Move("exit_rule", ANY_STAGE, None, trigger, exit_reason="unsubscribed"))
    return moves


def _step_moves(stage: Stage, step: Any) -> list[Move]:
    out: list[Move] = []
    if isinstance(step, MoveStep):
        out.append(Move("step", stage.id, step.move_to, f"at step {step.id}", step.id))
    elif isinstance(step, ExitStep):
        out.append(Move("step", stage.id, None, f"at step {step.id}", step.id, exit_reason=step.exit))
    for outcome, why in _outcomes(step):
        if outcome.move_to is not None:
            out.append(Move("step", stage.id, outcome.move_to, f"at step {step.id}, {why}", step.id))
        elif outcome.exit is not None:
            out.append(Move("step", stage.id, None, f"at step {step.id}, {why}", step.id, exit_reason=outcome.exit))
    return out


def _outcomes(step: Any) -> list[tuple[Outcome, str]]:
    if isinstance(step, BranchStep):
        cond = words.condition(step.branch.if_)
        return [(step.branch.then, f"if {cond}"), (step.branch.else_, f"unless {cond}")]
    if isinstance(step, WaitForStep):
        w = step.wait_for
        what = words.event(w.event, w.where)
        return [(w.on_event, f"on {what}"), (w.on_timeout, f"after {in_words(w.timeout)} without {w.event}")]
    return []


def _end(funnel: Funnel, stage: Stage) -> Target | None:
    """Where running past the stage's last step leads: nowhere when that step leaves the stage itself."""
    if stage.steps and isinstance(stage.steps[-1], ExitStep | MoveStep):
        return None
    if isinstance(stage.on_end, OnEndMove):
        return ("stage", stage.on_end.move_to)
    if stage.on_end == "stay":
        return ("stay", stage.id)
    if stage.on_end == "exit":
        return ("exit", "sequence-end")
    following = funnel.next_stage(stage.id)
    return ("stage", following) if following is not None else ("exit", "completed")


# -- steps as a graph ---------------------------------------------------------------------------------


def _subject(step: SendStep, subjects: Mapping[str, str]) -> str | None:
    """The email's subject; a variant send's subjects, one per template, joined by " | "."""
    found = [subjects[t] for t in step.templates if t in subjects]
    return " | ".join(found) if found else None


def _steps(
    funnel: Funnel, stage: Stage, subjects: Mapping[str, str], experiments: Mapping[str, ExperimentView]
) -> tuple[StepView, ...]:
    views = []
    end = _end(funnel, stage)
    for i, step in enumerate(stage.steps):
        following: Target | None = ("step", stage.steps[i + 1].id) if i + 1 < len(stage.steps) else end

        def go(outcome: Outcome, then: Target | None = following) -> Target | None:
            if outcome.goto is not None:
                return ("step", outcome.goto)
            if outcome.move_to is not None:
                return ("stage", outcome.move_to)
            if outcome.exit is not None:
                return ("exit", outcome.exit)
            return then

        ways: list[tuple[Target | None, str]]
        if isinstance(step, SendStep):
            subject = _subject(step, subjects)
            kind, label, ways = "send", f"email {step.id}" + (f": {subject}" if subject else ""), [(following, "")]
            if step.id in experiments:
                e = experiments[step.id]
                arms = "; ".join(f"{arm_words(a)} · {a.subject or a.template}" for a in e.arms)
                kind, label = "variant", f"email {step.id}, experiment {e.id} (variant send): {arms}"
        elif isinstance(step, WaitStep):
            kind, label, ways = "wait", f"wait {in_words(step.wait)}", [(following, "")]
        elif isinstance(step, WaitUntilStep):
            label = f"wait until {words.local_time(step.wait_until.time, step.wait_until.days)}"
            kind, ways = "wait", [(following, "")]
        elif isinstance(step, WaitForStep):
            w = step.wait_for
            kind, label = "wait_for", f"wait up to {in_words(w.timeout)} for {words.event(w.event, w.where)}"
            ways = [(go(w.on_event), w.event), (go(w.on_timeout), "timeout")]
        elif isinstance(step, BranchStep):
            kind, label = "branch", f"if {words.condition(step.branch.if_)}"
            ways = [(go(step.branch.then), "yes"), (go(step.branch.else_), "no")]
        elif isinstance(step, SplitStep):
            e = experiments[step.id]
            kind, label = "split", f"experiment {e.id}: split into {len(e.arms)} arms"
            ways = [(go(Outcome(goto=a.goto)), f"arm {arm_words(a)}") for a in e.arms]
        elif isinstance(step, UpdateStep):
            kind, label, ways = "update", f"update: {_update_words(step)}", [(following, "")]
        elif isinstance(step, MoveStep):
            kind, label, ways = "move", f"move to {step.move_to}", [(("stage", step.move_to), "")]
        elif isinstance(step, WebhookStep):
            kind, label, ways = "webhook", f"webhook {step.webhook.url}", [(following, "")]
        elif isinstance(step, ExitStep):
            kind, label, ways = "exit", f"exit: {step.exit}", [(("exit", step.exit), "")]
        else:  # pragma: no cover - the definition's union is closed
            raise AssertionError(f"unknown step {step!r}")
        views.append(StepView(step.id, kind, label, tuple((t, lbl) for t, lbl in ways if t is not None)))
    return tuple(views)


def _update_words(step: UpdateStep) -> str:
    u = step.update
    return words.update(u.set, u.unset, u.add_tags, u.remove_tags, u.score)


# -- drop-off ------------------------------------------------------------------------------------------


def drop_kind(row: ExitRow, has_goal: bool) -> DropKind | None:
    """Why a lead left, in the map's words; None when leaving was the journey's end, not a drop-out
    (the goal reached, or the last stage's sequence run to its end with nothing left to miss)."""
    if row.cause == "bounce":
        return "bounced"
    if row.cause == "complaint":
        return "complained"
    if row.reason == "unsubscribed":
        return "unsubscribed"
    if row.cause == "goal" or row.reason == "goal-reached":
        return None
    if row.cause == "timeout":
        return "timed out"
    if row.cause == "sequence_end":
        return "goal missed" if has_goal and not row.goal_reached else None
    return "left"


_KIND_ORDER = ("unsubscribed", "bounced", "complained", "timed out", "goal missed", "left")


def _drop_offs(funnel: Funnel, rows: Sequence[ExitRow]) -> dict[str, list[DropOff]]:
    counted: dict[tuple[str, DropKind, str, str | None], int] = defaultdict(int)
    for row in rows:
        if row.funnel != funnel.id:
            continue
        kind = drop_kind(row, funnel.goal is not None)
        if kind is not None:
            counted[(row.stage, kind, row.reason, row.after)] += row.leads
    out: dict[str, list[DropOff]] = defaultdict(list)
    for (stage, kind, reason, after), leads in counted.items():
        out[stage].append(DropOff(kind, reason, after, leads))
    for items in out.values():
        items.sort(key=lambda d: (-d.leads, _KIND_ORDER.index(d.kind), d.reason, d.after or ""))
    return out


__all__ = [
    "ANY_STAGE",
    "Column",
    "DropOff",
    "JourneyMap",
    "Live",
    "Move",
    "StepView",
    "Touchpoint",
    "build",
    "drop_kind",
]
