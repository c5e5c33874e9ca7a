"""Where the customer journey map's inputs come from, for `funnel map` and the dashboard alike: the
live figures from the database (the report's own queries, the exits for drop-off, the leads of each
experiment arm and the experiments' decisions) and the email subjects from the templates."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from engine.core.definition import Funnel, SendStep
from engine.mail.templates import Sender, TemplateError, TemplateLibrary, sample_context
from engine.store import experiment_assignments, experiment_decisions, report_queries
from engine.store.database import Connection
from engine.views import report
from engine.views.journey_map.experiments import Decided
from engine.views.journey_map.model import Live


def read_live(
    conn: Connection, funnel_id: str, at: datetime, language: str | None = None, default: str | None = None
) -> Live:
    """The funnel's figures as `funnel report` computes them, who left it where and why, and its
    experiments' arms and decisions; of the leads of `language` only when it is given (as `funnel report
    --language` counts them: a lead without a language reads the funnel's `default`)."""
    scope = report_queries.Scope(funnel_id, language=language, unset_reads=default)
    rows = report_queries.read_rows(conn, scope)
    built = report.build(rows, report_queries.layouts(conn, [funnel_id]))
    exits = [*report_queries.exits(conn, scope), *rows.losses]
    assigned = experiment_assignments.leads_per_arm(conn, funnel_id)
    decided = {
        d.experiment: Decided(d.arm, d.how, d.decided_at, d.decided_by)
        for d in experiment_decisions.settled(conn, funnel_id)
    }
    return Live(built[0] if built else None, exits, at, assigned, decided)


def templates_of(funnel: Funnel) -> list[str]:
    return sorted(
        {t for stage in funnel.stages for step in stage.steps if isinstance(step, SendStep) for t in step.templates}
    )


def translations_of(library: TemplateLibrary, funnel: Funnel) -> dict[str, tuple[str, ...]]:
    """Each template the funnel sends -> the languages it exists in: the default, then its translations
    (the files `TemplateLibrary.pick` chooses among). Empty for a funnel in one language."""
    if funnel.languages is None:
        return {}
    default, others = funnel.languages.default, funnel.languages.others
    return {t: (default, *library.translated_into(t, others)) for t in templates_of(funnel)}


def sample_subjects(library: TemplateLibrary, names: Iterable[str], sender: Sender) -> dict[str, str]:
    """Each template's subject as the preview's sample lead (Alex, of Example Ltd) would see it, from the
    configured sender: a subject reads as a subject, not as template code. A template that does not
    render shows its subject as written (`funnel validate` says what is wrong with it)."""
    out: dict[str, str] = {}
    context = sample_context(sender)
    for name in names:
        try:
            out[name] = library.render(name, context).subject
        except TemplateError:
            try:
                out[name] = library.subject(name)
            except TemplateError:
                continue
    return out


__all__ = ["read_live", "sample_subjects", "templates_of", "translations_of"]
