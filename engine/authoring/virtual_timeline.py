"""A virtual lead's timeline (engine.authoring.virtualclock's LeadRun), for people and for scripts: the lines
`funnel simulate --lead` and `funnel test -v` print, and the JSON record per lead `funnel simulate
--timelines` writes. Emails show their subject as that lead reads it, updates say what they did.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from engine.authoring.translations import read_as
from engine.authoring.virtualclock import LeadRun, Moment
from engine.core.definition import Funnel
from engine.core.experiments import AssignArm
from engine.core.journey import CallWebhook, GoalReached, Lead, RecordTransition, SendEmail, SkipEmail, UpdateLead
from engine.mail.templates import Sender, TemplateError, TemplateLibrary, lead_fields, sample_context
from engine.views.journey_map import words as words


class Subjects:
    """Each email's subject rendered for the lead it goes to, in the translation that lead reads
    (`read_as`, the engine's choice), from the configured sender. A subject that does not render is
    shown as written (`funnel validate` says what is wrong with it)."""

    def __init__(self, library: TemplateLibrary, sender: Sender, funnel: Funnel | None = None) -> None:
        self.library = library
        self.funnel = funnel
        self.context = sample_context(sender)
        if funnel is not None:
            self.context["funnel"] = {"id": funnel.id, "name": funnel.name}
        self._read: dict[tuple[str, str | None], tuple[str, str]] = {}

    def read_as(self, template: str, language: str | None) -> tuple[str, str]:
        """(the translation, its language) a lead of `language` reads; without a funnel, the template
        itself and "" (one language)."""
        key = (template, language)
        if key not in self._read:
            funnel = self.funnel
            self._read[key] = (
                read_as(self.library, funnel, template, language) if funnel is not None else (template, "")
            )
        return self._read[key]

    def __call__(self, template: str, lead: Lead, language: str | None = None) -> str | None:
        name, _ = self.read_as(template, language)
        context = {**self.context, "lead": lead_fields(lead.id, lead.attributes)}
        try:
            return self.library.render_subject(name, context)
        except TemplateError:
            try:
                return self.library.subject(name)
            except TemplateError:
                return None


# The subject each lead reads (simulate's and test's timelines).
SubjectOf = Subjects


def timeline_lines(run: LeadRun, zone: ZoneInfo, subject: SubjectOf | None = None) -> list[str]:
    """One lead's story, in local time: events, emails (with subjects), transitions with causes."""
    lines = []
    for m in run.moments:
        when = m.at.astimezone(zone).strftime("%a %Y-%m-%d %H:%M")
        if m.event is not None:
            props = ", ".join(f"{k}={v}" for k, v in _shown(m.event.properties).items())
            lines.append(f"{when}  event       {m.event.name}" + (f" ({props})" if props else ""))
            continue
        c = m.command
        if isinstance(c, SendEmail):
            said = subject(c.template, run.lead, run.language) if subject else None
            line = f"{when}  email       {c.step}" + (f' "{said}"' if said else f" [{c.template}]")
            read_in = subject.read_as(c.template, run.language)[1] if subject and run.language is not None else ""
            if read_in:  # a funnel in one language says nothing: every lead reads that one
                line += f" ({read_in})"
            lines.append(line)
        elif isinstance(c, SkipEmail):
            lines.append(f"{when}  skipped     {c.step} [{c.template}] ({c.reason})")
        elif isinstance(c, RecordTransition):
            frm, to = c.from_stage or "(new)", c.to_stage or f"(exit: {c.exit_reason})"
            lines.append(f"{when}  transition  {frm} -> {to}  because {c.cause}")
        elif isinstance(c, UpdateLead):
            lines.append(f"{when}  update      {c.step}: {_update(c)}")
        elif isinstance(c, CallWebhook):
            lines.append(f"{when}  webhook     {c.step}")
        elif isinstance(c, GoalReached):
            lines.append(f"{when}  goal        {c.goal}" + ("" if c.within_window else " (outside its window)"))
        elif isinstance(c, AssignArm):
            lines.append(f"{when}  experiment  {c.experiment}: arm {c.arm}" + (" (holdout)" if c.holdout else ""))
    return lines


def timeline_record(number: int, run: LeadRun, zone: ZoneInfo, subject: SubjectOf | None = None) -> dict[str, Any]:
    """One lead as plain JSON data: who it is, where it ended, and every moment with UTC and local times."""
    return {
        "lead": number,
        "email": run.lead.id,
        "timezone": zone.key,
        "language": run.language,
        "attributes": dict(run.lead.attributes),
        "ended": _ended(run),
        "timeline": [_moment(m, run, zone, subject) for m in run.moments],
    }


def _moment(m: Moment, run: LeadRun, zone: ZoneInfo, subject: SubjectOf | None) -> dict[str, Any]:
    lead = run.lead
    out: dict[str, Any] = {"at": _utc(m.at), "local": m.at.astimezone(zone).strftime("%Y-%m-%d %H:%M %a")}
    if m.event is not None:
        return out | {"kind": "event", "event": m.event.name, "properties": _shown(m.event.properties)}
    c = m.command
    if isinstance(c, SendEmail):
        said = subject(c.template, lead, run.language) if subject else None
        read, language = subject.read_as(c.template, run.language) if subject else (c.template, "")
        return out | {
            "kind": "email",
            "step": c.step,
            "template": c.template,
            "stage": c.stage,
            "subject": said,
            "transactional": c.transactional,
            "read": read,  # the translation the lead reads (the template itself in the default language)
            "language": language or None,
        }
    if isinstance(c, SkipEmail):
        return out | {"kind": "skipped", "step": c.step, "template": c.template, "stage": c.stage, "reason": c.reason}
    if isinstance(c, RecordTransition):
        return out | {
            "kind": "transition",
            "from": c.from_stage,
            "to": c.to_stage,
            "cause": str(c.cause),
            "exit_reason": c.exit_reason,
        }
    if isinstance(c, UpdateLead):
        return out | {
            "kind": "update",
            "step": c.step,
            "set": dict(c.set),
            "unset": list(c.unset),
            "add_tags": list(c.add_tags),
            "remove_tags": list(c.remove_tags),
            "score": c.score,
            "words": _update(c),
        }
    if isinstance(c, CallWebhook):
        return out | {"kind": "webhook", "step": c.step}
    if isinstance(c, GoalReached):
        return out | {"kind": "goal", "goal": c.goal, "within_window": c.within_window}
    if isinstance(c, AssignArm):
        return out | {"kind": "experiment", "step": c.step, "experiment": c.experiment, "arm": c.arm,
                      "template": c.template, "holdout": c.holdout}  # fmt: skip
    raise AssertionError(f"unknown moment {m!r}")  # pragma: no cover - the command union is closed


def _ended(run: LeadRun) -> str | None:
    """Where the lead was at the end: a stage, `exited:<reason>`, or None if it never entered."""
    state = run.state
    if state is None:
        return None
    return f"exited:{state.exit_reason}" if state.status == "exited" else state.stage


def _update(c: UpdateLead) -> str:
    return words.update(c.set, c.unset, c.add_tags, c.remove_tags, c.score)


def _shown(properties: Mapping[str, Any]) -> dict[str, Any]:
    # The step and template a simulated reaction answers are on the email's own line.
    return {k: v for k, v in properties.items() if k not in ("step", "template")}


def _utc(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")
