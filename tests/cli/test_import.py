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

from engine.authoring.validation import load_funnels
from engine.cli.imports import register
from engine.runtime.worker import Worker
from engine.store import leads as store
from engine.store import tables
from engine.store.database import create_engine_for

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
    result = run(
        str(FIXTURES / "good.csv"), "--database-url", db, "--funnel", "imported-welcome", "--funnels", str(funnels)
    )
    assert result.exit_code == 0, result.output
    loaded = load_funnels([funnels], emails_dir=None)
    assert not loaded.errors
    engine = create_engine_for(db)
    try:
        Worker(engine, {f.id: f for f in loaded.funnels}).run_until_idle(datetime.now(UTC))
        with engine.connect() as conn:
            enrolled = (
                conn.execute(
                    sa.select(tables.leads.c.email)
                    .join(tables.enrollments)
                    .where(tables.enrollments.c.funnel_id == "imported-welcome")
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert sorted(enrolled) == sorted(leads(db))
    assert all("welcomed" in row.tags for row in leads(db).values())


def test_a_funnel_without_an_entry_for_imports_is_refused_before_anything_is_written(db: str, tmp_path: Path) -> None:
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
    from engine.store.database import upgrade

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


def test_a_language_column_sets_each_leads_language_in_canonical_case(db: str, tmp_path: Path) -> None:
    first = tmp_path / "first.csv"
    first.write_text("email,language\nann@example.com,FR_ca\nbob@example.com,de\ncy@example.com,\n")
    result = run(str(first), "--database-url", db)
    assert result.exit_code == 0, result.output
    assert {e: r.language for e, r in leads(db).items()} == {
        "ann@example.com": "fr-CA",
        "bob@example.com": "de",
        "cy@example.com": None,
    }
    assert "language" not in leads(db)["ann@example.com"].attributes  # a lead's field, not an attribute
    # A second file: a new language changes the lead, an empty cell keeps the one it has.
    second = tmp_path / "second.csv"
    second.write_text("email,language\nann@example.com,\nbob@example.com,sw\ncy@example.com,\n")
    again = run(str(second), "--database-url", db)
    assert again.exit_code == 0, again.output
    assert "updated 1, unchanged 2" in again.stdout
    assert {e: r.language for e, r in leads(db).items()}["ann@example.com"] == "fr-CA"
    assert leads(db)["bob@example.com"].language == "sw"


def test_a_bad_language_is_a_bad_row_named_with_what_was_found(db: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("email,language\nann@example.com,de\nbob@example.com,english\n")
    result = run(str(bad), "--database-url", db)
    assert result.exit_code != 0
    assert "bad.csv:3: language: expected a language tag such as 'de' or 'fr-CA', found 'english'" in result.output
    assert nothing_written(db)


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
            writer.writerow(
                [f"lead{i}@company{i % 50}.example", f"Lead {i}", f"Company {i % 50}", "imported", "Europe/Berlin"]
            )
    result = run(str(path), "--database-url", db)
    assert result.exit_code == 0, result.output
    assert "imported 10000 new lead(s), updated 0, unchanged 0, skipped 0" in result.stdout
    assert "rows/s" in result.stdout
    assert count(db, tables.leads) == 10_000


def test_an_address_in_a_row_goes_through_the_one_normaliser(db: str, tmp_path: Path) -> None:
    from engine.store.database import upgrade

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
    from engine.store import consents
    from engine.store.database import upgrade

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


# --------------------------------------------------------------------------------------------------
# Whole or nothing: what the database cannot store is a bad row, and a failure while writing leaves
# nothing behind
# --------------------------------------------------------------------------------------------------

ROWS = 2_499


def numbered_file(path: Path, change: dict[int, list[str]] | None = None) -> list[str]:
    """A file of `ROWS` leads (row n on line n + 1); `change` replaces some rows. Returns the addresses."""
    emails = [f"lead{n}@example.com" for n in range(1, ROWS + 1)]
    with path.open("w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "company", "tags"])
        for n, email in enumerate(emails, start=1):
            writer.writerow((change or {}).get(n, [email, f"Company {n}", "imported"]))
    return emails


def no_address_printed(output: str, emails: list[str]) -> bool:
    return "@" not in output and not any(e.split("@")[0] in output for e in emails)


def test_a_nul_on_row_2200_is_a_bad_row_and_nothing_is_imported(db: str, tmp_path: Path) -> None:
    # PostgreSQL's text cannot hold NUL: it once committed 2,000 rows and then failed with a traceback.
    path = tmp_path / "leads.csv"
    numbered_file(path, {2200: ["lead2200@example.com", "Acme\x00Ltd", "imported"]})
    result = run(str(path), "--database-url", db)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.splitlines() == [
        f"{path}:2201: column 'company': expected text without NUL characters or lone surrogates, found '\\x00'",
        "nothing imported: fix the 1 bad row(s), or pass --skip-bad-rows",
    ]
    assert nothing_written(db)

    skipped = run(str(path), "--database-url", db, "--skip-bad-rows")
    assert skipped.exit_code == 0, skipped.output
    assert f"imported {ROWS - 1} new lead(s), updated 0, unchanged 0, skipped 1 bad row(s)" in skipped.stdout
    assert count(db, tables.leads) == ROWS - 1


@pytest.mark.parametrize(
    ("cell", "column"),
    [("\x00", "tags"), ("a\x00", "company")],
    ids=["nul-in-a-tag", "nul-in-an-attribute"],
)
def test_what_the_api_refuses_the_import_refuses(db: str, tmp_path: Path, cell: str, column: str) -> None:
    path = tmp_path / "leads.csv"
    row = ["ann@example.com", "Acme", "vip"]
    row[("email", "company", "tags").index(column)] = cell
    path.write_text("email,company,tags\n" + ",".join(row) + "\n", encoding="utf-8")
    result = run(str(path), "--database-url", db)
    assert result.exit_code == 1, result.output
    assert f"leads.csv:2: column '{column}': expected text without NUL" in result.stderr
    assert nothing_written(db)


def test_a_nul_in_the_header_is_refused_at_line_1(db: str, tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_text("email,comp\x00any\nann@example.com,Acme\n", encoding="utf-8")
    result = run(str(path), "--database-url", db)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}:1: column 2 of the header: expected text without NUL")
    assert nothing_written(db)


def _refuse_an_address(url: str, email: str) -> None:
    """A trigger that makes the database refuse one lead's insert: a failure in the middle of a file."""
    from engine.store.database import upgrade

    upgrade(url)
    engine = create_engine_for(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql(
                    "CREATE TRIGGER refuse_one BEFORE INSERT ON leads"
                    f" WHEN NEW.email = '{email}' BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
                )
            else:
                conn.exec_driver_sql(
                    "CREATE FUNCTION refuse_one() RETURNS trigger AS $$ BEGIN"
                    f" IF NEW.email = '{email}' THEN RAISE EXCEPTION 'refused by a test trigger'; END IF;"
                    " RETURN NEW; END $$ LANGUAGE plpgsql"
                )
                conn.exec_driver_sql(
                    "CREATE TRIGGER refuse_one BEFORE INSERT ON leads FOR EACH ROW EXECUTE FUNCTION refuse_one()"
                )
    finally:
        engine.dispose()


@pytest.mark.parametrize("skip_bad_rows", [False, True], ids=["checked-first", "skip-bad-rows"])
def test_a_database_failure_in_the_middle_of_a_file_leaves_nothing_and_says_so_in_one_line(
    db: str, tmp_path: Path, skip_bad_rows: bool
) -> None:
    path = tmp_path / "leads.csv"
    emails = numbered_file(path)
    _refuse_an_address(db, "lead2200@example.com")
    result = run(str(path), "--database-url", db, *(["--skip-bad-rows"] if skip_bad_rows else []))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{path}: nothing imported: the database refused the rows of lines 2002 to 2500: ")
    assert "refused by a test trigger" in lines[0]
    assert no_address_printed(result.output, emails), result.output
    assert count(db, tables.leads) == 0


def test_bytes_that_are_not_utf8_are_named_at_their_own_line(db: str, tmp_path: Path) -> None:
    # The decoder reads the file 8 KB ahead: an error used to be named at the line being read then.
    path = tmp_path / "leads.csv"
    emails = numbered_file(path)
    lines = path.read_bytes().split(b"\n")
    lines[300] = lines[300].replace(b"Company", b"Caf\xe9")  # Latin-1, on line 301
    lines[302] = lines[302].replace(b"imported", b"\xed\xa0\x80")  # a surrogate in UTF-8 form, on line 303
    path.write_bytes(b"\n".join(lines))
    result = run(str(path), "--database-url", db)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"{path}:301: column 'company': bytes that are not UTF-8 (0xe9); save the file as UTF-8",
        f"{path}:303: column 'tags': bytes that are not UTF-8 (0xed 0xa0 0x80); save the file as UTF-8",
        "nothing imported: fix the 2 bad row(s), or pass --skip-bad-rows",
    ]
    assert nothing_written(db)
    # Reading goes on after them: every other row is imported with --skip-bad-rows.
    skipped = run(str(path), "--database-url", db, "--skip-bad-rows")
    assert skipped.exit_code == 0, skipped.output
    assert count(db, tables.leads) == len(emails) - 2


def test_bytes_that_are_not_utf8_in_a_field_spanning_lines_are_named_at_their_line(tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_bytes(b'email,notes\nann@example.com,"one\ntwo\nthr\xffee"\nbob@example.com,x\n')
    result = run(str(path), "--database-url", f"sqlite:///{tmp_path / 'funnel.db'}")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"{path}:4: column 'notes': bytes that are not UTF-8 (0xff); save the file as UTF-8"
    )


def test_bytes_that_are_not_utf8_in_the_header_are_named_at_line_1(tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_bytes(b"email,soci\xe9t\xe9\nann@example.com,x\n")
    result = run(str(path), "--database-url", f"sqlite:///{tmp_path / 'funnel.db'}")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"{path}:1: column 2 of the header: bytes that are not UTF-8 (0xe9); save the file as UTF-8"
    )
