"""The relay going away and coming back, as `funnel run` logs it (invariant 17): one ERROR when it fails,
at most one WARNING a minute while it stays down, one INFO when a message reaches it again. The engine
ticks in this process on a clock the test moves; the relay is a real aiosmtpd server that starts late.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller

from engine.authoring.validation import load_funnels
from engine.runtime.runner import Runner
from engine.settings import Settings
from engine.store import apikeys
from tests.acceptance.conftest import queue_email
from tests.smtp_server import RecordingHandler, _free_port

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
EMAILS = FIXTURES / "emails"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SUMMARY = re.compile(r"INFO in the last [^:]*: events=\d+ ")


def test_the_relay_going_down_and_coming_back_is_said_once_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port("127.0.0.1")  # nobody listens there yet
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'funnel.db'}",
        data_dir=tmp_path / "data",
        emails_dir=EMAILS,
        smtp={"host": "127.0.0.1", "port": port, "security": "none", "timeout_s": 2.0, "rate_per_s": 1000},
    )
    clock = [T0]
    runner = Runner(settings, [], lambda: clock[0])
    handler = RecordingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=60)
    said: list[tuple[str, list[str]]] = []

    def tick(at: timedelta, label: str) -> None:
        clock[0] = T0 + at
        queue_email(runner.engine, f"{label}@example.com", label, clock[0])
        caplog.clear()
        asyncio.run(runner.step())
        lines = [
            f"{r.levelname} {r.getMessage()}"
            for r in caplog.records
            if r.name.startswith("engine") and f"127.0.0.1:{port}" in r.getMessage()
        ]
        said.append((label, lines))

    try:
        with caplog.at_level(logging.INFO):
            tick(timedelta(0), "down")
            tick(timedelta(seconds=20), "still-down")
            tick(timedelta(seconds=65), "a-minute-on")
            tick(timedelta(seconds=80), "quiet")
            controller.start()
            tick(timedelta(seconds=150), "back")
            tick(timedelta(seconds=160), "working")
    finally:
        controller.stop()
        runner.close()

    levels = {label: [line.split(" ", 1)[0] for line in lines] for label, lines in said}
    assert levels == {
        "down": ["ERROR"],
        "still-down": [],
        "a-minute-on": ["WARNING"],
        "quiet": [],
        "back": ["INFO"],
        "working": [],
    }, said
    text = dict(said)
    assert "Connect call failed" in text["down"][0] or "refused" in text["down"][0].lower(), text["down"]
    # The reminder says what waits: the three messages queued so far, the first due 65 s before.
    assert "failures: 3; 3 messages waiting, the oldest for 1 minute 5 seconds" in text["a-minute-on"][0], said
    assert "working again after 2 minutes 30 seconds" in text["back"][0], text["back"]
    assert "messages waiting" in text["back"][0], text["back"]
    assert {m.rcpt[0] for m in handler.messages()} >= {"down@example.com", "back@example.com"}


def test_a_relay_refusing_for_60_s_under_steady_signups_is_at_most_4_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two signups a second through the real HTTP app (the events API), a tick a second, the relay's port
    refusing connections for the first 65 s of the engine's clock, then a real SMTP server on it."""
    loaded = load_funnels([FIXTURES / "valid" / "nurture.yaml"], FIXTURES / "emails")
    assert not loaded.errors, loaded.errors
    relay_port, http_port = _free_port("127.0.0.1"), _free_port("127.0.0.1")
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'funnel.db'}",
        data_dir=tmp_path / "data",
        emails_dir=FIXTURES / "emails",
        base_url=f"http://127.0.0.1:{http_port}",
        http={"port": http_port},
        smtp={"host": "127.0.0.1", "port": relay_port, "security": "none", "timeout_s": 2.0, "rate_per_s": 1000},
    )
    clock = [T0]
    runner = Runner(settings, loaded.funnels, lambda: clock[0])
    with runner.engine.begin() as conn:
        key = apikeys.create(conn, "load", T0)
    server = runner.http_server()
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    while not server.started:
        assert serving.is_alive(), "the HTTP app did not start"
        time.sleep(0.02)
    handler = RecordingHandler()
    relay = Controller(handler, hostname="127.0.0.1", port=relay_port, ready_timeout=60)
    signups = 0

    async def two_minutes(client: httpx.Client) -> None:
        nonlocal signups
        for second in range(130):
            clock[0] = T0 + timedelta(seconds=second)
            if second == 65:  # a reminder a minute into the outage, then back
                relay.start()
            if second < 90:
                for _ in range(2):
                    event = {"id": f"s{signups}", "type": "form_submitted", "email": f"lead{signups}@example.com",
                             "properties": {"form": "report"}}  # fmt: skip
                    assert client.post("/v1/events", json=event).status_code == 200
                    signups += 1
            await runner.step()

    try:
        with (
            caplog.at_level(logging.INFO),
            httpx.Client(base_url=settings.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client,
        ):
            asyncio.run(two_minutes(client))
    finally:
        server.should_exit = True
        serving.join(timeout=10)
        relay.stop()
        runner.close()

    said = [
        f"{r.levelname} {r.getMessage()}"
        for r in caplog.records
        # Not the test's own relay (mail.log) and client (httpx), nor the access log (a library's, off unless
        # `log_level_libraries` asks for it).
        if r.levelno >= logging.INFO and not r.name.startswith(("mail.log", "httpx", "uvicorn.access"))
    ]
    about = [line for line in said if f"127.0.0.1:{relay_port}" in line]
    assert len(about) <= 4, about
    # Nothing else said about it either (no line per deferred message or per failed round): beside the
    # outage's lines, only the minute summaries.
    assert [line for line in said if line not in about and not SUMMARY.match(line)] == [], said
    assert [line.split(" ", 1)[0] for line in about] == ["ERROR", "WARNING", "INFO"], about
    received = Counter(rcpt for m in handler.messages() for rcpt in m.rcpt)
    assert len(received) == signups == 180 and set(received.values()) == {1}  # every one, once
