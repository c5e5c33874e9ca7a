"""The ops dashboard in Chromium: sign-in required, the funnel chart shows the database's counts, the live
feed shows a transition made while it is open, lead search leads to a timeline, an `unknown` email
can be marked as sent, and a kept bounce report opens to its raw message shown as text. Each page loads
with no console error and no request leaving the app."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.core.bounce_outcome import Verdict
from engine.runtime.bounce_processing import process_report
from engine.settings import BounceSettings
from engine.store import tables
from tests.browser.conftest import USER, Dashboard, Watched, sign_in


def test_pages_need_a_sign_in_and_a_wrong_password_is_refused(
    ops: Dashboard, browser_page: Watched, screenshot: Callable[[Any, str], Path]
) -> None:
    page = browser_page.page
    for path in ("/ops/", "/ops/feed", "/ops/leads", "/ops/outbox"):
        page.goto(path)
        assert page.url.startswith(f"{ops.url}/ops/login?next="), path
    screenshot(page, "login")

    refused = None

    def remember(response: Any) -> None:
        nonlocal refused
        if response.url.endswith("/ops/login") and response.request.method == "POST":
            refused = response.status

    page.on("response", remember)
    page.fill("input[name=name]", USER)
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    page.wait_for_selector("p.error[role=alert]")
    assert refused == 401
    assert "Wrong name or password" in page.inner_text("p.error[role=alert]")
    assert page.context.cookies() and all(c["name"] != "funnel_ops" for c in page.context.cookies())
    page.remove_listener("response", remember)
    browser_page.errors.clear()  # the refused POST's 401 is logged by Chromium as a failed resource

    page.fill("input[name=name]", USER)
    page.fill("input[name=password]", "correct horse battery staple")
    page.click("button[type=submit]")
    page.wait_for_selector("h1:text('Outbox')")  # back where it was going (the last page asked for)
    session = next(c for c in page.context.cookies() if c["name"] == "funnel_ops")
    assert session["httpOnly"] and session["sameSite"] == "Lax" and session["path"] == "/ops"

    page.click("button:text('Sign out')")
    page.wait_for_selector("h1:text('Sign in')")
    page.goto("/ops/")
    assert "/ops/login" in page.url


def test_the_funnel_chart_shows_the_leads_in_each_stage_and_the_conversion(
    ops: Dashboard, browser_page: Watched, screenshot: Callable[[Any, str], Path]
) -> None:
    journeys = {
        "ana@example.com": ("signed_up",),
        "ben@example.com": ("signed_up",),
        "cai@example.com": ("signed_up", "pricing_viewed"),
        "dee@example.com": ("signed_up", "pricing_viewed"),
        "eve@example.com": ("signed_up", "pricing_viewed", "purchase_completed"),
    }
    for address, names in journeys.items():
        ops.lead(address, *names)
    with ops.engine.connect() as conn:
        e, t = tables.enrollments, tables.stage_transitions
        now = dict(
            conn.execute(sa.select(e.c.stage, sa.func.count()).where(e.c.status == "active").group_by(e.c.stage)).all()
        )
        visits = conn.execute(sa.select(t.c.lead_id, t.c.to_stage)).all()
        per_day = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
    assert now == {"inquiry": 2, "comparison": 2, "conversion": 1}
    reached: dict[str, set[int]] = defaultdict(set)
    for lead_id, stage in visits:
        reached[stage].add(lead_id)

    sign_in(browser_page.page)
    page = browser_page.page
    page.wait_for_selector("section.funnel[data-funnel=trial] svg.funnel-chart")
    shown = {
        g.get_attribute("data-stage"): (int(g.get_attribute("data-now")), int(_text(g, "text.count")))
        for g in page.query_selector_all("section[data-funnel=trial] g.stage")
    }
    assert list(shown) == ["inquiry", "comparison", "conversion"]  # in the funnel's order
    assert shown == {stage: (n, n) for stage, n in now.items()}
    widths = {
        g.get_attribute("data-stage"): float(g.query_selector("rect.bar").get_attribute("width"))
        for g in page.query_selector_all("section[data-funnel=trial] g.stage")
    }
    assert widths["inquiry"] == widths["comparison"] == 2 * widths["conversion"]

    rows = {
        r.get_attribute("data-stage"): (_text(r, "td.reached"), _text(r, "td.conversion"))
        for r in page.query_selector_all("section[data-funnel=trial] table.figures tr[data-stage]")
    }
    went_on = len(reached["comparison"]) / len(reached["inquiry"])
    then = len(reached["conversion"]) / len(reached["comparison"])
    assert rows == {
        "inquiry": (str(len(reached["inquiry"])), f"{went_on:.0%}"),
        "comparison": (str(len(reached["comparison"])), f"{then:.0%}"),
        "conversion": ("1", "-"),
    }
    assert rows["inquiry"] == ("5", "60%")
    notes = page.text_content("section[data-funnel=trial] svg.funnel-chart") or ""
    assert "60% of the 5 who reached it went on to comparison" in notes

    today = page.query_selector(f"g.day[data-day='{ops.clock().date().isoformat()}']")
    assert today is not None and int(today.get_attribute("data-count")) == per_day == 9
    assert len(page.query_selector_all("g.day")) == 30
    screenshot(page, "overview")


def test_the_live_feed_shows_a_transition_made_while_it_is_open(
    ops: Dashboard, browser_page: Watched, screenshot: Callable[[Any, str], Path]
) -> None:
    ops.lead("fay@example.com", "signed_up")
    sign_in(browser_page.page, "/ops/feed")
    page = browser_page.page
    page.wait_for_selector("#feed[data-state=live]")
    assert page.query_selector_all("#feed tbody tr") == []  # it shows what happens from now on

    ops.lead("fay@example.com", "pricing_viewed")
    row = page.wait_for_selector("#feed tr.transition[data-lead='fay@example.com']", timeout=10_000)
    assert "inquiry → comparison" in row.inner_text()
    assert "event pricing_viewed" in row.inner_text()

    ops.lead("gus@example.com", "signed_up")
    page.wait_for_selector("#feed tr.email[data-lead='gus@example.com']")
    entered = page.wait_for_selector("#feed tr.transition[data-lead='gus@example.com']")
    assert "(outside) → inquiry" in entered.inner_text()
    screenshot(page, "feed")


def test_lead_search_finds_a_lead_and_shows_its_timeline(
    ops: Dashboard, browser_page: Watched, screenshot: Callable[[Any, str], Path]
) -> None:
    ops.lead("hana@example.com", "signed_up", "pricing_viewed")
    ops.lead("hank@example.com", "signed_up")
    ops.lead("ivy@example.com", "signed_up")
    sign_in(browser_page.page, "/ops/leads")
    page = browser_page.page
    page.fill("input[name=q]", "HAN")
    page.press("input[name=q]", "Enter")
    page.wait_for_selector("table.leads")
    found = [a.inner_text() for a in page.query_selector_all("table.leads a")]
    assert found == ["hana@example.com", "hank@example.com"]
    screenshot(page, "lead-search")

    page.click("text=hana@example.com")
    page.wait_for_selector("h1:text('hana@example.com')")
    assert page.inner_text("table.places tr[data-funnel=trial] td.stage") == "comparison"
    assert page.inner_text("table.places tr[data-funnel=trial] td.why") == "event pricing_viewed"
    lines = [r.inner_text().split("\t") for r in page.query_selector_all("table.timeline tbody tr")]
    assert [(kind, what) for _, kind, _, what in lines] == [
        ("event", "event signed_up"),
        ("transition", "(enters) -> inquiry, because event signed_up"),
        ("email", "email welcome: drip/welcome, waiting"),
        ("event", "event pricing_viewed"),
        ("transition", "inquiry -> comparison, because event pricing_viewed"),
    ]
    screenshot(page, "lead-timeline")


def _text(element: Any, selector: str) -> str:
    found = element.query_selector(selector)
    assert found is not None, selector
    return str(found.text_content()).strip()


def test_an_unknown_email_is_flagged_and_mark_as_sent_settles_it(
    ops: Dashboard, browser_page: Watched, screenshot: Callable[[Any, str], Path]
) -> None:
    ops.lead("jo@example.com", "signed_up")
    message = ops.make_unknown("jo@example.com")
    sign_in(browser_page.page, "/ops/outbox")
    page = browser_page.page
    row = page.wait_for_selector(f"tr.unknown[data-message='{message}']")
    assert "jo@example.com" in row.inner_text() and "worker stopped between DATA" in row.inner_text()
    assert "the lead gets it twice" in page.inner_text("main")
    assert page.inner_text(".pill.flag") == "unknown 1"
    screenshot(page, "outbox-unknown")

    row.query_selector("button:text('Mark as sent')").click()
    page.wait_for_selector("p.notice")
    assert f"Message {message} is marked as sent" in page.inner_text("p.notice")
    assert page.query_selector(f"tr.unknown[data-message='{message}']") is None
    status, note = ops.status(message)
    assert status == "sent"
    assert note is not None and re.match(rf"marked sent by {USER} at \S+Z \(was: worker stopped", note)
    screenshot(page, "outbox-decided")


def test_a_kept_report_opens_to_its_raw_message_shown_as_text(
    ops: Dashboard, browser_page: Watched, screenshot: Callable[[Any, str], Path]
) -> None:
    raw = (Path(__file__).parent.parent / "data" / "bounces" / "flufl.bounce" / "dumbass_01.eml").read_bytes()
    raw = raw.replace(b"\n\n", b"\n\n<script>window.ran = 1</script><b onmouseover=alert(1)>bold</b>\n", 1)
    verdict, applied = process_report(ops.engine, raw, "lmtp", ops.clock(), BounceSettings())
    assert verdict == Verdict.TAKEN and [a.action for a in applied] == ["kept for an operator"]
    sign_in(browser_page.page, "/ops/")
    page = browser_page.page
    assert page.inner_text("header.top nav a[href='/ops/bounces']") == "Kept reports 1"
    page.click("header.top nav a[href='/ops/bounces']")
    row = page.wait_for_selector("table.kept tbody tr")
    assert "lmtp" in row.inner_text() and "unclassed" in row.inner_text() and "unmatched" in row.inner_text()
    assert page.get_attribute("header.top nav a[href='/ops/bounces']", "aria-current") == "page"
    screenshot(page, "kept-reports")
    row.query_selector("a").click()
    shown = page.wait_for_selector("pre.raw").inner_text()
    assert "<script>window.ran = 1</script><b onmouseover=alert(1)>bold</b>" in shown
    assert page.query_selector("main b") is None and page.evaluate("window.ran") is None
    screenshot(page, "kept-report")
