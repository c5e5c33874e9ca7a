"""`funnel import`: a marketer's CSV into a real database, through the command as typed: a SQLite file,
and a PostgreSQL database (a clone of the session's migrated template)."""

from __future__ import annotations

import csv
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from engine import store, tables
from engine.cli_import import register
from engine.database import create_engine_for
from engine.validation import load_funnels
from engine.worker import Worker

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "import"

FUNNEL = """\
id: imported-welcome
name: Welcome for imported leads
entry:
  triggers:
    - event: lead_imported
      where: {funnel: imported-welcome}
stages:
  - id: welcome
    steps:
      - id: mark
        update: {add_tags: [welcomed]}
    on_end: stay
"""


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so the command is called by its name as in `funnel import`
        pass

    register(app)
    return app


def run(*args: str) -> Any:
    return CliRunner().invoke(_app(), ["import", *args])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'funnel.db'}"
    return str(request.getfixturevalue("postgres_url"))


def nothing_written(url: str) -> bool:
    """No SQLite file made, or no lead in the database."""
    if url.startswith("sqlite") and not Path(url.removeprefix("sqlite:///")).exists():
        return True
    return not leads(url)


def leads(url: str) -> dict[str, Any]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return {row.email: row for row in conn.execute(sa.select(tables.leads))}
    finally:
        engine.dispose()


def count(url: str, table: sa.Table) -> int:
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


def test_a_good_file_is_imported_with_attributes_tags_timezone_and_consent(db: str) -> None:
    result = run(str(FIXTURES / "good.csv"), "--database-url", db)
    assert result.exit_code == 0, result.output
    assert "imported 4 new lead(s), updated 0, unchanged 0, skipped 0" in result.stdout
    found = leads(db)
    assert set(found) == {"ann.lee@example.com", "bob@northwind.example", "carla@bayside.example", "dev@example.org"}
    ann = found["ann.lee@example.com"]
    assert ann.attributes == {"first_name": "Ann", "last_name": "Lee", "company": "Acme Packaging", "employees": "240"}
    assert sorted(ann.tags) == ["trade-show", "vip"]
    assert ann.timezone == "Europe/London"
    assert ann.consent_status == "subscribed"  # the default
    assert found["carla@bayside.example"].consent_status == "pending"
    assert found["carla@bayside.example"].attributes["company"] == "Bayside Cafe, Ltd"
    assert found["dev@example.org"].timezone is None


def test_importing_the_same_file_again_changes_nothing(db: str, tmp_path: Path) -> None:
    funnels = tmp_path / "funnels"
    funnels.mkdir()
    (funnels / "imported-welcome.yaml").write_text(FUNNEL)
    args = (str(FIXTURES / "good.csv"), "--database-url", db, "--funnel", "imported-welcome", "--funnels", str(funnels))
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "events recorded: 4" in first.stdout
    before = {email: tuple(row) for email, row in leads(db).items()}
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert "imported 0 new lead(s), updated 0, unchanged 4" in again.stdout
    assert "events recorded: 0" in again.stdout
    assert {email: tuple(row) for email, row in leads(db).items()} == before  # not even updated_at moved
    assert count(db, tables.events) == 4


def test_an_import_into_a_funnel_enrolls_the_leads_through_its_entry_trigger(db: str, tmp_path: Path) -> None:
    funnels = tmp_path / "funnels"
    funnels.mkdir()
    (funnels / "imported-welcome.yaml").write_text(FUNNEL)
    result = run(str(FIXTURES / "good.csv"), "--database-url", db, "--funnel", "imported-welcome",
                 "--funnels", str(funnels))
    assert result.exit_code == 0, result.output
    loaded = load_funnels([funnels], emails_dir=None)
    assert not loaded.errors
    engine = create_engine_for(db)
    try:
        Worker(engine, {f.id: f for f in loaded.funnels}).run_until_idle(datetime.now(UTC))
        with engine.connect() as conn:
            enrolled = conn.execute(
                sa.select(tables.leads.c.email).join(tables.enrollments).where(
                    tables.enrollments.c.funnel_id == "imported-welcome"
                )
            ).scalars().all()
    finally:
        engine.dispose()
    assert sorted(enrolled) == sorted(leads(db))
    assert all("welcomed" in row.tags for row in leads(db).values())


def test_a_funnel_without_an_entry_for_imports_is_refused_before_anything_is_written(
    db: str, tmp_path: Path
) -> None:
    funnels = tmp_path / "funnels"
    funnels.mkdir()
    (funnels / "other.yaml").write_text(FUNNEL.replace("imported-welcome", "other").replace("lead_imported", "signup"))
    result = run(str(FIXTURES / "good.csv"), "--database-url", db, "--funnel", "other", "--funnels", str(funnels))
    assert result.exit_code == 2
    assert "event: lead_imported" in result.stderr and "where: {funnel: other}" in result.stderr
    assert nothing_written(db)


def test_a_file_with_bad_rows_imports_nothing_and_names_every_bad_line(db: str) -> None:
    result = run(str(FIXTURES / "bad.csv"), "--database-url", db)
    assert result.exit_code == 1
    errors = result.stderr
    assert "bad.csv:3: email 'bob@' is not a valid address" in errors
    assert "bad.csv:4: timezone 'Mars/Base' is not an IANA time zone" in errors
    assert "bad.csv:5: email is empty" in errors
    assert "bad.csv:6: consent 'maybe' is not one of subscribed, unsubscribed" in errors
    assert "bad.csv:9: expected 4 fields as in the header, found 3" in errors
    # The row whose quoted field spans lines 7-8 is good, and the good rows are not named.
    assert not any(f"bad.csv:{n}:" in errors for n in (2, 7, 8, 10))
    assert "nothing imported" in errors
    assert nothing_written(db)


def test_skip_bad_rows_imports_the_good_rows_and_reports_the_bad_ones(db: str) -> None:
    result = run(str(FIXTURES / "bad.csv"), "--database-url", db, "--skip-bad-rows")
    assert result.exit_code == 0, result.output
    assert "imported 3 new lead(s), updated 0, unchanged 0, skipped 5 bad row(s)" in result.stdout
    assert "bad.csv:3: email 'bob@' is not a valid address" in result.stderr
    found = leads(db)
    assert set(found) == {"ann@example.com", "erin@example.net", "gina@example.net"}
    assert found["erin@example.net"].attributes["first_name"] == "Erin\non two lines"


def test_more_than_fifty_bad_rows_are_listed_up_to_fifty(db: str, tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_text("email\n" + "".join(f"broken-{i}\n" for i in range(60)))
    result = run(str(path), "--database-url", db)
    assert result.exit_code == 1
    assert result.stderr.count("is not a valid address") == 50
    assert "leads.csv:51:" in result.stderr and "leads.csv:52:" not in result.stderr
    assert "and 10 more" in result.stderr


def test_a_suppressed_address_is_imported_but_stays_unsubscribed(db: str, tmp_path: Path) -> None:
    from engine.database import upgrade

    upgrade(db)
    engine = create_engine_for(db)
    try:
        with engine.begin() as conn:
            store.suppress(conn, "Bob@Northwind.example", "complained")
            store.upsert_lead(conn, "dev@example.org", consent="unsubscribed")
    finally:
        engine.dispose()
    funnels = tmp_path / "funnels"
    funnels.mkdir()
    (funnels / "imported-welcome.yaml").write_text(FUNNEL)
    path = tmp_path / "leads.csv"
    shutil.copy(FIXTURES / "good.csv", path)
    result = run(str(path), "--database-url", db, "--funnel", "imported-welcome", "--funnels", str(funnels))
    assert result.exit_code == 0, result.output
    assert "1 suppressed, kept unsubscribed" in result.stdout
    found = leads(db)
    assert found["bob@northwind.example"].consent_status == "unsubscribed"  # the file said subscribed
    assert found["bob@northwind.example"].attributes["company"] == "Northwind Foods"
    assert found["dev@example.org"].consent_status == "unsubscribed"
    assert found["ann.lee@example.com"].consent_status == "subscribed"
    # Leads who said no are not put into a marketing funnel either.
    assert "events recorded: 2" in result.stdout

    path.write_text("email,consent\nbob@northwind.example,subscribed\ndev@example.org,subscribed\n")
    again = run(str(path), "--database-url", db)
    assert again.exit_code == 0, again.output
    assert "had opted out before: consent kept" in again.stdout
    assert {leads(db)[e].consent_status for e in ("bob@northwind.example", "dev@example.org")} == {"unsubscribed"}


def test_an_existing_lead_is_updated_merging_attributes_and_tags(db: str, tmp_path: Path) -> None:
    first = tmp_path / "first.csv"
    first.write_text("email,company,city,tags\nann@example.com,Acme,Bristol,a;b\n")
    assert run(str(first), "--database-url", db).exit_code == 0
    second = tmp_path / "second.csv"
    second.write_text("email,company,city,tags\nANN@example.com,Acme Ltd,,c\nann@example.com,,,d\n")
    result = run(str(second), "--database-url", db)
    assert result.exit_code == 0, result.output
    assert "imported 0 new lead(s), updated 1" in result.stdout
    assert "1 row(s) repeated an address" in result.stdout
    ann = leads(db)["ann@example.com"]
    assert ann.attributes == {"company": "Acme Ltd", "city": "Bristol"}  # an empty cell keeps what was there
    assert sorted(ann.tags) == ["a", "b", "c", "d"]


def test_a_file_without_an_email_column_is_refused(db: str, tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_text("name,company\nAnn,Acme\n")
    result = run(str(path), "--database-url", db)
    assert result.exit_code == 1
    assert "leads.csv:1: expected an 'email' column in the header, found 'name', 'company'" in result.stderr


def test_ten_thousand_rows_are_imported(db: str, tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "first_name", "company", "tags", "timezone"])
        for i in range(10_000):
            writer.writerow([f"lead{i}@company{i % 50}.example", f"Lead {i}", f"Company {i % 50}", "imported",
                             "Europe/Berlin"])
    result = run(str(path), "--database-url", db)
    assert result.exit_code == 0, result.output
    assert "imported 10000 new lead(s), updated 0, unchanged 0, skipped 0" in result.stdout
    assert "rows/s" in result.stdout
    assert count(db, tables.leads) == 10_000


def test_an_address_in_a_row_goes_through_the_one_normaliser(db: str, tmp_path: Path) -> None:
    from engine.database import upgrade

    upgrade(db)
    engine = create_engine_for(db)
    try:
        with engine.begin() as conn:
            store.upsert_lead(conn, "idn@xn--bcher-kva.example", attributes={"first_name": "Ida"})
            store.suppress(conn, "erased1@example.com", "erased")
    finally:
        engine.dispose()
    path = tmp_path / "leads.csv"
    path.write_text(
        "email,company\n"
        " Idn@Bücher.Example ,Bücher\n"
        "Erased <erased1@example.com>,X\n"
        '"a@example.com, b@example.com",X\n'
        "josé@example.com,X\n"
        "ann@example.test,X\n"
        "  ERASED1@Example.com,X\n",
        encoding="utf-8",
    )
    result = run(str(path), "--database-url", db, "--skip-bad-rows")
    assert result.exit_code == 0, result.output
    assert "imported 1 new lead(s), updated 1, unchanged 0, skipped 4 bad row(s)" in result.stdout
    for line, why in ((3, "display name"), (4, "one address"), (5, "SMTPUTF8"), (6, "special-use")):
        assert f"leads.csv:{line}: email " in result.stderr and why in result.stderr, line
    found = leads(db)
    assert set(found) == {"idn@xn--bcher-kva.example", "erased1@example.com"}
    assert found["idn@xn--bcher-kva.example"].attributes == {"first_name": "Ida", "company": "Bücher"}
    assert found["erased1@example.com"].consent_status == "unsubscribed"  # still on the suppression list



def test_an_import_never_subscribes_a_pending_lead_and_records_every_consent_change(db: str, tmp_path: Path) -> None:
    from engine import consents
    from engine.database import upgrade

    upgrade(db)
    engine = create_engine_for(db)
    try:
        with engine.begin() as conn:
            store.upsert_lead(conn, "pia@example.com", consent="pending")  # a double opt-in under way
            store.upsert_lead(conn, "rex@example.com", consent="subscribed")
    finally:
        engine.dispose()
    path = tmp_path / "leads.csv"
    path.write_text("email,consent\npia@example.com,subscribed\nrex@example.com,bounced\n")
    result = run(str(path), "--database-url", db)
    assert result.exit_code == 0, result.output
    assert "1 not confirmed yet: kept pending" in result.stdout
    found = leads(db)
    assert found["pia@example.com"].consent_status == "pending"
    assert found["rex@example.com"].consent_status == "bounced"
    engine = create_engine_for(db)
    try:
        with engine.connect() as conn:
            history = consents.history(conn, found["rex@example.com"].id)
            untouched = consents.history(conn, found["pia@example.com"].id)
    finally:
        engine.dispose()
    assert [(r["action"], r["source"], r["status_before"], r["status_after"]) for r in history] == [
        ("withdrawn", "import leads.csv", "subscribed", "bounced")
    ]
    assert untouched == []
