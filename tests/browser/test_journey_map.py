"""The customer journey map in Chromium: the page `funnel map` writes for the example funnel shows every
stage, every question and every email subject, with its own style and without fetching anything; the
dashboard's map needs a sign-in, is linked from the overview, and shows the database's figures under
the dashboard's strict Content-Security-Policy (a refused style would be a console error)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from engine.authoring.validation import load_funnels
from engine.cli.main import app
from engine.store import leads as store
from engine.store import tables
from tests.browser.conftest import Dashboard, Watched, sign_in
from tests.cli.test_map import expected_subjects

ROOT = Path(__file__).resolve().parents[2]
ACCENT = "rgb(34, 113, 177)"  # the map's stage headers: its inline style sheet was applied


def test_the_example_map_shows_every_stage_question_and_subject(
    chromium: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, screenshot: Callable[[Any, str], Path]
) -> None:
    monkeypatch.chdir(ROOT)
    written = tmp_path / "lead-magnet.map.html"
    result = CliRunner().invoke(app, ["map", "lead-magnet", "--out", str(written)])
    assert result.exit_code == 0, result.output
    (example,) = load_funnels([ROOT / "funnels"], emails_dir=None).funnels

    context = chromium.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(written.as_uri())
        shown = " ".join(page.inner_text("body").split())
        headers = [h.get_attribute("data-stage") for h in page.query_selector_all("table.map thead th[data-stage]")]
        colour = page.eval_on_selector("table.map thead th[data-stage]", "e => getComputedStyle(e).backgroundColor")
        screenshot(page, "journey-map")
    finally:
        context.close()
    assert errors == []
    assert requests == [written.as_uri()], "self-contained: nothing fetched but the page"
    assert colour == ACCENT
    assert headers == example.stage_ids()
    for stage in example.stages:
        assert stage.journey is not None and stage.journey.question is not None
        assert stage.title in shown and stage.journey.question in shown
    subjects = [s for name, s in expected_subjects().items() if not name.startswith("forms/")]
    assert len(subjects) == 14  # 13 emails, one with a second subject line under test
    for subject in subjects:
        assert subject in shown


def test_the_dashboard_map_shows_the_database_figures(
    ops: Dashboard, browser_page: Watched, screenshot: Callable[[Any, str], Path]
) -> None:
    for address, names in {
        "ana@example.com": ("signed_up",),
        "ben@example.com": ("signed_up", "pricing_viewed"),
        "cai@example.com": ("signed_up", "pricing_viewed", "purchase_completed"),
        "dee@example.com": ("signed_up",),
    }.items():
        ops.lead(address, *names)
    # Dee stops the series from the preference page: she leaves the funnel from inquiry.
    at = ops.clock() + timedelta(minutes=5)
    with ops.engine.begin() as conn:
        dee = store.find_lead_id(conn, "dee@example.com")
        assert dee is not None
        left = store.NewEvent("t-left", dee, "funnel_unsubscribed", at, {"funnel": "trial"})
        store.record_events(conn, [left], now=at)
    ops.worker.run_until_idle(at)
    with ops.engine.connect() as conn:
        e, t = tables.enrollments, tables.stage_transitions
        now = dict(
            conn.execute(sa.select(e.c.stage, sa.func.count()).where(e.c.status == "active").group_by(e.c.stage)).all()
        )
        reached = Counter(
            stage
            for _, stage in conn.execute(
                sa.select(t.c.lead_id, t.c.to_stage).where(t.c.to_stage.is_not(None)).distinct()
            )
        )
        exits = Counter((r.from_stage, r.exit_reason) for r in conn.execute(sa.select(t).where(t.c.to_stage.is_(None))))
    assert now == {"inquiry": 1, "comparison": 1, "conversion": 1} and exits == {("inquiry", "unsubscribed"): 1}

    page = browser_page.page
    page.goto("/ops/funnels/trial/map")
    assert "/ops/login?next=" in page.url, "the map is behind the sign-in"
    sign_in(page, "/ops/")
    page.click("section[data-funnel=trial] a.map-link")
    page.wait_for_selector("table.map")
    assert page.url.endswith("/ops/funnels/trial/map")
    figures = {
        td.get_attribute("data-stage"): (int(td.get_attribute("data-now")), int(td.get_attribute("data-reached")))
        for td in page.query_selector_all("tr.figures td[data-stage]")
    }
    assert list(figures) == ["inquiry", "comparison", "conversion"]
    assert figures == {stage: (now.get(stage, 0), reached[stage]) for stage in figures}
    drops = Counter(
        (li.get_attribute("data-kind"), li.get_attribute("data-reason"))
        for li in page.query_selector_all("tr.drop-offs li[data-kind]")
    )
    assert drops == Counter({("unsubscribed", reason): n for (_, reason), n in exits.items()})
    leads = page.get_attribute(".facts [data-leads]", "data-leads")
    assert leads == "4"
    colour = page.eval_on_selector("table.map thead th[data-stage]", "e => getComputedStyle(e).backgroundColor")
    assert colour == ACCENT, "the style sheet's hash is in the page's Content-Security-Policy"
    assert page.query_selector("script") is None
    screenshot(page, "dashboard-journey-map")

    missing = page.request.get("/ops/funnels/no-such-funnel/map")
    assert missing.status == 404


EXPERIMENTS = """\
id: ab
name: Experiments
entry:
  triggers:
    - event: signed_up
stages:
  - id: nurture
    steps:
      - id: welcome
        send: drip/welcome
        experiment:
          id: subject
          arms:
            - {id: plain}
            - {id: teaser, send: drip/teaser}
          metric: {click: "*", within: 3d}
          decide: {min_per_arm: 100, promote: manual}
      - id: pace
        split:
          id: nurture-pace
          arms:
            - {id: weekly, goto: weekly-wait, weight: 2}
            - {id: daily, goto: daily-tip}
            - {id: none, holdout: true, goto: summary}
          metric: {event: purchase_completed, within: 30d}
          decide: {min_per_arm: 100, promote: manual}
      - {id: weekly-wait, wait: 7d}
      - {id: weekly-tip, send: drip/weekly}
      - {id: daily-tip, send: drip/daily}
      - {id: summary, send: drip/summary}
    on_end: stay
"""


def test_the_dashboard_map_marks_experiments_with_each_arms_leads_and_the_decision(
    ops: Dashboard, browser_page: Watched, screenshot: Callable[[Any, str], Path]
) -> None:
    from engine.core.definition import Funnel
    from engine.core.yamlfile import load_yaml_text
    from engine.runtime.worker import Worker
    from engine.store import experiment_decisions

    ab = Funnel.model_validate(load_yaml_text(EXPERIMENTS))
    worker = Worker(ops.engine, {ab.id: ab})
    at = ops.clock()
    worker.publish(at)
    with ops.engine.begin() as conn:
        for i in range(16):
            lead = store.upsert_lead(conn, f"ab{i}@example.com", now=at)
            store.record_events(conn, [store.NewEvent(f"ab-{i}", lead, "signed_up", at)], now=at)
    worker.run_until_idle(at)
    with ops.engine.begin() as conn:
        assert experiment_decisions.record(conn, "ab", "subject", "teaser", "manual", at, "olivia", "brand voice", {})
        ev = tables.events
        rows = conn.execute(sa.select(ev.c.properties).where(ev.c.name == "experiment_assigned")).scalars().all()
    assigned = Counter((p["experiment"], p["arm"]) for p in rows)
    assert sum(assigned.values()) == 32 and len(assigned) == 5  # every lead in both; every arm has some

    page = browser_page.page
    sign_in(page, "/ops/")
    page.goto("/ops/funnels/ab/map")
    page.wait_for_selector("tr.experiments")
    shown = {
        (e.get_attribute("data-experiment"), li.get_attribute("data-arm")): int(li.get_attribute("data-leads"))
        for e in page.query_selector_all("tr.experiments div.experiment")
        for li in e.query_selector_all("li[data-arm]")
    }
    assert shown == {key: assigned[key] for key in shown} and set(shown) == set(assigned)
    split = page.query_selector("div.experiment[data-experiment=nurture-pace]")
    assert split is not None and split.get_attribute("data-type") == "split"
    arms = {
        li.get_attribute("data-arm"): (li.get_attribute("data-share"), li.get_attribute("data-holdout"))
        for li in split.query_selector_all("li[data-arm]")
    }
    assert arms == {"weekly": ("0.5000", "false"), "daily": ("0.2500", "false"), "none": ("0.2500", "true")}
    assert "Not a branch" in split.inner_text()
    variant = page.query_selector("div.experiment[data-experiment=subject]")
    assert variant is not None and variant.get_attribute("data-winner") == "teaser"
    assert "decided (manual)" in variant.inner_text() and "new leads get teaser" in variant.inner_text()
    card = {
        li.get_attribute("data-arm"): li.get_attribute("data-leads")
        for li in page.query_selector_all(".email[data-step=welcome] li[data-arm]")
    }
    assert card == {arm: str(assigned[("subject", arm)]) for arm in ("plain", "teaser")}
    colour = page.eval_on_selector("div.experiment", "e => getComputedStyle(e).borderLeftColor")
    assert colour == "rgb(178, 107, 0)", "the experiment's own style applied under the page's policy"
    screenshot(page, "dashboard-journey-map-experiments")


POLYGLOT = """\
id: polyglot
name: In three languages
languages: {default: en-GB, others: [de, fr]}
entry:
  triggers:
    - event: signed_up
stages:
  - id: inquiry
    steps:
      - {id: report, send: lead-magnet/report-delivery}
      - {id: later, wait: 1d}
      - {id: story, send: lead-magnet/case-study-cafe}
    on_end: stay
"""


def test_the_dashboard_map_shows_which_languages_each_email_is_written_in(
    ops: Dashboard, browser_page: Watched
) -> None:
    from engine.core.definition import Funnel
    from engine.core.yamlfile import load_yaml_text
    from engine.runtime.worker import Worker

    funnel = Funnel.model_validate(load_yaml_text(POLYGLOT))
    Worker(ops.engine, {funnel.id: funnel}).publish(ops.clock())
    emails = ROOT / "emails" / "lead-magnet"
    expected = {
        step: " ".join(
            lang for lang in ("en-GB", "de", "fr") if lang == "en-GB" or (emails / lang / f"{name}.md").is_file()
        )
        for step, name in (("report", "report-delivery"), ("story", "case-study-cafe"))
    }
    assert expected == {"report": "en-GB de fr", "story": "en-GB"}  # the example's translations, as shipped

    page = browser_page.page
    sign_in(page, "/ops/")
    page.goto("/ops/funnels/polyglot/map")
    page.wait_for_selector("table.map")
    shown = {
        card.get_attribute("data-step"): card.query_selector(".langs").get_attribute("data-languages")
        for card in page.query_selector_all(".email[data-step]")
    }
    assert shown == expected
    missing = [s.inner_text() for s in page.query_selector_all(".email[data-step=story] .lang.missing")]
    assert missing == ["de", "fr"]
