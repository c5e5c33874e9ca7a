"""A funnel's history with what came back after the relay's 250, built by the real parts: the worker
enrolls leads and decides, the mailer sends to a real SMTP server, and real reports of
`tests/data/bounces` go through the processor that `funnel bounces ingest` and the receivers use.

Seven leads sign up for `guide` (stages welcome -> nurture, one email each) and `news` (no email, an
exit rule on `complained`). The relay refuses one address at once (550 5.1.1). After the welcome email
come a hard bounce, a soft bounce, a complaint, a refusal for the sender's reasons, and a report about
an address nobody has (kept for an operator); a day later, after the nurture email, a second complaint.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from engine.authoring.validation import load_funnels
from engine.core.bounce_outcome import Verdict
from engine.mail.mailer import Mailer
from engine.mail.templates import TemplateLibrary
from engine.runtime.bounce_processing import process_report
from engine.runtime.worker import Worker
from engine.settings import BounceSettings, Settings
from engine.store import leads as store
from tests.smtp_server import RecordingHandler, RecordingSmtpServer

TESTS = Path(__file__).resolve().parent
REPORTS = TESTS / "data" / "bounces"
EMAILS = TESTS / "fixtures" / "emails"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday
DAY2 = T0 + timedelta(days=1, minutes=1)

GUIDE = """\
id: guide
name: Guide
entry:
  triggers:
    - event: signed_up
stages:
  - id: welcome
    steps:
      - id: hello
        send: lead-magnet/report
      - id: pause
        wait: 1d
    on_end: next
  - id: nurture
    steps:
      - id: tips
        send: lead-magnet/tip
      - id: rest
        wait: 30d
exits:
  - event: complained
    reason: complained
"""
NEWS = """\
id: news
name: News
entry:
  triggers:
    - event: signed_up
stages:
  - id: reading
    steps:
      - id: later
        wait: 30d
exits:
  - event: complained
    reason: complained
"""

HARD = "silvina.garcia.tobar@ef.com"  # PHP-Bounce-Handler/36.eml: 5.1.1
SOFT = "user@aol.com"  # flanker/mailbox-full.eml: 5.2.2
COMPLAINS_EARLY = "user@yahoo.com"  # flanker/yahoo.eml: a Yahoo feedback report
REFUSED = "stellamiranda@interlink.com.ar"  # PHP-Bounce-Handler/32.eml: 5.7.1, a bulk-mail filter
COMPLAINS_LATER = "user@example.com"  # email-arf/example2.eml: an ARF abuse report
FINE = "fine@example.org"
GONE_AT_SEND = "nobody@refusing.example"  # the relay itself says 550 5.1.1
LEADS = (HARD, SOFT, COMPLAINS_EARLY, REFUSED, COMPLAINS_LATER, FINE, GONE_AT_SEND)
AFTER_WELCOME = {
    "PHP-Bounce-Handler/36.eml": HARD,
    "flanker/mailbox-full.eml": SOFT,
    "flanker/yahoo.eml": COMPLAINS_EARLY,
    "PHP-Bounce-Handler/32.eml": REFUSED,
    "flanker/zed.eml": None,  # a gmail address nobody here has: kept for an operator
}
AFTER_NURTURE = {"email-arf/example2.eml": COMPLAINS_LATER}


@dataclass(frozen=True)
class History:
    funnels_dir: Path
    first_reports_at: datetime
    second_reports_at: datetime


def _write_funnels(root: Path) -> Path:
    folder = root / "funnels"
    folder.mkdir(exist_ok=True)
    (folder / "guide.yaml").write_text(GUIDE)
    (folder / "news.yaml").write_text(NEWS)
    return folder


class _Relay(RecordingHandler):
    """A relay that knows one of its recipients is gone."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address.lower() == GONE_AT_SEND:
            return "550 5.1.1 <nobody@refusing.example>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def _send(engine: Engine, now: datetime) -> None:
    with RecordingSmtpServer(handler=_Relay()) as smtp:
        settings = Settings(smtp={"host": smtp.host, "port": smtp.port, "security": "none"})
        mailer = Mailer(engine, settings, TemplateLibrary(EMAILS))
        try:
            asyncio.run(mailer.dispatch(now, smtp.host, smtp.port))
        finally:
            mailer.close()


def _reports(engine: Engine, files: dict[str, str | None], now: datetime) -> None:
    for name in files:
        verdict, applied = process_report(engine, (REPORTS / name).read_bytes(), "ingest", now, BounceSettings())
        assert verdict is Verdict.TAKEN and applied, name


def build(engine: Engine, root: Path) -> History:
    """The history above, on a migrated database."""
    folder = _write_funnels(root)
    funnels = {f.id: f for f in load_funnels([folder], emails_dir=None).funnels}
    worker = Worker(engine, funnels)
    worker.publish(T0)
    with engine.begin() as conn:
        for i, address in enumerate(LEADS):
            lead = store.upsert_lead(conn, address, now=T0)
            store.record_events(conn, [store.NewEvent(f"signup-{i}", lead, "signed_up", T0)], now=T0)
    worker.run_until_idle(T0)
    _send(engine, T0)
    first = T0 + timedelta(hours=2)
    _reports(engine, AFTER_WELCOME, first)
    worker.run_until_idle(DAY2)  # the complaint's exit; the others move on to nurture
    _send(engine, DAY2)
    second = DAY2 + timedelta(hours=2)
    _reports(engine, AFTER_NURTURE, second)
    worker.run_until_idle(second)
    return History(folder, first, second)
