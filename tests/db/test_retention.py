"""Retention (`funnel db prune`, and the prune `funnel run` does on its own): on a month of the example
funnel written by the real engine (`funnel demo-month`, leads given languages here), on SQLite and
PostgreSQL. Raw rows past their age go; the report (all leads, a cohort, a language, the experiment's
counts) and the live journey map say exactly what they said before; what the engine needs to be right
stays (messages in flight, leads still in a funnel, assignments, consent records, enrollments)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from engine.cli.main import app
from engine.settings import get_settings
from engine.store import tables
from engine.store.database import create_engine_for

ROOT = Path(__file__).resolve().parent.parent.parent
LEADS = 200
LANGUAGES = ("de", "fr-CA", None)
# The month is October 2026; every age here is short of today, so age alone lets every row go.
AGES = {"EVENTS_DAYS": "7", "OUTBOX_DAYS": "1", "TRANSITIONS_DAYS": "1", "WEBHOOK_DELIVERIES_DAYS": "1"}
IN_FLIGHT = ("queued", "sending", "deferred", "unknown")


def run(*args: str) -> Result:
    get_settings.cache_clear()  # the environment changes between calls
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("retention") / "month.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        result = run(
            "demo-month", "--leads", str(LEADS), "--start", "2026-10-01", "--seed", "5", "--database-url", url(path)
        )
    assert result.exit_code == 0, result.output
    engine = create_engine_for(url(path))
    try:
        with engine.begin() as conn:
            ids = conn.execute(sa.select(tables.leads.c.id).order_by(tables.leads.c.id)).scalars().all()
            for i, lead_id in enumerate(ids):
                conn.execute(
                    sa.update(tables.leads).where(tables.leads.c.id == lead_id).values(language=LANGUAGES[i % 3])
                )
    finally:
        engine.dispose()
    return path


def url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, month: Path, tmp_path: Path) -> str:
    """A fresh copy of the month on the backend."""
    if request.param == "sqlite":
        copy = tmp_path / "funnel.db"
        shutil.copy(month, copy)
        return url(copy)
    return copy_to_postgres(month, request.getfixturevalue("postgres_url"))


def copy_to_postgres(month: Path, target: str) -> str:
    source, sink = create_engine_for(url(month)), create_engine_for(target)
    try:
        with source.connect() as read, sink.begin() as write:
            for table in tables.metadata.sorted_tables:
                found = [dict(r._mapping) for r in read.execute(sa.select(table))]
                if found:
                    write.execute(table.insert(), found)
            if sink.dialect.name == "postgresql":  # copied ids: move each sequence past them
                for table in tables.metadata.sorted_tables:
                    key = next(iter(table.primary_key.columns))
                    if key.autoincrement is True or (key.autoincrement == "auto" and isinstance(key.type, sa.Integer)):
                        write.execute(
                            sa.text(
                                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{key.name}'), "
                                f"coalesce(max({key.name}), 0) + 1, false) FROM {table.name}"
                            )
                        )
    finally:
        source.dispose()
        sink.dispose()
    return target


@pytest.fixture
def retention(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    for key, value in AGES.items():
        monkeypatch.setenv(f"FUNNEL_RETENTION__{key}", value)
    monkeypatch.setenv("FUNNEL_RETENTION__BATCH_SIZE", "37")  # many batches: their seams must not show
    yield


def figures(database: str, tmp_path: Path, name: str) -> dict[str, Any]:
    """What the report (everyone, a cohort, one language) and the live map say."""
    said: dict[str, Any] = {}
    for label, args in {
        "all": (),
        "cohort": ("--since", "2026-10-12"),
        "german": ("--funnel", "lead-magnet", "--language", "de"),
        "french": ("--funnel", "lead-magnet", "--language", "fr"),
        "default": ("--funnel", "lead-magnet", "--language", "en"),
    }.items():
        result = run("report", "--json", "--database-url", database, *args)
        assert result.exit_code == 0, result.output
        said[label] = json.loads(result.output)
    out = tmp_path / f"{name}.map.md"
    result = run("map", "lead-magnet", "--live", "-f", "md", "--database-url", database, "-o", str(out))
    assert result.exit_code == 0, result.output
    said["map"] = re.sub(r"Figures as of [0-9-]+ [0-9:]+ UTC", "Figures as of (now)", out.read_text())
    return said


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as paths: a failure says which figure moved."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, str) and isinstance(b, str) and "\n" in a:
        return [f"{path}: {x!r} != {y!r}" for x, y in zip(a.splitlines(), b.splitlines(), strict=False) if x != y]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def counts(database: str) -> dict[str, int]:
    engine = create_engine_for(database)
    try:
        with engine.connect() as conn:
            return {
                t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in tables.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def rows(database: str, stmt: sa.Select[Any]) -> list[tuple[Any, ...]]:
    engine = create_engine_for(database)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(stmt)]
    finally:
        engine.dispose()


def prune(database: str, *args: str) -> str:
    result = run("db", "prune", "--database-url", database, *args)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_prune_leaves_the_report_and_the_map_as_they_were(database: str, retention: None, tmp_path: Path) -> None:
    before, held = figures(database, tmp_path, "before"), counts(database)
    said = prune(database)
    after, left = figures(database, tmp_path, "after"), counts(database)
    assert "leads rolled up" in said
    # Rows went, of every kind the report counts...
    for table in ("events", "outbox", "stage_transitions"):
        assert left[table] < held[table], (table, said)
    assert left["report_rollups"] > 0 and left["experiment_outcomes"] > 0
    # ...and every figure is what it was, the experiment's counts included.
    assert before["all"]["funnels"][0]["experiments"][0]["arms"][0]["leads"] > 0
    assert differences(before, after) == []
    # A second prune finds nothing more and changes nothing.
    assert "nothing past its age" in prune(database)
    assert differences(before, figures(database, tmp_path, "again")) == []


def test_what_the_engine_needs_is_never_pruned(database: str, retention: None) -> None:
    o, e, ev = tables.outbox, tables.enrollments, tables.events
    active = sa.select(e.c.lead_id).where(e.c.status == "active")
    kept = {
        "in flight": sa.select(o.c.id).where(o.c.status.in_(IN_FLIGHT)),
        "emails of leads in a funnel": sa.select(o.c.id).where(o.c.lead_id.in_(active)),
        # The events the report counts; their other events (a form's, a purchase) are done with once
        # processed, and go by age alone.
        "opens and clicks of leads in a funnel": sa.select(ev.c.id).where(
            ev.c.lead_id.in_(active), ev.c.name.in_(("email_opened", "email_clicked"))
        ),
        "transitions of leads in a funnel": sa.select(tables.stage_transitions.c.id).where(
            tables.stage_transitions.c.lead_id.in_(active)
        ),
        "assignments": sa.select(ev.c.id).where(ev.c.name == "experiment_assigned"),
    }
    before = {name: rows(database, stmt) for name, stmt in kept.items()}
    assert before["in flight"] and before["emails of leads in a funnel"] and before["assignments"]
    held = counts(database)
    prune(database)
    left = counts(database)
    for name, stmt in kept.items():
        assert rows(database, stmt) == before[name], name
    for table in ("leads", "enrollments", "consent_records", "goals", "suppressions"):
        assert left[table] == held[table], table
    assert left["outbox"] < held["outbox"]
    # A lead's other events go by age alone (the engine reads only pending ones), but while an experiment
    # may count them: until the outcome of the lead's assignment is written at its rollup.
    assigned = sa.select(ev.c.lead_id).where(ev.c.name == "experiment_assigned")
    signups = sa.select(ev.c.id).where(ev.c.lead_id.in_(active), ev.c.name == "form_submitted")
    assert rows(database, signups.where(ev.c.lead_id.not_in(assigned))) == []
    assert len(rows(database, signups.where(ev.c.lead_id.in_(assigned)))) > 0


def test_a_dry_run_says_what_a_prune_does_and_changes_nothing(database: str, retention: None) -> None:
    held = counts(database)
    would = prune(database, "--dry-run")
    assert counts(database) == held
    did = prune(database)
    assert would.splitlines()[-1].removeprefix("would prune: ") == did.splitlines()[-1].removeprefix("pruned: ")
    assert counts(database) != held


def test_forgetting_inactive_leads_keeps_the_figures_and_the_suppression(
    database: str, retention: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FUNNEL_RETENTION__FORGET_INACTIVE_DAYS", "30")
    before, held = figures(database, tmp_path, "before"), counts(database)
    said = prune(database)
    left = counts(database)
    forgotten = held["leads"] - left["leads"]
    assert forgotten > 0 and f"{forgotten:,} leads forgotten" in said
    # Each forgotten address stays as a hash that no import or signup brings back (a bounced one too).
    erased = rows(database, sa.select(tables.suppressions.c.reason).where(tables.suppressions.c.reason == "erased"))
    assert len(erased) == forgotten
    # No enrollment in progress went: every lead left is one the engine still needs or still active.
    assert left["enrollments"] < held["enrollments"]
    active = rows(database, sa.select(tables.enrollments.c.id).where(tables.enrollments.c.status == "active"))
    assert len(active) == before["all"]["funnels"][0]["active"]
    assert differences(before, figures(database, tmp_path, "after")) == []


def test_retention_is_off_until_the_operator_sets_it(database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    held = counts(database)
    said = prune(database)
    assert said.strip() == "retention: off (nothing is deleted by age)"
    assert counts(database) == held
    result = run("validate")
    assert result.exit_code == 0, result.output
    assert "retention: off (nothing is deleted by age)" in result.output


def test_a_setting_below_its_floor_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FUNNEL_RETENTION__EVENTS_DAYS", "2")
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "db", "prune", "--database-url", url(tmp_path / "x.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "retention.events_days" in proc.stderr and "greater than or equal to 7" in proc.stderr


def test_funnel_run_prunes_on_its_own_and_says_so_once(month: Path, tmp_path: Path) -> None:
    copy = tmp_path / "funnel.db"
    shutil.copy(month, copy)
    held = counts(url(copy))
    env = {
        **os.environ,
        "FUNNEL_DATABASE_URL": url(copy),
        "FUNNEL_DATA_DIR": str(tmp_path / "data"),
        "FUNNEL_HTTP__ENABLED": "false",
        **{f"FUNNEL_RETENTION__{key}": value for key, value in AGES.items()},
    }
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 60
            while "retention: " not in log.read_text().partition("kept for ever")[2] and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    text = log.read_text()
    lines = [line for line in text.splitlines() if "retention: " in line]
    assert lines[0].endswith("the rest kept for ever"), text  # the start says what is kept
    assert len(lines) == 2 and "leads rolled up" in lines[1] and " outbox" in lines[1], text
    assert counts(url(copy))["outbox"] < held["outbox"]


@pytest.mark.postgres
def test_workers_pruning_at_once_roll_each_lead_up_once(
    month: Path, retention: None, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Each worker of a PostgreSQL deployment prunes on its own schedule: three at once, in small
    batches, count every lead once."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.runtime.pruning import prune as prune_now
    from engine.settings import RetentionSettings

    database = copy_to_postgres(month, request.getfixturevalue("postgres_url"))
    before = figures(database, tmp_path, "before")
    settings = RetentionSettings(
        events_days=7, outbox_days=1, transitions_days=1, webhook_deliveries_days=1, batch_size=5
    )
    engines = [create_engine_for(database) for _ in range(3)]
    try:
        now = datetime.now(UTC)
        with ThreadPoolExecutor(3) as pool:
            done = list(pool.map(lambda engine: prune_now(engine, settings, now), engines))
    finally:
        for engine in engines:
            engine.dispose()
    assert sum(d["leads rolled up"] for d in done) > 0
    assert differences(before, figures(database, tmp_path, "after")) == []
