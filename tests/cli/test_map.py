"""`funnel map` as a marketer types it: the example funnel's journey map written as HTML, Markdown and PNG
(a real headless Chromium), a clear error without a browser, and with `--live` figures that are what the
database holds after a month of the real worker (`funnel demo-month`) on a SQLite file."""

from __future__ import annotations

import re
import shutil
from collections import Counter, defaultdict
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from engine.authoring.validation import load_funnels
from engine.cli.main import app
from engine.mail.templates import Sender, TemplateLibrary, sample_context
from engine.settings import SenderSettings
from engine.store import tables
from engine.store.database import create_engine_for
from engine.views.journey_map.png import find_browser, page_width, png_size
from engine.views.journey_map.sources import read_live
from tests.required import missing

ROOT = Path(__file__).resolve().parent.parent.parent
REACHED_INBOX = ("sending", "sent", "unknown")
NOW = datetime(2026, 11, 2, tzinfo=UTC)


class _Page(HTMLParser):
    """The text a reader sees, and each element's data-* attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tagged: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = {k[5:]: v or "" for k, v in attrs if k.startswith("data-")}
        if data:
            self.tagged.append({"tag": tag, "class": dict(attrs).get("class") or "", **data})

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def read_page(html: str) -> tuple[str, list[dict[str, str]]]:
    page = _Page()
    page.feed(html)
    return " ".join(" ".join(page.text).split()), page.tagged


def expected_subjects() -> dict[str, str]:
    s = SenderSettings()
    library = TemplateLibrary(ROOT / "emails")
    context = sample_context(Sender(s.name, s.postal_address, s.website))
    return {n: library.render(n, context).subject for n in library.names() if n.startswith("lead-magnet/")}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "funnels", tmp_path / "funnels")
    shutil.copytree(ROOT / "emails", tmp_path / "emails")
    return tmp_path


def test_map_writes_html_markdown_and_png_for_the_example_funnel(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if find_browser() is None:
        missing("no chromium binary on PATH (Debian: apt-get install chromium)")
    monkeypatch.chdir(project)  # where the files go by default, and where funnels/ and emails/ are
    for extra in ([], ["--format", "md"], ["--format", "png"]):
        result = CliRunner().invoke(app, ["map", "lead-magnet", *extra])
        assert result.exit_code == 0, result.output
    (example,) = load_funnels([ROOT / "funnels"], emails_dir=None).funnels
    subjects = expected_subjects()
    assert "Welcome to Greenleaf Consulting, Alex. Here's what happens next" in subjects.values()

    text, tagged = read_page((project / "lead-magnet.map.html").read_text(encoding="utf-8"))
    markdown = (project / "lead-magnet.map.md").read_text(encoding="utf-8")
    for stage in example.stages:
        assert stage.journey is not None and stage.journey.question
        assert stage.title in text and stage.journey.question in text
        assert f"**{stage.title}**" in markdown and stage.journey.question in markdown
        assert f'subgraph st_{stage.id}["{stage.title}"]' in markdown
    for subject in subjects.values():
        if "confirm" not in subject:
            assert subject in text
    assert [t["stage"] for t in tagged if t["tag"] == "th" and "stage" in t] == example.stage_ids()
    assert "Fiona, facilities manager" in text and "```mermaid" in markdown

    png = (project / "lead-magnet.map.png").read_bytes()
    width, height = png_size(png)
    assert width == page_width(len(example.stages))
    assert 1200 < height < 6000, "the whole page, not a window's worth"
    assert len(png) > 50_000


def test_png_without_a_browser_says_what_to_install(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = project / "no-browsers-here"
    empty.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("PATH", str(empty))
    result = CliRunner().invoke(app, ["map", "lead-magnet", "--format", "png"])
    assert result.exit_code == 1
    assert "needs a headless browser" in result.output and "apt-get install chromium" in result.output
    assert not (project / "lead-magnet.map.png").exists()


# --------------------------------------------------------------------------------------------------
# --live: the figures are the database's
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Fifty leads over a month through the example funnel: the real worker on a virtual clock, with opens,
    clicks, purchases, unsubscribes, a bounce and calls not booked (seed 2 draws each of them)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('map-month') / 'funnel.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        args = ["demo-month", "--leads", "50", "--days", "30", "--start", "2026-10-01", "--seed", "2"]
        result = CliRunner().invoke(app, [*args, "--database-url", url])
    assert result.exit_code == 0, result.output
    return url


def database_figures(url: str) -> dict[str, Any]:
    """What the map should say, counted here from the rows themselves."""
    e, t, o, ev, g = tables.enrollments, tables.stage_transitions, tables.outbox, tables.events, tables.goals
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            now = Counter(r.stage for r in conn.execute(sa.select(e.c.stage).where(e.c.status == "active")))
            visits = conn.execute(sa.select(t.c.lead_id, t.c.to_stage).where(t.c.to_stage.is_not(None))).all()
            emails = conn.execute(sa.select(o)).all()
            tracked = conn.execute(
                sa.select(ev.c.lead_id, ev.c.name, ev.c.properties).where(
                    ev.c.name.in_(["email_opened", "email_clicked"])
                )
            ).all()
            leaving = conn.execute(sa.select(t).where(t.c.to_stage.is_(None))).all()
            goals = {(r.lead_id, r.at) for r in conn.execute(sa.select(g.c.lead_id, g.c.at))}
    finally:
        engine.dispose()
    reached = {stage: len({lead for lead, s in visits if s == stage}) for _, stage in visits}
    delivered = Counter(m.step for m in emails if m.status == "sent")
    engaged: dict[tuple[str, str], set[int]] = defaultdict(set)
    for lead, name, properties in tracked:
        engaged[(name, properties.get("step"))].add(lead)
    first_bounce: dict[int, Any] = {}
    for m in sorted(emails, key=lambda m: m.id):
        if m.status == "bounced":
            first_bounce.setdefault(m.lead_id, m)
    drops: Counter[tuple[str, str, str]] = Counter((m.stage, "bounced", m.step) for m in first_bounce.values())
    for x in leaving:
        goal_reached = any(lead == x.lead_id and at <= x.at for lead, at in goals)
        if x.lead_id in first_bounce or x.cause_kind == "goal" or (x.cause_kind == "sequence_end" and goal_reached):
            continue  # counted at the bounce; or the journey's end, not a drop-out
        before = [
            m
            for m in emails
            if m.lead_id == x.lead_id and m.stage == x.from_stage and m.status in REACHED_INBOX and m.sent_at <= x.at
        ]
        after = max(before, key=lambda m: (m.sent_at, m.id)).step if before else ""
        drops[(x.from_stage, x.exit_reason, after)] += 1
    return {"now": now, "reached": reached, "delivered": delivered, "engaged": engaged, "drops": drops}


def test_live_figures_are_the_databases(month: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    page, md = tmp_path / "map.html", tmp_path / "map.md"
    for fmt, out in (("html", page), ("md", md)):
        result = CliRunner().invoke(
            app, ["map", "lead-magnet", "--live", "-f", fmt, "-o", str(out), "--database-url", month]
        )
        assert result.exit_code == 0, result.output
    expected = database_figures(month)
    text, tagged = read_page(page.read_text(encoding="utf-8"))

    stages = {t["stage"]: t for t in tagged if t["class"] == "" and "now" in t}
    assert list(stages) == ["inquiry", "comparison", "conversion", "onboarding", "advocacy"]
    assert {s: int(t["now"]) for s, t in stages.items() if int(t["now"])} == dict(expected["now"])
    assert {s: int(t["reached"]) for s, t in stages.items() if int(t["reached"])} == expected["reached"]
    assert stages["inquiry"]["reached"] == "50"

    emails = {t["step"]: t for t in tagged if "step" in t and "delivered" in t}
    assert {step: int(t["delivered"]) for step, t in emails.items()} == {
        s: n for s, n in expected["delivered"].items() if s in emails
    }
    assert set(expected["delivered"]) <= set(emails)
    for step, t in emails.items():
        assert int(t["opened"]) == len(expected["engaged"][("email_opened", step)])
        assert int(t["clicked"]) == len(expected["engaged"][("email_clicked", step)])

    drops = Counter(
        {(t["stage"], t["reason"], t["after"]): int(t["leads"]) for t in _with_stage(tagged) if "kind" in t}
    )
    assert drops == expected["drops"]
    assert {reason for _, reason, _ in drops} >= {"bounced", "unsubscribed", "no-reply"}, "the month has each kind"
    for step, t in emails.items():
        assert int(t["dropped"]) == sum(n for (_, _, after), n in drops.items() if after == step)

    leads = re.search(r"(\d+) leads entered", text)
    assert leads is not None and leads.group(1) == "50"
    markdown = md.read_text(encoding="utf-8")
    assert "| **Leads now** | " + " | ".join(t["now"] for t in stages.values()) + " |" in markdown
    assert "| **Reached** | " + " | ".join(t["reached"] for t in stages.values()) + " |" in markdown


@pytest.mark.postgres
def test_the_live_figures_are_the_same_on_postgresql(month: str, postgres_url: str) -> None:
    """The map's queries on PostgreSQL: the month's rows copied there give the same figures."""
    source, sink = create_engine_for(month), create_engine_for(postgres_url)
    try:
        with source.connect() as read, sink.begin() as write:
            for table in tables.metadata.sorted_tables:
                found = [dict(r._mapping) for r in read.execute(sa.select(table))]
                if found:
                    write.execute(table.insert(), found)
        with source.connect() as a, sink.connect() as b:
            on_sqlite, on_postgres = read_live(a, "lead-magnet", NOW), read_live(b, "lead-magnet", NOW)
    finally:
        source.dispose()
        sink.dispose()
    assert on_sqlite.report is not None and on_sqlite.report.leads == 50
    assert on_postgres.report == on_sqlite.report
    assert sorted(on_postgres.exits, key=repr) == sorted(on_sqlite.exits, key=repr)
    assert {row.reason for row in on_sqlite.exits} >= {"bounced", "unsubscribed", "no-reply"}


def _with_stage(tagged: list[dict[str, str]]) -> list[dict[str, str]]:
    """Drop-off items with the stage of the cell they are in (the nearest drop-off cell before them)."""
    out, stage = [], ""
    for t in tagged:
        if t["tag"] == "td" and "stage" in t:
            stage = t["stage"]
        elif "kind" in t:
            out.append({**t, "stage": stage})
    return out
