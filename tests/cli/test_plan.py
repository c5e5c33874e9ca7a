"""`funnel plan` on an edited copy of the example funnel, against a database with leads in flight."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from engine.authoring.validation import load_funnels
from engine.runtime.worker import Worker
from engine.store import leads as store
from engine.store.database import create_engine_for, upgrade

ROOT = Path(__file__).resolve().parent.parent.parent
SIGNUP = datetime(2026, 11, 20, 18, 30, tzinfo=UTC)  # a Friday evening: leads wait for Monday 09:00


def test_plan_counts_the_leads_an_edit_moves(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "funnels", tmp_path / "funnels")
    shutil.copytree(ROOT / "emails", tmp_path / "emails")
    url = f"sqlite:///{tmp_path / 'data' / 'funnel.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    live = load_funnels([tmp_path / "funnels"], emails_dir=tmp_path / "emails").funnels[0]
    worker = Worker(engine, {live.id: live})
    worker.publish()
    with engine.begin() as conn:
        for i in range(7):
            lead = store.upsert_lead(conn, f"lead{i}@example.com", timezone="Europe/London", now=SIGNUP)
            new = store.NewEvent(f"signup-{i}", lead, "form_submitted", SIGNUP, {"form": "cost-of-not-recycling"})
            store.record_events(conn, [new], now=SIGNUP)
    worker.run_until_idle(SIGNUP)
    with engine.connect() as conn:
        waiting = store.positions(conn, live.id)
    engine.dispose()
    assert [(p.stage, p.step, p.leads) for p in waiting] == [("comparison", "first-weekday-morning", 7)]

    # The edit: drop the weekday-morning wait, so the first nurture email is next in line.
    path = tmp_path / "funnels" / "lead-magnet.yaml"
    text = path.read_text()
    start = text.index("      - id: first-weekday-morning")
    end = text.index("      - id: nurture-benefits")
    path.write_text(text[:start] + text[end:])

    env = {**os.environ, "FUNNEL_DATABASE_URL": url, "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "plan"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "first-weekday-morning" in out and "step-removed" in out and "comparison / nurture-benefits" in out
    assert "lead-magnet: 7 lead(s) in flight, 7 affected by the edit" in out


def test_plan_with_no_edit_affects_nobody(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "funnels", tmp_path / "funnels")
    shutil.copytree(ROOT / "emails", tmp_path / "emails")
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    upgrade(url)  # an engine's database with no lead in it (plan reads a database, it makes none)
    env = {**os.environ, "FUNNEL_DATABASE_URL": url}
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "plan"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "0 lead(s) in flight, 0 affected" in result.stdout


def test_plan_says_what_an_experiment_edit_does_to_the_leads_assigned(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "funnels", tmp_path / "funnels")
    shutil.copytree(ROOT / "emails", tmp_path / "emails")
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    live = load_funnels([tmp_path / "funnels"], emails_dir=tmp_path / "emails").funnels[0]
    worker = Worker(engine, {live.id: live})
    worker.publish()
    with engine.begin() as conn:
        for i in range(7):
            lead = store.upsert_lead(conn, f"lead{i}@example.com", timezone="Europe/London", now=SIGNUP)
            new = store.NewEvent(f"signup-{i}", lead, "form_submitted", SIGNUP, {"form": "cost-of-not-recycling"})
            store.record_events(conn, [new], now=SIGNUP)
    worker.run_until_idle(SIGNUP)
    monday = datetime(2026, 11, 23, 9, 1, tzinfo=UTC)
    worker.run_until_idle(monday)  # the first nurture email went out: every lead has its arm
    engine.dispose()

    path = tmp_path / "funnels" / "lead-magnet.yaml"
    path.write_text(path.read_text().replace("- {id: statement}", "- {id: statement, weight: 4}"))
    env = {**os.environ, "FUNNEL_DATABASE_URL": url, "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "plan"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert (
        "lead-magnet: experiment benefits-subject (step nurture-benefits): weights statement/question 50/50 -> 80/20:"
        " leads already assigned keep their arm, new leads split statement/question 80/20 (7 leads assigned in flight)"
    ) in result.stdout
