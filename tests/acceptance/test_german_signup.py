"""The example funnel in German, the whole way in, over real sockets with `funnel run` serving the app
beside the scheduler: a German browser gets the German signup form, its lead confirms on a German page
from a German confirmation email, gets the German report with its date written the German way and a
German footer, and its unsubscribe page is German; `funnel lead show` says which language each email was
written in. A lead whose language has no translation (Portuguese) reads the default, English."""

from __future__ import annotations

import re
import shutil
import signal
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import babel.dates
import httpx
import sqlalchemy as sa

from engine.store import tables
from tests.acceptance.conftest import Project
from tests.acceptance.test_http_engine import _wait_until_up
from tests.smtp_server import Received, _free_port

ROOT = Path(__file__).resolve().parents[2]
FORM = "cost-of-not-recycling"
GERMAN = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}
PORTUGUESE = {"Accept-Language": "pt-BR,pt;q=0.9"}


def _example(project: Project) -> None:
    """The shipped example: its funnel, emails, pages and settings, unchanged."""
    project.funnels_dir.mkdir(exist_ok=True)
    shutil.copy(ROOT / "funnels" / "lead-magnet.yaml", project.funnels_dir / "lead-magnet.yaml")
    shutil.copytree(ROOT / "emails", project.emails_dir, dirs_exist_ok=True)
    shutil.copytree(ROOT / "pages", project.root / "pages")
    shutil.copytree(ROOT / "config", project.root / "config")


def _html(message: Received) -> str:
    part = message_from_bytes(message.raw, policy=default_policy).get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def _lang(html: str) -> str:
    found = re.search(r'<html lang="([^"]+)"', html)
    assert found is not None, html[:300]
    return found.group(1)


def _long_dates(locale: str) -> set[str]:
    # The deadline is 30 days after the email was written, in the lead's zone: either side of midnight.
    today = datetime.now(UTC)
    return {babel.dates.format_date((today + timedelta(days=30 + d)).date(), "long", locale=locale) for d in (-1, 0, 1)}


def test_a_german_lead_reads_the_example_in_german_and_a_portuguese_lead_in_english(
    sqlite_project: Project, tmp_path: Path
) -> None:
    project = sqlite_project
    _example(project)
    port = _free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "run.log"
    proc = project.spawn("run", log=log, FUNNEL_HTTP__PORT=str(port), FUNNEL_BASE_URL=url, FUNNEL_TICK_SECONDS="1")
    try:
        _wait_until_up(url, time.monotonic() + 60)
        form = httpx.get(f"{url}/forms/{FORM}", headers=GERMAN, timeout=10)
        assert form.status_code == 200 and _lang(form.text) == "de"
        for address, headers, name in (("jonas@example.com", GERMAN, "Jonas"), ("ana@example.com", PORTUGUESE, "Ana")):
            posted = httpx.post(
                f"{url}/forms/{FORM}",
                headers=headers,
                data={
                    "email": address,
                    "first_name": name,
                    "company": "Beispiel GmbH",
                    "consent": "yes",
                    "website": "",
                },
                timeout=10,
            )
            assert posted.status_code == 303, posted.text

        confirmations = {m.rcpt[0]: m for m in project.smtp.wait_for(2, timeout=30)}
        german, english = confirmations["jonas@example.com"], confirmations["ana@example.com"]
        assert _lang(_html(german)) == "de" and "Abmelden" in _html(german)
        assert _lang(_html(english)).startswith("en") and "Unsubscribe" in _html(english)
        assert german.subject != english.subject

        for message in (german, english):
            link = re.search(rf"{re.escape(url)}/confirm/[A-Za-z0-9_.\-]+", message.body)
            assert link, message.body
            page = httpx.get(link.group(0), headers=PORTUGUESE, timeout=10)  # the lead's language, not the browser's
            assert page.status_code == 200
            assert _lang(page.text) == ("de" if message is german else "en"), page.text[:600]
            assert httpx.post(link.group(0), timeout=10).status_code == 303

        sent = project.smtp.wait_for(4, timeout=30)
        reports = {m.rcpt[0]: m for m in sent[2:]}
        report_de, report_en = reports["jonas@example.com"], reports["ana@example.com"]
        assert report_de.funnel_step == report_en.funnel_step == "lead-magnet/deliver-report"
        assert report_de.subject.startswith("Ihr Report") and report_en.subject.startswith("Your report")
        assert any(f"bis zum {d}" in report_de.body for d in _long_dates("de")), report_de.body
        assert any(f"until {d}" in report_en.body for d in _long_dates("en_GB")), report_en.body
        html_de = _html(report_de)
        assert _lang(html_de) == "de" and "Sie erhalten diese E-Mail" in html_de

        unsubscribe = re.search(rf'href="({re.escape(url)}/u/[^"]+)"', html_de)
        assert unsubscribe, html_de
        page = httpx.get(unsubscribe.group(1).replace("&amp;", "&"), timeout=10)
        assert page.status_code == 200 and _lang(page.text) == "de"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()

    with project.db().connect() as conn:
        o, lead = tables.outbox, tables.leads
        rows = conn.execute(
            sa.select(lead.c.email, lead.c.language, o.c.step, o.c.language).join(lead, lead.c.id == o.c.lead_id)
        ).all()
    written = {(r[0], r[2]): r[3] for r in rows}
    # A lead takes the language of the page it signed up on: the Portuguese browser read the default.
    assert {r[0]: r[1] for r in rows} == {"jonas@example.com": "de", "ana@example.com": "en-GB"}
    assert written[("jonas@example.com", "deliver-report")] == "de"
    assert written[("ana@example.com", "deliver-report")] == "en-GB"

    shown = project.funnel("lead", "show", "jonas@example.com").stdout
    assert "de" in shown and re.search(r"deliver-report.*\bin de\b", shown), shown
