"""`funnel simulate`: many virtual leads through a funnel, with a seeded mix of lead behaviour.

Leads do not interact, so each is driven on its own virtual clock (engine.authoring.virtualclock) and the
figures are aggregated afterwards. Every random draw comes from a per-lead generator seeded by
(seed, lead number): the same command line prints the same figures.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.authoring.simulation_experiments import ExperimentFigures, funnel_experiments, lead_arms, merged
from engine.authoring.translations import read_as
from engine.authoring.virtualclock import LeadRun, drive, entry_event
from engine.core.definition import Duration, EventName, Funnel, Id, Scalar, SendStep
from engine.core.journey import Command, Event, GoalReached, Lead, RecordTransition, SendEmail, SkipEmail
from engine.core.yamlfile import YamlSyntaxError, located_errors, read_yaml

DEFAULT_ZONES = ("Europe/London", "Europe/Berlin", "America/New_York", "America/Los_Angeles", "Asia/Kolkata")
FIRST_NAMES = ("Sam", "Priya", "Jonas", "Amara", "Luis", "Mei", "Tom", "Fatima", "Olga", "Kwame")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmailReaction(_Model):
    """A reaction to each email sent: `probability` that the lead does `event` after a delay in
    [min_delay, max_delay]. A `link` property of `$link` picks one of the links in that email."""

    event: EventName
    probability: float = Field(ge=0, le=1)
    min_delay: Duration = timedelta(minutes=5)
    max_delay: Duration = timedelta(days=1)
    properties: dict[str, Scalar] = Field(default_factory=dict)
    only_after_open: bool = False
    # Only the email of this step (standing in for the entry of the same event without `step`); every email if absent.
    step: Id | None = None


class LeadAction(_Model):
    """Something a lead does once, independent of emails, at a uniform time in [after, before]."""

    event: EventName
    probability: float = Field(ge=0, le=1)
    after: Duration = timedelta(days=1)
    before: Duration = timedelta(days=30)
    properties: dict[str, Scalar] = Field(default_factory=dict)


class ArmMix(_Model):
    """How the leads of one experiment arm behave differently: each entry replaces the base entry for the
    same event (and `step`), or adds one (engine.authoring.simulation_experiments)."""

    per_email: list[EmailReaction] = Field(default_factory=list)
    per_lead: list[LeadAction] = Field(default_factory=list)


class EventMix(_Model):
    per_email: list[EmailReaction] = Field(default_factory=list)
    per_lead: list[LeadAction] = Field(default_factory=list)
    arms: dict[Id, dict[Id, ArmMix]] = Field(
        default_factory=dict, description="Experiment id -> arm id -> that arm's behaviour."
    )

    def for_arms(self, arms: Mapping[str, str]) -> EventMix:
        """The mix of a lead in these arms (experiment id -> arm id)."""
        per_email, per_lead = self.per_email, self.per_lead
        for experiment, arm in arms.items():
            override = self.arms.get(experiment, {}).get(arm)
            if override is not None:
                per_email = merged(per_email, override.per_email)
                per_lead = merged(per_lead, override.per_lead)
        return EventMix(per_email=per_email, per_lead=per_lead)

    def problems(self, funnel: Funnel) -> list[str]:
        """Experiments or arms the mix names that the funnel does not have."""
        known = funnel_experiments(funnel)
        out = []
        for experiment, arms in self.arms.items():
            if experiment not in known:
                out.append(f"arms.{experiment}: unknown experiment: expected one of {', '.join(known) or 'none'}")
                continue
            ids = [a.id for a in known[experiment][1].arms]
            out += [
                f"arms.{experiment}.{a}: unknown arm: expected one of {', '.join(ids)}" for a in arms if a not in ids
            ]
        return out


DEFAULT_MIX = EventMix(
    per_email=[
        EmailReaction(event="email_opened", probability=0.5, max_delay=timedelta(hours=18)),
        EmailReaction(
            event="email_clicked",
            probability=0.3,
            min_delay=timedelta(minutes=10),
            max_delay=timedelta(days=1),
            properties={"link": "$link"},
        ),
        EmailReaction(event="unsubscribed", probability=0.01, max_delay=timedelta(days=2)),
    ],
    per_lead=[LeadAction(event="purchase_completed", probability=0.05)],
)


class MixError(Exception):
    """An event mix file that cannot be used: the message names the file, and the line where it can."""


def load_mix(path: Path) -> EventMix:
    try:
        doc = read_yaml(path)
    except YamlSyntaxError as exc:
        raise MixError(str(exc)) from None
    except OSError as exc:
        raise MixError(f"{path}: cannot read the event mix ({exc.strerror or exc})") from None
    try:
        return EventMix.model_validate(doc.data if doc.data is not None else {})
    except ValidationError as exc:
        raise MixError("\n".join(located_errors(doc, exc.errors()))) from None


@dataclass
class SimulationResult:
    funnel: Funnel
    leads: int
    days: int
    start: datetime
    stage_by_day: list[Counter[str]]  # index d: where leads stood at the end of day d
    reached: Counter[str]  # leads that ever entered each stage
    emails: Counter[str]  # SendEmail count per step
    skipped: Counter[str]
    exits: Counter[str]
    goals: int
    goals_within: int
    time_in_stage: dict[str, list[float]]  # completed stays, in days
    experiments: ExperimentFigures = field(default_factory=ExperimentFigures)
    elapsed_s: float = 0.0
    sample: LeadRun | None = None
    final: Counter[str] = field(default_factory=Counter)
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)  # (a, b): reached a, later b
    # With lead languages: leads per language tag, and emails per (step, language read in).
    lead_languages: Counter[str] = field(default_factory=Counter)
    read_in: Counter[tuple[str, str]] = field(default_factory=Counter)

    def conversion(self) -> list[tuple[str, str, float]]:
        """For each stage and the next in order: the share of leads who reached the first and later
        reached the second (leads who jump ahead, e.g. a click straight to conversion, don't count)."""
        ids = self.funnel.stage_ids()
        out = []
        for a, b in pairwise(ids):
            out.append((a, b, self.pairs[(a, b)] / self.reached[a] if self.reached[a] else 0.0))
        return out


class _Reactions:
    """The seeded behaviour of one virtual lead."""

    def __init__(self, mix: EventMix, rng: random.Random, links: dict[str, tuple[str, ...]], number: int) -> None:
        self.mix = mix
        self.rng = rng
        self.links = links
        self.number = number
        self.count = 0
        self.unsubscribed = False

    def _id(self) -> str:
        self.count += 1
        return f"sim-{self.number}-{self.count}"

    def __call__(self, command: Command, lead: Lead) -> list[Event]:
        if not isinstance(command, SendEmail):
            return []
        out: list[Event] = []
        opened_at: datetime | None = None
        # An entry for this step's email stands in for the general entry of the same event.
        specific = {r.event for r in self.mix.per_email if r.step == command.step}
        for r in self.mix.per_email:
            if r.step != command.step and (r.step is not None or r.event in specific):
                continue
            if self.rng.random() >= r.probability:
                continue
            span = (r.max_delay - r.min_delay).total_seconds()
            at = command.at + r.min_delay + timedelta(seconds=self.rng.random() * max(span, 0))
            if r.only_after_open:
                if opened_at is None:
                    continue
                at = max(at, opened_at)
            props: dict[str, Any] = {"step": command.step, "template": command.template}
            for key, value in r.properties.items():
                if value == "$link":
                    choices = self.links.get(command.template) or ("pricing",)
                    props[key] = self.rng.choice(choices)
                else:
                    props[key] = value
            if r.event == "email_opened":
                opened_at = at
            if r.event == "unsubscribed":
                if self.unsubscribed:
                    continue
                self.unsubscribed = True
            out.append(Event(self._id(), r.event, at, props))
        return out


def email_links(funnel: Funnel, emails_dir: Path | None) -> dict[str, tuple[str, ...]]:
    """The named links of each email, so simulated clicks pick links that are really in the email."""
    if emails_dir is None or not emails_dir.is_dir():
        return {}
    from engine.mail.templates import TemplateError, TemplateLibrary, sample_context

    library = TemplateLibrary(emails_dir)
    links: dict[str, tuple[str, ...]] = {}
    for stage in funnel.stages:
        for step in stage.steps:
            for template in step.templates if isinstance(step, SendStep) else ():
                if template in links or not library.exists(template):
                    continue
                try:
                    rendered = library.render(template, sample_context())
                except TemplateError:
                    continue  # clicks fall back to a generic link; `funnel validate` reports the template
                links[template] = tuple(dict.fromkeys(name for name, _ in rendered.links))
    return links


class _Reader:
    """The language a lead reads each email in: the engine's pick (`read_as`), once per template and tag.
    Without templates, the lead's own tag; `-` for a funnel in one language."""

    def __init__(self, funnel: Funnel, emails_dir: Path | None) -> None:
        from engine.mail.templates import TemplateLibrary

        self.funnel = funnel
        self.library = TemplateLibrary(emails_dir) if emails_dir is not None and emails_dir.is_dir() else None
        self.known: dict[tuple[str, str], str] = {}

    def __call__(self, template: str, language: str) -> str:
        if self.library is None:
            return language
        key = (template, language)
        if key not in self.known:
            self.known[key] = read_as(self.library, self.funnel, template, language)[1] or "-"
        return self.known[key]


def simulate(
    funnel: Funnel,
    leads: int,
    days: int,
    seed: int = 0,
    start: datetime | None = None,
    mix: EventMix = DEFAULT_MIX,
    emails_dir: Path | None = None,
    zones: Sequence[str] = DEFAULT_ZONES,
    arrival_days: float = 1.0,
    sample_lead: int | None = None,
    each_lead: Callable[[int, LeadRun], None] | None = None,
    languages: Sequence[str] = (),
) -> SimulationResult:
    """`each_lead(number, run)`, when given, sees every lead's run as it is done (`--timelines`).
    `languages` (canonical tags): each lead takes one at random, drawn apart from its behaviour so that
    the same seed gives the same journeys in any language; emails are counted by the language read."""
    import time as _time

    started = _time.perf_counter()
    start = start or datetime(2026, 11, 2, tzinfo=UTC)
    until = start + timedelta(days=days)
    links = email_links(funnel, emails_dir)
    reader = _Reader(funnel, emails_dir)
    result = SimulationResult(
        funnel=funnel,
        leads=leads,
        days=days,
        start=start,
        stage_by_day=[Counter() for _ in range(days)],
        reached=Counter(),
        emails=Counter(),
        skipped=Counter(),
        exits=Counter(),
        goals=0,
        goals_within=0,
        time_in_stage={s: [] for s in funnel.stage_ids()},
        experiments=ExperimentFigures.empty(funnel),
    )
    boundaries = [start + timedelta(days=d + 1) for d in range(days)]
    for number in range(1, leads + 1):
        rng = random.Random(f"{seed}:{number}")
        lead = Lead(
            id=f"lead-{number:06d}@sim.example",
            timezone=rng.choice(list(zones)),
            attributes={
                "first_name": rng.choice(FIRST_NAMES),
                "company": f"Company {number}",
                "employees": int(rng.lognormvariate(3.2, 1.2)) + 1,
            },
        )
        enter_at = start + timedelta(seconds=rng.random() * arrival_days * 86400)
        lead_mix = mix.for_arms(lead_arms(funnel, lead.id)) if mix.arms else mix
        scripted = []
        for i, action in enumerate(lead_mix.per_lead):
            if rng.random() < action.probability:
                span = (action.before - action.after).total_seconds()
                at = enter_at + action.after + timedelta(seconds=rng.random() * max(span, 0))
                scripted.append(Event(f"sim-{number}-a{i}", action.event, at, dict(action.properties)))
        reactions = _Reactions(lead_mix, rng, links, number)
        entry = entry_event(funnel, lead, enter_at, f"sim-{number}-entry")
        language = random.Random(f"{seed}:{number}:language").choice(languages) if languages else None
        run = drive(funnel, lead, entry, enter_at, scripted, until, reactions, language)
        _aggregate(result, run, boundaries, until)
        if language is not None:
            result.lead_languages[language] += 1
            for c in run.commands():
                if isinstance(c, SendEmail):
                    result.read_in[(c.step, reader(c.template, language))] += 1
        result.experiments.add(funnel, run)
        if each_lead is not None:
            each_lead(number, run)
        if sample_lead == number:
            result.sample = run
    result.elapsed_s = _time.perf_counter() - started
    return result


def _aggregate(result: SimulationResult, run: LeadRun, boundaries: list[datetime], until: datetime) -> None:
    where: str | None = None
    entered: datetime | None = None
    order: dict[str, int] = {}  # first visit of each stage; conversion counts leads, not visits
    b = 0
    for moment in run.moments:
        c = moment.command
        if c is None:
            continue
        while b < len(boundaries) and c.at >= boundaries[b]:
            if where is not None:
                result.stage_by_day[b][where] += 1
            b += 1
        if isinstance(c, RecordTransition):
            if c.from_stage is not None and entered is not None:
                result.time_in_stage[c.from_stage].append((c.at - entered).total_seconds() / 86400)
            if c.to_stage is not None:
                if c.to_stage not in order:
                    order[c.to_stage] = len(order)
                    result.reached[c.to_stage] += 1
                where, entered = c.to_stage, c.at
            else:
                reason = c.exit_reason or "exited"
                result.exits[reason] += 1
                where, entered = f"exited:{reason}", None
        elif isinstance(c, SendEmail):
            result.emails[c.step] += 1
        elif isinstance(c, GoalReached):
            result.goals += 1
            result.goals_within += int(c.within_window)
        elif isinstance(c, SkipEmail):
            result.skipped[c.step] += 1
    while b < len(boundaries):
        if where is not None:
            result.stage_by_day[b][where] += 1
        b += 1
    if where is not None:
        result.final[where] += 1
    ids = result.funnel.stage_ids()
    for a, nxt in pairwise(ids):
        if a in order and nxt in order and order[nxt] > order[a]:
            result.pairs[(a, nxt)] += 1
