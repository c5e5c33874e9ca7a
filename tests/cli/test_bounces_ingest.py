"""`funnel bounces ingest` as an MTA's pipe transport runs it: the report on standard input, the exit
status what the transport acts on (0: done; 75: keep the message and try again)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from tests.faults.report_mail import dsn
from tests.mail_servers import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
REPORT = dsn("t1", "bounces@bounces.example", "gone@example.com", "<m1@example.com>", "5.1.1", datetime.now(UTC))


def ingest(tmp_path: Path, url: str, raw: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env.update({"FUNNEL_DATA_DIR": str(tmp_path / "data"), "FUNNEL_DATABASE_URL": url})
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "bounces", "ingest", "-"],
        cwd=ROOT, env=env, input=raw, capture_output=True, timeout=120,
    )  # fmt: skip


def test_a_report_is_taken_once_and_its_copy_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    first = ingest(tmp_path, url, REPORT)
    assert first.returncode == 0, first.stderr
    assert b"dsn address_gone 5.1.1 message unmatched: kept for an operator" in first.stdout
    again = ingest(tmp_path, url, REPORT)
    assert again.returncode == 0 and b"duplicate" in again.stdout, again.stdout


def test_a_database_away_exits_75_so_that_the_mta_keeps_the_report(tmp_path: Path) -> None:
    done = ingest(tmp_path, f"postgresql+psycopg://funnel@127.0.0.1:{free_port()}/funnel", REPORT)
    assert done.returncode == 75, done.stderr
    assert b"Traceback" not in done.stderr and done.stderr.strip(), done.stderr


def test_unknown_lists_the_newest_and_says_how_many_wait_in_all(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    for n in range(3):
        raw = dsn(
            f"u{n}",
            "bounces@bounces.example",
            f"gone{n}@example.com",
            f"<u{n}@example.com>",
            "5.1.1",
            datetime.now(UTC),
        )
        assert ingest(tmp_path, url, raw).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env.update({"FUNNEL_DATA_DIR": str(tmp_path / "data"), "FUNNEL_DATABASE_URL": url})
    shown = subprocess.run(
        [sys.executable, "-m", "engine.cli", "bounces", "unknown", "--limit", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "2 shown, the newest (--limit); 3 report(s) for an operator" in " ".join(shown.stdout.split())
