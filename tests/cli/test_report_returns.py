"""What came back after the relay's 250, where marketers look: `funnel report` (table, JSON, CSV) counts
each email's hard bounces, soft bounces and complaints as shares of sent and the leads each stage lost to
them, and `funnel map --live` shows those leads as drop-outs of their own. The history is built by the
worker, the mailer and the bounce processor with real reports (tests/bounce_history.py), on SQLite and
PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from engine.cli.main import app
from engine.store.database import create_engine_for
from tests import bounce_history
from tests.cli.test_map import read_page


@pytest.fixture
def history(db_url: str, tmp_path: Path) -> str:
    engine = create_engine_for(db_url)
    try:
        bounce_history.build(engine, tmp_path)
    finally:
        engine.dispose()
    return db_url


def run(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def table(text: str, title: str) -> dict[str, dict[str, str]]:
    """The rows of the rich table under `title`, by their first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    cells = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            break
        if line.startswith(("┃", "│")):
            cells.append([c.strip() for c in line.strip("┃│").split("┃" if "┃" in line else "│")])
    header, *body = cells
    return {row[0]: dict(zip(header, row, strict=True)) for row in body}


def test_report_counts_bounces_and_complaints_per_email_and_the_leads_each_stage_lost(history: str) -> None:
    (guide,) = json.loads(run("report", "--json", "--funnel", "guide", "--database-url", history).output)["funnels"]
    emails = {e["step"]: e for e in guide["emails"]}
    hello, tips = emails["hello"], emails["tips"]
    # hello: seven tried, the sender's refusal `failed` (not sent); of six sent two hard bounces (the
    # relay's own refusal, a report), one soft, one complaint.
    assert (hello["sent"], hello["delivered"], hello["failed"]) == (6, 4, 1)
    assert (hello["bounced"], hello["soft_bounced"], hello["complained"]) == (2, 1, 1)
    assert (hello["hard_bounce_rate"], hello["soft_bounce_rate"], hello["complaint_rate"]) == (0.3333, 0.1667, 0.1667)
    # tips: the two bounced addresses skipped, the first complainer gone; one complaint of four.
    assert (tips["sent"], tips["skipped"], tips["bounced"], tips["complained"]) == (4, 2, 0, 1)
    assert tips["complaint_rate"] == 0.25
    stages = {s["stage"]: s for s in guide["stages"]}
    assert (stages["welcome"]["left_bounced"], stages["welcome"]["left_complained"]) == (2, 1)
    assert (stages["nurture"]["left_bounced"], stages["nurture"]["left_complained"]) == (0, 1)

    text = run("report", "--funnel", "guide", "--database-url", history).output
    returned = table(text, "Bounces and complaints (shares of sent)")
    assert returned["hello"] == {
        "step": "hello", "sent": "6", "hard bounces": "2 (33.3%)", "soft bounces": "1 (16.7%)",
        "complaints": "1 (16.7%)",
    }  # fmt: skip
    assert returned["tips"]["complaints"] == "1 (25.0%)"
    stage_rows = table(text, "Stages")
    assert (stage_rows["welcome"]["left: bounced"], stage_rows["welcome"]["left: complained"]) == ("2", "1")
    assert stage_rows["nurture"]["left: complained"] == "1"

    rows = list(csv.reader(io.StringIO(run("report", "--csv", "--database-url", history).output)))
    figures = {(r[0], r[1], r[2], r[3]): r[4] for r in rows[1:]}
    assert figures[("guide", "email", "hello", "complaint_rate")] == "0.1667"
    assert figures[("guide", "stage", "nurture", "left_complained")] == "1"
    # `news` sent nothing; the complaints about `guide`'s emails made its exit rule fire.
    assert figures[("news", "stage", "reading", "left_complained")] == "2"


def drops(html: str) -> list[dict[str, Any]]:
    _, tagged = read_page(html)
    return [
        {k: t[k] for k in ("stage", "kind", "reason", "after", "leads") if k in t}
        for t in tagged
        if t["tag"] == "li" and "kind" in t
    ]


def test_the_journey_map_shows_bounces_and_complaints_as_drop_outs_of_their_own(history: str, tmp_path: Path) -> None:
    def funnel_map(name: str, *options: str) -> str:
        out = tmp_path / f"{name}.{'md' if options else 'html'}"
        run("map", str(tmp_path / "funnels" / f"{name}.yaml"), "--live", "--emails", str(bounce_history.EMAILS),
            "--database-url", history, "-o", str(out), *options)  # fmt: skip
        return out.read_text()

    html = funnel_map("guide")
    found = sorted((d["kind"], d["reason"], d["after"], d["leads"]) for d in drops(html))
    # The early complainer's exit rule is not counted again as "left": the complaint is where it dropped out.
    assert found == [
        ("bounced", "bounced", "hello", "2"),
        ("complained", "complained", "hello", "1"),
        ("complained", "complained", "tips", "1"),
    ]
    assert "| complained | complained | tips | 1 |" in funnel_map("guide", "--format", "md")
    # A complaint about another funnel's email: this funnel's exit rule fired on the engine's event.
    assert [(d["kind"], d["reason"], d["leads"]) for d in drops(funnel_map("news"))] == [
        ("complained", "complained", "2")
    ]
