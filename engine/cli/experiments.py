"""`funnel experiment`: the experiments of the loaded funnels, their state and their decisions.

`list` gives each experiment's state; `show` its arms with leads, conversions, rate and the lift over the
control with its interval, the state of the test and, once decided, when, how, by whom and why. `promote`
sends new leads to an arm (any arm, with who and why kept), `stop` ends an experiment (new leads go to the
control, or to the arm given). Either is refused once the experiment is decided: the first decision holds.
Leads already assigned keep their arm.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from engine.cli.common import DATABASE_HELP, database, fail, operator_name, output_console, say

if TYPE_CHECKING:
    from engine.core.definition import Experiment, Funnel
    from engine.core.experiment_stats import ArmCounts, Decision
    from engine.store.experiment_decisions import Settled

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
    from engine.runtime.experiment_rounds import experiments_of

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


def _decided_words(s: Settled) -> str:
    goes = f"new leads get {s.arm}" if s.arm is not None else "new leads are split by weight"
    return f"decided ({s.how}) {s.decided_at.isoformat(timespec='minutes')} by {s.decided_by}: {goes}"


def list_experiments(
    funnels: list[str] = typer.Argument(None, help="Funnel files, folders or ids (default: funnels/)."),
    database_url: str | None = typer.Option(None, help=DATABASE_HELP),
) -> None:
    """Every experiment of the funnels with its state now."""
    from engine.runtime.experiment_rounds import experiments_of, state
    from engine.store import experiment_decisions as store
    from engine.store.database import connect_read_only

    loaded = _funnels(funnels or [])
    now = datetime.now(UTC)
    table = Table("funnel", "experiment", "step", "arms", "leads counted", "state")
    with database(database_url) as engine, connect_read_only(engine) as conn:
        decided = {(s.funnel, s.experiment): s for s in store.settled(conn)}
        for funnel in loaded:
            for step, experiment in experiments_of(funnel):
                found, decision = state(conn, funnel, step, experiment, now)
                settled = decided.get((funnel.id, experiment.id))
                shown = _decided_words(settled) if settled else decision.state
                leads = " / ".join(f"{c.leads:,}" for c in found)
                table.add_row(funnel.id, experiment.id, step, ", ".join(c.arm for c in found), leads, shown)
    output_console().print(table)


def show(
    funnel_ref: str = typer.Argument(..., metavar="FUNNEL", help="The funnel's file or id."),
    experiment_id: str = typer.Argument(..., metavar="EXPERIMENT", help="The experiment's id."),
    database_url: str | None = typer.Option(None, help=DATABASE_HELP),
) -> None:
    """An experiment's arms (leads whose window has closed, conversions, rate, lift over the control with
    its interval), the state of its test and its decision."""
    from engine.core.durations import format_duration
    from engine.core.experiment_outcome import control
    from engine.runtime.experiment_rounds import state
    from engine.store import experiment_decisions as store
    from engine.store.database import connect_read_only

    funnel, step, experiment = _experiment(funnel_ref, experiment_id)
    now = datetime.now(UTC)
    with database(database_url) as engine, connect_read_only(engine) as conn:
        found, decision = state(conn, funnel, step, experiment, now)
        settled = next((s for s in store.settled(conn, funnel.id) if s.experiment == experiment.id), None)
    out = output_console()
    kind = "variant send" if experiment.arms[0].goto is None else "split"
    head = f"{funnel.id} / {experiment.id}: {kind} at step {step}; metric {_metric_words(experiment)}"
    rule = f"promote: {experiment.decide.promote}; control: {control(experiment)}"
    say(out, f"{head} within {format_duration(experiment.metric.within)}; {rule}")
    out.print(_arms_table(found, decision, control(experiment)))
    say(out, f"test: {decision.reason}")
    if settled is None:
        say(out, "decision: none yet")
        return
    say(out, f"decision: {_decided_words(settled)}")
    say(out, f"why: {settled.reason}")
    arms = settled.figures.get("arms") or {}
    if arms:
        at_time = ", ".join(f"{arm} {f['conversions']:,}/{f['leads']:,}" for arm, f in arms.items())
        say(out, f"figures when decided: {at_time} (state {settled.figures.get('state')})")


def _metric_words(experiment: Experiment) -> str:
    m = experiment.metric
    return f"{m.kind}: {'true' if m.goal else getattr(m, m.kind)}"


def _arms_table(found: list[ArmCounts], decision: Decision, control_arm: str) -> Table:
    compared = {c.arm: c for c in decision.comparisons}
    table = Table("arm", "leads", "conversions", "rate", "lift over control", "interval", "adjusted p")
    for c in found:
        row = compared.get(c.arm)
        if c.arm == control_arm:
            cells = ["(control)", "", ""]
        elif row is None:
            cells = ["-", "-", "-"]  # collecting: no comparison is shown yet
        else:
            cells = [f"{row.lift:+.2%}", f"{row.low:+.2%} to {row.high:+.2%}", f"{row.adjusted_p:.3g}"]
        table.add_row(c.arm, f"{c.leads:,}", f"{c.conversions:,}", f"{c.rate:.2%}", *cells)
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
    from engine.runtime.experiment_rounds import figures, state
    from engine.store import experiment_decisions as store

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
        found, decision = state(conn, funnel, step, experiment, now)
        written = store.record(
            conn, funnel.id, experiment.id, chosen, how, now, who, reason.strip(), figures(found, decision)
        )
        earlier = next(s for s in store.settled(conn, funnel.id) if s.experiment == experiment.id)
    if not written:
        raise fail(
            f"{funnel.id} / {experiment.id}: already {_decided_words(earlier)} ({earlier.reason}); a decision "
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
