"""The dashboard's experiments page in Chromium, over the app on a loopback socket: each experiment of the
funnels the engine runs with its arms (assigned, promoted, counted, conversions, rate, lift over the control
with its interval), its state, and who decided what, when and why; the same figures as `funnel report`,
and an operator's words shown as text, never as markup."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from engine.cli.main import app
from tests.browser.conftest import Dashboard, Watched, sign_in
from tests.cli.test_report_experiments import EARLY, LATE, clicks, seed, subject_arm

WORDS = "<b>brand</b> voice <script>window.ran = 1</script>"


def test_the_experiments_page_shows_each_experiments_arms_state_and_decision(
    ops: Dashboard, browser_page: Watched, screenshot: Callable[[Any, str], Path], tmp_path: Path
) -> None:
    seed(ops.engine, tmp_path, ops.clock())
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    cli = CliRunner()
    promoted = cli.invoke(app, ["experiment", "promote", str(tmp_path / "funnels" / "ab.yaml"), "pace", "soon",
                                "--reason", WORDS, "--by", "sam <ops>", "--database-url", url])  # fmt: skip
    assert promoted.exit_code == 0, promoted.output
    report = cli.invoke(app, ["report", "--json", "--funnel", "ab", "--database-url", url])
    assert report.exit_code == 0, report.output
    (ab,) = json.loads(report.output)["funnels"]
    subject, pace = ab["experiments"]

    page = browser_page.page
    sign_in(page, "/ops/")
    page.click("header.top nav a[href='/ops/experiments']")
    page.wait_for_selector("h1:text('Experiments')")
    assert page.get_attribute("header.top nav a[href='/ops/experiments']", "aria-current") == "page"
    shown = page.query_selector_all("section.experiment")
    # The trial funnel has no experiment: nothing of it here.
    assert [(s.get_attribute("data-funnel"), s.get_attribute("data-experiment")) for s in shown] == [
        ("ab", "subject"), ("ab", "pace"),
    ]  # fmt: skip

    one = "section[data-experiment=subject]"
    assert page.get_attribute(one, "data-state") == "winner"
    teaser = f"{one} tr[data-arm=teaser]"
    cells = {c: page.inner_text(f"{teaser} td.{c}") for c in ("assigned", "promoted", "leads", "conversions", "rate")}
    teasers = sum(subject_arm(a) == "teaser" for a in EARLY)
    assert cells == {
        "assigned": str(teasers), "promoted": str(len(LATE)), "leads": str(teasers), "conversions": str(teasers),
        "rate": "100.00%",
    }  # fmt: skip
    plain = [a for a in EARLY if subject_arm(a) == "plain"]
    plain_rate = sum(map(clicks, plain)) / len(plain)
    lift = page.inner_text(f"{teaser} td.lift")
    assert lift == f"{(1 - plain_rate) * 100:+.2f} pts ({(1 - plain_rate) / plain_rate:+.1%})"
    arms = {a["arm"]: a for a in subject["arms"]}
    assert lift.startswith(f"{arms['teaser']['lift'] * 100:+.2f} pts")  # what `funnel report` says
    low, high = arms["teaser"]["lift_low"] * 100, arms["teaser"]["lift_high"] * 100
    assert page.inner_text(f"{teaser} td.interval") == f"{low:+.2f} to {high:+.2f} pts"
    assert page.inner_text(f"{one} tr[data-arm=plain] td.lift") == "-"
    assert page.inner_text(f"{one} p.test").startswith("Test: winner: teaser converts 100.00%")
    assert "by engine: new leads get teaser" in page.inner_text(f"{one} p.decision")
    assert page.inner_text(f"{one} p.why") == f"Why: {subject['decision']['why']}"

    other = "section[data-experiment=pace]"
    assert page.get_attribute(other, "data-state") == pace["state"]
    decision = page.inner_text(f"{other} p.decision")
    assert decision.startswith("Decision: decided (manual)") and decision.endswith("by sam <ops>: new leads get soon")
    assert page.inner_text(f"{other} p.why") == f"Why: {WORDS}"
    assert page.query_selector("main b") is None and page.evaluate("window.ran") is None
    screenshot(page, "experiments")
