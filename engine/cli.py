"""The `funnel` command line. Thin: parses arguments, calls the modules that do the work, prints."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

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
        err.print(str(error), markup=False, highlight=False)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
