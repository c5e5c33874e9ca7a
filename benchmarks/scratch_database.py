"""A fresh, empty PostgreSQL database for one benchmark run, created on the server a `--database-url` names and
dropped afterwards.

The benchmarks load leads with fixed addresses and count what they find, so each run (and each size of the
tick benchmark) needs an empty database of its own; the URL given names the server, and a database on it to
connect to while creating and dropping.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.store.database import create_engine_for  # noqa: E402


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


@contextmanager
def fresh_database(url: str, label: str) -> Iterator[str]:
    """The URL of a new database on `url`'s server, named after `label`; dropped on the way out."""
    admin = create_engine_for(url, isolation_level="AUTOCOMMIT")
    name = f"funnel_bench_{label}_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()
