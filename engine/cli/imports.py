"""`funnel import leads.csv`: bulk import of leads from another tool. The work is in `engine.runtime.importer`."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from engine.runtime.importer import ImportResult
    from engine.store.database import Engine


def register(app: typer.Typer) -> None:
    app.command("import")(import_leads)


def import_leads(
    path: Path = typer.Argument(
        ..., help="CSV file: an 'email' column; optional tags (a;b), timezone, consent, language."
    ),
    funnel: str | None = typer.Option(
        None, "--funnel", help="Enroll each imported lead in this funnel (id or file) via a lead_imported event."
    ),
    database_url: str | None = typer.Option(None, "--database-url", help="Default: the configured database."),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Import the good rows and report the bad ones (default: import nothing)."
    ),
    funnels_dir: Path | None = typer.Option(None, "--funnels", help="Folder of funnel files (default: funnels/)."),
) -> None:
    """Import leads from a CSV file. Every row is checked first; by default one bad row imports nothing."""
    from engine.runtime import importer
    from engine.settings import get_settings
    from engine.store.database import create_engine_for

    # psycopg warns that it ended its pipeline while the import's own error was on its way out: that
    # error is what the command says, in one line.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    console, err = Console(emoji=False), Console(stderr=True, emoji=False)
    settings = get_settings()
    now = datetime.now(UTC)
    if not path.is_file():
        err.print(f"no file {str(path)!r}", markup=False, highlight=False)
        raise typer.Exit(2)
    if funnel is not None:
        funnel = _funnel_id(funnel, funnels_dir or settings.funnels_dir, now, err)
    url = database_url or settings.effective_database_url
    size = path.stat().st_size
    result = importer.ImportResult()
    started = time.perf_counter()
    try:
        with importer.Parsed() as parsed:
            if not skip_bad_rows:
                # One parse: the check keeps the good rows, and the write pass takes them from there.
                with _progress(console, "checking", size) as advance:
                    importer.check_file(path, result, advance, keep=parsed)
                if result.bad_total:
                    _report_bad(err, path, result)
                    err.print(f"nothing imported: fix the {result.bad_total} bad row(s), or pass --skip-bad-rows")
                    raise typer.Exit(1)
            if url.startswith("sqlite") and database_url is None:
                settings.data_dir.mkdir(parents=True, exist_ok=True)
            engine = create_engine_for(url)
            try:
                _upgrade(engine, url, path, err)
                options = importer.ImportOptions(source=f"import {path.name}"[:200], funnel=funnel, now=now)
                with _progress(console, "importing", size) as advance:
                    if skip_bad_rows:
                        importer.import_file(engine, path, options, result, advance)
                    else:
                        importer.import_parsed(engine, parsed, options, result, advance)
            finally:
                engine.dispose()
    except importer.ImportFileError as exc:
        err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except importer.ImportWriteError as exc:
        err.print(f"{path}: nothing imported: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    elapsed = time.perf_counter() - started
    if result.bad_total:
        _report_bad(err, path, result)
    _summary(console, result, elapsed, funnel)


def _upgrade(engine: Engine, url: str, path: Path, err: Console) -> None:
    """The schema brought up to date, or one line saying why the database cannot be used."""
    from engine.store.database import DatabaseError, describe_failure, one_line, upgrade

    try:
        upgrade(url)
    except DatabaseError as exc:
        said = describe_failure(engine, exc) or one_line(exc)
        err.print(f"{path}: nothing imported: cannot use the database: {said}", markup=False, highlight=False)
        raise typer.Exit(1) from None


def _funnel_id(ref: str, folder: Path, now: datetime, err: Console) -> str:
    """The funnel's id, after checking it exists and lets imported leads in."""
    from engine.authoring.funnel_lookup import find_funnels
    from engine.runtime.importer import EVENT_NAME, funnel_admits_imports

    # Templates are `funnel validate`'s business; entering leads only needs the funnel's logic.
    loaded = find_funnels([ref], folder, emails_dir=None)
    for error in loaded.errors:
        err.print(f"--funnel: {error}", markup=False, highlight=False, soft_wrap=True)
    if loaded.errors or len(loaded.funnels) != 1:
        raise typer.Exit(2)
    definition = loaded.funnels[0]
    if not funnel_admits_imports(definition, now):
        err.print(
            f"--funnel: funnel {definition.id!r} has no entry trigger for imported leads; add to its entry.triggers:\n"
            f"    - event: {EVENT_NAME}\n      where: {{funnel: {definition.id}}}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    return definition.id


@contextlib.contextmanager
def _progress(console: Console, label: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A bar over the file's bytes on a terminal; nothing in pipes and logs."""
    if not sys.stdout.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(label), BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)


def _report_bad(err: Console, path: Path, result: ImportResult) -> None:
    for row in result.bad:
        err.print(f"{path}:{row.line}: {row.problem}", markup=False, highlight=False, soft_wrap=True)
    if result.bad_total > len(result.bad):
        err.print(f"and {result.bad_total - len(result.bad)} more", markup=False, highlight=False)


def _summary(console: Console, result: ImportResult, elapsed: float, funnel: str | None) -> None:
    rate = result.rows / elapsed if elapsed > 0 else 0.0
    lines = [
        f"imported {result.imported} new lead(s), updated {result.updated}, unchanged {result.unchanged}, "
        f"skipped {result.skipped} bad row(s)",
    ]
    if result.repeated:
        lines.append(f"{result.repeated} row(s) repeated an address from earlier in the file (merged)")
    if result.suppressed:
        lines.append(f"{result.suppressed} suppressed, kept unsubscribed")
    if result.kept_opted_out:
        lines.append(f"{result.kept_opted_out} had opted out before: consent kept, not re-subscribed")
    if result.kept_pending:
        lines.append(f"{result.kept_pending} not confirmed yet: kept pending until they confirm their signup")
    if funnel is not None:
        lines.append(f"events recorded: {result.events} (lead_imported for funnel {funnel})")
    lines.append(f"{result.rows} row(s) in {elapsed:.2f} s ({rate:,.0f} rows/s)")
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
