"""Stopping `funnel run` (SIGTERM, as systemd and deploys do) while a message is in DATA: the engine
lets the round finish, so the message is recorded `sent`, not left `sending` to become `unknown` at
the next start."""

from __future__ import annotations

import asyncio
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.store import leads as store
from engine.store.database import upgrade
from engine.store.tables import outbox
from tests.acceptance.conftest import Project, write_emails
from tests.smtp_server import RecordingHandler, RecordingSmtpServer

REPLY_AFTER_S = 3.0
FUNNEL = """\
id: stop
name: Stop
entry:
  triggers:
    - event: signed_up
stages:
  - id: only
    steps:
      - id: welcome
        send: drip/welcome
    on_end: exit
"""


class SlowRelay(RecordingHandler):
    """Takes the whole message, then waits before its 250, like a relay scanning for viruses."""

    def __init__(self) -> None:
        super().__init__()
        self.in_data = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_data.set()
        await asyncio.sleep(REPLY_AFTER_S)
        return await super().handle_DATA(server, session, envelope)


def test_sigterm_while_a_message_is_in_data_lets_it_finish(tmp_path: Path) -> None:
    relay = SlowRelay()
    with RecordingSmtpServer(handler=relay) as smtp:
        project = Project(tmp_path, f"sqlite:///{tmp_path / 'data' / 'funnel.db'}", smtp)
        write_emails(project.root, ["welcome"])
        project.add_funnel("stop", FUNNEL)
        project.extra_env.update({"FUNNEL_TICK_SECONDS": "0.2", "FUNNEL_SMTP__TIMEOUT_S": "10"})
        upgrade(project.database_url)
        engine = project.db()
        try:
            with engine.begin() as conn:
                lead = store.upsert_lead(conn, "ada@example.com")
                store.record_events(conn, [store.NewEvent("signup-ada", lead, "signed_up", datetime.now(UTC))])
            log = tmp_path / "run.log"
            proc = project.spawn("run", log=log, PYTHONUNBUFFERED="1")
            try:
                assert relay.in_data.wait(timeout=60), log.read_text()
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0, log.read_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
            with engine.connect() as conn:
                statuses = conn.execute(sa.select(outbox.c.step, outbox.c.status)).all()
        finally:
            engine.dispose()
    output = log.read_text()
    assert [m.funnel_step for m in smtp.messages()] == ["stop/welcome"]
    assert ("welcome", "sent") in statuses and all(s != "sending" for _, s in statuses), statuses
    assert "letting the round in flight finish" in output
    assert "Traceback" not in output, output
