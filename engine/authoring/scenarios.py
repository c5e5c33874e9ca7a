"""`funnel test`: marketers' expectations written next to a funnel, checked on the virtual clock.

A file `funnels/NAME.scenarios.yaml` names a funnel and lists scenarios: a lead, when it signs up,
what it does later, and what must happen (which email at which local time, which stage by when).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.authoring.virtualclock import LeadRun, drive, entry_event
from engine.core.definition import EventName, Funnel, Id, LanguageTag, Scalar, TemplateName, TimeZoneName
from engine.core.durations import parse_duration
from engine.core.experiments import AssignArm
from engine.core.journey import Event, GoalReached, Lead, RecordTransition, SendEmail, SkipEmail
from engine.core.yamlfile import YamlSyntaxError, located_errors, read_yaml

if TYPE_CHECKING:
    from engine.authoring.virtual_timeline import Subjects

_LOCAL = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}$")
_RELATIVE = re.compile(r"^\+(?:\d+[wdhms])+$")


def _when(value: Any) -> Any:
    if not isinstance(value, str) or not (_LOCAL.match(value.strip()) or _RELATIVE.match(value.strip())):
        raise ValueError(
            f"expected a local time 'YYYY-MM-DD HH:MM' or a time after the start like '+3d' or '+2d9h', found {value!r}"
        )
    return value.strip()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScenarioLead(_Model):
    email: str = "lead@example.com"
    timezone: TimeZoneName | None = None
    language: LanguageTag | None = None  # None: the funnel's default language
    attributes: dict[str, Any] = Field(default_factory=dict)
    tags: list[Id] = Field(default_factory=list)
    score: int = 0


class ScenarioEvent(_Model):
    at: str
    event: EventName
    properties: dict[str, Scalar] = Field(default_factory=dict)

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, value: Any) -> Any:
        return _when(value)


class Expectation(_Model):
    email: Id | None = None
    template: TemplateName | None = None  # with `email`: the template it was sent with (a variant send's arm)
    arm: Id | None = None  # with `email`: the experiment arm the lead was assigned at that step
    language: LanguageTag | None = None  # with `email`: the language the lead read it in
    subject: str | None = None  # with `email`: its subject as the lead read it (rendered)
    no_email: Id | None = None
    stage: Id | None = None
    exited: Id | None = None
    goal: bool | None = None
    at: str | None = None
    by: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Expectation:
        kinds = [k for k in ("email", "no_email", "stage", "exited", "goal") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "expected exactly one of email, no_email, stage, exited, goal, found " + (", ".join(kinds) or "none")
            )
        for when in (self.at, self.by):
            if when is not None:
                _when(when)
        details = (self.template, self.arm, self.language, self.subject)
        if any(d is not None for d in details) and self.email is None:
            raise ValueError("expected 'template', 'arm', 'language' and 'subject' only with 'email'")
        if self.stage is not None and self.at is None:
            raise ValueError("expected 'at' with 'stage' (the time at which the lead is in that stage)")
        if self.at is not None and self.by is not None:
            raise ValueError("expected one of 'at' or 'by', found both")
        return self


class Scenario(_Model):
    name: str
    lead: ScenarioLead = Field(default_factory=ScenarioLead)
    start: str
    enter: str = Field(default="event", pattern="^(event|manual)$")
    events: list[ScenarioEvent] = Field(default_factory=list)
    until: str = "+60d"
    expect: list[Expectation] = Field(min_length=1)

    @field_validator("start", "until", mode="before")
    @classmethod
    def _times(cls, value: Any) -> Any:
        return _when(value)


class ScenarioFile(_Model):
    funnel: Id
    scenarios: list[Scenario] = Field(min_length=1)


@dataclass(frozen=True)
class Outcome:
    file: Path
    scenario: str
    failures: tuple[str, ...]
    run: LeadRun | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


class ScenarioError(Exception):
    pass


def load_scenarios(path: Path) -> ScenarioFile:
    try:
        doc = read_yaml(path)
    except YamlSyntaxError as exc:
        raise ScenarioError(str(exc)) from None
    try:
        return ScenarioFile.model_validate(doc.data)
    except ValidationError as exc:
        raise ScenarioError("\n".join(located_errors(doc, exc.errors()))) from None


class _Clock:
    """Turns scenario times into UTC instants: local times in the lead's zone, or `+Nd` after start."""

    def __init__(self, zone: ZoneInfo, start: datetime | None = None) -> None:
        self.zone = zone
        self.start = start

    def __call__(self, text: str) -> datetime:
        if text.startswith("+"):
            assert self.start is not None
            return self.start + parse_duration(text[1:])
        local = datetime.strptime(text.replace("T", " "), "%Y-%m-%d %H:%M")
        return local.replace(tzinfo=self.zone).astimezone(ZoneInfo("UTC"))

    def show(self, instant: datetime) -> str:
        return instant.astimezone(self.zone).strftime("%Y-%m-%d %H:%M %a")


def run_scenario(funnel: Funnel, scenario: Scenario, file: Path, subjects: Subjects | None = None) -> Outcome:
    """`subjects` (the funnel's templates) checks the language and subject each email was read in."""
    zone = ZoneInfo(scenario.lead.timezone or funnel.timezone)
    clock = _Clock(zone)
    start = clock(scenario.start)
    clock.start = start
    lead = Lead(
        id=scenario.lead.email,
        timezone=scenario.lead.timezone,
        attributes=dict(scenario.lead.attributes),
        tags=frozenset(scenario.lead.tags),
        score=scenario.lead.score,
    )
    events = [
        Event(f"scenario-{i}", e.event, clock(e.at), dict(e.properties)) for i, e in enumerate(scenario.events, 1)
    ]
    entry = entry_event(funnel, lead, start, "scenario-entry") if scenario.enter == "event" else None
    if scenario.enter == "event" and entry is None:
        return Outcome(file, scenario.name, ("the funnel has no event entry trigger; use `enter: manual`",))
    run = drive(funnel, lead, entry, start, events, clock(scenario.until), language=scenario.lead.language)
    failures = tuple(f for f in (_check(e, run, clock, subjects) for e in scenario.expect) if f)
    return Outcome(file, scenario.name, failures, run)


def _check(e: Expectation, run: LeadRun, clock: _Clock, subjects: Subjects | None) -> str | None:
    commands = list(run.commands())
    if e.email is not None or e.no_email is not None:
        step = e.email or e.no_email
        sent = [c for c in commands if isinstance(c, SendEmail) and c.step == step]
        if e.no_email is not None:
            return f"email '{step}' should never be sent, found it sent at {clock.show(sent[0].at)}" if sent else None
        if not sent:
            skipped = [c for c in commands if isinstance(c, SkipEmail) and c.step == step]
            why = f" (skipped: {skipped[0].reason})" if skipped else ""
            return f"email '{step}' should be sent, found it never sent{why}"
        when = sent[0].at
        if e.template is not None and sent[0].template != e.template:
            return f"email '{step}' expected with template '{e.template}', found '{sent[0].template}'"
        read = _read(e, sent[0], run, subjects)
        if read is not None:
            return read
        if e.arm is not None:
            arms = [c.arm for c in commands if isinstance(c, AssignArm) and c.step == step]
            if arms[:1] != [e.arm]:
                return (
                    f"email '{step}' expected in arm '{e.arm}', found {repr(arms[0]) if arms else 'no experiment arm'}"
                )
        if e.at is not None and when != clock(e.at):
            return f"email '{step}' expected at {clock.show(clock(e.at))}, found at {clock.show(when)}"
        if e.by is not None and when > clock(e.by):
            return f"email '{step}' expected by {clock.show(clock(e.by))}, found at {clock.show(when)}"
        return None
    if e.stage is not None:
        assert e.at is not None
        at = clock(e.at)
        where = _stage_at(commands, at)
        if where != e.stage:
            return f"expected stage '{e.stage}' at {clock.show(at)}, found {where or 'not in the funnel'}"
        return None
    if e.exited is not None:
        exits = [c for c in commands if isinstance(c, RecordTransition) and c.to_stage is None]
        if not exits:
            return f"expected exit '{e.exited}', found the lead still in the funnel"
        ex = exits[0]
        if ex.exit_reason != e.exited:
            return f"expected exit '{e.exited}', found exit '{ex.exit_reason}' at {clock.show(ex.at)}"
        if e.by is not None and ex.at > clock(e.by):
            return f"expected exit '{e.exited}' by {clock.show(clock(e.by))}, found at {clock.show(ex.at)}"
        if e.at is not None and ex.at != clock(e.at):
            return f"expected exit '{e.exited}' at {clock.show(clock(e.at))}, found at {clock.show(ex.at)}"
        return None
    goals = [c for c in commands if isinstance(c, GoalReached)]
    if e.goal is False:
        return f"expected no goal, found it reached at {clock.show(goals[0].at)}" if goals else None
    if not goals:
        return "expected the goal reached, found it never reached"
    if e.by is not None and goals[0].at > clock(e.by):
        return f"expected the goal by {clock.show(clock(e.by))}, found at {clock.show(goals[0].at)}"
    return None


def _read(e: Expectation, sent: SendEmail, run: LeadRun, subjects: Subjects | None) -> str | None:
    """The failure of an email's `language` or `subject`, read as the engine picks the translation."""
    if e.language is None and e.subject is None:
        return None
    if subjects is None:
        return f"email '{sent.step}': 'language' and 'subject' need the email templates, found none"
    read, language = subjects.read_as(sent.template, run.language)
    if e.language is not None and language != e.language:
        found = language or "the one language of a funnel without `languages:`"
        return f"email '{sent.step}' expected in {e.language}, found it read in {found} ({read})"
    said = subjects(sent.template, run.lead, run.language)
    if e.subject is not None and said != e.subject:
        return f"email '{sent.step}' expected with subject {e.subject!r}, found {said!r} ({read})"
    return None


def _stage_at(commands: list[Any], at: datetime) -> str | None:
    where: str | None = None
    for c in commands:
        if isinstance(c, RecordTransition) and c.at <= at:
            where = c.to_stage
    return where


def scenario_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(p.rglob("*.scenarios.yaml")))
        else:
            files.append(p)
    return files


def run_file(
    path: Path, funnels: dict[str, Funnel], subjects_of: Callable[[Funnel], Subjects] | None = None
) -> list[Outcome]:
    """`subjects_of(funnel)`: its templates as leads read them, for `language` and `subject` expectations."""
    spec = load_scenarios(path)
    funnel = funnels.get(spec.funnel)
    if funnel is None:
        raise ScenarioError(f"{path}:1:1: funnel: expected one of {', '.join(sorted(funnels))}, found {spec.funnel!r}")
    subjects = subjects_of(funnel) if subjects_of is not None else None
    return [run_scenario(funnel, s, path, subjects) for s in spec.scenarios]
