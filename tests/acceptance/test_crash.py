"""Crash safety with real processes: `funnel run` is SIGKILLed at random moments, again and again,
while 1,000 leads go through a three-email funnel; then it runs undisturbed until everything due is
done. Every lead must get every email once: none lost, none twice. A message killed between DATA and
the server's reply is `unknown`: delivered at most once and never resent (invariants 1, 2, 3)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine import store
from engine.database import upgrade
from engine.tables import enrollments, leads, outbox
from tests.acceptance.conftest import Project, write_emails

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
LEADS = 1000
KILLS = 50
FINISH_TIMEOUT_S = 90.0


def _sign_up(engine: sa.Engine, first: int, count: int) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for n in range(first, first + count):
            lead_id = store.upsert_lead(conn, f"lead{n}@example.com", now=now)
            store.record_events(conn, [store.NewEvent(f"signup-{n}", lead_id, "signed_up", now)], now=now)


def _pending(engine: sa.Engine) -> tuple[int, int]:
    """(active enrollments, outbox rows not yet final) plus unrecorded signups count as active."""
    with engine.connect() as conn:
        active = conn.execute(
            sa.select(sa.func.count()).select_from(enrollments).where(enrollments.c.status == "active")
        ).scalar_one()
        open_rows = conn.execute(
            sa.select(sa.func.count())
            .select_from(outbox)
            .where(outbox.c.status.in_(("queued", "deferred", "sending")))
        ).scalar_one()
        exited = conn.execute(
            sa.select(sa.func.count()).select_from(enrollments).where(enrollments.c.status == "exited")
        ).scalar_one()
    return active + (LEADS - exited - active), open_rows


def _ready_count(log: Path) -> int:
    """How many engine processes have said they are ticking."""
    return log.read_bytes().count(b"ticking every") if log.exists() else 0


def _wait_ready(log: Path, starts: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _ready_count(log) < starts:
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_loses_no_step_and_sends_nothing_twice(sqlite_project: Project) -> None:
    project = sqlite_project
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
            while time.monotonic() < deadline:
                active, open_rows = _pending(engine)
                if active == 0 and open_rows == 0:
                    break
                time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(leads.c.email, outbox.c.step, outbox.c.status).join(leads, leads.c.id == outbox.c.lead_id)
            ).all()
            exited = conn.execute(
                sa.select(sa.func.count()).select_from(enrollments).where(enrollments.c.status == "exited")
            ).scalar_one()
    finally:
        engine.dispose()

    received = project.smtp.per_lead_step()
    statuses = Counter(r.status for r in rows)
    expected = {(f"lead{n}@example.com", f"crash/{step}") for n in range(LEADS) for step in STEPS}
    by_key = {(r.email, f"crash/{r.step}"): r.status for r in rows}
    duplicates = sum(c - 1 for c in received.values() if c > 1)
    lost = [
        k for k in expected if by_key.get(k) not in ("sent", "unknown") or (by_key[k] == "sent" and received[k] != 1)
    ]
    unknown = [k for k, s in by_key.items() if s == "unknown"]
    unknown_delivered = sum(received[k] for k in unknown)
    strays = set(received) - expected
    print(
        f"\ncrash test: {kills} kills in {killing_s:.0f} s, total {time.monotonic() - started:.0f} s; "
        f"emails expected {len(expected)}, delivered {sum(received.values())}, duplicates {duplicates}, "
        f"lost {len(lost)}, unknown {len(unknown)} (of which delivered {unknown_delivered}); outbox {dict(statuses)}"
    )
    if lost or duplicates:
        print(log.read_text()[-5000:])
    for text in unexpected:
        print(text[-3000:])
    assert unexpected == []
    assert kills >= KILLS
    assert exited == LEADS
    assert not strays
    assert duplicates == 0
    assert lost == []
    assert set(by_key) == expected
    assert all(received[k] <= 1 for k in unknown)
    assert statuses.keys() <= {"sent", "unknown"}
