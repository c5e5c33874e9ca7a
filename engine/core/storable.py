"""What every entry refuses because the database cannot store it, or the engine cannot use it, said once:
the API (`engine.http.api_v1`), signup forms (`engine.http.forms`) and CSV imports (`engine.runtime.importer`) all ask
here, so a value refused by one is refused by all, and on SQLite as on PostgreSQL. Pure: no IO.

- Text: no NUL character (PostgreSQL's text and JSON types refuse it) and no lone surrogate (not Unicode
  text: no UTF-8 encoder writes it).
- Numbers: no NaN or infinity (Python's JSON parser reads them; JSON and PostgreSQL's jsonb have none).
- Nesting: at most `MAX_JSON_DEPTH` levels (the JSON encoder recurses).
- Dates: years `FIRST_YEAR` to `LAST_YEAR` as written, so that any offset still has a UTC date and a
  hundred years of waits fit the calendar.
"""

from __future__ import annotations

import math
import re
from typing import Any

FIRST_YEAR, LAST_YEAR = 1900, 8999
MAX_JSON_DEPTH = 64

_UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")


def unstorable_at(text: str) -> tuple[int, str] | None:
    """Where the first character no database stores is in this text, and what is wrong; or None."""
    bad = _UNSTORABLE_TEXT.search(text)
    if bad is None:
        return None
    return bad.start(), f"expected text without NUL characters or lone surrogates, found {bad.group()!r}"


def text_problem(text: str) -> str | None:
    """What makes this text unstorable, or None."""
    found = unstorable_at(text)
    return None if found is None else found[1]


def value_problem(value: Any) -> str | None:
    """What a JSON value from outside (an event's properties, a lead's attributes) holds that the database
    cannot store, or None: unstorable text in a key or a value, NaN or an infinity, nesting deeper than
    `MAX_JSON_DEPTH`."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return problem
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"expected a finite number (JSON has no NaN or infinity), found {item}"
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                return f"expected at most {MAX_JSON_DEPTH} levels of nesting, found more"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None
