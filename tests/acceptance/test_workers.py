"""Three `funnel run` processes share one PostgreSQL database and one workload: the database
arbitrates, so no step is done twice and none is lost (invariants 2 and 8)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.store import leads as store
from engine.store.database import create_engine_for
from engine.store.tables import enrollments, leads, outbox, stage_transitions
from tests.acceptance.conftest import Project, write_emails
from tests.faults.test_faults_sigkill import FUNNEL, STEPS
from tests.smtp_server import RecordingSmtpServer

LEADS = 600
WAVES = 6
WORKERS = 3
FINISH_TIMEOUT_S = 90.0


def _sign_up(engine: sa.Engine, first: int, count: int) -> None:
    """Each lead signs up twice (two event ids): the second trigger may reach another worker while the
    first is being handled, and must not enrol the lead again."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for n in range(first, first + count):
            lead_id = store.upsert_lead(conn, f"lead{n}@example.com", now=now)
            store.record_events(
                conn,
                [
                    store.NewEvent(f"signup-{n}", lead_id, "signed_up", now),
                    store.NewEvent(f"signup-again-{n}", lead_id, "signed_up", now),
                ],
                now=now,
            )


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_do_each_step_once(tmp_path: Path, postgres_url: str, smtp: RecordingSmtpServer) -> None:
    project = Project(tmp_path, postgres_url, smtp)
    write_emails(project.root, list(STEPS))
    project.add_funnel("crash", FUNNEL)
    project.extra_env.update({"FUNNEL_TICK_SECONDS": "0.2", "FUNNEL_BATCH_SIZE": "40"})
    engine = project.db()
    started = time.monotonic()
    procs = [project.spawn("run", log=project.root / f"worker{i}.log") for i in range(WORKERS)]
    try:
        per_wave = LEADS // WAVES
        for wave in range(WAVES):
            _sign_up(engine, wave * per_wave, per_wave)
            time.sleep(1.0)
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                exited = conn.execute(
                    sa.select(sa.func.count()).select_from(enrollments).where(enrollments.c.status == "exited")
                ).scalar_one()
                open_rows = conn.execute(
                    sa.select(sa.func.count()).select_from(outbox).where(outbox.c.status != "sent")
                ).scalar_one()
            if exited == LEADS and open_rows == 0:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        alive = [p.poll() is None for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(leads.c.email, outbox.c.step, outbox.c.status).join(leads, leads.c.id == outbox.c.lead_id)
            ).all()
            entries = Counter(
                conn.execute(
                    sa.select(stage_transitions.c.lead_id).where(stage_transitions.c.from_stage.is_(None))
                ).scalars()
            )
    finally:
        engine.dispose()

    received = smtp.per_lead_step()
    expected = {(f"lead{n}@example.com", f"crash/{step}") for n in range(LEADS) for step in STEPS}
    duplicates = sum(c - 1 for c in received.values() if c > 1)
    lost = expected - set(received)
    double_entries = sum(1 for c in entries.values() if c > 1)
    errors = sum((project.root / f"worker{i}.log").read_text().count("ERROR") for i in range(WORKERS))
    print(
        f"\nworkers test: {WORKERS} workers, {LEADS} leads in {elapsed:.0f} s; emails expected {len(expected)}, "
        f"delivered {sum(received.values())}, duplicates {duplicates}, lost {len(lost)}; outbox "
        f"{dict(Counter(r.status for r in rows))}; leads entered twice {double_entries}; logged errors {errors}"
    )
    assert all(alive)
    assert duplicates == 0
    assert lost == set()
    assert set(received) == expected
    assert sorted((r.email, f"crash/{r.step}", r.status) for r in rows) == sorted((*k, "sent") for k in expected)
    assert len(entries) == LEADS and double_entries == 0


@pytest.mark.postgres
def test_two_workers_racing_on_one_leads_events_enrol_it_once(tmp_path: Path, postgres_url: str) -> None:
    """Batches of one event: two workers take the two signups of the same lead at the same moment."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.authoring.validation import load_funnels
    from engine.runtime.worker import Worker

    write_emails(tmp_path, list(STEPS))
    (tmp_path / "funnels").mkdir()
    (tmp_path / "funnels" / "crash.yaml").write_text(FUNNEL)
    loaded = load_funnels([tmp_path / "funnels"], emails_dir=tmp_path / "emails")
    assert not loaded.errors
    engine = create_engine_for(postgres_url, pool_size=4)
    try:
        _sign_up(engine, 0, 100)
        now = datetime.now(UTC)

        def drain() -> int:
            worker = Worker(engine, {f.id: f for f in loaded.funnels}, batch_size=1)
            done = 0
            while (n := worker.process_events(now).events) > 0:
                done += n
            return done

        with ThreadPoolExecutor(2) as pool:
            handled = sum(pool.map(lambda _: drain(), range(2)))
        with engine.connect() as conn:
            entries = Counter(
                conn.execute(
                    sa.select(stage_transitions.c.lead_id).where(stage_transitions.c.from_stage.is_(None))
                ).scalars()
            )
            queued = conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one()
    finally:
        engine.dispose()
    assert handled == 200
    assert queued == 100
    assert sorted(entries.values()) == [1] * 100
