"""A throwaway PostgreSQL server for the benchmarks, and what a server costs while they run.

`LocalPostgres` starts one from the installed binaries, as the test suite does (`initdb` in a temporary
directory, `pg_ctl start` on a free loopback port, the socket in that directory, as the `postgres` user when
running as root, because the server refuses to run as root), with `pg_stat_statements` loaded. Unlike the
tests' server it keeps `fsync` and full page writes on: only `synchronous_commit = off`, so a commit does not
wait for its WAL to reach the disk, the same promise as SQLite's `synchronous=NORMAL` in WAL mode that the
SQLite figures are measured with (a crash of the machine can lose the last commits, never corrupt).

`ServerCost` reads, before and after a measured stretch, the server's own CPU time (its processes in /proc,
the backends that exited meanwhile included) and the statements it ran (`pg_stat_statements`, BEGIN and
COMMIT included), and counts the round trips the benchmark's own engine made (`RoundTrips`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def postgres_bindir() -> Path | None:
    """Where `initdb` and `pg_ctl` are: `pg_config --bindir`, /usr/lib/postgresql/*/bin, or PATH."""
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
    return next((b for b in candidates if (b / "initdb").exists() and (b / "pg_ctl").exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    """`with LocalPostgres() as server: server.url`: started on entry, stopped and deleted on exit."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or postgres_bindir()
        if found is None:
            raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl): install PostgreSQL or give --database-url")
        self.bindir = found
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="funnel-bench-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()

    def __enter__(self) -> LocalPostgres:
        try:
            if self.as_root:
                shutil.chown(self.root, "postgres", "postgres")
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "--encoding=UTF8", "--locale=C", "--no-sync")  # fmt: skip
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c synchronous_commit=off"
                " -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top"
                " -c shared_buffers=256MB -c max_connections=200"
            )
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                      "-o", options, "-w", "-t", "60", "start")  # fmt: skip
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return URL.create(
            "postgresql+psycopg", username="postgres", host="127.0.0.1", port=self.port, database="postgres"
        ).render_as_string(hide_password=False)

    def _run(self, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            log = self.root / "server.log"
            detail = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}\n{detail}")


# --------------------------------------------------------------------------------------------------
# What the server spends
# --------------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # after "pid (comm) "


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def server_cpu_s(postmaster: int) -> float:
    """The CPU time of a server: the postmaster, its live children (backends, writers, autovacuum), and
    those that exited (the postmaster waits for each, so their time is in its children's counts)."""
    fields = _stat_fields(postmaster)
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    for child in _children(postmaster):
        try:
            f = _stat_fields(child)
        except OSError:  # it exited just now: its time is in the postmaster's next reading
            continue
        ticks += int(f[11]) + int(f[12])
    return ticks / CLOCK_TICKS


def postmaster_pid(admin: sa.Engine) -> int | None:
    """The server's postmaster, when it runs on this machine and its data directory can be read."""
    try:
        with admin.connect() as conn:
            data = conn.exec_driver_sql("SHOW data_directory").scalar_one()
        pid = int((Path(str(data)) / "postmaster.pid").read_text().split()[0])
        _stat_fields(pid)
    except (sa.exc.SQLAlchemyError, OSError, ValueError, IndexError):
        return None
    return pid


def _statements(admin: sa.Engine, database: str) -> int | None:
    """Statements the server has run in `database` (pg_stat_statements' calls, BEGIN and COMMIT included),
    read from another database so that reading them is not counted."""
    try:
        with admin.connect() as conn:
            value = conn.execute(
                sa.text(
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                    " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = :name)"
                ),
                {"name": database},
            ).scalar_one()
    except sa.exc.SQLAlchemyError:
        return None
    return int(value)


class RoundTrips:
    """The round trips an engine's connections make to the server: each statement sent (an executemany
    is one, psycopg pipelines its rows), the BEGIN psycopg sends before the first statement of a
    transaction, each COMMIT or ROLLBACK of a transaction that ran something, and each pre-ping."""

    def __init__(self, engine: sa.Engine) -> None:
        from psycopg import pq

        self.count = 0
        idle = pq.TransactionStatus.IDLE

        def before_cursor_execute(conn: sa.Connection, cursor: Any, *args: Any) -> None:
            raw = cursor.connection
            self.count += 2 if (not raw.autocommit and raw.info.transaction_status == idle) else 1

        def ended(conn: sa.Connection) -> None:
            raw = conn.connection.dbapi_connection
            if raw is not None and raw.info.transaction_status != idle:
                self.count += 1

        def checkout(*args: Any) -> None:
            if getattr(engine.pool, "_pre_ping", False):
                self.count += 1  # SELECT 1 (its BEGIN is counted with the first statement's, as a BEGIN)

        event.listen(engine, "before_cursor_execute", before_cursor_execute)
        event.listen(engine, "commit", ended)
        event.listen(engine, "rollback", ended)
        event.listen(engine.pool, "checkout", checkout)


@dataclass
class Cost:
    server_cpu_s: float | None
    statements: int | None
    round_trips: int
    wal_bytes: int | None


def _wal_position(admin: sa.Engine) -> int | None:
    """Bytes of WAL the server has written so far (what it writes to disk, every database included)."""
    try:
        with admin.connect() as conn:
            return int(conn.exec_driver_sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").scalar_one())
    except sa.exc.SQLAlchemyError:
        return None


class ServerCost:
    """`cost = ServerCost(engine)`, then `cost.start()` and `cost.stop()` around the measured stretch. The
    server's figures are None when they cannot be read (a server on another machine, no pg_stat_statements)."""

    def __init__(self, engine: sa.Engine) -> None:
        url = make_url(str(engine.url.render_as_string(hide_password=False)))
        self.postgres = url.get_backend_name() == "postgresql"
        self.database = url.database or ""
        self.trips = RoundTrips(engine) if self.postgres else None
        self.admin: sa.Engine | None = None
        self.pid: int | None = None
        if self.postgres:
            self.admin = sa.create_engine(url.set(database="postgres"), poolclass=sa.pool.NullPool)
            self.pid = postmaster_pid(self.admin)
            try:
                with self.admin.begin() as conn:
                    conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            except sa.exc.SQLAlchemyError:
                pass  # not loaded on that server: no statement counts
        self._start: tuple[float | None, int | None, int, int | None] = (None, None, 0, None)

    def _now(self) -> tuple[float | None, int | None, int, int | None]:
        cpu = server_cpu_s(self.pid) if self.pid else None
        statements = _statements(self.admin, self.database) if self.admin else None
        wal = _wal_position(self.admin) if self.admin else None
        return cpu, statements, self.trips.count if self.trips else 0, wal

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> Cost:
        cpu, statements, trips, wal = self._now()
        cpu0, statements0, trips0, wal0 = self._start
        return Cost(
            round(cpu - cpu0, 2) if cpu is not None and cpu0 is not None else None,
            statements - statements0 if statements is not None and statements0 is not None else None,
            trips - trips0,
            wal - wal0 if wal is not None and wal0 is not None else None,
        )


def process_cpu_s(pid: int) -> float:
    """A live process's own CPU time so far (user and system)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def worker_cpu_s(skip: set[int]) -> float:
    """This process's CPU time and its live children's (render processes), those in `skip` left out."""
    total = process_cpu_s(os.getpid())
    for child in _children(os.getpid()):
        if child not in skip:
            try:
                total += process_cpu_s(child)
            except OSError:
                continue
    return total


def per(value: float | None, count: int, scale: float = 1.0) -> float | None:
    return round(value * scale / count, 3) if value is not None and count else None
