"""Acceptance fixtures: a throwaway project (funnels, emails, database) driven through the real `funnel`
command in subprocesses, sending to a real SMTP server in this process.

PostgreSQL comes from the session server of `tests/conftest.py`; each test gets a fresh database cloned
from the migrated template.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.store.database import create_engine_for
from tests.smtp_server import RecordingSmtpServer

LAYOUT = """<!doctype html>
<html><body>
{{ content }}
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> · {{ sender.postal_address }}</p>
</body></html>
"""


def write_emails(root: Path, names: list[str]) -> Path:
    """Minimal templates `drip/<name>` with a subject and the unsubscribe link of the base layout."""
    emails = root / "emails"
    (emails / "_layouts").mkdir(parents=True, exist_ok=True)
    (emails / "_layouts" / "base.html").write_text(LAYOUT)
    (emails / "drip").mkdir(exist_ok=True)
    for name in names:
        (emails / "drip" / f"{name}.md").write_text(
            f"---\nsubject: \"{name.title()} for {{{{ lead.first_name | default('you') }}}}\"\n---\n"
            f"Hello {{{{ lead.first_name | default('there') }}}}, this is the {name} email.\n"
        )
    return emails


@dataclass
class Project:
    """A folder with `funnels/`, `emails/` and settings (env vars) pointing at a database and an SMTP server."""

    root: Path
    database_url: str
    smtp: RecordingSmtpServer
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def funnels_dir(self) -> Path:
        return self.root / "funnels"

    @property
    def emails_dir(self) -> Path:
        return self.root / "emails"

    def add_funnel(self, name: str, text: str) -> None:
        self.funnels_dir.mkdir(exist_ok=True)
        (self.funnels_dir / f"{name}.yaml").write_text(text)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
        env.update(
            {
                "FUNNEL_DATABASE_URL": self.database_url,
                "FUNNEL_DATA_DIR": str(self.root / "data"),
                "FUNNEL_FUNNELS_DIR": str(self.funnels_dir),
                "FUNNEL_EMAILS_DIR": str(self.emails_dir),
                "FUNNEL_SMTP__TIMEOUT_S": "2",
                # Several engines may run at once: each serves HTTP on a free port of its own.
                "FUNNEL_HTTP__PORT": "0",
                **self.smtp.env(),
                **self.extra_env,
                **overrides,
            }
        )
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "engine.cli", *args]

    def funnel(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(*args), cwd=self.root, env=self.env(), capture_output=True, text=True, timeout=120
        )
        if check and done.returncode != 0:
            raise AssertionError(f"funnel {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def spawn(self, *args: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                self.command(*args), cwd=self.root, env=self.env(**env), stdout=out, stderr=subprocess.STDOUT
            )

    def db(self) -> Engine:
        return create_engine_for(self.database_url)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


@pytest.fixture
def smtp() -> Iterator[RecordingSmtpServer]:
    with RecordingSmtpServer() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'funnel.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def project(tmp_path: Path, database_url: str, smtp: RecordingSmtpServer) -> Project:
    """A project on each backend."""
    return Project(tmp_path, database_url, smtp)


@pytest.fixture
def sqlite_project(tmp_path: Path, smtp: RecordingSmtpServer) -> Project:
    """A project on SQLite only, for behaviour that does not depend on the backend."""
    return Project(tmp_path, f"sqlite:///{tmp_path / 'data' / 'funnel.db'}", smtp)


def outbox_rows(engine: Engine) -> list[sa.Row[tuple[object, ...]]]:
    from engine.store.tables import leads, outbox

    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(
                    leads.c.email,
                    outbox.c.funnel_id,
                    outbox.c.step,
                    outbox.c.status,
                    outbox.c.skip_reason,
                    outbox.c.id,
                    outbox.c.due_at,
                )
                .join(leads, leads.c.id == outbox.c.lead_id)
                .order_by(outbox.c.id)
            )
        )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite database of its own, for tests that drive the mailer in this process."""
    from engine.store.database import upgrade

    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    upgrade(url)
    db = create_engine_for(url)
    yield db
    db.dispose()


def queue_email(
    engine: Engine,
    address: str,
    step: str,
    now: datetime,
    *,
    funnel: str = "f",
    template: str = "lead-magnet/report",
    transactional: bool = False,
    timezone: str | None = None,
) -> None:
    """An outbox row due at `now`, written the way the engine writes one: with its decision."""
    from engine.core.journey import Decision, Enrollment, SendEmail
    from engine.store import leads as store
    from engine.store.decisions import apply_decisions

    with engine.begin() as conn:
        lead_id = store.upsert_lead(conn, address, timezone=timezone, now=now)
        state = Enrollment(funnel, "v1", "active", "s", None, "ready", now, None, now, now)
        command = SendEmail(step, template, "s", now, transactional)
        lead = store.get_lead(conn, lead_id)
        apply_decisions(conn, [(lead_id, Decision(state, lead, (command,)))], now)  # type: ignore[arg-type]
