"""Crash safety with real processes: `funnel run` is SIGKILLed at random moments, again and again,
while leads go through a three-email funnel (1,000 leads and 50 kills in full mode); then it runs
undisturbed until everything due is done. Every lead must get every email once: none lost, none twice.
A message killed between DATA and the server's reply is `unknown`: delivered at most once and never
resent (invariants 1, 2, 3)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.store import leads as store
from engine.store.database import upgrade
from engine.store.tables import leads, outbox
from tests.acceptance.conftest import Project, write_emails
from tests.faults.conftest import size
from tests.faults.engine_state import left as still_to_do
from tests.faults.tally import Tally, count
from tests.smtp_server import RecordingSmtpServer

FUNNEL = """\
id: crash
name: Crash test
entry:
  triggers:
    - event: signed_up
stages:
  - id: course
    steps:
      - id: welcome
        send: drip/welcome
      - id: pause1
        wait: 2s
      - id: tip
        send: drip/tip
      - id: pause2
        wait: 2s
      - id: offer
        send: drip/offer
    on_end: exit
"""
STEPS = ("welcome", "tip", "offer")
# A kill cycle costs an engine start (a couple of seconds of imports and migrations) plus up to a
# second of work: the kills, not the leads, set the duration.
KILLS = size(6, 50)
LEADS = size(150, 1000)
FINISH_TIMEOUT_S = size(60.0, 90.0)


def _sign_up(engine: sa.Engine, first: int, n: int) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for i in range(first, first + n):
            lead_id = store.upsert_lead(conn, f"lead{i}@example.com", now=now)
            store.record_events(conn, [store.NewEvent(f"signup-{i}", lead_id, "signed_up", now)], now=now)


def _ready_count(log: Path) -> int:
    """How many engine processes have said they are ticking."""
    return log.read_bytes().count(b"ticking every") if log.exists() else 0


def _wait_ready(log: Path, starts: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _ready_count(log) < starts:
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_loses_no_step_and_sends_nothing_twice(tmp_path: Path, fault_report: Callable[[Tally], None]) -> None:
    with RecordingSmtpServer() as smtp:
        project = Project(tmp_path, f"sqlite:///{tmp_path / 'data' / 'funnel.db'}", smtp)
        write_emails(project.root, list(STEPS))
        project.add_funnel("crash", FUNNEL)
        project.extra_env.update(
            {"FUNNEL_TICK_SECONDS": "0.2", "FUNNEL_BATCH_SIZE": "100", "FUNNEL_SMTP__TIMEOUT_S": "1"}
        )
        upgrade(project.database_url)
        engine = project.db()
        log = project.root / "run.log"
        rng = random.Random(int(os.environ.get("FUNNEL_CRASH_SEED", "5321")))
        started = time.monotonic()
        per_cycle = LEADS // KILLS
        kills = 0
        try:
            # Leads keep arriving while the engine is killed, so every kill lands on work in flight.
            unexpected: list[str] = []  # engine exits that were not our SIGKILL, with what the engine said
            cycle = 0
            while kills < KILLS and cycle < KILLS + 20:
                if cycle < KILLS:
                    _sign_up(engine, cycle * per_cycle, per_cycle)
                cycle += 1
                ready_before = _ready_count(log)
                offset = log.stat().st_size if log.exists() else 0
                proc = project.spawn("run", log=log, PYTHONUNBUFFERED="1")
                # Most kills land while it works; some during start-up (migrations, loading funnels).
                if rng.random() < 0.8:
                    _wait_ready(log, ready_before + 1)
                time.sleep(rng.uniform(0.0, 1.0))
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                if proc.returncode == -signal.SIGKILL:
                    kills += 1
                else:
                    unexpected.append(f"exit {proc.returncode}: " + log.read_bytes()[offset:].decode(errors="replace"))
            killing_s = time.monotonic() - started

            proc = project.spawn("run", log=log, PYTHONUNBUFFERED="1")
            try:
                deadline = time.monotonic() + FINISH_TIMEOUT_S
                while time.monotonic() < deadline and still_to_do(engine, LEADS) != (0, 0):
                    time.sleep(0.5)
            finally:
                proc.terminate()
                proc.wait(timeout=20)
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(leads.c.email, outbox.c.step, outbox.c.status).join(leads, leads.c.id == outbox.c.lead_id)
                ).all()
            left, open_rows = still_to_do(engine, LEADS)
        finally:
            engine.dispose()
        received = smtp.per_lead_step()

    expected = {(f"lead{n}@example.com", f"crash/{step}") for n in range(LEADS) for step in STEPS}
    by_key = {(r.email, f"crash/{r.step}"): r.status for r in rows}
    statuses = Counter(by_key.values())
    tally = count("sigkill loop", faults=kills, leads=LEADS, expected=expected, received=received, outbox=by_key)
    tally.notes.append(
        f"{kills} kills in {killing_s:.0f} s, total {time.monotonic() - started:.0f} s; outbox {dict(statuses)}; "
        f"unknown and delivered {sum(received[k] for k, s in by_key.items() if s == 'unknown')}"
    )
    fault_report(tally)
    if not tally.clean:
        print(log.read_text()[-5000:])
    for text in unexpected:
        print(text[-3000:])
    assert unexpected == []
    assert kills >= KILLS
    assert (left, open_rows) == (0, 0), "every lead finishes the funnel, every email is final"
    assert tally.duplicated == 0
    assert tally.lost == 0
    assert tally.strays == 0
    assert set(by_key) == expected
    assert statuses.keys() <= {"sent", "unknown"}
