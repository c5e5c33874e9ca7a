"""`funnel bounces lift` and `funnel bounces alarms` as an operator types them: real processes on a real
SQLite file; the lift shows in `funnel lead show`."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from engine.core.bounce_outcome import ADDRESS_GONE, SENDER_FAULT, Outcome
from engine.settings import BounceSettings
from engine.store import leads as store
from engine.store import tables
from engine.store.bounces import record_outcomes
from engine.store.database import create_engine_for, upgrade

ROOT = Path(__file__).resolve().parent.parent.parent


def funnel(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FUNNEL_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def setup(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    upgrade(url)
    now = datetime.now(UTC) - timedelta(minutes=5)
    engine = create_engine_for(url)
    with engine.begin() as conn:
        for email in ("gone@example.com", "mad@example.com", *(f"u{i}@blocky.example" for i in range(3))):
            lead_id = store.upsert_lead(conn, email, now=now)
            conn.execute(
                sa.insert(tables.outbox).values(
                    lead_id=lead_id, funnel_id="guide", step="s1", template="guide/s1", stage="s",
                    transactional=False, status="sent", due_at=now, attempts=1, created_at=now, sent_at=now,
                )
            )  # fmt: skip
        outcomes = [Outcome("g", "test", "dsn", ADDRESS_GONE, "gone@example.com", status="5.1.1")]
        outcomes += [Outcome("c", "test", "complaint", "complaint", "mad@example.com")]
        outcomes += [Outcome(f"b{i}", "test", "dsn", SENDER_FAULT, f"u{i}@blocky.example") for i in range(3)]
        record_outcomes(conn, outcomes, now, BounceSettings(sender_fault_alarm=3))
    engine.dispose()
    return url


def test_lift_and_alarms_through_the_command(tmp_path: Path) -> None:
    url = setup(tmp_path)
    lifted = funnel(url, "bounces", "lift", "Gone@Example.com", "--reason", "mailbox recreated", "--by", "olivia")
    assert lifted.returncode == 0, lifted.stderr
    assert "bounce lifted by olivia (mailbox recreated)" in lifted.stdout
    shown = funnel(url, "lead", "show", "gone@example.com")
    assert shown.returncode == 0 and "no email will go to this address" not in shown.stdout
    assert "bounce lifted via operator olivia: mailbox recreated" in shown.stdout

    for address, why in (
        ("gone@example.com", "not bounced"),
        ("mad@example.com", "complained"),
        ("nobody@example.com", "no lead has this address"),
    ):
        refused = funnel(url, "bounces", "lift", address, "--reason", "x")
        assert refused.returncode == 1 and why in refused.stderr, refused.stderr
    assert funnel(url, "bounces", "lift", "mad@example.com", "--reason", " ").returncode == 2
    assert funnel(url, "bounces", "lift", "mad@example.com").returncode == 2  # --reason is required

    listed = funnel(url, "bounces", "alarms")
    assert listed.returncode == 0, listed.stderr
    assert "blocky.example" in listed.stdout and "ON until" in listed.stdout and "1 alarm(s) on" in listed.stdout
    assert funnel(url, "bounces", "alarms", "--clear", "blocky.example").returncode == 2  # --reason needed
    cleared = funnel(url, "bounces", "alarms", "--clear", "blocky.example", "--reason", "delisted", "--by", "olivia")
    assert cleared.returncode == 0 and "alarm cleared by olivia" in cleared.stdout
    after = funnel(url, "bounces", "alarms")
    assert "cleared" in after.stdout and "delisted" in after.stdout and "0 alarm(s) on" in after.stdout
    again = funnel(url, "bounces", "alarms", "--clear", "blocky.example", "--reason", "x")
    assert again.returncode == 1 and "no alarm is on" in again.stderr
