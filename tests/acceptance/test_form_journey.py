"""The whole way in, over real sockets, with `funnel run` serving the app beside the scheduler: a lead posts
the signup form, gets only the confirmation email, confirms, enters the funnel, gets its first email at the
SMTP server, clicks the pricing link in it, and moves to the next stage because of that click."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from engine.store import tables
from tests.acceptance.conftest import Project, write_emails
from tests.acceptance.test_http_engine import _wait_until_up
from tests.smtp_server import _free_port

GUIDE = """\
id: guide
name: Guide
entry:
  triggers:
    - event: form_submitted
      where: {form: guide-report}
stages:
  - id: inquiry
    steps:
      - id: welcome
        send: drip/welcome
      - id: linger
        wait: 30d
  - id: conversion
    steps:
      - id: pitch
        send: drip/pitch
    on_end: stay
transitions:
  - id: clicked-pricing
    from: [inquiry]
    to: conversion
    on:
      event: email_clicked
      where: {link: pricing}
"""

WELCOME = """---
subject: "Your guide, {{ lead.first_name | default('friend') }}"
---
Here is the guide. See our [prices]({{ link('pricing', 'https://greenleaf.example/pricing') }}).
"""

CONFIRM = """---
subject: "Please confirm"
---
[Confirm your address]({{ confirm_url }})
"""

CONFIG = """\
[forms.guide-report]
double_opt_in = true
fields = ["first_name"]
consent_version = "2026-11"
"""


def test_form_double_opt_in_enrollment_email_click_and_stage_transition(
    sqlite_project: Project, tmp_path: Path
) -> None:
    project = sqlite_project
    emails = write_emails(project.root, ["pitch"])
    (emails / "drip" / "welcome.md").write_text(WELCOME)
    (emails / "forms").mkdir()
    (emails / "forms" / "confirm-subscription.md").write_text(CONFIRM)
    (project.root / "config").mkdir()
    (project.root / "config" / "funnel.toml").write_text(CONFIG)
    project.add_funnel("guide", GUIDE)

    port = _free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "run.log"
    proc = project.spawn("run", log=log, FUNNEL_HTTP__PORT=str(port), FUNNEL_BASE_URL=url, FUNNEL_TICK_SECONDS="1")
    try:
        _wait_until_up(url, time.monotonic() + 60)
        posted = httpx.post(
            f"{url}/forms/guide-report",
            data={"email": "Hana@Example.com", "name": "Hana", "consent": "yes", "website": ""},
            timeout=10,
        )
        assert posted.status_code == 303 and posted.headers["location"] == "/forms/guide-report/check-inbox"

        [confirmation] = project.smtp.wait_for(1, timeout=30)
        assert confirmation.rcpt == ("hana@example.com",)
        assert confirmation.funnel_step.startswith("form:guide-report/confirm-")
        time.sleep(2.5)  # more ticks: nothing of the funnel may go before the address is confirmed
        assert len(project.smtp.messages()) == 1
        link = re.search(rf"{re.escape(url)}/confirm/[A-Za-z0-9_.\-]+", confirmation.body)
        assert link, confirmation.body

        assert httpx.get(link.group(0), timeout=10).status_code == 200  # the page only
        time.sleep(1.5)
        assert len(project.smtp.messages()) == 1
        confirmed = httpx.post(link.group(0), timeout=10)
        assert confirmed.status_code == 303

        welcome = project.smtp.wait_for(2, timeout=30)[1]
        assert (welcome.funnel_step, welcome.subject) == ("guide/welcome", "Your guide, Hana")
        click = re.search(rf"{re.escape(url)}/c/[A-Za-z0-9_.\-]+", welcome.body)
        assert click, welcome.body
        followed = httpx.get(click.group(0), timeout=10)
        assert (followed.status_code, followed.headers["location"]) == (302, "https://greenleaf.example/pricing")

        pitch = project.smtp.wait_for(3, timeout=30)[2]
        assert pitch.funnel_step == "guide/pitch"
        time.sleep(1.5)
        assert [m.funnel_step for m in project.smtp.messages()][1:] == ["guide/welcome", "guide/pitch"]

        # The same process serves metrics: its own tick timings and the journey's counts.
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert re.search(r"^funnel_tick_seconds_count [1-9]", metrics, re.MULTILINE)
        assert 'funnel_transitions_total{from_stage="inquiry",funnel="guide",to_stage="conversion"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    assert "in the last " in log.read_text() and "hana@example.com" not in log.read_text().lower()  # no address

    with project.db().connect() as conn:
        t = tables.stage_transitions
        moves = conn.execute(sa.select(t.c.from_stage, t.c.to_stage, t.c.cause_kind).order_by(t.c.id)).all()
        actions = conn.execute(sa.select(tables.consent_records.c.action).order_by(tables.consent_records.c.id))
        consent = conn.execute(sa.select(tables.leads.c.consent_status)).scalar_one()
    assert [(m.from_stage, m.to_stage) for m in moves] == [(None, "inquiry"), ("inquiry", "conversion")]
    assert moves[1].cause_kind == "event"
    assert list(actions.scalars()) == ["requested", "confirmed"]
    assert consent == "subscribed"
