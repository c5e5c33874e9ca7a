"""Imports of hostile CSV files through `funnel import`, on SQLite and on PostgreSQL.

Hypothesis writes files holding NUL characters, bytes that are not UTF-8 (sequences no decoder takes,
and lone surrogates written with `surrogateescape`), fields longer than the CSV parser reads, and
addresses a trigger makes the database refuse in the middle of the file. Each goes through the command
(in this process, then a few through `python -m engine.cli import` itself), checked and with
`--skip-bad-rows`. Whatever the file, the import is whole or nothing: a refused file leaves no lead
behind, an accepted one leaves every good row; each bad row is named at the line that holds its bad
bytes; a database failure is one line naming the rows being written, with no traceback and no address.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from engine.cli.main import app
from engine.store import tables
from engine.store.database import create_engine_for, upgrade
from tests.faults.conftest import size
from tests.faults.fuzz_inputs import CSV_FIELD_LIMIT, TRIP, CsvFile, CsvRow, csv_files
from tests.faults.tally import Tally

Report = Callable[[Tally], None]
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]


def refuse_trips(url: str) -> None:
    """A trigger refusing every lead whose address starts with `TRIP`: the database failing mid-file."""
    engine = create_engine_for(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql(
                    f"CREATE TRIGGER refuse_trips BEFORE INSERT ON leads WHEN NEW.email LIKE '{TRIP}%'"
                    " BEGIN SELECT RAISE(ABORT, 'refused by the fault scenario'); END"
                )
            else:
                conn.exec_driver_sql(  # %% is psycopg's way of writing %
                    "CREATE FUNCTION refuse_trips() RETURNS trigger AS $$ BEGIN"
                    f" IF NEW.email LIKE '{TRIP}%%' THEN RAISE EXCEPTION 'refused by the fault scenario'; END IF;"
                    " RETURN NEW; END $$ LANGUAGE plpgsql"
                )
                conn.exec_driver_sql(
                    "CREATE TRIGGER refuse_trips BEFORE INSERT ON leads FOR EACH ROW EXECUTE FUNCTION refuse_trips()"
                )
    finally:
        engine.dispose()


@pytest.fixture
def database(db_url: str) -> Iterator[sa.Engine]:
    upgrade(db_url)
    refuse_trips(db_url)
    engine = create_engine_for(db_url)
    yield engine
    engine.dispose()


def leads_of(engine: sa.Engine, prefix: str) -> dict[str, dict[str, Any]]:
    """The leads of one example (their addresses hold its prefix), with their attributes."""
    leads = tables.leads.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(leads.email, leads.attributes).where(leads.email.like(f"%-{prefix}-%")))
        return {email: dict(attributes) for email, attributes in rows}


def expected_attributes(row: CsvRow) -> dict[str, str]:
    """A good row's attributes as the import keeps them (its cells as UTF-8, trimmed, empty ones left out)."""
    values = {}
    for name, cell in zip(("company", "notes"), row.cells[1:3], strict=True):
        text = cell.encode("utf-8", "surrogateescape").decode("utf-8").strip()
        if text:
            values[name] = text
    return values


@dataclass
class Outcome:
    """What the scenario found, over every example of one backend."""

    files: Counter[str] = field(default_factory=Counter)
    faults: int = 0
    expected: int = 0  # good rows of files that must be imported
    delivered: int = 0  # of those, found with the attributes of their row
    strays: int = 0  # leads of refused files, or of bad rows: a half-applied import
    kept: dict[str, tuple[CsvFile, str, bool]] = field(default_factory=dict)  # one file per kind, for the CLI


def check(
    engine: sa.Engine, url: str, file: CsvFile, prefix: str, skip: bool, path: Path, exit_code: int, stderr: str
) -> tuple[str, int]:
    """Assert what `funnel import` must have done with this file; returns (what it did, rows expected)."""
    lines, bad_lines = file.lines(prefix), file.bad_lines(prefix)
    stop = file.stops_at()
    read = [row for row in file.rows if stop is None or row.number <= stop.number]  # nothing after it is read
    bad = [(row, bad_lines[row.number]) for row in read if row.number in bad_lines]
    trips = [row for row in read if row.cells[0].startswith(TRIP) and row.number not in bad_lines]
    found = leads_of(engine, prefix)
    printed = stderr.splitlines()
    where = f"{file.how}, {'--skip-bad-rows' if skip else 'checked'}: exit {exit_code}, stderr {stderr[:600]!r}"
    assert "Traceback" not in stderr, where

    def refused(kind: str) -> tuple[str, int]:
        assert exit_code == 1, where
        assert found == {}, f"{len(found)} lead(s) of a refused file were written: {where}"
        return kind, 0

    named = [int(m.group(1)) for line in printed if (m := re.match(rf"{re.escape(str(path))}:(\d+): ", line))]
    if file.header_fault is not None:
        assert len(printed) == 1 and printed[0].startswith(f"{path}:1: column 2 of the header: "), where
        return refused("header")
    if skip and stop is not None:
        assert len(printed) == 1, where
        assert printed[0].startswith(f"{path}:{lines[stop.number]}: cannot parse the row (a field longer"), where
        return refused("unreadable")
    if bad and not skip:
        assert named == [line for _, line in bad][:50], where
        for (row, _), text in zip(bad, printed, strict=False):
            if row.fault and row.fault.startswith("NUL"):
                assert "expected text without NUL characters" in text, where
            elif row.fault and row.fault.startswith("huge"):
                assert f"a field longer than {CSV_FIELD_LIMIT:,} characters" in text, where
            else:
                assert "bytes that are not UTF-8" in text and "save the file as UTF-8" in text, where
        assert printed[-1].startswith("nothing imported: fix the"), where
        return refused("bad rows")
    if trips:
        assert len(printed) == 1, where
        failure = re.match(
            rf"{re.escape(str(path))}: nothing imported: the database refused the rows of lines (\d+) to (\d+): ",
            printed[0],
        )
        assert failure is not None, where
        assert int(failure.group(1)) <= lines[trips[0].number] <= int(failure.group(2)), where
        assert "@" not in printed[0], where
        return refused("database failure")
    assert exit_code == 0, where
    assert named == [line for _, line in bad][:50], where
    good = [row for row in file.rows if row.number not in bad_lines]
    stray = set(found) - {row.address(prefix) for row in good}
    assert not stray, f"bad rows were imported: {stray}: {where}"
    for row in good:
        assert found.get(row.address(prefix)) == expected_attributes(row), where
    return ("imported with bad rows skipped" if bad else "imported whole"), len(good)


def run_import(path: Path, url: str, skip: bool) -> tuple[int, str]:
    args = ["import", str(path), "--database-url", url, *(["--skip-bad-rows"] if skip else [])]
    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


def test_imports_of_hostile_files_are_whole_or_nothing(
    database: sa.Engine, db_url: str, tmp_path: Path, fault_report: Report
) -> None:
    outcome = Outcome()
    examples = iter(range(10**9))
    path = tmp_path / "leads.csv"
    started = time.perf_counter()

    @settings(max_examples=size(40, 600), deadline=None, suppress_health_check=SLOW)
    @given(file=csv_files(), skip=st.booleans())
    # Row 2,200 of 2,499 held a NUL: 2,000 rows went in on PostgreSQL before a DataError.
    @example(
        file=CsvFile(
            tuple(
                CsvRow(n, (f"lead-{{p}}-{n}@example.com", "Acme\x00Ltd" if n == 2200 else "Acme", "", "a"),
                       "NUL in company" if n == 2200 else None)
                for n in range(1, 2500)
            ),
            bom=False, crlf=False, header_fault=None,
        ),
        skip=False,
    )  # fmt: skip
    @example(
        file=CsvFile(
            tuple(
                CsvRow(n, (f"{TRIP if n == 2200 else 'lead-'}{{p}}-{n}@example.com", "Acme", "", ""),
                       "trip: the database refuses it" if n == 2200 else None)
                for n in range(1, 2500)
            ),
            bom=False, crlf=True, header_fault=None,
        ),
        skip=True,
    )  # fmt: skip
    def scenario(file: CsvFile, skip: bool) -> None:
        prefix = f"x{next(examples)}"
        path.write_bytes(file.content(prefix))
        exit_code, stderr = run_import(path, db_url, skip)
        kind, expected = check(database, db_url, file, prefix, skip, path, exit_code, stderr)
        outcome.files[kind] += 1
        outcome.faults += sum(1 for row in file.rows if row.fault) + (file.header_fault is not None)
        outcome.expected += expected
        found = leads_of(database, prefix)
        outcome.delivered += len(found) if expected else 0
        outcome.strays += 0 if expected else len(found)
        outcome.kept.setdefault(kind, (file, prefix, skip))

    scenario()
    elapsed = time.perf_counter() - started

    # The command itself, once per kind of outcome: the same exit status and lines, no traceback.
    for kind, (file, prefix, skip) in outcome.kept.items():
        again = f"{prefix}cli"
        command_path = tmp_path / f"{kind.replace(' ', '-')}.csv"
        command_path.write_bytes(file.content(again))
        done = subprocess.run(
            [sys.executable, "-m", "engine.cli", "import", str(command_path), "--database-url", db_url,
             *(["--skip-bad-rows"] if skip else [])],
            cwd=tmp_path, capture_output=True, timeout=120,
        )  # fmt: skip
        stderr = done.stderr.decode("utf-8", "replace")
        assert check(database, db_url, file, again, skip, command_path, done.returncode, stderr)[0] == kind

    with database.connect() as conn:
        leads = int(conn.execute(sa.select(sa.func.count()).select_from(tables.leads)).scalar_one())
    tally = Tally(
        scenario=f"import with bad bytes ({database.dialect.name})",
        faults=outcome.faults,
        leads=leads,
        expected=outcome.expected,
        delivered=outcome.delivered,
        lost=outcome.expected - outcome.delivered,
        strays=outcome.strays,
    )
    shown = ", ".join(f"{n} {kind}" for kind, n in sorted(outcome.files.items()))
    tally.notes.append(
        f"{outcome.files.total()} files in {elapsed:.1f} s: {shown}; 0 half-applied, every bad line named where"
        f" its bytes are; `python -m engine.cli import` on {len(outcome.kept)} of them: same lines, no traceback"
    )
    fault_report(tally)
    assert tally.clean and tally.lost == 0
