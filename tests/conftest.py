"""Database backends for the whole suite: every test taking `db_url` (or `db`) runs on SQLite and on PostgreSQL.

PostgreSQL: `FUNNEL_TEST_POSTGRES_URL` names a server where databases may be created; without it the
session starts its own PostgreSQL from the installed binaries (`initdb` in a temporary directory,
loopback port, socket in that directory), as the `postgres` user when running as root, because the
server refuses to run as root. Migrations run once into a template database; each test gets a clone
(`CREATE DATABASE ... TEMPLATE`), which takes milliseconds.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from engine.store.database import create_engine_for, upgrade
from tests.faults.tally import Tally
from tests.required import missing

POSTGRES_URL_ENV = "FUNNEL_TEST_POSTGRES_URL"


def _postgres_bindir() -> Path | None:
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _LocalPostgres:
    """A throwaway server; runs as `postgres` when the tests run as root."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # Not under pytest's tmp dir: that one is private to root, and the server user must enter it.
        self.root = Path(tempfile.mkdtemp(prefix="funnel-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.as_root:
            cmd = (
                ["runuser", "-u", "postgres", "--", *cmd]
                if shutil.which("runuser")
                else [
                    "su",
                    "postgres",
                    "-c",
                    " ".join(f"'{a}'" for a in cmd),
                ]
            )
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            log = self.root / "server.log"
            detail = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}\n{detail}")

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> URL:
        return URL.create(
            "postgresql+psycopg", username="postgres", host="127.0.0.1", port=self.port, database="postgres"
        )


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[URL]:
    configured = os.environ.get(POSTGRES_URL_ENV)
    if configured:
        yield make_url(configured).set(drivername="postgresql+psycopg")
        return
    bindir = _postgres_bindir()
    if bindir is None:
        missing(f"no PostgreSQL binaries (initdb, pg_ctl) found; install PostgreSQL or set {POSTGRES_URL_ENV}")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root and there is no `postgres` user to run the server as")
    server = _LocalPostgres(bindir)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_admin(postgres_admin_url: URL) -> Iterator[Engine]:
    engine = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_template(postgres_admin: Engine, postgres_admin_url: URL) -> Iterator[str]:
    name = f"funnel_template_{uuid.uuid4().hex[:8]}"
    with postgres_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    upgrade(postgres_admin_url.set(database=name))
    yield name
    with postgres_admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied per test (the migrations themselves run once per session)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "funnel.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database URL on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "data" / "funnel.db"
        path.parent.mkdir()
        # WAL mode is recorded in the file; the template was closed cleanly, so one file is the database.
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    yield request.getfixturevalue("postgres_url")


@pytest.fixture
def postgres_url(postgres_admin: Engine, postgres_admin_url: URL, postgres_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database: a clone of the session's template (milliseconds)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    yield postgres_admin_url.set(database=name).render_as_string(hide_password=False)
    with postgres_admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    engine = create_engine_for(db_url)
    yield engine
    engine.dispose()


# -- the fault-injection summary ----------------------------------------------------------------------
# Scenarios in tests/faults attach their tallies to their reports (tests/faults/conftest.py); they are
# gathered here, in the process that prints the run's summary.

_TALLIES: list[Tally] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name == "fault_tally" and isinstance(value, dict):
            _TALLIES.append(Tally(**value))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TALLIES:
        return
    full = os.environ.get("FUNNEL_FAULTS", "short").lower() == "full"
    columns = ("faults", "leads", "expected", "delivered", "duplicated", "lost", "unknown", "strays")
    mode = "full" if full else "short"
    tr = terminalreporter
    tr.section(f"fault injection summary ({mode})")
    width = max(len("scenario"), *(len(t.scenario) for t in _TALLIES))
    tr.write_line(f"{'scenario':<{width}}  " + "  ".join(f"{c:>10}" for c in columns))
    for t in _TALLIES:
        tr.write_line(f"{t.scenario:<{width}}  " + "  ".join(f"{getattr(t, c):>10,}" for c in columns))
    totals = {c: sum(getattr(t, c) for t in _TALLIES) for c in columns}
    tr.write_line(f"{'total':<{width}}  " + "  ".join(f"{totals[c]:>10,}" for c in columns))
    for t in _TALLIES:
        for note in t.notes:
            tr.write_line(f"  {t.scenario}: {note}")
    target = os.environ.get("FUNNEL_FAULTS_JSON")
    if target:
        payload = {"mode": mode, "scenarios": [t.as_dict() for t in _TALLIES], "totals": totals}
        Path(target).write_text(json.dumps(payload, indent=2) + "\n")
