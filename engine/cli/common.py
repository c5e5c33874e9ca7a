"""What the commands of `funnel` share: its consoles, the funnels a command names, times from the
command line, the database a command opens, the operator a command records, and how a command says a
problem and exits.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from engine.core.definition import Funnel
    from engine.store.database import Engine

DATABASE_HELP = "Default: the configured database."

console = Console(emoji=False)  # ":fire:" in a funnel file is text, not an emoji
# `funnel run` is long-lived: its lines must reach a log collector or a pipe as they happen.
if hasattr(sys.stdout, "reconfigure"):
    sys.stdout.reconfigure(line_buffering=True)
err = Console(stderr=True, emoji=False)


def operator_name(by: str | None) -> str:
    """Who an operator's act (a lift, a promotion) is recorded as: `--by`, else the system user."""
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        return "unknown"


def loaded_funnels(paths: list[Path], emails: Path) -> list[Funnel]:
    from engine.authoring.validation import load_funnels
    from engine.settings import get_settings

    result = load_funnels(paths, emails_dir=emails, targets=get_settings().webhook_targets())
    if result.errors:
        for error in result.errors:
            err.print(str(error), markup=False, highlight=False, soft_wrap=True)
        err.print(f"[red]{len(result.errors)} error(s)[/red]: fix the funnel files first (`funnel validate`)")
        raise typer.Exit(1)
    return list(result.funnels)


def named_funnels(refs: list[str], emails: Path | None, funnels_dir: Path = Path("funnels")) -> list[Funnel]:
    """The funnels named by file, folder or id (engine.authoring.funnel_lookup), or the errors and exit 1."""
    from engine.authoring.funnel_lookup import find_funnels
    from engine.settings import get_settings

    result = find_funnels(refs, funnels_dir, emails, get_settings().webhook_targets())
    if result.errors:
        for error in result.errors:
            err.print(str(error), markup=False, highlight=False, soft_wrap=True)
        err.print(f"[red]{len(result.errors)} error(s)[/red]: fix the funnel files first (`funnel validate`)")
        raise typer.Exit(1)
    return list(result.funnels)


def named_funnel(ref: str, emails: Path | None, funnels_dir: Path = Path("funnels")) -> Funnel:
    """One funnel by its file or its id."""
    found = named_funnels([ref], emails, funnels_dir)
    if len(found) != 1:
        err.print(f"{ref}: expected one funnel, found {len(found)}")
        raise typer.Exit(1)
    return found[0]


def parse_time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        err.print(f"{option}: expected an ISO time such as 2026-11-23T09:00:00+00:00, found {text!r}")
        raise typer.Exit(2) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def event_time(at: str | None) -> datetime:
    """When an event recorded from the command line happened: `--at`, or now. A time after the clock
    beyond the skew `engine.core.event_times` allows is refused (exit 2) with the clock's time."""
    from engine.core import event_times

    now = datetime.now(UTC)
    when = parse_time(at, "--at")
    problem = event_times.future_problem(when, now) if when is not None else None
    if problem is not None:
        err.print(f"--at: {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    return event_times.taken_at(when, now)


@contextmanager
def database(url: str | None, create: bool = False) -> Iterator[Engine]:
    """The configured database (or `url`), migrated. Only a command that records something new may
    `create` it: run in the wrong folder, a command that reads would otherwise make an empty SQLite file
    there and answer from it. A database that cannot be opened is one line saying which and why."""
    from engine.settings import get_settings
    from engine.store.database import DBAPIError, create_engine_for, describe_failure, missing_file, upgrade

    url = url or get_settings().effective_database_url
    missing = None if create else missing_file(url)
    if missing is not None:
        raise fail(
            f"no database at {missing}: this command creates none; run it in the engine's folder, or name the "
            "database with FUNNEL_DATABASE_URL (or --database-url where the command takes it)"
        )
    try:
        upgrade(url)
    except DBAPIError as exc:
        problem = describe_failure(create_engine_for(url), exc)
        if problem is None:
            raise
        raise fail(problem) from None
    engine = create_engine_for(url)
    try:
        yield engine
    finally:
        engine.dispose()


def output_console() -> Console:
    # Piped or captured output has no terminal width; rich would fold the tables at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


def say(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def fail(text: str, code: int = 1) -> typer.Exit:
    say(Console(stderr=True), text)
    return typer.Exit(code)


def lead_address(text: str) -> str:
    """The address as every entry takes it (`engine.core.addresses`), or exit 2 saying what is wrong with it."""
    from engine.core.addresses import AddressError, normalise

    try:
        return normalise(text)
    except AddressError as exc:
        raise fail(f"EMAIL: {exc}", 2) from None
