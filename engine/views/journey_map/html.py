"""The customer journey map as one self-contained HTML page: its style inline, no script, nothing fetched,
so the same page opens from a file, is served by the dashboard, and is what the PNG is taken of."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from engine.core.durations import stay_in_words
from engine.views.journey_map.model import JourneyMap

HERE = Path(__file__).parent
STYLE = (HERE / "journey_map.css").read_text(encoding="utf-8")
# The page's only inline content a browser could refuse: a Content-Security-Policy allows this one style
# sheet by its hash (`style-src 'sha256-...'`) and still allows no script at all.
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


_env = Environment(loader=FileSystemLoader(str(HERE)), autoescape=True, undefined=StrictUndefined)
_env.filters.update(share=_share, duration=stay_in_words, when=_when)


def render(m: JourneyMap, back: str | None = None) -> str:
    """The page; `back` is a link shown above the title (the dashboard's overview)."""
    has_notes = m.persona is not None or any(c.notes is not None for c in m.columns)
    # The style is our own file, not input: inserted as written, so its hash is the one above.
    style = Markup(STYLE)  # noqa: S704
    return _env.get_template("journey_map.html").render(m=m, style=style, back=back, has_notes=has_notes)


__all__ = ["STYLE_HASH", "render"]
