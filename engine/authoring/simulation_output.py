"""Printing a simulation: a rich table for people, one JSON line for scripts."""

from __future__ import annotations

import json
import statistics
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table

from engine.authoring.simulation import SimulationResult
from engine.authoring.simulation_experiments import funnel_experiments
from engine.authoring.virtual_timeline import SubjectOf, timeline_lines
from engine.core.durations import format_duration


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(result: SimulationResult) -> dict[str, object]:
    stages = result.funnel.stage_ids()
    final = {s: result.final.get(s, 0) for s in stages}
    exited = {k.removeprefix("exited:"): v for k, v in sorted(result.final.items()) if k.startswith("exited:")}
    return {
        "funnel": result.funnel.id,
        "version": result.funnel.version,
        "leads": result.leads,
        "days": result.days,
        "elapsed_s": round(result.elapsed_s, 3),
        "stages": final,
        "exited": exited,
        "reached": {s: result.reached.get(s, 0) for s in stages},
        "conversion": {f"{a}->{b}": round(rate, 4) for a, b, rate in result.conversion()},
        "emails_sent": sum(result.emails.values()),
        "emails_skipped": sum(result.skipped.values()),
        "goals": result.goals,
        "goals_within_window": result.goals_within,
        "experiments": result.experiments.summary(),
    } | (_languages_summary(result) if result.lead_languages else {})


def _languages_summary(result: SimulationResult) -> dict[str, object]:
    read: dict[str, int] = {}
    for (_, language), n in sorted(result.read_in.items()):
        read[language] = read.get(language, 0) + n
    return {"lead_languages": dict(sorted(result.lead_languages.items())), "emails_by_language": read}


def _print_languages(console: Console, result: SimulationResult) -> None:
    """Each email by the language its leads read it in (a translation, or the one they fall back to)."""
    read = sorted({language for _, language in result.read_in})
    leads = ", ".join(f"{tag} {n}" for tag, n in sorted(result.lead_languages.items()))
    table = Table(title=f"Emails by the language read (leads: {leads})")
    table.add_column("step")
    for language in read:
        table.add_column(language, justify="right")
    for stage in result.funnel.stages:
        for step in stage.steps:
            if hasattr(step, "send"):
                counts = [str(result.read_in.get((step.id, language), 0)) for language in read]
                table.add_row(f"{stage.id} / {step.id}", *counts)
    console.print(table)


def _print_experiments(console: Console, result: SimulationResult) -> None:
    for exp_id, arms in result.experiments.arms.items():
        _, experiment = funnel_experiments(result.funnel)[exp_id]
        metric = experiment.metric
        what = {"goal": "the goal", "event": f"event {metric.event}", "stage": f"stage {metric.stage}"}.get(
            metric.kind, "a click" if metric.click == "*" else f"a click on {metric.click}"
        )
        table = Table(title=f"Experiment {exp_id}: {what} within {format_duration(metric.within)} of assignment")
        for col in ("arm", "weight", "leads", "conversions", "rate"):
            table.add_column(col, justify="left" if col == "arm" else "right")
        for arm in experiment.arms:
            f = arms[arm.id]
            rate = f"{f.conversions / f.leads:.1%}" if f.leads else "-"
            name = arm.id + (" (holdout)" if arm.holdout else "")
            table.add_row(name, f"{arm.weight:g}", str(f.leads), str(f.conversions), rate)
        console.print(table)


def print_simulation(
    console: Console, result: SimulationResult, subject: SubjectOf | None = None, as_json: bool = False
) -> None:
    stages = result.funnel.stage_ids()
    exit_columns = sorted({k for day in result.stage_by_day for k in day if k.startswith("exited:")})
    table = Table(title=f"{result.funnel.name}: {result.leads} leads over {result.days} days (end of each day, UTC)")
    table.add_column("day", justify="right")
    for s in stages:
        table.add_column(s, justify="right")
    for k in exit_columns:
        table.add_column(k.replace("exited:", "exit: "), justify="right", style="dim")
    for d, counts in enumerate(result.stage_by_day, 1):
        table.add_row(str(d), *(str(counts.get(s, 0)) for s in stages), *(str(counts.get(k, 0)) for k in exit_columns))
    console.print(table)

    conv = Table(title="Stage to stage (share of leads who reached the first that reached the second)")
    for col in ("from", "to", "leads reached", "conversion", "median days in stage", "p90 days in stage"):
        conv.add_column(col, justify="right" if col not in ("from", "to") else "left")
    for a, b, rate in result.conversion():
        times = result.time_in_stage.get(a, [])
        median = statistics.median(times) if times else None
        p90 = _percentile(times, 0.9)
        conv.add_row(
            a,
            b,
            f"{result.reached.get(a, 0)} -> {result.pairs.get((a, b), 0)}",
            f"{rate:.1%}",
            f"{median:.1f}" if median is not None else "-",
            f"{p90:.1f}" if p90 is not None else "-",
        )
    console.print(conv)

    emails = Table(title="Emails")
    emails.add_column("step")
    emails.add_column("sent", justify="right")
    emails.add_column("skipped", justify="right")
    for stage in result.funnel.stages:
        for step in stage.steps:
            if hasattr(step, "send"):
                emails.add_row(
                    f"{stage.id} / {step.id}", str(result.emails.get(step.id, 0)), str(result.skipped.get(step.id, 0))
                )
    console.print(emails)
    if result.lead_languages:
        _print_languages(console, result)
    _print_experiments(console, result)
    goal = result.funnel.goal
    if goal is not None:
        console.print(
            f"goal [bold]{goal.id}[/bold]: reached by {result.goals} leads ({result.goals_within} within its window)"
        )
    if result.sample is not None:
        run = result.sample
        zone = ZoneInfo(run.lead.timezone or result.funnel.timezone)
        console.print(f"\n[bold]Timeline of {run.lead.id}[/bold] (local time, {zone.key})")
        for line in timeline_lines(run, zone, subject):
            console.print("  " + line, markup=False, highlight=False, soft_wrap=True)
    rate = result.leads / result.elapsed_s if result.elapsed_s else 0.0
    console.print(
        f"simulated {result.leads} leads over {result.days} days in {result.elapsed_s:.2f} s ({rate:,.0f} leads/s)"
    )
    if as_json:
        print(json.dumps(summary(result), sort_keys=True))
