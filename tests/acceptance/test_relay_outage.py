"""The relay going away and coming back, as `funnel run` logs it (invariant 17): one ERROR when it fails,
at most one WARNING a minute while it stays down, one INFO when a message reaches it again. The engine
ticks in this process on a clock the test moves; the relay is a real aiosmtpd server that starts late.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from engine.runtime.runner import Runner
from engine.settings import Settings
from tests.acceptance.conftest import queue_email
from tests.smtp_server import RecordingHandler, _free_port

EMAILS = Path(__file__).resolve().parent.parent / "fixtures" / "emails"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


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
    assert "working again" in text["back"][0], text["back"]
    assert {m.rcpt[0] for m in handler.messages()} >= {"down@example.com", "back@example.com"}
