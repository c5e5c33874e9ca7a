"""The ops dashboard's tests: the app served by uvicorn on a loopback socket (in a thread of the test
process) over a migrated SQLite file, with one ops user and a tiny funnel run by the real Worker; pages
driven by Playwright in Debian's Chromium, or requests made with httpx.

Every browser page fails its test if it logs a console error or asks any host but the app for anything
(the dashboard must work where the internet is not). Screenshots go to `screenshots/` under the test's
tmp_path, and are copied to the folder named by FUNNEL_SCREENSHOTS when it is set.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
import uvicorn

from engine.authoring.validation import load_funnels
from engine.core.ops_auth import OpsSettings, hash_password
from engine.http.api import create_app
from engine.runtime.worker import Worker
from engine.settings import Settings
from engine.store import leads as store
from engine.store import outbox, tables
from engine.store.database import create_engine_for, upgrade
from tests.http.conftest import NOW, Clock, start_server
from tests.required import missing
from tests.smtp_server import _free_port

USER, PASSWORD = "olivia", "correct horse battery staple"
USER_HASH = hash_password(PASSWORD)

FUNNEL = """\
id: trial
name: Free trial
entry:
  triggers:
    - event: signed_up
stages:
  - id: inquiry
    steps:
      - id: welcome
        send: drip/welcome
    on_end: stay
  - id: comparison
    on_end: stay
  - id: conversion
    on_end: stay
transitions:
  - id: priced
    on: {event: pricing_viewed}
    to: comparison
  - id: bought
    on: {event: purchase_completed}
    to: conversion
"""


@dataclass
class Dashboard:
    url: str
    engine: sa.Engine
    settings: Settings
    clock: Clock
    worker: Worker
    server: uvicorn.Server
    thread: threading.Thread
    events: int = 0

    def lead(self, address: str, *names: str) -> int:
        """Record the lead's events (in this order) and let the worker handle them."""
        with self.engine.begin() as conn:
            lead_id = store.upsert_lead(conn, address, now=self.clock())
            for name in names:
                self.events += 1
                at = self.clock() + timedelta(seconds=self.events)
                store.record_events(conn, [store.NewEvent(f"t-{self.events}", lead_id, name, at)], now=at)
        self.worker.run_until_idle(self.clock() + timedelta(seconds=self.events))
        return lead_id

    def make_unknown(self, address: str) -> int:
        """The lead's queued email handed to a server that never answered: `sending`, then swept to
        `unknown` as the mailer's sweep does after a crash."""
        o = tables.outbox
        with self.engine.begin() as conn:
            lead_id = store.find_lead_id(conn, address)
            message_id = conn.execute(sa.select(o.c.id).where(o.c.lead_id == lead_id)).scalar_one()
            assert outbox.mark_sending(conn, {message_id: f"<{message_id}.test@greenleaf.example>"}, self.clock())
            assert len(outbox.sweep_stale_sending(conn, self.clock() + timedelta(minutes=10))) == 1
        return int(message_id)

    def status(self, message_id: int) -> tuple[str, str | None]:
        o = tables.outbox
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(o.c.status, o.c.last_error).where(o.c.id == message_id)).one()
        return row.status, row.last_error


@pytest.fixture
def serve_dashboard(tmp_path: Path) -> Iterator[Callable[..., Dashboard]]:
    """Start the app (keyword arguments: more settings); stopped after the test."""
    stops: list[Callable[[], None]] = []

    def start(**options: Any) -> Dashboard:
        url = f"sqlite:///{tmp_path / 'funnel.db'}"
        upgrade(url)
        engine = create_engine_for(url)
        port = _free_port("127.0.0.1")
        options.setdefault("ops", OpsSettings(users={USER: USER_HASH}))
        options.setdefault("base_url", f"http://127.0.0.1:{port}")
        settings = Settings(data_dir=tmp_path, **options)
        clock = Clock(NOW)
        server, thread = start_server(create_app(settings, engine, clock=clock), port)

        folder = tmp_path / "funnels"
        folder.mkdir(exist_ok=True)
        (folder / "trial.yaml").write_text(FUNNEL)
        loaded = load_funnels([folder], emails_dir=None)
        assert not loaded.errors, loaded.errors
        worker = Worker(engine, {f.id: f for f in loaded.funnels})
        worker.publish(NOW)
        served = Dashboard(f"http://127.0.0.1:{port}", engine, settings, clock, worker, server, thread)

        def stop() -> None:
            server.should_exit = True
            thread.join(timeout=30)
            engine.dispose()

        stops.append(stop)
        return served

    try:
        yield start
    finally:
        for stop in stops:
            stop()


@pytest.fixture
def ops(serve_dashboard: Callable[..., Dashboard]) -> Dashboard:
    return serve_dashboard()


# --------------------------------------------------------------------------------------------------
# The browser
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")  # playwright runs a loop in this thread while open: end it with the module
def chromium() -> Iterator[Any]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        missing("no chromium binary on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@dataclass
class Watched:
    """A page with what it logged and asked for."""

    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def browser_page(chromium: Any, ops: Dashboard) -> Iterator[Watched]:
    context = chromium.new_context(base_url=ops.url, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    watched = Watched(page)
    page.on("console", lambda m: watched.errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: watched.errors.append(f"page error: {exc}"))
    page.on("request", lambda r: watched.requests.append(r.url))
    try:
        yield watched
    finally:
        context.close()
    assert watched.errors == []
    origin = urlsplit(ops.url)
    strays = [u for u in watched.requests if urlsplit(u).netloc != origin.netloc and not u.startswith("data:")]
    assert strays == [], "requests that left the app"


@pytest.fixture
def screenshot(tmp_path: Path) -> Callable[[Any, str], Path]:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    copy_to = os.environ.get("FUNNEL_SCREENSHOTS")

    def take(page: Any, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        if copy_to:
            Path(copy_to).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(copy_to) / path.name)
        return path

    return take


def sign_in(page: Any, path: str = "/ops/", password: str = PASSWORD) -> None:
    page.goto(path)
    page.fill("input[name=name]", USER)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
