"""`funnel report` and `funnel map` by language: `--language` keeps the leads of one language (`fr` covers
`fr-CA`; a lead without one reads the funnel's default), the report counts each email sent per language
(`outbox.language`), and the map marks the languages each email is written in. On a month of the example
funnel (`funnel demo-month`) whose leads are given languages here, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from engine.cli.main import app
from engine.store import tables
from engine.store.database import create_engine_for

ROOT = Path(__file__).resolve().parent.parent.parent
LEADS = 60
HANDED_OVER = ("sending", "sent", "bounced", "unknown")
# Lead i (by id) speaks LANGUAGES[i % 3]; the email it got is in WRITTEN_IN of that.
LANGUAGES = ("de", "fr-CA", None)
WRITTEN_IN = {"de": "de", "fr-CA": "fr", None: "en-GB"}


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('languages') / 'funnel.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        result = run("demo-month", "--leads", str(LEADS), "--start", "2026-10-01", "--seed", "3", "--database-url", url)
    assert result.exit_code == 0, result.output
    engine = create_engine_for(url)
    try:
        with engine.begin() as conn:
            ids = conn.execute(sa.select(tables.leads.c.id).order_by(tables.leads.c.id)).scalars().all()
            for i, lead_id in enumerate(ids):
                language = LANGUAGES[i % 3]
                conn.execute(sa.update(tables.leads).where(tables.leads.c.id == lead_id).values(language=language))
                conn.execute(
                    sa.update(tables.outbox)
                    .where(tables.outbox.c.lead_id == lead_id)
                    .values(language=WRITTEN_IN[language])
                )
    finally:
        engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def month_on(request: pytest.FixtureRequest, month: str) -> str:
    if request.param == "sqlite":
        return month
    target: str = request.getfixturevalue("postgres_url")
    source, sink = create_engine_for(month), create_engine_for(target)
    try:
        with source.connect() as read, sink.begin() as write:
            for table in tables.metadata.sorted_tables:
                found = [dict(r._mapping) for r in read.execute(sa.select(table))]
                if found:
                    write.execute(table.insert(), found)
    finally:
        source.dispose()
        sink.dispose()
    return target


def rows(url: str, table: sa.Table) -> list[dict[str, Any]]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(table))]
    finally:
        engine.dispose()


def report(url: str, *args: str) -> dict[str, Any]:
    result = run("report", "--json", "--database-url", url, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_report_by_language_counts_the_leads_of_that_language(month_on: str) -> None:
    language_of = {lead["id"]: lead["language"] for lead in rows(month_on, tables.leads)}
    entered = Counter(language_of[e["lead_id"]] for e in rows(month_on, tables.enrollments))
    assert entered["de"] and entered["fr-CA"] and entered[None]
    for given, counted in (("de", ["de"]), ("fr", ["fr-CA"]), ("FR_ca", ["fr-CA"]), ("en-GB", [None])):
        (funnel,) = report(month_on, "--funnel", "lead-magnet", "--language", given)["funnels"]
        assert funnel["leads"] == sum(entered[c] for c in counted), given
        assert sum(s["now"] for s in funnel["stages"]) + sum(funnel["exited"].values()) == funnel["leads"]
        deliver = next(e for e in funnel["emails"] if e["step"] == "deliver-report")
        assert deliver["sent_by_language"] == {WRITTEN_IN[counted[0]]: deliver["sent"]}
    # Without the funnel its default is unknown: a lead without a language is no English lead.
    assert report(month_on, "--language", "en")["funnels"] == []


def test_report_counts_each_email_sent_per_language(month_on: str) -> None:
    expected: Counter[tuple[str, str]] = Counter(
        (o["step"], o["language"]) for o in rows(month_on, tables.outbox) if o["status"] in HANDED_OVER
    )
    (funnel,) = report(month_on)["funnels"]
    found = Counter({(e["step"], lang): n for e in funnel["emails"] for lang, n in e["sent_by_language"].items()})
    assert found == expected
    for e in funnel["emails"]:
        assert sum(e["sent_by_language"].values()) == e["sent"]


def test_report_table_and_csv_show_the_languages(month: str) -> None:
    table = run("report", "--database-url", month, "--funnel", "lead-magnet", "--language", "de").output
    assert "lead-magnet: " in table and ", in de" in table and "Sent per language" in table
    csv_text = run("report", "--csv", "--database-url", month).output
    assert "lead-magnet,email,deliver-report,sent_by_language.fr," in csv_text


def test_a_language_that_is_no_tag_is_refused(month: str) -> None:
    result = run("report", "--database-url", month, "--language", "deutsch")
    assert result.exit_code == 2 and "--language: expected a language tag" in " ".join(result.output.split())


def test_the_map_marks_the_languages_each_email_is_written_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(ROOT / "funnels", tmp_path / "funnels")
    shutil.copytree(ROOT / "emails", tmp_path / "emails")
    monkeypatch.chdir(tmp_path)
    md = run("map", "lead-magnet", "-f", "md", "-o", "-").output
    rows_of = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "[en-GB de fr]" in rows_of["deliver-report"]
    assert "[en-GB ~~de~~ ~~fr~~]" in rows_of["case-study-cafe"]
    # A German translation of the café case study is marked at once, in Markdown as in HTML.
    shutil.copy(tmp_path / "emails/lead-magnet/case-study-cafe.md", tmp_path / "emails/lead-magnet/de/")
    md = run("map", "lead-magnet", "-f", "md", "-o", "-").output
    assert "[en-GB de ~~fr~~]" in next(line for line in md.splitlines() if line.startswith("| case-study-cafe "))
    html = run("map", "lead-magnet", "-o", "-").output
    assert 'data-step="case-study-cafe"' in html
    cafe = html[html.index('data-step="case-study-cafe"') :]
    cafe = cafe[: cafe.index("data-step=", 10)]  # up to the next email
    assert 'data-languages="en-GB de"' in cafe and '<span class="lang missing" title="no fr translation">fr' in cafe


def test_the_live_map_of_one_language(month: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert run("map", "lead-magnet", "--language", "de", "-o", "-").exit_code == 2
    html = run("map", "lead-magnet", "--live", "--language", "de", "-o", "-", "--database-url", month).output
    (funnel,) = report(month, "--funnel", "lead-magnet", "--language", "de")["funnels"]
    assert 'data-language="de"' in html and f'data-leads="{funnel["leads"]}"' in html
