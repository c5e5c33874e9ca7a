"""A signup page in a real browser (Chromium) fills its hidden time zone field with the browser's zone,
under a Content-Security-Policy that allows only the app's own scripts (no inline script), and the lead
is made with that zone: the example page and the engine's plain form alike."""

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
STRICT = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; object-src 'none'"


@pytest.fixture
def forms(tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    port = _free_port("127.0.0.1")
    settings = Settings(
        data_dir=tmp_path,
        base_url=f"http://127.0.0.1:{port}",
        pages_dir=ROOT / "pages",
        forms={  # single opt-in: the lead is made at once (double opt-in keeps the zone for the confirmation)
            "cost-of-not-recycling": {"page": "lead-magnet/signup.html", "double_opt_in": False},
            "plain": {"double_opt_in": False},
        },
    )
    server, thread = start_server(create_app(settings, engine, clock=Clock()), port)
    try:
        yield f"http://127.0.0.1:{port}", engine
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


@pytest.mark.parametrize("form", ["cost-of-not-recycling", "plain"])
def test_the_signup_page_sends_the_browsers_time_zone(chromium: Any, forms: tuple[str, sa.Engine], form: str) -> None:
    url, engine = forms
    context = chromium.new_context(base_url=url, timezone_id="Asia/Tokyo")
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def strict(route: Any) -> None:  # the page as a proxy with a strict policy would serve it
        if route.request.method != "GET":
            route.continue_()
            return
        answer = route.fetch()
        route.fulfill(response=answer, headers={**answer.headers, "content-security-policy": STRICT})

    page.route(f"{url}/forms/{form}", strict)
    try:
        page.goto(f"/forms/{form}")
        page.wait_for_function("document.querySelector('input[name=timezone]').value !== ''")
        assert page.input_value("input[name=timezone]") == "Asia/Tokyo"
        page.fill("input[name=email]", "hana@example.com")
        page.check("input[name=consent]")
        page.click("button[type=submit]")
        page.wait_for_url(f"**/forms/{form}/thanks")
    finally:
        context.close()
    assert errors == []
    with engine.connect() as conn:
        row = conn.execute(sa.select(tables.leads.c.email, tables.leads.c.timezone)).one()
    assert tuple(row) == ("hana@example.com", "Asia/Tokyo")
