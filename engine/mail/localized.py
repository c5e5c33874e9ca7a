"""Dates, numbers and money as the reader writes them: the formatting filters of email templates, over
Babel (the CLDR data). `{{ 1234.5 | format_currency("EUR") }}` is `1.234,50 €` for a German lead and
`1 234,50 €` for a French one.

The locale comes from the render context, never from an argument a template passes:

- `lead.language`: the lead's BCP 47 tag, when Babel has a locale for it or for a shorter tag of its
  lookup chain (`fr-CA` formats as Canadian French even when the text is the French template);
- else `email_language`: the language of the template being rendered, which the render path passes
  (`TemplateLibrary.pick`'s second value: the funnel's default language for the default template);
- else English.

`format_datetime` and `format_time` write the time in the lead's time zone: the `tz` argument when the
template names one, else `lead.timezone`, else UTC. A naive datetime is taken as UTC (the engine's time).

A template is written by anyone (invariant 13): a filter given what it cannot format (a word where a
number belongs, an unknown currency, a pattern of its own longer than `MAX_PATTERN`) raises
`FormatError`, which the renderer reports at the template's file and line like any other template
error. Inputs are bounded before Babel sees them, so no filter can be made to write a long text.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import babel.dates
import babel.numbers
from babel import Locale, UnknownLocaleError
from jinja2 import pass_context
from jinja2.runtime import Context

from engine.core.languages import LanguageError, canonical, lookup_chain

FALLBACK_LANGUAGE = "en"
# A CLDR pattern a template writes itself ("EEEE d MMMM", "#,##0.00"): real ones are under 30 characters.
MAX_PATTERN = 64
# Larger than any amount of money or count an email shows; past it a number is a mistake, and a
# `1e999999` would be written out as a million digits.
MAX_MAGNITUDE = Decimal(10) ** 15
# Significant digits kept of a Decimal, and the smallest power of ten written (as 10^-MAX_DIGITS).
MAX_DIGITS = 34
_DIGITS = decimal.Context(prec=MAX_DIGITS)
# The longest text taken as a number or a date (an ISO 8601 datetime with an offset is 32).
MAX_TEXT = 40
# add_days: ten years either way, far past any deadline an email states.
MAX_DAYS = 3660
WIDTHS = ("short", "medium", "long", "full")
_CURRENCY = re.compile(r"[A-Z]{3}")


class FormatError(ValueError):
    """A value or an argument a formatting filter cannot take; the message says which and why."""


# --------------------------------------------------------------------------------------------------
# The locale and the zone of the reader
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _babel_locale(tag: str) -> Locale | None:
    """Babel's locale for the first tag of `tag`'s lookup chain it has data for; None for none."""
    for candidate in lookup_chain(tag, tag):
        try:
            return Locale.parse(candidate, sep="-")
        except (UnknownLocaleError, ValueError, TypeError):
            continue
    return None


def locale_for(lead_language: object, email_language: object) -> Locale:
    """The locale of the module docstring: the lead's language, else the email's, else English."""
    for value in (lead_language, email_language):
        if not isinstance(value, str) or not value:
            continue
        try:
            tag = canonical(value)
        except LanguageError:
            continue
        found = _babel_locale(tag)
        if found is not None:
            return found
    return Locale.parse(FALLBACK_LANGUAGE)


def _field(record: object, name: str) -> object:
    return record.get(name) if isinstance(record, Mapping) else None


def _context_locale(context: Context) -> Locale:
    return locale_for(_field(context.get("lead"), "language"), context.get("email_language"))


def _zone(context: Context, tz: object) -> tzinfo:
    name = tz if tz is not None else _field(context.get("lead"), "timezone")
    if name is None or name == "":
        return UTC
    if not isinstance(name, str) or len(name) > MAX_TEXT:
        raise FormatError(f"expected a time zone name such as 'Europe/Paris', found {_shown(name)}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if tz is None:  # the lead's own zone, gone from the zone database: its time in UTC, not a failure
            return UTC
        raise FormatError(f"expected a time zone name such as 'Europe/Paris', found {_shown(name)}") from None


# --------------------------------------------------------------------------------------------------
# Values and arguments
# --------------------------------------------------------------------------------------------------


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: object, filter_name: str) -> Decimal | int | float:
    """`value` as a number Babel formats: an int, a float or a Decimal, or a text that reads as one
    (lead attributes from a form are texts)."""
    if isinstance(value, bool):
        raise FormatError(f"{filter_name}: expected a number, found {_shown(value)}")
    number: Decimal | int | float
    if isinstance(value, int | float):
        number = value
        too_big = (isinstance(value, float) and not math.isfinite(value)) or abs(value) >= MAX_MAGNITUDE
    elif isinstance(value, Decimal | str) and (not isinstance(value, str) or len(value) <= MAX_TEXT):
        try:
            number = Decimal(value.strip()) if isinstance(value, str) else value
        except InvalidOperation:
            raise FormatError(f"{filter_name}: expected a number, found {_shown(value)}") from None
        too_big = not number.is_finite() or abs(number) >= MAX_MAGNITUDE
        if not too_big:
            number = _bounded_decimal(number)
    else:
        raise FormatError(f"{filter_name}: expected a number, found {_shown(value)}")
    if too_big:
        raise FormatError(f"{filter_name}: expected a finite number under 10^15, found {_shown(value)}")
    return number


def _bounded_decimal(number: Decimal) -> Decimal:
    """`number` with at most `MAX_DIGITS` significant digits, and 0 when it is smaller than any email
    shows: a pattern of significant digits (`@@@`) would write `1e-999999` with a million zeros."""
    if number and number.adjusted() < -MAX_DIGITS:
        return Decimal(0)
    return _DIGITS.plus(number)


def _pattern(value: object, filter_name: str, widths: tuple[str, ...] = ()) -> str | None:
    if value is None or value in widths:
        return value
    if not isinstance(value, str) or not value or len(value) > MAX_PATTERN:
        named = f"one of {', '.join(widths)} or " if widths else ""
        raise FormatError(f"{filter_name}: expected {named}a CLDR pattern of at most {MAX_PATTERN} characters")
    return value


def _moment(value: object, filter_name: str) -> date | datetime | time:
    if isinstance(value, date | time):
        return value
    if isinstance(value, str) and len(value) <= MAX_TEXT:
        text = value.strip()
        for parse in (date.fromisoformat, datetime.fromisoformat, time.fromisoformat):
            try:
                return parse(text)
            except ValueError:
                continue
    raise FormatError(f"{filter_name}: expected a date or a time (or ISO 8601 text), found {_shown(value)}")


def _aware(moment: datetime, zone: tzinfo) -> datetime:
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).astimezone(zone)


def _babel(filter_name: str, call: Callable[[], str]) -> str:
    # Babel says what it refused in a ValueError (a bad pattern, an unknown currency): told at the
    # template's line, as this filter's.
    try:
        return call()
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise FormatError(f"{filter_name}: {exc}") from None
    except ArithmeticError:  # decimal's, for a pattern with more decimals than its precision holds
        raise FormatError(f"{filter_name}: the pattern asks for more decimals than a number is written with") from None


# --------------------------------------------------------------------------------------------------
# The filters
# --------------------------------------------------------------------------------------------------


@pass_context
def format_date(context: Context, value: object, format: object = "medium", tz: object = None) -> str:
    pattern = _pattern(format, "format_date", WIDTHS)
    moment = _moment(value, "format_date")
    if isinstance(moment, datetime):
        moment = _aware(moment, _zone(context, tz)).date()
    elif isinstance(moment, time):
        raise FormatError(f"format_date: expected a date, found a time {_shown(value)}")
    locale = _context_locale(context)
    return _babel("format_date", lambda: babel.dates.format_date(moment, pattern or "medium", locale=locale))


@pass_context
def format_datetime(context: Context, value: object, format: object = "medium", tz: object = None) -> str:
    pattern = _pattern(format, "format_datetime", WIDTHS)
    moment = _moment(value, "format_datetime")
    if isinstance(moment, time):
        raise FormatError(f"format_datetime: expected a date and time, found a time {_shown(value)}")
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    zone = _zone(context, tz)
    locale = _context_locale(context)
    at = _aware(moment, zone)
    return _babel(
        "format_datetime", lambda: babel.dates.format_datetime(at, pattern or "medium", tzinfo=zone, locale=locale)
    )


@pass_context
def format_time(context: Context, value: object, format: object = "short", tz: object = None) -> str:
    pattern = _pattern(format, "format_time", WIDTHS)
    moment = _moment(value, "format_time")
    locale = _context_locale(context)
    if isinstance(moment, datetime):
        zone = _zone(context, tz)
        at = _aware(moment, zone)
        return _babel(
            "format_time", lambda: babel.dates.format_time(at, pattern or "short", tzinfo=zone, locale=locale)
        )
    if not isinstance(moment, time):
        raise FormatError(f"format_time: expected a time, found a date {_shown(value)}")
    clock = moment
    return _babel("format_time", lambda: babel.dates.format_time(clock, pattern or "short", locale=locale))


@pass_context
def format_number(context: Context, value: object) -> str:
    """A number as the reader groups and punctuates it (`1.234,5` in German), its decimals kept."""
    number = _number(value, "format_number")
    locale = _context_locale(context)
    return _babel("format_number", lambda: babel.numbers.format_decimal(number, locale=locale))


@pass_context
def format_decimal(context: Context, value: object, format: object = None) -> str:
    """A number after a CLDR pattern of the template's (`"#,##0.00"`: two decimals, grouped)."""
    number = _number(value, "format_decimal")
    pattern = _pattern(format, "format_decimal")
    locale = _context_locale(context)
    return _babel("format_decimal", lambda: babel.numbers.format_decimal(number, pattern, locale=locale))


@pass_context
def format_currency(context: Context, value: object, currency: object, format: object = None) -> str:
    """An amount in `currency` (an ISO 4217 code: `"EUR"`), with the symbol where the reader puts it."""
    number = _number(value, "format_currency")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise FormatError(
            f"format_currency: expected an ISO 4217 currency code such as 'EUR', found {_shown(currency)}"
        )
    if not babel.numbers.is_currency(currency):
        raise FormatError(f"format_currency: {currency!r} is not an ISO 4217 currency")
    pattern = _pattern(format, "format_currency")
    locale = _context_locale(context)
    return _babel("format_currency", lambda: babel.numbers.format_currency(number, currency, pattern, locale=locale))


@pass_context
def format_percent(context: Context, value: object, format: object = None) -> str:
    """A fraction as a percentage (`0.25` is `25 %` in German)."""
    number = _number(value, "format_percent")
    pattern = _pattern(format, "format_percent")
    locale = _context_locale(context)
    return _babel("format_percent", lambda: babel.numbers.format_percent(number, pattern, locale=locale))


def add_days(value: object, days: object) -> date | datetime:
    """`value` (a date or a date and time) `days` later: `{{ now | add_days(30) | format_date }}`, a
    deadline written in the reader's language. Bounded to ±3,660 days (ten years)."""
    moment = _moment(value, "add_days")
    if isinstance(moment, time):
        raise FormatError(f"add_days: expected a date, found a time {_shown(value)}")
    if isinstance(days, bool) or not isinstance(days, int) or abs(days) > MAX_DAYS:
        raise FormatError(f"add_days: expected a whole number of days within ±{MAX_DAYS}, found {_shown(days)}")
    return moment + timedelta(days=days)


FILTERS: dict[str, Callable[..., object]] = {
    "add_days": add_days,
    "format_date": format_date,
    "format_datetime": format_datetime,
    "format_time": format_time,
    "format_number": format_number,
    "format_decimal": format_decimal,
    "format_currency": format_currency,
    "format_percent": format_percent,
}
