"""The `funnel` command line. Thin: parses arguments, calls the modules that do the work, prints."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from engine.definition import Funnel

app = typer.Typer(
    help="Marketing funnels as code: validate, simulate, test and run funnels defined in YAML.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


@app.command()
def validate(
    paths: list[Path] = typer.Argument(None, help="Funnel files or folders (default: funnels/)."),
    emails: Path = typer.Option(Path("emails"), help="Folder of email templates."),
) -> None:
    """Check funnel files: shape, graph, templates. Every error names file:line:column."""
    from engine.validation import load_funnels

    result = load_funnels(paths or [Path("funnels")], emails_dir=emails)
    for error in result.errors:
        err.print(str(error), markup=False, highlight=False, soft_wrap=True)
    if result.errors:
        err.print(f"[red]{len(result.errors)} error(s)[/red] in {len(result.files)} file(s)")
        raise typer.Exit(1)
    for funnel in result.funnels:
        steps = sum(len(s.steps) for s in funnel.stages)
        console.print(
            f"[green]ok[/green] {funnel.id} ({len(funnel.stages)} stages, {steps} steps, version {funnel.version})"
        )


@app.command()
def schema(
    output: Path = typer.Option(Path("config/funnel.schema.json"), "--output", "-o", help="Where to write it."),
) -> None:
    """Write the funnel files' JSON Schema (editors use it for completion and checks)."""
    from engine.validation import write_schema

    write_schema(output)
    console.print(f"wrote {output}")


def _load(paths: list[Path], emails: Path) -> list[Funnel]:
    from engine.validation import load_funnels

    result = load_funnels(paths, emails_dir=emails)
    if result.errors:
        for error in result.errors:
            err.print(str(error), markup=False, highlight=False, soft_wrap=True)
        err.print(f"[red]{len(result.errors)} error(s)[/red]: fix the funnel files first (`funnel validate`)")
        raise typer.Exit(1)
    return list(result.funnels)


def _funnel(ref: str, emails: Path, funnels_dir: Path = Path("funnels")) -> Funnel:
    """A funnel by file path or by id (looked up in the funnels folder)."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        found = _load([path], emails)
    else:
        found = [f for f in _load([funnels_dir], emails) if f.id == ref]
    if not found:
        err.print(f"no funnel {ref!r}: expected a funnel file or the id of a funnel in {funnels_dir}/")
        raise typer.Exit(1)
    return found[0]


def _subjects(emails: Path) -> dict[str, str]:
    from engine.templates import TemplateLibrary

    library = TemplateLibrary(emails)
    out = {}
    for name in library.names():
        try:
            out[name] = library.subject(name)
        except Exception:  # noqa: BLE001 - a timeline without a subject is still a timeline
            continue
    return out


@app.command()
def simulate(
    funnel: str = typer.Argument(..., help="Funnel file or id."),
    leads: int = typer.Option(1000, "--leads", "-n", min=1, help="Number of virtual leads."),
    days: int = typer.Option(30, "--days", "-d", min=1, help="Days of virtual time."),
    events: Path | None = typer.Option(None, "--events", help="YAML event mix (default: 50% open, 30% click, 5% buy)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same figures."),
    lead: int | None = typer.Option(None, "--lead", help="Print this lead's (1..N) full timeline."),
    start: str = typer.Option("2026-11-02", "--start", help="First day (UTC date)."),
    arrivals: float = typer.Option(1.0, "--arrivals", help="Days over which leads sign up."),
    emails: Path = typer.Option(Path("emails"), help="Folder of email templates."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object of the figures."),
) -> None:
    """Run the funnel on a virtual clock with many leads; print stage counts per day and conversions."""
    from engine.simulation_output import print_simulation
    from engine.simulation import DEFAULT_MIX, load_mix
    from engine.simulation import simulate as run_simulation

    definition = _funnel(funnel, emails)
    mix = load_mix(events) if events else DEFAULT_MIX
    try:
        first_day = datetime.fromisoformat(start).replace(tzinfo=UTC)
    except ValueError:
        err.print(f"--start: expected a date YYYY-MM-DD, found {start!r}")
        raise typer.Exit(2) from None
    if lead is not None and not 1 <= lead <= leads:
        err.print(f"--lead: expected a lead number from 1 to {leads}, found {lead}")
        raise typer.Exit(2)
    result = run_simulation(
        definition,
        leads=leads,
        days=days,
        seed=seed,
        start=first_day,
        mix=mix,
        emails_dir=emails,
        arrival_days=arrivals,
        sample_lead=lead,
    )
    print_simulation(console, result, subjects=_subjects(emails) if lead else {}, as_json=as_json)


@app.command("test")
def test_scenarios(
    paths: list[Path] = typer.Argument(None, help="Scenario files or folders (default: funnels/)."),
    emails: Path = typer.Option(Path("emails"), help="Folder of email templates."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print each scenario's timeline."),
) -> None:
    """Run the marketers' scenarios (`*.scenarios.yaml`) on the virtual clock."""
    from zoneinfo import ZoneInfo

    from engine.scenarios import ScenarioError, run_file, scenario_files, timeline_lines

    targets = paths or [Path("funnels")]
    files = scenario_files(targets)
    if not files:
        err.print(f"no *.scenarios.yaml files in {', '.join(map(str, targets))}")
        raise typer.Exit(1)
    funnel_dirs = sorted({f.parent for f in files})
    funnels = {f.id: f for f in _load(funnel_dirs, emails)}
    passed = failed = 0
    for file in files:
        try:
            outcomes = run_file(file, funnels)
        except ScenarioError as exc:
            err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
            failed += 1
            continue
        for outcome in outcomes:
            mark = "[green]PASS[/green]" if outcome.passed else "[red]FAIL[/red]"
            console.print(f"{mark} {file}: {outcome.scenario}", highlight=False)
            for failure in outcome.failures:
                console.print(f"     {failure}", markup=False, highlight=False, soft_wrap=True)
            if (verbose or not outcome.passed) and outcome.run is not None:
                zone = ZoneInfo(outcome.run.lead.timezone or "UTC")
                for line in timeline_lines(outcome.run, zone, _subjects(emails)):
                    console.print(f"       {line}", markup=False, highlight=False, soft_wrap=True)
            passed += outcome.passed
            failed += not outcome.passed
    console.print(f"{passed} scenarios passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


@app.command()
def run(
    once: bool = typer.Option(False, "--once", help="Process everything due, then exit."),
    emails: Path = typer.Option(Path("emails"), help="Folder of email templates."),
    funnels_dir: Path = typer.Option(Path("funnels"), "--funnels", help="Folder of funnel files."),
) -> None:
    """Run the engine on the funnels in `funnels/`."""
    funnels = _load([funnels_dir], emails)
    for definition in funnels:
        console.print(f"[green]ok[/green] {definition.id} version {definition.version}")
    from engine.simulation import simulate as run_simulation
    from engine.simulation_output import print_simulation

    for definition in funnels:
        result = run_simulation(definition, leads=1000, days=30, emails_dir=emails, sample_lead=1)
        print_simulation(console, result, subjects=_subjects(emails))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
