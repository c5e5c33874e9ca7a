"""The funnel definition: what a marketer writes in `funnels/*.yaml`, as immutable, validated models.

Shape checks live here (pydantic, unknown keys refused); graph checks (targets exist, stages reachable,
templates exist) live in `engine.authoring.validation`, because they need the whole funnel and the file system.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import time, timedelta
from typing import Annotated, Any, Literal, Union, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PrivateAttr,
    StringConstraints,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from engine.core.durations import format_duration, parse_duration
from engine.core.languages import LanguageError, canonical

ID_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
MAX_ID_LENGTH = 63
EVENT_PATTERN = r"^[a-z][a-z0-9_.]*$"
TEMPLATE_PATTERN = r"^[a-z0-9][a-z0-9_-]*(/[a-z0-9][a-z0-9_-]*)*$"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Id = Annotated[
    str,
    StringConstraints(pattern=ID_PATTERN, max_length=MAX_ID_LENGTH),
    Field(description="Lowercase kebab-case id: letters, digits and single dashes, e.g. `nurture-1`."),
]
EventName = Annotated[
    str,
    StringConstraints(pattern=EVENT_PATTERN, max_length=63),
    Field(description="Event name in snake_case, e.g. `form_submitted`, `email_clicked`."),
]
TemplateName = Annotated[
    str,
    StringConstraints(pattern=TEMPLATE_PATTERN, max_length=120),
    Field(description="Template path under `emails/` without extension, e.g. `lead-magnet/report`."),
]


def shorten(text: str, keep: int = 60) -> str:
    """A value for "found ...": a pasted paragraph or a number of thousands of digits is not repeated whole."""
    return text if len(text) <= keep + 20 else f"{text[:keep]}... ({len(text):,} characters)"


# Ten times what a large funnel needs (the example has 5 stages, at most 10 steps in one): what is drawn
# as a map column per stage and walked by every check stays small. The file's size is bounded too
# (engine.core.yamlfile.MAX_FILE_BYTES).
MAX_STAGES = 50
MAX_STEPS_PER_STAGE = 100

# Waits are added to dates: anything longer would push a lead's next step past the calendar's end
# (year 9999), which the journey cannot compute.
MAX_DURATION = timedelta(days=36_500)


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        too_long = f"expected a duration of at most 100 years ({MAX_DURATION.days}d), found {value!r}"
        if len(value) > 60:  # digits beyond what Python converts to a number, or a paste gone wrong
            raise ValueError(f"expected a duration such as '30m', '36h', '2d' or '1w2d', found {shorten(repr(value))}")
        try:
            delta = parse_duration(value)
        except OverflowError:
            raise ValueError(too_long) from None
        if delta > MAX_DURATION:
            raise ValueError(too_long)
        return delta
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"expected a duration with a unit such as '2d' or '36h', found {shorten(repr(value))}")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    # Written back as a marketer writes it, so stored definitions (funnel versions) load again.
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*(\d+\s*[wdhms]\s*)+$",
            "description": "A duration: a number and a unit (w, d, h, m, s), e.g. `2d`, `36h`, `1d12h`.",
        }
    ),
]


def _clock(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 09:30 as a sexagesimal integer (570); recover the clock time.
        hours, minutes = divmod(value, 60)
        if 0 <= hours < 24:
            return time(hours, minutes)
    if isinstance(value, str):
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value.strip()):
            raise ValueError(f"expected a local clock time 'HH:MM' such as '09:00', found {shorten(repr(value))}")
        h, m = value.strip().split(":")
        return time(int(h), int(m))
    return value


ClockTime = Annotated[
    time,
    BeforeValidator(_clock),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d$", "description": "Local time, `HH:MM`."}),
]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Scalar = Union[str, int, float, bool]


def _absent_if_none(value: Any) -> bool:
    return value is None


class Model(BaseModel):
    # No infinite or NaN numbers: a lead's attributes and the stored definitions are JSON, which has neither.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


def _only_key(value: Any, keys: tuple[str, ...], fallback: str | None = None) -> str | None:
    """Pick a union member by which of its action keys a mapping carries (like GitHub Actions'
    `uses:`/`run:`), so marketers don't have to write a `type:` key on every step."""
    if isinstance(value, dict):
        present = [k for k in keys if k in value]
        if len(present) == 1:
            return present[0]
        if not present:
            return fallback
        return None
    if isinstance(value, BaseModel):
        for k in keys:
            if k in type(value).model_fields or k in {f.alias for f in type(value).model_fields.values() if f.alias}:
                return k
    return fallback


# --------------------------------------------------------------------------------------------------
# Conditions: a small typed language, evaluated by the journey core. Never eval, never SQL.
# --------------------------------------------------------------------------------------------------

_OPS = ("equals", "not_equals", "in", "not_in", "gt", "gte", "lt", "lte", "exists", "contains")


class AttrCondition(Model):
    """A test on one lead field: an attribute, or one of `score`, `timezone`, `email_domain`."""

    attr: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]
    equals: Scalar | None = None
    not_equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    not_in: list[Scalar] | None = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    exists: bool | None = None
    contains: Scalar | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> AttrCondition:
        used = [op for op in _OPS if getattr(self, "in_" if op == "in" else op) is not None]
        if len(used) != 1:
            raise ValueError(
                f"expected exactly one operator ({', '.join(_OPS)}) next to 'attr', found "
                + (", ".join(used) if used else "none")
            )
        return self

    @property
    def operator(self) -> tuple[str, Any]:
        for op in _OPS:
            value = getattr(self, "in_" if op == "in" else op)
            if value is not None:
                return op, value
        raise AssertionError("validated to have one operator")


class TagCondition(Model):
    has_tag: Id


class AllCondition(Model):
    all: list[Condition] = Field(min_length=1)


class AnyCondition(Model):
    any: list[Condition] = Field(min_length=1)


class NotCondition(Model):
    not_: Condition = Field(alias="not")


_CONDITION_KEYS = ("attr", "has_tag", "all", "any", "not")


def _condition_kind(value: Any) -> str | None:
    if isinstance(value, AttrCondition):
        return "attr"
    if isinstance(value, TagCondition):
        return "has_tag"
    if isinstance(value, AllCondition):
        return "all"
    if isinstance(value, AnyCondition):
        return "any"
    if isinstance(value, NotCondition):
        return "not"
    return _only_key(value, _CONDITION_KEYS)


Condition = Annotated[
    Union[
        Annotated[AttrCondition, Tag("attr")],
        Annotated[TagCondition, Tag("has_tag")],
        Annotated[AllCondition, Tag("all")],
        Annotated[AnyCondition, Tag("any")],
        Annotated[NotCondition, Tag("not")],
    ],
    Discriminator(
        _condition_kind,
        custom_error_type="condition",
        custom_error_message="expected a condition with exactly one of the keys attr, has_tag, all, any, not",
    ),
]


class EventMatch(Model):
    """An event by name, optionally narrowed by its properties (equality, or one of a list)."""

    event: EventName
    where: dict[str, Scalar | list[Scalar]] = Field(
        default_factory=dict,
        description="Property filters: `link: pricing` (equals) or `link: [pricing, book-call]` (one of).",
    )


# --------------------------------------------------------------------------------------------------
# Steps of a stage's drip sequence
# --------------------------------------------------------------------------------------------------


class Outcome(Model):
    """Where a branch goes: `goto` a step of the same stage, `move_to` a stage, `exit`; `{}` = carry on."""

    goto: Id | None = None
    move_to: Id | None = None
    exit: Id | None = None

    @model_validator(mode="after")
    def _at_most_one(self) -> Outcome:
        used = [k for k in ("goto", "move_to", "exit") if getattr(self, k) is not None]
        if len(used) > 1:
            raise ValueError(f"expected at most one of goto, move_to, exit, found {', '.join(used)}")
        return self


# --------------------------------------------------------------------------------------------------
# Experiments: a variant send (one `send` step, two or more templates) and a split step (two or more
# paths). How a lead is assigned is engine.core.experiments; how a winner is decided, docs/experiments.md.
# --------------------------------------------------------------------------------------------------


class Arm(Model):
    """One arm: a template (variant send), the first step of a path (split), or the split's holdout."""

    id: Id
    weight: float = Field(default=1, description="Relative share of leads; positive. Default 1.")
    send: TemplateName | None = Field(default=None, description="Variant send: this arm's template.")
    goto: Id | None = Field(default=None, description="Split: the step of this stage where the arm's path starts.")
    holdout: bool = Field(default=False, description="Split: gets nothing from the split and goes on at `goto`.")

    @field_validator("weight")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"expected a positive weight such as 1 or 0.5, found {value:g}")
        return value


class Metric(Model):
    """What an experiment counts, per lead, within `within` of its assignment: exactly one of the funnel's
    goal, a named event, a click on a named link (`*`: any link) or reaching a stage."""

    goal: Literal[True] | None = None
    event: EventName | None = None
    click: Annotated[str, StringConstraints(pattern=r"^(\*|[a-z][a-z0-9]*(-[a-z0-9]+)*)$")] | None = None
    stage: Id | None = None
    within: Duration = Field(description="Counted only this soon after the lead's assignment, e.g. `3d`.")

    @model_validator(mode="after")
    def _one_kind(self) -> Metric:
        used = [k for k in ("goal", "event", "click", "stage") if getattr(self, k) is not None]
        if len(used) != 1:
            raise ValueError(
                "expected exactly one of goal, event, click, stage next to 'within', found "
                + (", ".join(used) if used else "none")
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("goal", "event", "click", "stage") if getattr(self, k) is not None)


class Decide(Model):
    """The decision rule: see docs/experiments.md#how-a-winner-is-decided."""

    alpha: float = Field(default=0.05, gt=0, lt=1, description="Significance level, e.g. 0.05.")
    min_per_arm: int = Field(ge=1, le=10_000_000, description="Leads each arm needs before anything is decided.")
    promote: Literal["auto", "manual"] = Field(
        description="`auto`: new leads go to the winner from then on; `manual`: an operator promotes."
    )
    if_no_winner: Literal["keep_control", "keep_split", "best_observed"] = Field(
        default="keep_control",
        description="`keep_control`: the control (first arm or holdout); `keep_split`: by weight; `best_observed`.",
    )
    baseline: float | None = Field(
        default=None, gt=0, lt=1, description="Planning: the control's expected conversion rate, e.g. 0.05."
    )
    min_detectable_effect: float | None = Field(
        default=None, gt=0, lt=1, description="Planning: the smallest absolute lift worth finding, e.g. 0.01."
    )
    power: float = Field(
        default=0.8, gt=0, lt=1, description="Planning: the chance of finding that lift when it is real."
    )

    @model_validator(mode="after")
    def _planned(self) -> Decide:
        if (self.baseline is None) != (self.min_detectable_effect is None):
            raise ValueError("expected both baseline and min_detectable_effect (to plan the horizon), or neither")
        planned = (self.baseline or 0) + (self.min_detectable_effect or 0)
        if planned >= 1:
            raise ValueError(
                f"expected baseline + min_detectable_effect below 1, found "
                f"{self.baseline:g} + {self.min_detectable_effect:g}"
            )
        return self


class Experiment(Model):
    id: Id = Field(description="Unique within the funnel; names the experiment in reports and timelines.")
    salt: Annotated[str, StringConstraints(min_length=1, max_length=63)] | None = Field(
        default=None, description="Mixed into the assignment hash; the experiment's id if absent."
    )
    arms: list[Arm] = Field(description="Two or more; the first is the control.")
    metric: Metric
    decide: Decide

    @field_validator("arms")
    @classmethod
    def _arms(cls, arms: list[Arm]) -> list[Arm]:
        if len(arms) < 2:
            raise ValueError(f"expected at least two arms, found {len(arms)}")
        seen: set[str] = set()
        for arm in arms:
            if arm.id in seen:
                raise ValueError(f"expected unique arm ids, found {arm.id!r} twice")
            seen.add(arm.id)
        return arms

    @property
    def hash_salt(self) -> str:
        return self.salt if self.salt is not None else self.id


class SendStep(Model):
    id: Id
    send: TemplateName
    transactional: bool = Field(
        default=False,
        description="A transactional email (e.g. delivering what the lead asked for) ignores send windows"
        " and frequency caps; it still needs consent.",
    )
    # Left out of the dump when absent, so funnels without experiments keep their version hash.
    experiment: Experiment | None = Field(
        default=None,
        exclude_if=_absent_if_none,
        description="A variant send: each arm's `send` template (the step's own if absent) goes to its share.",
    )

    @property
    def templates(self) -> list[str]:
        """The templates the step may queue: its own, then its arms' (in arm order, without repeats)."""
        names = [self.send]
        if self.experiment is not None:
            names += [arm.send for arm in self.experiment.arms if arm.send is not None]
        return list(dict.fromkeys(names))


class SplitStep(Model):
    id: Id
    split: Experiment = Field(description="Arms with `goto`: the step of this stage where each path starts.")


class WaitStep(Model):
    id: Id
    wait: Duration


class WaitUntil(Model):
    time: ClockTime
    days: list[Weekday] | None = Field(default=None, min_length=1, description="Allowed weekdays; any if absent.")


class WaitUntilStep(Model):
    id: Id
    wait_until: WaitUntil


class WaitFor(EventMatch):
    timeout: Duration
    on_event: Outcome = Field(default_factory=Outcome)
    on_timeout: Outcome = Field(default_factory=Outcome)


class WaitForStep(Model):
    id: Id
    wait_for: WaitFor


class Branch(Model):
    if_: Condition = Field(alias="if")
    then: Outcome = Field(default_factory=Outcome)
    else_: Outcome = Field(default_factory=Outcome, alias="else")


class BranchStep(Model):
    id: Id
    branch: Branch


MAX_SCORE_STEP = 1_000_000


class Update(Model):
    set: dict[str, Scalar] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)
    add_tags: list[Id] = Field(default_factory=list)
    remove_tags: list[Id] = Field(default_factory=list)
    score: int = Field(default=0, description="Added to the lead's score (negative subtracts).")

    @field_validator("score")
    @classmethod
    def _score_in_range(cls, value: int) -> int:
        # The score column is a 32-bit integer on PostgreSQL; a step adding more would fail every lead it reaches.
        if abs(value) > MAX_SCORE_STEP:
            raise ValueError(
                f"expected a score between -{MAX_SCORE_STEP:,} and {MAX_SCORE_STEP:,}, found {shorten(str(value))}"
            )
        return value


class UpdateStep(Model):
    id: Id
    update: Update


class MoveStep(Model):
    id: Id
    move_to: Id


class Webhook(Model):
    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$")]
    payload: dict[str, Any] = Field(default_factory=dict)


class WebhookStep(Model):
    id: Id
    webhook: Webhook


class ExitStep(Model):
    id: Id
    exit: Id = Field(description="The exit reason recorded, e.g. `not-a-fit`.")


_STEP_KEYS = ("send", "wait", "wait_until", "wait_for", "branch", "split", "update", "move_to", "webhook", "exit")
_STEP_CLASSES: dict[type, str] = {}


def _step_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return _STEP_CLASSES.get(type(value))
    return _only_key(value, _STEP_KEYS)


Step = Annotated[
    Union[
        Annotated[SendStep, Tag("send")],
        Annotated[WaitStep, Tag("wait")],
        Annotated[WaitUntilStep, Tag("wait_until")],
        Annotated[WaitForStep, Tag("wait_for")],
        Annotated[BranchStep, Tag("branch")],
        Annotated[SplitStep, Tag("split")],
        Annotated[UpdateStep, Tag("update")],
        Annotated[MoveStep, Tag("move_to")],
        Annotated[WebhookStep, Tag("webhook")],
        Annotated[ExitStep, Tag("exit")],
    ],
    Discriminator(
        _step_kind,
        custom_error_type="step",
        custom_error_message="expected a step with an id and exactly one of the keys " + ", ".join(_STEP_KEYS),
    ),
]
_STEP_CLASSES.update(
    {
        SendStep: "send",
        WaitStep: "wait",
        WaitUntilStep: "wait_until",
        WaitForStep: "wait_for",
        BranchStep: "branch",
        SplitStep: "split",
        UpdateStep: "update",
        MoveStep: "move_to",
        WebhookStep: "webhook",
        ExitStep: "exit",
    }
)


# --------------------------------------------------------------------------------------------------
# Stages, transitions, entry, goal, exits, schedule
# --------------------------------------------------------------------------------------------------


class OnEndMove(Model):
    move_to: Id


# --------------------------------------------------------------------------------------------------
# Persona and journey notes: what the customer journey map shows (`funnel map`). They describe the
# funnel for people and change nothing the engine does.
# --------------------------------------------------------------------------------------------------

Note = Annotated[str, StringConstraints(min_length=1, max_length=500)]


class Persona(Model):
    """Who the funnel is for. Leads carry the persona's id in their `persona` attribute."""

    id: Id = Field(description="The value of the lead attribute `persona` for this persona, e.g. `facilities-manager`.")
    name: Note = Field(description="A name that makes the persona a person, e.g. `Facilities Fiona`.")
    description: Note | None = Field(default=None, description="Who they are, in a sentence or two.")
    goals: list[Note] = Field(default_factory=list, description="What they want to achieve.")
    pains: list[Note] = Field(default_factory=list, description="What gets in their way today.")


class JourneyNotes(Model):
    """The persona at one stage: what they ask, need, feel and like to read, and what we want of it."""

    question: Note | None = Field(default=None, description="The question the persona asks at this stage.")
    needs: list[Note] = Field(default_factory=list, description="What the persona needs from us here.")
    feelings: list[Note] = Field(default_factory=list, description="How the persona feels here.")
    content: list[Note] = Field(default_factory=list, description="The content the persona prefers here.")
    goal: Note | None = Field(default=None, description="The stage's goal for us, e.g. `a booked call`.")


class Stage(Model):
    id: Id
    name: str | None = None
    description: str | None = None
    # Left out of the dump when absent, so funnels without notes keep their version hash.
    journey: JourneyNotes | None = Field(
        default=None,
        exclude_if=_absent_if_none,
        description="The persona's question, needs, feelings and preferred content here (`funnel map`).",
    )
    steps: list[Step] = Field(default_factory=list, max_length=MAX_STEPS_PER_STAGE)
    on_end: Literal["next", "stay", "exit"] | OnEndMove = Field(
        default="next",
        description="When the sequence ends: `next` stage in order, `stay`, `exit`, or `{move_to: stage}`.",
    )

    @property
    def title(self) -> str:
        return self.name or self.id.replace("-", " ").capitalize()


def _one_or_many(value: Any) -> Any:
    # `from: inquiry` reads as naturally as `from: [inquiry]`.
    if isinstance(value, str) and value != "*":
        return [value]
    return value


class Transition(Model):
    """A move that can fire at any moment: on an event, or after time in a stage without progress."""

    id: Id
    from_: Annotated[list[Id] | Literal["*"], BeforeValidator(_one_or_many)] = Field(
        default="*", alias="from", description="Stage ids the transition applies to (one id, a list, or `*`)."
    )
    to: Id
    on: EventMatch | None = None
    after: Duration | None = Field(default=None, description="Time spent in the `from` stage.")
    if_: Condition | None = Field(default=None, alias="if")

    @model_validator(mode="after")
    def _one_trigger(self) -> Transition:
        if (self.on is None) == (self.after is None):
            raise ValueError("expected exactly one of 'on' (an event) or 'after' (time in stage)")
        return self

    def applies_to(self, stage: str) -> bool:
        return self.from_ == "*" or stage in self.from_


class EventTrigger(EventMatch):
    pass


class ConditionTrigger(Model):
    condition: Condition


class ManualTrigger(Model):
    manual: Literal[True]


def _trigger_kind(value: Any) -> str | None:
    if isinstance(value, EventTrigger):
        return "event"
    if isinstance(value, ConditionTrigger):
        return "condition"
    if isinstance(value, ManualTrigger):
        return "manual"
    return _only_key(value, ("event", "condition", "manual"))


Trigger = Annotated[
    Union[
        Annotated[EventTrigger, Tag("event")],
        Annotated[ConditionTrigger, Tag("condition")],
        Annotated[ManualTrigger, Tag("manual")],
    ],
    Discriminator(
        _trigger_kind,
        custom_error_type="trigger",
        custom_error_message="expected a trigger with exactly one of the keys event, condition, manual",
    ),
]


class Entry(Model):
    triggers: list[Trigger] = Field(min_length=1)
    stage: Id | None = Field(default=None, description="Stage a new lead starts in; the first stage if absent.")
    reentry: Literal["never", "after_exit"] = Field(
        default="never", description="Whether a lead who left the funnel may enter it again."
    )
    cooldown: Duration | None = Field(default=None, description="With `after_exit`: minimum time since exit.")


class Goal(Model):
    id: Id = "goal"
    event: EventName
    where: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    within: Duration | None = Field(default=None, description="Counts only if reached this soon after entry.")
    move_to: Id | None = None
    exit: bool = Field(default=False, description="Leave the funnel once the goal is reached.")


class Renamed(Model):
    """Old id -> new id. A lead at a renamed stage or step keeps its place, and an email it already got
    under the old step id is not sent again under the new one."""

    stages: dict[Id, Id] = Field(default_factory=dict)
    steps: dict[Id, Id] = Field(default_factory=dict)


class ExitRule(EventMatch):
    reason: Id


class SendWindow(Model):
    days: list[Weekday] = Field(default_factory=lambda: cast(list[Weekday], list(WEEKDAYS)), min_length=1)
    start: ClockTime = time(0, 0)
    end: ClockTime = time(23, 59)

    @model_validator(mode="after")
    def _ordered(self) -> SendWindow:
        if self.end <= self.start:
            raise ValueError(f"expected 'end' after 'start', found {self.start:%H:%M}-{self.end:%H:%M}")
        return self


def _timezone(value: Any) -> Any:
    if isinstance(value, str):
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"expected an IANA time zone such as 'Europe/Berlin', found {shorten(repr(value))}"
            ) from None
    return value


def _language(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return canonical(value)
        except LanguageError as e:
            raise ValueError(str(e)) from None
    return value


LanguageTag = Annotated[
    str,
    BeforeValidator(_language),
    Field(description="A BCP 47 language tag, e.g. `en-GB`, `de`, `fr-CA`."),
]


class Languages(Model):
    """The languages a funnel writes in. Each email's default template is in `default`; a translation of
    `emails/NAME.md` is `emails/DIR/LANG/FILE.md` beside it (e.g. `lead-magnet/de/report-delivery.md`). A
    lead reads the first of its language's lookup chain (`fr-CA`, `fr`, then `default`) that the email
    has (engine.core.languages)."""

    default: LanguageTag = Field(default="en", description="The language of the templates without a language folder.")
    others: list[LanguageTag] = Field(
        default_factory=list, max_length=50, description="Other languages with translations, e.g. `[de, fr]`."
    )
    complete: list[LanguageTag] = Field(
        default_factory=list,
        description="Languages of `others` every email must exist in: `funnel validate` refuses a gap.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Languages:
        seen: set[str] = set()
        for tag in self.others:
            if tag == self.default:
                raise ValueError(f"expected the other languages without the default {tag!r}")
            if tag in seen:
                raise ValueError(f"expected each language once, found {tag!r} twice")
            seen.add(tag)
        stray = [tag for tag in self.complete if tag not in seen]
        if stray:
            raise ValueError(f"expected complete languages among `others`, found {', '.join(map(repr, stray))}")
        return self

    @property
    def declared(self) -> tuple[str, ...]:
        return (self.default, *self.others)


TimeZoneName = Annotated[
    str,
    BeforeValidator(_timezone),
    Field(description="IANA time zone name, e.g. `Europe/London`."),
]


class Funnel(Model):
    id: Id
    name: str
    description: str | None = None
    persona: Persona | None = Field(
        default=None, exclude_if=_absent_if_none, description="Who the funnel is for (`funnel map`)."
    )
    timezone: TimeZoneName = "UTC"
    languages: Languages | None = Field(
        default=None,
        exclude_if=_absent_if_none,
        description="The languages the funnel's emails and pages exist in; absent: one language.",
    )
    send_window: SendWindow | None = None
    allowed_lateness: Duration = Field(
        default=timedelta(days=1),
        description="A step due longer ago than this (after downtime) is skipped and recorded, not sent late.",
    )
    entry: Entry
    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES)
    transitions: list[Transition] = Field(default_factory=list)
    goal: Goal | None = None
    exits: list[ExitRule] = Field(default_factory=list)
    renamed: Renamed | None = Field(
        default=None, description="Ids an edit renamed, so leads in flight follow them (see `funnel plan`)."
    )

    # Memos for the core's lookups; private attributes may be set on a frozen model.
    _version: str | None = PrivateAttr(None)

    @field_validator("stages")
    @classmethod
    def _stage_ids_unique(cls, stages: list[Stage]) -> list[Stage]:
        seen: set[str] = set()
        for stage in stages:
            if stage.id in seen:
                raise ValueError(f"expected unique stage ids, found {stage.id!r} twice")
            seen.add(stage.id)
        return stages

    # Lookups used by the core; computed lazily because the model is frozen.
    def stage(self, stage_id: str) -> Stage:
        return self._index()[0][stage_id]

    def stage_ids(self) -> list[str]:
        return [s.id for s in self.stages]

    def step(self, stage_id: str, step_id: str) -> tuple[int, Any]:
        return self._index()[1][(stage_id, step_id)]

    def next_stage(self, stage_id: str) -> str | None:
        ids = self.stage_ids()
        i = ids.index(stage_id)
        return ids[i + 1] if i + 1 < len(ids) else None

    def _index(self) -> tuple[dict[str, Stage], dict[tuple[str, str], tuple[int, Any]]]:
        # Looked up on every step the core takes: kept outside pydantic's attribute machinery.
        entry = _INDEX.get(id(self))
        if entry is None or entry[0] is not self:
            stages = {s.id: s for s in self.stages}
            steps = {(s.id, st.id): (i, st) for s in self.stages for i, st in enumerate(s.steps)}
            if len(_INDEX) > 256:
                _INDEX.clear()
            entry = _INDEX[id(self)] = (self, (stages, steps))
        return entry[1]

    @property
    def version(self) -> str:
        """Content hash of the definition (not of the file's formatting or comments)."""
        if self._version is None:
            canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
            self._version = hashlib.sha256(canonical.encode()).hexdigest()[:12]
        return self._version

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# id(funnel) -> (funnel, lookups); holding the funnel keeps its id from being reused.
_INDEX: dict[int, tuple[Funnel, tuple[dict[str, Stage], dict[tuple[str, str], tuple[int, Any]]]]] = {}


AllCondition.model_rebuild()
AnyCondition.model_rebuild()
NotCondition.model_rebuild()
