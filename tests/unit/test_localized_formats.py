"""Dates, numbers and money in the reader's language: the filters of email templates, rendered by the
real template library (so a bad value is seen as the author sees it: a located template error)."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime
from decimal import Decimal
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from engine.mail.templates import TemplateError, TemplateLibrary, lead_fields

WHEN = datetime(2026, 3, 14, 17, 5, tzinfo=UTC)
_NAMES = itertools.count()


@pytest.fixture
def library(tmp_path: Path) -> TemplateLibrary:
    (tmp_path / "_layouts").mkdir()
    (tmp_path / "_layouts" / "base.html").write_text("<html><body>{{ content }}</body></html>", encoding="utf-8")
    return TemplateLibrary(tmp_path)


def _render(
    library: TemplateLibrary,
    expression: str,
    lead: dict[str, Any] | None = None,
    email_language: str | None = None,
    **values: Any,
) -> str:
    """`expression` rendered in an HTML body."""
    name = f"t{next(_NAMES)}"  # a library compiles a template once
    path = library.emails_dir / f"{name}.html"
    path.write_text(f"---\nsubject: s\n---\n<p>{{{{ {expression} }}}}</p>\n", encoding="utf-8")
    context: dict[str, Any] = {"lead": lead_fields("a@example.com", lead or {}), **values}
    if email_language is not None:
        context["email_language"] = email_language
    html = library.render(name, context).html
    shown = unescape(html.split("<p>", 1)[1].split("</p>", 1)[0])
    # CLDR separates with no-break spaces (narrow ones in French): compared here as plain spaces.
    return shown.replace("\xa0", " ").replace("\u202f", " ")


@pytest.mark.parametrize(
    ("language", "expected"),
    [("de", "1.234,50 €"), ("fr", "1 234,50 €"), ("fr-CA", "1 234,50 €"), ("en-GB", "€1,234.50")],
)
def test_money_is_written_as_the_lead_writes_it(library: TemplateLibrary, language: str, expected: str) -> None:
    assert _render(library, 'amount | format_currency("EUR")', {"language": language}, amount=1234.5) == expected


@pytest.mark.parametrize(
    ("language", "number", "percent", "day"),
    [
        ("de", "1.234.567,891", "25 %", "14. März 2026"),
        ("fr", "1 234 567,891", "25 %", "14 mars 2026"),
        ("fr-CA", "1 234 567,891", "25 %", "14 mars 2026"),
        ("en-GB", "1,234,567.891", "25%", "14 March 2026"),
    ],
)
def test_numbers_percentages_and_dates(
    library: TemplateLibrary, language: str, number: str, percent: str, day: str
) -> None:
    lead = {"language": language}
    assert _render(library, "n | format_number", lead, n=Decimal("1234567.891")) == number
    assert _render(library, "p | format_percent", lead, p=0.25) == percent
    assert _render(library, 'd | format_date("long")', lead, d=date(2026, 3, 14)) == day


def test_canadian_french_differs_from_french_where_cldr_says_so(library: TemplateLibrary) -> None:
    # fr_CA writes a short date year first: the lead's locale, though the text is the French template.
    assert _render(library, 'd | format_date("short")', {"language": "fr-CA"}, "fr", d=date(2026, 3, 14)) == (
        "2026-03-14"
    )
    assert _render(library, 'd | format_date("short")', {"language": "fr"}, "fr", d=date(2026, 3, 14)) == "14/03/2026"


def test_without_a_lead_language_the_email_language_then_english(library: TemplateLibrary) -> None:
    assert _render(library, "n | format_decimal", {}, "de", n=1234.5) == "1.234,5"
    assert _render(library, "n | format_decimal", {}, None, n=1234.5) == "1,234.5"
    # A lead language Babel has no data for: the email's language.
    assert _render(library, "n | format_decimal", {"language": "tlh"}, "de", n=1234.5) == "1.234,5"


def test_a_custom_pattern(library: TemplateLibrary) -> None:
    assert _render(library, 'n | format_decimal("#,##0.00")', {"language": "de"}, n=3) == "3,00"
    assert _render(library, 'd | format_date("EEEE")', {"language": "de"}, d=date(2026, 3, 14)) == "Samstag"


def test_datetimes_in_the_lead_time_zone(library: TemplateLibrary) -> None:
    lead = {"language": "de", "timezone": "Europe/Berlin"}
    assert _render(library, 'at | format_datetime("short")', lead, at=WHEN) == "14.03.26, 18:05"
    assert _render(library, "at | format_time", lead, at=WHEN) == "18:05"
    # The template may name the zone; a naive datetime is UTC.
    naive = WHEN.replace(tzinfo=None)
    assert _render(library, 'at | format_time("short", "America/Toronto")', {"language": "fr-CA"}, at=naive) == (
        "13 h 05"
    )
    # An ISO 8601 text from a lead's attributes is a datetime too.
    assert _render(library, 'at | format_time("short")', {"language": "en-GB"}, at="2026-03-14T17:05:00Z") == "17:05"


@pytest.mark.parametrize(
    ("expression", "value", "said"),
    [
        ('v | format_currency("EUR")', "lots", "expected a number"),
        ('v | format_currency("EURO")', 3, "ISO 4217"),
        ('v | format_currency("XQQ")', 3, "not an ISO 4217 currency"),
        ("v | format_number", 10**400, "under 10^15"),
        ("v | format_number", float("nan"), "under 10^15"),
        ("v | format_number", "1e999999", "under 10^15"),
        ("v | format_number", "9" * 5000, "expected a number"),
        ("v | format_decimal('0' * 65)", 3, "at most 64 characters"),
        ("v | format_date", "yesterday", "expected a date"),
        ('v | format_date("qqqqqqq")', date(2026, 1, 1), "format_date"),
        ('v | format_datetime("short", "Mars/Olympus")', WHEN, "time zone"),
        ("v | format_number", True, "expected a number"),
    ],
)
def test_bad_input_is_a_located_template_error(
    library: TemplateLibrary, expression: str, value: object, said: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        _render(library, expression, {"language": "de"}, v=value)
    assert caught.value.path.endswith(".html")
    assert caught.value.line == 4
    assert said in caught.value.message


def test_a_lead_zone_gone_from_the_database_is_utc(library: TemplateLibrary) -> None:
    lead = {"language": "en-GB", "timezone": "Mars/Olympus"}
    assert _render(library, 'at | format_time("short")', lead, at=WHEN) == "17:05"


def test_what_a_number_writes_is_bounded(library: TemplateLibrary) -> None:
    # Significant-digit patterns write a tiny number's zeros: it is taken as 0 below 10^-34.
    assert len(_render(library, 'v | format_decimal("@@@")', {"language": "de"}, v="1e-999999")) < 10
    assert _render(library, 'v | format_decimal("@@@")', {"language": "de"}, v="1.5e-3") == "0,00150"
    long = Decimal("0." + "3" * 10_000)  # a Decimal the engine hands in keeps 34 significant digits
    assert _render(library, 'v | format_decimal("0.##########")', v=long) == "0.3333333333"
    with pytest.raises(TemplateError, match="more decimals"):
        _render(library, 'v | format_decimal("0.' + "#" * 50 + '")', v=long)


@pytest.mark.parametrize(("language", "expected"), [("de", "13. April 2026"), ("en-GB", "13 April 2026")])
def test_a_deadline_days_after_now_in_the_readers_words(library: TemplateLibrary, language: str, expected: str) -> None:
    now = datetime(2026, 3, 14, 17, 5, tzinfo=UTC)
    shown = _render(library, 'now | add_days(30) | format_date("long")', {"language": language}, now=now)
    assert shown == expected


@pytest.mark.parametrize("days", ["30", 4000, True, 1.5])
def test_add_days_refuses_what_is_not_a_bounded_whole_number(library: TemplateLibrary, days: object) -> None:
    with pytest.raises(TemplateError, match="add_days: expected a whole number of days"):
        _render(library, "now | add_days(days)", now=datetime(2026, 3, 14, tzinfo=UTC), days=days)
