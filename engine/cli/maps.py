"""`funnel map FUNNEL`: the funnel's customer journey map as an HTML page, Markdown with a Mermaid diagram,
or a PNG, drawn from the funnel file and, with `--live`, from the database.

Thin: the map is `engine.views.journey_map`'s: `model` builds it, `sources` reads its inputs, `html`,
`markdown` and `png` draw it.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from engine.views.journey_map.model import Live

FORMAT_HELP = "html: a self-contained page; md: Markdown with a Mermaid diagram; png: a picture of the page."


class Format(StrEnum):
    html = "html"
    md = "md"
    png = "png"


def register(app: typer.Typer) -> None:
    app.command("map")(journey_map)


def journey_map(
    funnel: str = typer.Argument(..., help="Funnel file or id (looked up in the funnels folder)."),
    fmt: Format = typer.Option(Format.html, "--format", "-f", help=FORMAT_HELP),
    live: bool = typer.Option(
        False,
        "--live",
        help="Add the figures from the database: leads, conversion, median stay, open and click rates, drop-off.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where to write it (default: FUNNEL.map.html|md|png here; '-': stdout, not png)."
    ),
    emails: Path | None = typer.Option(None, help="Folder of email templates (default: the configured one)."),
    database_url: str | None = typer.Option(None, "--database-url", help="With --live. Default: the configured one."),
    language: str | None = typer.Option(
        None,
        "--language",
        help="With --live: the figures of the leads of this language only (a BCP 47 tag; `de` covers `de-AT`;"
        " leads without a language count as the funnel's default language's).",
    ),
) -> None:
    """Draw the funnel's customer journey map: its persona, the stages as columns with the persona's question
    and needs, the emails (subjects, when they go), the moves in and out with their triggers and, with
    --live, the figures and where leads drop out."""
    from engine.cli.common import named_funnel
    from engine.mail.templates import Sender, TemplateLibrary
    from engine.settings import get_settings
    from engine.views.journey_map import html as journey_map_html
    from engine.views.journey_map import markdown as journey_map_md
    from engine.views.journey_map import model as builder
    from engine.views.journey_map import png as journey_map_png
    from engine.views.journey_map.sources import sample_subjects, templates_of, translations_of

    if fmt is Format.png and out == Path("-"):
        raise _fail("--out -: a PNG goes to a file, not to the terminal", 2)
    # The browser first: the answer to a missing one is an install, whatever else is wrong.
    browser = journey_map_png.find_browser() if fmt is Format.png else None
    if fmt is Format.png and browser is None:
        raise _fail(f"funnel map --format png needs a headless browser: {journey_map_png.INSTALL_HINT}")
    tag = _language(language, live)
    settings = get_settings()
    emails = emails or settings.emails_dir
    definition = named_funnel(funnel, emails, settings.funnels_dir)
    s = settings.sender
    library = TemplateLibrary(emails)
    subjects = sample_subjects(library, templates_of(definition), Sender(s.name, s.postal_address, s.website))
    default = definition.languages.default if definition.languages is not None else None
    figures = _read_live(definition.id, database_url, tag, default) if live else None
    drawn = builder.build(definition, subjects, figures, translations_of(library, definition), tag)
    target = out or Path(f"{definition.id}.map.{fmt.value}")
    if fmt is Format.png:
        html = journey_map_html.render(drawn)
        try:
            width, height = journey_map_png.render(
                html, target, journey_map_png.page_width(len(drawn.columns)), browser
            )
        except journey_map_png.BrowserError as exc:
            raise _fail(f"funnel map --format png: {exc}") from None
        _say(f"wrote {target} ({width}x{height} px)")
        return
    text = journey_map_html.render(drawn) if fmt is Format.html else journey_map_md.render(drawn)
    if target == Path("-"):
        sys.stdout.write(text)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    _say(f"wrote {target}")


def _language(text: str | None, live: bool) -> str | None:
    from engine.core.languages import LanguageError, canonical

    if text is None:
        return None
    if not live:
        raise _fail("--language: the figures of one language need --live", 2)
    try:
        return canonical(text)
    except LanguageError as exc:
        raise _fail(f"--language: {exc}", 2) from None


def _read_live(
    funnel_id: str, database_url: str | None, language: str | None = None, default: str | None = None
) -> Live:
    from engine.cli.common import database
    from engine.store.database import connect_read_only
    from engine.views.journey_map.sources import read_live

    with database(database_url) as engine, connect_read_only(engine) as conn:
        return read_live(conn, funnel_id, datetime.now(UTC), language, default)


def _say(text: str) -> None:
    Console(stderr=True).print(text, markup=False, highlight=False, soft_wrap=True)


def _fail(text: str, code: int = 1) -> typer.Exit:
    _say(text)
    return typer.Exit(code)
