"""`funnel experiment promote`, `stop`, `list` and `show` as an operator types them: real processes on a
real SQLite file. A promotion is kept with who and why, and the engine's worker sends new leads to the
promoted arm; a second decision is refused; stopping sends new leads to the control (here a holdout)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from engine.authoring.validation import load_funnels
from engine.core.experiments import assign, lead_key
from engine.runtime.worker import Worker
from engine.store import leads as store
from engine.store import tables
from engine.store.database import create_engine_for, upgrade

ROOT = Path(__file__).resolve().parent.parent.parent

AB = """\
id: ab
name: Two experiments
entry:
  triggers:
    - event: signed_up
stages:
  - id: nurture
    steps:
      - id: welcome
        send: drip/welcome
        experiment:
          id: subject
          arms:
            - {id: plain}
            - {id: teaser, send: drip/teaser}
          metric: {click: "*", within: 3d}
          decide: {min_per_arm: 100, promote: auto}
      - id: pace
        split:
          id: pace
          arms:
            - {id: soon, goto: tip}
            - {id: none, holdout: true, goto: done}
          metric: {click: "*", within: 7d}
          decide: {min_per_arm: 100, promote: manual}
      - id: tip
        send: drip/tip
      - id: done
        wait: 1d
    on_end: stay
"""


def funnel(root: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env.update({"FUNNEL_DATABASE_URL": url, "FUNNEL_FUNNELS_DIR": str(root / "funnels")})
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_promote_stop_list_and_show_through_the_command(tmp_path: Path) -> None:
    (tmp_path / "funnels").mkdir()
    (tmp_path / "funnels" / "ab.yaml").write_text(AB)
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    upgrade(url)
    unknown = funnel(tmp_path, url, "experiment", "promote", "ab", "subject", "bold", "--reason", "x")
    assert unknown.returncode == 2 and "ab / subject: no arm 'bold' (its arms: plain, teaser)" in unknown.stderr
    done = funnel(tmp_path, url, "experiment", "promote", "ab", "subject", "teaser", "--reason", "brand voice",
                  "--by", "olivia")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ab / subject: promoted by olivia (brand voice): new leads get teaser" in done.stdout
    again = funnel(tmp_path, url, "experiment", "stop", "ab", "subject", "--reason", "changed my mind")
    assert again.returncode == 1
    assert "ab / subject: already decided (manual)" in again.stderr and "by olivia" in again.stderr
    stopped = funnel(tmp_path, url, "experiment", "stop", "ab", "pace", "--reason", "summer break", "--by", "sam")
    assert stopped.returncode == 0 and "new leads get none" in stopped.stdout  # the holdout is the control
    listed = funnel(tmp_path, url, "experiment", "list")
    assert listed.returncode == 0, listed.stderr
    lines = [line for line in listed.stdout.splitlines() if "│ ab" in line]
    assert len(lines) == 2
    assert "decided (manual)" in lines[0] and "by olivia: new leads get teaser" in lines[0]
    assert "decided (stopped)" in lines[1] and "by sam: new leads get none" in lines[1]

    # The engine's worker sends a new lead to the promoted arm, whatever its hash says.
    address = next(f"n{i}@example.com" for i in range(100) if _arms(f"n{i}@example.com") == ("plain", "soon"))
    (loaded,) = load_funnels([tmp_path / "funnels"], emails_dir=None).funnels
    engine = create_engine_for(url)
    try:
        now = datetime.now(UTC)
        with engine.begin() as conn:
            lead_id = store.upsert_lead(conn, address, now=now)
            store.record_events(conn, [store.NewEvent("s1", lead_id, "signed_up", now)], now=now)
        Worker(engine, {"ab": loaded}).run_until_idle(now)
        with engine.connect() as conn:
            sent = conn.execute(sa.select(tables.outbox.c.step, tables.outbox.c.template)).all()
    finally:
        engine.dispose()
    assert sorted(sent) == [("welcome", "drip/teaser")]  # the stopped split: the holdout, no tip


def _arms(address: str) -> tuple[str, str]:
    """The arms the hash gives the address in `subject` and in `pace`."""
    key = lead_key(address)
    return (
        assign(key, "ab", "welcome", "subject", [("plain", 1), ("teaser", 1)]),
        assign(key, "ab", "pace", "pace", [("soon", 1), ("none", 1)]),
    )
