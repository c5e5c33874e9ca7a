"""`funnel experiment`: the experiments of the loaded funnels, their state and their decisions.

`list` gives each experiment's state; `show` its arms with leads, conversions, rate and the lift over the
control with its interval, the state of the test and, once decided, when, how, by whom and why. `promote`
sends new leads to an arm (any arm, with who and why kept), `stop` ends an experiment (new leads go to the
control, or to the arm given). Either is refused once the experiment is decided: the first decision holds.
Leads already assigned keep their arm. The figures are `engine.views.experiment_figures`', and
`print_experiment` prints them for `show` and `funnel report` alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from engine.cli.common import DATABASE_HELP, database, fail, operator_name, output_console, say

if TYPE_CHECKING:
    from rich.console import Console

    from engine.core.definition import Experiment, Funnel
    from engine.views.experiment_figures import ExperimentFigures

experiment_app = typer.Typer(help="Experiments: their state, and promoting or stopping one.")


def _funnels(refs: list[str]) -> list[Funnel]:
    from engine.authoring.funnel_lookup import find_funnels
    from engine.settings import get_settings

    # The experiments' logic is enough here; templates are `funnel validate`'s business.
    loaded = find_funnels(refs or [str(get_settings().funnels_dir)], get_settings().funnels_dir, emails_dir=None)
    if loaded.errors:
        raise fail("\n".join(str(e) for e in loaded.errors), 2)
    return list(loaded.funnels)


def _experiment(funnel_ref: str, experiment_id: str) -> tuple[Funnel, str, Experiment]:
    from engine.core.experiment_outcome import experiments_of

    found = _funnels([funnel_ref])
    if len(found) != 1:
        raise fail(f"{funnel_ref}: expected one funnel, found {len(found)}", 2)
    funnel = found[0]
    known = dict((e.id, (step, e)) for step, e in experiments_of(funnel))
    if experiment_id not in known:
        names = ", ".join(known) or "none"
        raise fail(f"{funnel.id}: no experiment {experiment_id!r} (its experiments: {names})", 2)
    step, experiment = known[experiment_id]
    return funnel, step, experiment


def list_experiments(
    funnels: list[str] = typer.Argument(None, help="Funnel files, folders or ids (default: funnels/)."),
    database_url: str | None = typer.Option(None, help=DATABASE_HELP),
) -> None:
    """Every experiment of the funnels with its state now."""
    from engine.store.database import connect_read_only
    from engine.views import experiment_figures as figures

    loaded = _funnels(funnels or [])
    now = datetime.now(UTC)
    table = Table("funnel", "experiment", "step", "arms", "leads counted", "state")
    with database(database_url) as engine, connect_read_only(engine) as conn:
        found = [e for funnel in loaded for e in figures.read(conn, funnel, now)]
    for e in found:
        shown = figures.decided_words(e.decided) if e.decided else e.state
        leads = " / ".join(f"{a.leads:,}" for a in e.arms)
        table.add_row(e.funnel, e.id, e.step, ", ".join(a.arm for a in e.arms), leads, shown)
    output_console().print(table)


def show(
    funnel_ref: str = typer.Argument(..., metavar="FUNNEL", help="The funnel's file or id."),
    experiment_id: str = typer.Argument(..., metavar="EXPERIMENT", help="The experiment's id."),
    database_url: str | None = typer.Option(None, help=DATABASE_HELP),
) -> None:
    """An experiment's arms (leads assigned, leads whose window has closed, conversions, rate, lift over
    the control with its interval), the state of its test and its decision."""
    from engine.store.database import connect_read_only
    from engine.views import experiment_figures as figures

    funnel, _, experiment = _experiment(funnel_ref, experiment_id)
    with database(database_url) as engine, connect_read_only(engine) as conn:
        found = next(e for e in figures.read(conn, funnel, datetime.now(UTC)) if e.id == experiment.id)
    out = output_console()
    print_experiment(out, found)
    settled = found.decided
    if settled is not None and settled.figures.get("arms"):
        at_time = ", ".join(f"{arm} {f['conversions']:,}/{f['leads']:,}" for arm, f in settled.figures["arms"].items())
        say(out, f"figures when decided: {at_time} (state {settled.figures.get('state')})")


def print_experiment(out: Console, e: ExperimentFigures) -> None:
    """An experiment as `show` and `funnel report` print it: what it tests, its arms, its state, and once
    decided when, how, by whom, why and where new leads go."""
    from engine.views.experiment_figures import decided_words

    rule = e.experiment.decide
    head = f"{e.funnel} / {e.id}: {e.kind} at step {e.step}; metric {e.metric} within {e.within}"
    say(out, f"{head}; promote: {rule.promote}; control: {e.control}")
    out.print(_arms_table(e))
    say(out, f"test: {e.reason}")
    if e.not_a_decision:
        say(out, "lifts and intervals: not a decision (the test runs once, at the horizon)")
    if e.decided is None:
        say(out, "decision: none yet")
        return
    say(out, f"decision: {decided_words(e.decided)}")
    say(out, f"why: {e.decided.reason}")


def _arms_table(e: ExperimentFigures) -> Table:
    from engine.views.experiment_figures import interval_words, lift_words

    table = Table("arm", "assigned", "leads counted", "conversions", "rate", "lift over control", "interval",
                  "adjusted p", title=f"Experiment {e.id}: {e.state}", title_justify="left")  # fmt: skip
    for a in e.arms:
        c = a.comparison
        if a.control:
            cells = ["(control)", "", ""]
        elif c is None:
            cells = ["-", "-", "-"]  # collecting: no comparison is shown yet
        else:
            cells = [lift_words(c), interval_words(c), f"{c.adjusted_p:.3g}"]
        assigned = f"{a.assigned:,}" + (f" (+{a.promoted:,} promoted)" if a.promoted else "")
        table.add_row(a.arm, assigned, f"{a.leads:,}", f"{a.conversions:,}", f"{a.rate:.2%}", *cells)
    return table


def promote(
    funnel_ref: str = typer.Argument(..., metavar="FUNNEL", help="The funnel's file or id."),
    experiment_id: str = typer.Argument(..., metavar="EXPERIMENT", help="The experiment's id."),
    arm: str = typer.Argument(..., help="The arm new leads get from now on."),
    reason: str = typer.Option(..., "--reason", help="Why (kept with the decision)."),
    by: str | None = typer.Option(None, "--by", help="Who decides (default: the system user running this)."),
    database_url: str | None = typer.Option(None, help=DATABASE_HELP),
) -> None:
    """Send the experiment's new leads to ARM from now on (any arm, whatever the test says). Refused
    once the experiment is decided. Leads already assigned keep their arm."""
    _decide(funnel_ref, experiment_id, arm, "manual", reason, by, database_url)


def stop(
    funnel_ref: str = typer.Argument(..., metavar="FUNNEL", help="The funnel's file or id."),
    experiment_id: str = typer.Argument(..., metavar="EXPERIMENT", help="The experiment's id."),
    arm: str | None = typer.Option(None, "--arm", help="The arm new leads get (default: the control)."),
    reason: str = typer.Option(..., "--reason", help="Why (kept with the decision)."),
    by: str | None = typer.Option(None, "--by", help="Who decides (default: the system user running this)."),
    database_url: str | None = typer.Option(None, help=DATABASE_HELP),
) -> None:
    """End the experiment: new leads go to the control (or to --arm). Refused once it is decided."""
    _decide(funnel_ref, experiment_id, arm, "stopped", reason, by, database_url)


def _decide(
    funnel_ref: str, experiment_id: str, arm: str | None, how: str, reason: str, by: str | None, url: str | None
) -> None:
    from engine.core.experiment_outcome import control
    from engine.runtime.experiment_rounds import figures
    from engine.store import experiment_decisions as store
    from engine.views.experiment_figures import decided_words

    if not reason.strip():
        raise fail("--reason: say why (it is kept with the decision)", 2)
    funnel, step, experiment = _experiment(funnel_ref, experiment_id)
    arms = [a.id for a in experiment.arms]
    chosen = arm if arm is not None else control(experiment)
    if chosen not in arms:
        raise fail(f"{funnel.id} / {experiment.id}: no arm {chosen!r} (its arms: {', '.join(arms)})", 2)
    who = operator_name(by)
    now = datetime.now(UTC)
    with database(url) as engine, engine.begin() as conn:
        found, decision = store.state(conn, funnel.id, step, experiment, now)
        written = store.record(
            conn, funnel.id, experiment.id, chosen, how, now, who, reason.strip(), figures(found, decision)
        )
        earlier = next(s for s in store.settled(conn, funnel.id) if s.experiment == experiment.id)
    if not written:
        raise fail(
            f"{funnel.id} / {experiment.id}: already {decided_words(earlier)} ({earlier.reason}); a decision "
            "is final: to test again, start a new experiment (a new id)"
        )
    verb = "promoted" if how == "manual" else "stopped"
    say(
        output_console(),
        f"{funnel.id} / {experiment.id}: {verb} by {who} ({reason.strip()}): new leads get {chosen} from the "
        f"engine's next tick; leads already assigned keep their arm (test was: {decision.state})",
    )


def register(app: typer.Typer) -> None:
    experiment_app.command("list")(list_experiments)
    experiment_app.command("show")(show)
    experiment_app.command("promote")(promote)
    experiment_app.command("stop")(stop)
    app.add_typer(experiment_app, name="experiment")
