"""Commands that read a database, or act on what it holds, never create one: run from a folder with no
database (SQLite) or pointed at a PostgreSQL database that does not exist, each refuses in one line
naming the database it looked for, and leaves no file behind. An erasure or a revocation in a new empty
database would only seem done. Commands that record something new (`funnel event`, `lead enroll`,
`import`, `apikey create`, `demo-month`, `run`) still make the database they need."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

ROOT = Path(__file__).resolve().parent.parent.parent
FUNNEL = str(ROOT / "funnels" / "lead-magnet.yaml")
EMAILS = str(ROOT / "emails")

# The commands that only read, and those that act on rows that must already be there.
NEEDS_A_DATABASE = (
    ("report",),
    ("watch", "--once"),
    ("lead", "show", "ana@example.com"),
    ("lead", "export", "ana@example.com"),
    ("lead", "forget", "ana@example.com", "--yes"),
    ("outbox",),
    ("outbox", "decide", "1", "sent"),
    ("map", FUNNEL, "--live", "--emails", EMAILS, "-o", "map.html"),
    ("plan", FUNNEL, "--emails", EMAILS),
    ("apikey", "list"),
    ("apikey", "revoke", "fk_abcdefg"),
)


def funnel(folder: Path, *args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    """`funnel ARGS` as typed in `folder`, with no FUNNEL_ setting but the database URL, if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    if database_url is not None:
        env["FUNNEL_DATABASE_URL"] = database_url
    command = [sys.executable, "-m", "engine.cli", *args]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", NEEDS_A_DATABASE, ids=lambda a: " ".join(a[:2]))
def test_a_command_run_where_there_is_no_database_says_so_and_creates_none(tmp_path: Path, args: tuple[str]) -> None:
    done = funnel(tmp_path, *args)
    assert done.returncode == 1, (done.stdout, done.stderr)
    expected = tmp_path / "data" / "funnel.db"
    assert done.stderr.strip().splitlines() == [
        f"no database at {expected}: this command creates none; run it in the engine's folder, or name "
        "the database with FUNNEL_DATABASE_URL (or --database-url where the command takes it)"
    ]
    assert not (tmp_path / "data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_database_url_option_names_the_file_looked_for(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "funnel.db"
    done = funnel(tmp_path, "report", "--database-url", f"sqlite:///{missing}")
    assert done.returncode == 1 and f"no database at {missing}:" in done.stderr
    assert not missing.parent.exists()


@pytest.mark.postgres
def test_a_postgresql_database_that_does_not_exist_is_one_line(tmp_path: Path, postgres_admin_url: URL) -> None:
    url = postgres_admin_url.set(database="no_such_funnel_db").render_as_string(hide_password=False)
    for args in (("report",), ("lead", "show", "ana@example.com"), ("outbox",)):
        done = funnel(tmp_path, *args, database_url=url)
        assert done.returncode == 1, args
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"database postgresql+psycopg://{postgres_admin_url.host}:{postgres_admin_url.port}/")
        assert 'database "no_such_funnel_db" does not exist' in line
        assert "Traceback" not in done.stderr


def test_a_command_that_records_something_new_makes_its_database(tmp_path: Path) -> None:
    done = funnel(tmp_path, "event", "ana@example.com", "page_viewed", "--id", "first")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "funnel.db").exists()
    shown = funnel(tmp_path, "lead", "show", "ana@example.com")
    assert shown.returncode == 0 and "ana@example.com" in shown.stdout
