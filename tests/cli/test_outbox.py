"""`funnel outbox`: the engine's own outbox from the command line, as `/ops/outbox` shows it (messages by
status with their reasons and Message-IDs, and deciding an `unknown` one), on each database backend; and
`funnel sink`: the `.eml` files the local sink stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner, Result

from engine.cli.main import app
from engine.store import tables
from engine.store.database import create_engine_for
from tests.acceptance.conftest import queue_email

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
# (address, status, Message-ID, last_error)
MESSAGES = (
    ("unknown@example.com", "unknown", "<u1@greenleaf.example>", "after DATA: Connection lost"),
    ("failed@example.com", "failed", "<f1@greenleaf.example>", "554 5.7.1 message refused"),
    ("deferred@example.com", "deferred", None, "450 4.2.0 mailbox busy"),
    ("sent@example.com", "sent", "<s1@greenleaf.example>", None),
)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def fill(url: str) -> dict[str, int]:
    """One message in each of the states above; their ids by address."""
    engine = create_engine_for(url)
    o, leads = tables.outbox, tables.leads
    try:
        for i, (address, *_) in enumerate(MESSAGES):
            queue_email(engine, address, f"step-{i}", NOW)
        with engine.begin() as conn:
            ids = dict(conn.execute(sa.select(leads.c.email, o.c.id).join(leads, leads.c.id == o.c.lead_id)).all())
            for address, status, message_id, error in MESSAGES:
                conn.execute(
                    sa.update(o)
                    .where(o.c.id == ids[address])
                    .values(status=status, message_id=message_id, last_error=error, sent_at=NOW,
                            next_attempt_at=NOW + timedelta(minutes=4))
                )  # fmt: skip
        return ids
    finally:
        engine.dispose()


def test_outbox_lists_the_messages_that_need_a_look_with_their_reasons_and_message_ids(db_url: str) -> None:
    ids = fill(db_url)
    listed = invoke("outbox", "--database-url", db_url, "--json")
    assert listed.exit_code == 0, listed.output
    found = {m["id"]: m for m in map(json.loads, listed.output.splitlines())}
    assert set(found) == {ids["unknown@example.com"], ids["failed@example.com"], ids["deferred@example.com"]}
    unknown = found[ids["unknown@example.com"]]
    assert (unknown["status"], unknown["message_id"], unknown["reason"]) == (
        "unknown", "<u1@greenleaf.example>", "after DATA: Connection lost",
    )  # fmt: skip
    assert (unknown["email"], unknown["funnel"], unknown["step"]) == ("unknown@example.com", "f", "step-0")
    assert found[ids["failed@example.com"]]["reason"] == "554 5.7.1 message refused"
    assert found[ids["deferred@example.com"]]["next_attempt_at"] == (NOW + timedelta(minutes=4)).isoformat()

    table = invoke("outbox", "--database-url", db_url)
    assert table.exit_code == 0, table.output
    assert "unknown 1" in table.output and "failed 1" in table.output and "sent 1" in table.output
    for address in ("unknown@example.com", "failed@example.com", "deferred@example.com"):
        assert address in table.output
    assert "sent@example.com" not in table.output
    assert "<u1@greenleaf.example>" in table.output and "554 5.7.1 message refused" in table.output

    sent = invoke("outbox", "--database-url", db_url, "--status", "sent", "--json")
    assert [json.loads(line)["email"] for line in sent.output.splitlines()] == ["sent@example.com"]
    wrong = invoke("outbox", "--database-url", db_url, "--status", "lost")
    assert wrong.exit_code == 2
    assert (
        "--status: expected one of queued, sending, sent, failed, bounced, unknown, skipped, deferred" in wrong.output
    )
    assert "found 'lost'" in wrong.output


def test_outbox_decide_settles_an_unknown_message_once_and_says_who(db_url: str) -> None:
    ids = fill(db_url)
    unknown, failed = ids["unknown@example.com"], ids["failed@example.com"]
    done = invoke("outbox", "decide", str(unknown), "sent", "--by", "olivia", "--database-url", db_url)
    assert done.exit_code == 0, done.output
    assert f"message {unknown} marked sent" in done.output
    engine = create_engine_for(db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(tables.outbox).where(tables.outbox.c.id == unknown)).one()
            decided = conn.execute(
                sa.select(tables.events.c.properties).where(tables.events.c.name == "email_decided")
            ).scalar_one()
    finally:
        engine.dispose()
    assert row.status == "sent" and row.last_error.startswith("marked sent by olivia at ")
    assert decided["by"] == "olivia" and decided["decision"] == "sent"

    again = invoke("outbox", "decide", str(unknown), "resend", "--by", "olivia", "--database-url", db_url)
    assert again.exit_code == 1 and f"message {unknown} is not unknown (it is sent): nothing changed" in again.output
    other = invoke("outbox", "decide", str(failed), "resend", "--database-url", db_url)
    assert other.exit_code == 1 and "it is failed" in other.output
    bad = invoke("outbox", "decide", str(unknown), "maybe", "--database-url", db_url)
    assert bad.exit_code == 2 and "expected 'sent' or 'resend', found 'maybe'" in bad.output


def test_sink_lists_the_emails_the_local_sink_stored(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "outbox"
    folder.mkdir(parents=True)
    message = EmailMessage()
    message["To"], message["Subject"], message["X-Funnel"] = (
        "jo@example.com",
        "Your report",
        "lead-magnet/deliver-report",
    )
    message["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    message.set_content("Hello")
    (folder / "20261123T100000-1.eml").write_bytes(bytes(message))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env["FUNNEL_DATA_DIR"] = str(tmp_path / "data")

    def sink(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "engine.cli", "sink", *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    listed = sink()
    assert listed.returncode == 0, listed.stderr
    assert "20261123T100000-1.eml" in listed.stdout and "Your report" in listed.stdout
    shown = sink("20261123T100000")
    assert shown.returncode == 0 and "Subject: Your report" in shown.stdout
    missing = sink("2030")
    assert missing.returncode == 1 and f"no message '2030' in {tmp_path / 'data' / 'outbox'}" in missing.stderr
