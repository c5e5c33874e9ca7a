"""Checks on a funnel's experiments (variant sends and split steps) that need the whole funnel or the
templates: what an arm may hold, experiment ids unique in the funnel, and a metric that names a stage,
an event or a link the funnel really has. Shape checks (two arms or more, unique arm ids, positive
weights, one metric) are the model's (engine.core.definition)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.core.definition import Experiment, Funnel, SendStep, SplitStep, WaitForStep

Loc = tuple[str | int, ...]
Found = tuple[Loc, str, bool]

# Events the engine records about a lead's emails: a metric may name them even if the funnel does not.
ENGINE_EVENTS = ("email_clicked", "email_opened", "email_replied", "unsubscribed")
_LINK = re.compile(r"""link\(\s*['"]([a-z0-9-]+)['"]""")


def experiments(funnel: Funnel) -> Iterator[tuple[Loc, Any, Experiment]]:
    """Every experiment with the place of its block and its step."""
    for s_index, stage in enumerate(funnel.stages):
        for st_index, step in enumerate(stage.steps):
            loc: Loc = ("stages", s_index, "steps", st_index)
            if isinstance(step, SendStep) and step.experiment is not None:
                yield (*loc, "experiment"), step, step.experiment
            elif isinstance(step, SplitStep):
                yield (*loc, "split"), step, step.split


def check_experiments(funnel: Funnel, describe: Any, data: Any, emails_dir: Path | None) -> list[Found]:
    """`describe(loc, data)` names a place as the other graph checks do."""
    found: list[Found] = []
    seen: dict[str, Loc] = {}
    for loc, step, experiment in experiments(funnel):
        if experiment.id in seen:
            first = describe(seen[experiment.id], data)
            message = (
                f"{describe((*loc, 'id'), data)}: experiment id '{experiment.id}' is also used at {first}:"
                f" expected experiment ids unique within the funnel, found '{experiment.id}' again"
            )
            found.append(((*loc, "id"), message, False))
        else:
            seen[experiment.id] = (*loc, "id")
        found += _arms(step, experiment, loc, describe, data)
        found += _metric(funnel, step, experiment, loc, describe, data, emails_dir)
    return found


def _arms(step: Any, experiment: Experiment, loc: Loc, describe: Any, data: Any) -> list[Found]:
    found: list[Found] = []
    variant = isinstance(step, SendStep)
    for a_index, arm in enumerate(experiment.arms):
        a_loc: Loc = (*loc, "arms", a_index)
        if variant and arm.holdout:
            message = (
                f"{describe((*a_loc, 'holdout'), data)}: a holdout in a variant send is meaningless (every lead"
                " reaching the step gets one of its emails): expected arms with templates, found 'holdout: true'"
                " (a holdout belongs to a split step)"
            )
            found.append(((*a_loc, "holdout"), message, True))
        if variant and arm.goto is not None:
            message = (
                f"{describe((*a_loc, 'goto'), data)}: an arm of a variant send names a template ('send'),"
                f" not a path: expected no 'goto', found '{arm.goto}' (paths belong to a split step)"
            )
            found.append(((*a_loc, "goto"), message, True))
        if not variant and arm.send is not None:
            message = (
                f"{describe((*a_loc, 'send'), data)}: an arm of a split starts a path ('goto'), it sends"
                f" nothing itself: expected no 'send', found '{arm.send}' (put a send step at the path's start)"
            )
            found.append(((*a_loc, "send"), message, True))
        if not variant and arm.goto is None:
            message = (
                f"{describe(a_loc, data)}: expected 'goto' with the step of this stage where arm '{arm.id}'"
                + (" goes on" if arm.holdout else "'s path starts")
                + ", found none"
            )
            found.append((a_loc, message, False))
    return found


def _metric(
    funnel: Funnel, step: Any, experiment: Experiment, loc: Loc, describe: Any, data: Any, emails_dir: Path | None
) -> list[Found]:
    metric = experiment.metric
    m_loc: Loc = (*loc, "metric", metric.kind)
    where = describe(m_loc, data)
    if metric.goal is not None and funnel.goal is None:
        return [
            (m_loc, f"{where}: the metric is the funnel's goal: expected a 'goal' in the funnel, found none", False)
        ]
    if metric.stage is not None and metric.stage not in funnel.stage_ids():
        stages = ", ".join(funnel.stage_ids())
        return [(m_loc, f"{where}: unknown stage '{metric.stage}': expected one of {stages}", False)]
    if metric.event is not None:
        known = known_events(funnel)
        if metric.event not in known:
            return [
                (
                    m_loc,
                    f"{where}: unknown event '{metric.event}': expected an event the funnel names"
                    f" or the engine records ({', '.join(sorted(known))}), found '{metric.event}'",
                    False,
                )
            ]
    if metric.click is not None and metric.click != "*" and emails_dir is not None and emails_dir.is_dir():
        templates = step.templates if isinstance(step, SendStep) else _funnel_templates(funnel)
        links = _links(emails_dir, templates)
        if metric.click not in links:
            shown = ", ".join(sorted(links)) or "none"
            return [
                (
                    m_loc,
                    f"{where}: unknown link '{metric.click}': expected a link named in"
                    f" {', '.join(templates)} ({shown}), or '*' for any link",
                    False,
                )
            ]
    return []


def known_events(funnel: Funnel) -> set[str]:
    names = set(ENGINE_EVENTS)
    names |= {t.event for t in funnel.entry.triggers if hasattr(t, "event")}
    names |= {t.on.event for t in funnel.transitions if t.on is not None}
    names |= {rule.event for rule in funnel.exits}
    if funnel.goal is not None:
        names.add(funnel.goal.event)
    names |= {st.wait_for.event for s in funnel.stages for st in s.steps if isinstance(st, WaitForStep)}
    return names


def _funnel_templates(funnel: Funnel) -> list[str]:
    names = [t for s in funnel.stages for st in s.steps if isinstance(st, SendStep) for t in st.templates]
    return list(dict.fromkeys(names))


def _links(emails_dir: Path, templates: list[str]) -> set[str]:
    """Link names the templates' text gives to `link(...)` (a missing template is reported elsewhere)."""
    names: set[str] = set()
    for template in templates:
        for suffix in (".md", ".html"):
            path = emails_dir / f"{template}{suffix}"
            if path.is_file():
                names |= set(_LINK.findall(path.read_text(encoding="utf-8", errors="replace")))
    return names
