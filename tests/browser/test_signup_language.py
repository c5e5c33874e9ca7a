"""A German Chromium (its Accept-Language from its locale) gets the German signup page, and the lead its
post makes is German; the same page in an English browser stays English."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.http.api import create_app
from engine.settings import Settings
from engine.store import tables
from engine.store.database import create_engine_for, upgrade
from tests.http.conftest import Clock, start_server
from tests.smtp_server import _free_port

ROOT = Path(__file__).resolve().parents[2]
FORM = "cost-of-not-recycling"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    funnels = tmp_path / "funnels"
    funnels.mkdir()
    text = (ROOT / "funnels" / "lead-magnet.yaml").read_text(encoding="utf-8")
    if "\nlanguages:" not in text:
        text = text.replace("\ntimezone: ", "\nlanguages: {default: en, others: [de, fr]}\ntimezone: ", 1)
    (funnels / "lead-magnet.yaml").write_text(text, encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    port = _free_port("127.0.0.1")
    settings = Settings(
        data_dir=tmp_path,
        base_url=f"http://127.0.0.1:{port}",
        pages_dir=ROOT / "pages",
        funnels_dir=funnels,
        forms={FORM: {"page": "lead-magnet/signup.html", "double_opt_in": True}},
    )
    server, thread = start_server(create_app(settings, engine, clock=Clock()), port)
    try:
        yield f"http://127.0.0.1:{port}", engine
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


@pytest.mark.parametrize(
    ("locale", "heading", "language", "done", "lead_language"),
    [
        ("de-DE", "Was es wirklich kostet, nicht zu recyceln", "de", "Sehen Sie in Ihrem Posteingang nach", "de"),
        # The pages say English; the lead reads the funnel's default language, British English.
        ("en-GB", "The real cost of not recycling", "en", "Check your inbox", "en-GB"),
    ],
)
def test_the_browser_language_picks_the_page_and_the_lead_language(
    chromium: Any, app: tuple[str, sa.Engine], locale: str, heading: str, language: str, done: str, lead_language: str
) -> None:
    url, engine = app
    context = chromium.new_context(base_url=url, locale=locale)
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        page.goto(f"/forms/{FORM}")
        assert page.inner_text("h1") == heading
        assert page.get_attribute("html", "lang") == language
        page.fill("input[name=email]", "kim@example.com")
        page.check("input[name=consent]")
        page.click("button[type=submit]")
        page.wait_for_url(f"**/forms/{FORM}/check-inbox")
        assert page.inner_text("h1") == done
        assert page.get_attribute("html", "lang") == language
    finally:
        context.close()
    with engine.connect() as conn:
        assert conn.execute(sa.select(tables.leads.c.language)).scalar_one() == lead_language
