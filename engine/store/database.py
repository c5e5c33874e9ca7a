"""Connecting to the database and bringing its schema up to date.

SQLite is the embedded default, PostgreSQL (psycopg 3) the choice for several workers. Every write goes
through `engine.begin()`: on SQLite that transaction starts with `BEGIN IMMEDIATE`, which takes the
single writer lock up front, so a transaction that reads due work and then writes it cannot be
overtaken by another writer between the two (SQLite's stand-in for `SELECT ... FOR UPDATE`).

When the database fails under the engine (a full disk, a server restarting), `describe_failure` says
which database and what is wrong with it, for a log line ops can act on.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from engine.core.redaction import scrub

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

SQLITE_BUSY_TIMEOUT_MS = 30_000

# SQLite's result codes that are about the file or the disk under it, not about the SQL.
_SQLITE_STORAGE = (
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_READONLY",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
)
# Below this much free space, a write that failed is taken for a full disk: a transaction, a checkpoint
# or the WAL growing needs a few pages at least, often megabytes.
NEARLY_FULL_BYTES = 64 * 2**20

# Execution option for connections that only read: on SQLite they begin a deferred transaction and so
# never wait for the writer (WAL gives them a snapshot). No effect on PostgreSQL.
READ_ONLY = "funnel_read_only"

# What the packages above hold and catch: an engine and its connections, handed out here and passed back to
# the functions of this package, and the errors a statement raises. They build no statement themselves.
Connection = sa.Connection
Engine = sa.Engine
DatabaseError = sa.exc.SQLAlchemyError
DBAPIError = sa.exc.DBAPIError
IntegrityError = sa.exc.IntegrityError


SQLITE_CACHED_STATEMENTS = 16


def create_engine_for(url: str | URL, **kwargs: Any) -> Engine:
    """An engine configured for this product: WAL and a busy timeout on SQLite, psycopg 3 on PostgreSQL.
    Its errors never quote the statement's parameters (addresses, attributes): an error's text ends up
    in a log or on a terminal."""
    kwargs.setdefault("hide_parameters", True)
    parsed = _normalise(make_url(url))
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **kwargs)
    return sa.create_engine(parsed, pool_pre_ping=True, **kwargs)


def _normalise(url: URL) -> URL:
    # A bare `postgresql://` URL would pick psycopg2, which is not a dependency.
    if url.drivername in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    return url


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # The driver keeps each connection's last prepared statements (128 by default). A list bound to
    # `IN (...)` is a new statement for each length, so a long-running engine would fill that cache slowly,
    # its memory with it (benchmarks/soak.py). A smaller cache costs nothing measurable (benchmarks/tick.py).
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "cached_statements": SQLITE_CACHED_STATEMENTS}
    engine = sa.create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's `begin` event emit BEGIN itself instead of the driver's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def missing_file(url: str | URL) -> Path | None:
    """The file a SQLite URL names, if it does not exist (opening it would create it); None when it
    exists, for an in-memory database, and for every other backend (a server says by itself when a
    database does not exist)."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    return None if path.exists() else path.absolute()


def connect_read_only(engine: Engine) -> sa.Connection:
    """A connection for reads only (dashboards, reports): on SQLite it never waits for the writer.

    Use as `with connect_read_only(engine) as conn: ...`; a write through it may fail with "database is
    locked" on SQLite, because a deferred transaction cannot wait to become the writer.
    """
    return engine.connect().execution_options(**{READ_ONLY: True})


def data_version(conn: Connection) -> int:
    """SQLite's count that moves whenever another connection commits (seen from this connection)."""
    return int(conn.exec_driver_sql("PRAGMA data_version").scalar_one())


def describe_failure(engine: Engine | str | URL, exc: BaseException) -> str | None:
    """The database's part in a failure, in words ops can act on: which database, and what is wrong with
    it (a full disk, a file at the size limit, a server that went away). None when the database is not
    the cause (a bug, a constraint): those keep their traceback."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    url = engine.url if isinstance(engine, Engine) else make_url(engine)
    if isinstance(exc.orig, sqlite3.Error):
        return _describe_sqlite(Path(url.database or ":memory:"), exc.orig)
    if exc.connection_invalidated or isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        # The server's own first line says what happened ("Connection refused", "terminating connection
        # due to administrator command"); where is the URL, without the user (logs would take it for an
        # address) or the password.
        where = url._replace(username=None, password=None).render_as_string()
        said = str(exc.orig).strip().splitlines() or [repr(exc.orig)]
        return f"database {where}: {said[0]}"
    return None


def shown_url(url: str | URL) -> str:
    """The database's URL for a person to read: without its password."""
    return make_url(url).render_as_string(hide_password=True)


def one_line(exc: BaseException) -> str:
    """What the database said about a failure, in one line and without the values it quotes: the
    first line of the driver's message (PostgreSQL puts the row it refused in the lines after it), with
    any address in it pseudonymised as the logs do. For a user's terminal as for the logs."""
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    lines = str(cause).strip().splitlines()
    said = lines[0] if lines else ""
    return scrub(f"{type(cause).__name__}: {said}" if said else type(cause).__name__)


def _describe_sqlite(path: Path, error: sqlite3.Error) -> str | None:
    name = getattr(error, "sqlite_errorname", "")
    if not name.startswith(_SQLITE_STORAGE):
        return None
    said = f"database {path}: {error} ({name})"
    if not name.startswith(("SQLITE_FULL", "SQLITE_IOERR")):
        return said
    try:
        return f"{said}: {_storage_cause(path)}"
    except OSError:  # the folder itself is gone or unreadable: the error says enough
        return said


def _storage_cause(path: Path) -> str:
    """SQLite says "disk I/O error" for a write the OS refused: what the disk and the limits look like
    now tells which refusal it was."""
    free = shutil.disk_usage(path.parent).free
    if free < NEARLY_FULL_BYTES:
        return f"disk full, {_size(free)} free on the file system of {path.parent}"
    limit = _file_size_limit()
    if limit is not None:
        names = (path.name, f"{path.name}-wal", f"{path.name}-journal")
        sizes = {n: (path.parent / n).stat().st_size for n in names if (path.parent / n).exists()}
        name, biggest = max(sizes.items(), key=lambda item: item[1], default=(path.name, 0))
        if biggest >= limit - NEARLY_FULL_BYTES:
            limited = f"this process may write no file beyond {_size(limit)} (ulimit -f)"
            return f"file too large, {limited} and {name} is {_size(biggest)}"
    return f"{_size(free)} free on the file system of {path.parent}"


def _file_size_limit() -> int | None:
    """The largest file this process may write (RLIMIT_FSIZE), if it is limited."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 2**20 else f"{n / 2**20:,.1f} MiB"


def alembic_config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


# An advisory lock key of our own (any 64-bit number no other application on the server uses).
MIGRATION_LOCK = 0x66756E6E656C  # "funnel"


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Apply the migrations up to `revision` (idempotent: an up-to-date database is left as is)."""
    engine = create_engine_for(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Workers started together on an empty database: one migrates, the others wait for its
                # commit, then find nothing to do (SQLite's writer lock does the same by itself).
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            command.upgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()


def current_revision(url: str | URL) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


PRUNED = ("events", "outbox", "stage_transitions", "webhook_deliveries")


def vacuum(engine: Engine) -> tuple[int, int]:
    """Give freed space back: SQLite rewrites the file (bytes before and after); PostgreSQL vacuums
    the tables retention prunes (0, 0: its files shrink only by a full vacuum, which locks them)."""
    if engine.dialect.name == "sqlite":
        path = Path(engine.url.database or "")
        before = path.stat().st_size if path.is_file() else 0
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.exec_driver_sql("VACUUM")
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return before, path.stat().st_size if path.is_file() else 0
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in PRUNED:
            conn.exec_driver_sql(f"VACUUM (ANALYZE) {table}")
    return 0, 0
