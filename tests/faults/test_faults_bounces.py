"""Bounces and complaints arriving under faults: an MTA hands reports to `funnel run`'s LMTP receiver
while the engine is SIGKILLed mid-processing and its PostgreSQL server is stopped for a while.

Every lead gets a welcome email (sent by the engine, with its own return path), then the reports
about those emails come back, each lead's in its own order, interleaved with the others':
- the address is gone (5.1.1); gone, then a delay warning that arrives after the hard bounce;
- a complaint, alone or before the hard bounce about the same message;
- a full mailbox (5.2.2), a delay (4.4.7), a blocklisting (5.7.1: the sender's fault), or nothing;
and some are handed over twice. The MTA keeps a report until the receiver answers 250 (a cut session
or a 451 while the database is away: it tries again, as postfix does), so a report whose reply was
lost to a kill comes again. Then every lead is sent into a second funnel.

What must hold (invariant 15, and 5 for the second email):
- every report is recorded exactly once (one row per report and recipient, each with what it did);
- every address a report names as gone, and every complainant, is suppressed; no other address is;
- no lead that bounced hard or complained gets the second email; every other lead gets it once.
"""

from __future__ import annotations

import os
import pwd
import random
import signal
import smtplib
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.core.return_paths import return_path
from engine.store import leads as store
from engine.store import tables
from engine.store.database import create_engine_for, upgrade
from tests.acceptance.conftest import Project, write_emails
from tests.conftest import _postgres_bindir
from tests.faults.conftest import size
from tests.faults.report_mail import complaint, dsn
from tests.faults.tally import Tally, count
from tests.faults.test_faults_postgres import _Server
from tests.mail_servers import free_port
from tests.required import missing
from tests.smtp_server import RecordingSmtpServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

FIRST = """\
id: first
name: Welcome
entry:
  triggers:
    - event: signed_up
stages:
  - id: hello
    steps:
      - id: welcome
        send: drip/welcome
    on_end: exit
"""
LATER = """\
id: later
name: News
entry:
  triggers:
    - event: news
stages:
  - id: news
    steps:
      - id: after
        send: drip/after
    on_end: exit
"""
DOMAIN = "bounces.example"
KEY = "k" * 16 + "-bounce-fault-scenario-key-0123456789"
LEADS = size(40, 300)
KILLS = size(1, 8)
OUTAGES = size(1, 3)  # the database stopped for OUTAGE_S, then started again
OUTAGE_S = 1.5
DUPLICATES = 0.25  # the share of reports an MTA hands over twice
# Each lead's reports, in the order they arrive: (kind, status).
PLANS: list[tuple[str, tuple[tuple[str, str], ...]]] = [
    ("gone", (("dsn", "5.1.1"),)),
    ("gone, then a late delay", (("dsn", "5.1.1"), ("dsn", "4.4.7"))),
    ("complaint, then the bounce", (("complaint", ""), ("dsn", "5.1.1"))),
    ("complaint", (("complaint", ""),)),
    ("full", (("dsn", "5.2.2"),)),
    ("blocked", (("dsn", "5.7.1"),)),
    ("delayed", (("dsn", "4.4.7"),)),
    ("quiet", ()),
]
DEAD = {"gone", "gone, then a late delay", "complaint, then the bounce", "complaint"}


@dataclass(frozen=True)
class Report:
    lead: str
    rcpt_to: str  # the envelope recipient: the message's return path, or the plain bounce address
    raw: bytes


class Mta:
    """Hands reports over LMTP one at a time, in order, each until the receiver answers 250 for it."""

    def __init__(self, port: int, reports: list[Report]) -> None:
        self.port = port
        self.queue = deque(reports)
        self.delivered = 0
        self.tries = 0
        self.deferred = 0  # 451: the engine could not record it now
        self.cut = 0  # no answer: nobody listening, or the session cut
        self.refused: list[str] = []
        self.go = threading.Event()  # cleared: the MTA holds its next try (while a fault is set up)
        self.go.set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.queue and not self.stop.is_set():
            self.go.wait()
            report = self.queue[0]
            self.tries += 1
            try:
                with smtplib.LMTP("127.0.0.1", self.port, timeout=10) as lmtp:
                    lmtp.sendmail("", [report.rcpt_to], report.raw)
            except smtplib.SMTPResponseException as exc:
                if exc.smtp_code // 100 == 4:
                    self.deferred += 1
                else:
                    self.refused.append(f"{exc.smtp_code} {exc.smtp_error!r}")
                    self.queue.popleft()
                time.sleep(0.05)
                continue
            except smtplib.SMTPRecipientsRefused as exc:
                self.refused.append(str(exc.recipients))
                self.queue.popleft()
                continue
            except (OSError, smtplib.SMTPException):
                self.cut += 1
                time.sleep(0.05)
                continue
            self.queue.popleft()
            self.delivered += 1
            time.sleep(0.02)  # a queue runner's pace: faults land between and during deliveries


@pytest.fixture
def pg() -> Iterator[_Server]:
    """A PostgreSQL server of this scenario's own: it is stopped under the engine's feet."""
    bindir = _postgres_bindir()
    if bindir is None:
        missing("no PostgreSQL binaries (initdb, pg_ctl) found: this scenario stops a server of its own")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root and there is no `postgres` user to run the server as")
    server = _Server(bindir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _sign_up(engine: sa.Engine, name: str, n: int) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for i in range(n):
            lead_id = store.upsert_lead(conn, f"lead{i}@example.com", now=now)
            store.record_events(conn, [store.NewEvent(f"{name}-{i}", lead_id, name, now)], now=now)


def _sent_welcomes(engine: sa.Engine) -> dict[str, tuple[int, str]]:
    """Each lead's welcome email as the outbox has it once sent: (outbox id, Message-ID)."""
    o, leads = tables.outbox, tables.leads
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(leads.c.email, o.c.id, o.c.message_id)
            .join(leads, leads.c.id == o.c.lead_id)
            .where(o.c.step == "welcome", o.c.status == "sent")
        ).all()
    return {r.email: (r.id, r.message_id) for r in rows}


def _reports(welcomes: dict[str, tuple[int, str]], rng: random.Random) -> tuple[list[Report], dict[str, str], int]:
    """The reports in the order the MTA hands them over (each lead's in its plan's order), each lead's
    plan, and how many distinct reports there are."""
    now = datetime.now(UTC)
    per_lead: list[deque[Report]] = []
    plans: dict[str, str] = {}
    for n, (lead, (outbox_id, message_id)) in enumerate(sorted(welcomes.items())):
        name, steps = PLANS[n % len(PLANS)]
        plans[lead] = name
        reports = deque()
        for i, (kind, status) in enumerate(steps):
            serial = f"r{n}-{i}"
            # Complaints come to the feedback loop's address, bounces to the message's return path.
            to = return_path(outbox_id, KEY, "bounces", DOMAIN) if kind == "dsn" else f"fbl@{DOMAIN}"
            raw = (
                dsn(serial, to, lead, message_id, status, now)
                if kind == "dsn"
                else complaint(serial, to, lead, message_id, now)
            )
            reports.append(Report(lead, to, raw))
        per_lead.append(reports)
    distinct = sum(len(r) for r in per_lead)
    order: list[Report] = []
    while any(per_lead):
        order.append(rng.choice([r for r in per_lead if r]).popleft())
    for report in list(order):
        if rng.random() < DUPLICATES:
            order.insert(rng.randrange(order.index(report) + 1, len(order) + 1), report)
    return order, plans, distinct


def _wait(what: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_reports_under_kills_and_outages_are_recorded_once_and_acted_on(
    tmp_path: Path, pg: _Server, fault_report: Callable[[Tally], None]
) -> None:
    rng = random.Random(1894)
    url = pg.url.render_as_string(hide_password=False)
    port = free_port()
    with RecordingSmtpServer() as smtp:
        project = Project(tmp_path, url, smtp)
        write_emails(project.root, ["welcome", "after"])
        project.add_funnel("first", FIRST)
        project.add_funnel("later", LATER)
        project.extra_env.update(
            {"FUNNEL_TICK_SECONDS": "0.2", "FUNNEL_SECRET_KEY": KEY, "FUNNEL_BOUNCES__DOMAIN": DOMAIN,
             "FUNNEL_BOUNCES__RECEIVER__PORT": str(port), "PYTHONUNBUFFERED": "1",
             # What this scenario does not use, so that a restart after a kill is quick.
             "FUNNEL_HTTP__ENABLED": "false", "FUNNEL_RENDER_PROCESSES": "0"}
        )  # fmt: skip
        upgrade(url)
        engine = create_engine_for(url)
        log = tmp_path / "run.log"
        started = time.monotonic()
        proc = project.spawn("run", log=log)
        try:
            _sign_up(engine, "signed_up", LEADS)
            assert _wait(lambda: len(_sent_welcomes(engine)) == LEADS, 60), log.read_text()[-3000:]
            order, plans, distinct = _reports(_sent_welcomes(engine), rng)
            mta = Mta(port, order)
            mta.thread.start()
            proc = _inject(project, log, pg, mta, rng, proc)
            mta.thread.join(timeout=120)
            assert not mta.queue, f"{len(mta.queue)} reports never taken:\n{log.read_text()[-3000:]}"
            _sign_up(engine, "news", LEADS)
            assert _wait(lambda: _settled(engine, "after", LEADS - sum(p in DEAD for p in plans.values())), 60)
            time.sleep(0.5)  # a stray second email would be on its way by now
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        said = log.read_text().count("cannot record")
        recorded, suppressed, complained, by_key = _database(engine)
        engine.dispose()
        received = smtp.per_lead_step()

    dead = {lead for lead, plan in plans.items() if plan in DEAD}
    complainants = {lead for lead, plan in plans.items() if plan.startswith("complaint")}
    expected = {(lead, "first/welcome") for lead in plans} | {
        (lead, "later/after") for lead in plans if lead not in dead
    }
    # A welcome that bounced or failed later was delivered: the report came after the relay's 250.
    finals = {k: ("sent" if k[1] == "first/welcome" and s in ("bounced", "failed") else s) for k, s in by_key.items()}
    tally = count("bounce reports", faults=KILLS + OUTAGES, leads=LEADS, expected=expected, received=received,
                  outbox=finals)  # fmt: skip
    tally.notes.append(
        f"{len(order)} reports handed over ({len(order) - distinct} twice by the MTA) in {mta.tries} tries: "
        f"{mta.deferred} answered 451 while the database was away, {mta.cut} sessions cut or refused by a "
        f"killed engine; {len(recorded)} recorded; {time.monotonic() - started:.0f} s"
    )
    fault_report(tally)

    assert mta.refused == []
    assert mta.deferred > 0, "no report met the database away"
    assert mta.cut > 0, "no report met a killed engine"
    # The database away is said once an outage (invariant 17), not once a report.
    assert 0 < said <= OUTAGES, f"{said} lines say the database cannot record reports, for {mta.deferred} reports"
    assert len(recorded) == distinct, "every report recorded exactly once"
    assert all(action for _, action in recorded), recorded
    assert suppressed == {store.email_hash(lead) for lead in dead}, "dead addresses suppressed, no other"
    assert complained == complainants
    assert tally.strays == 0, [k for k in received if k not in expected]
    assert tally.duplicated == 0
    assert tally.lost == 0


def _inject(
    project: Project, log: Path, pg: _Server, mta: Mta, rng: random.Random, proc: subprocess.Popen[bytes]
) -> subprocess.Popen[bytes]:
    """Kills and outages spread over the deliveries, each while the MTA is handing reports over; the
    engine running at the end."""
    faults = ["kill"] * KILLS + ["outage"] * OUTAGES
    rng.shuffle(faults)
    # In the first two thirds: reports are still waiting when each fault lands.
    marks = sorted(rng.sample(range(1, len(mta.queue) * 2 // 3), len(faults)))
    for mark, fault in zip(marks, faults, strict=True):
        _wait(lambda m=mark: mta.delivered >= m or not mta.queue, 60)  # type: ignore[misc]
        time.sleep(rng.uniform(0.0, 0.05))
        if fault == "outage":
            _stop_for(pg, OUTAGE_S, mta)
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = project.spawn("run", log=log)
    return proc


def _stop_for(pg: _Server, seconds: float, mta: Mta) -> None:
    """The database server stopped (its sessions cut) while the MTA waits, so that the reports it hands
    over next meet a database that is away; started again after `seconds`."""
    ctl = [str(pg.bindir / "pg_ctl"), "-D", str(pg.data), "-l", str(pg.root / "server.log")]
    mta.go.clear()
    try:
        pg._run(*ctl, "-m", "fast", "-w", "stop")
    finally:
        mta.go.set()
    time.sleep(seconds)
    pg._run(*ctl, "-m", "fast", "-w", "-t", "60", "restart")


def _settled(engine: sa.Engine, step: str, sent: int) -> bool:
    o, e = tables.outbox, tables.events
    with engine.connect() as conn:
        done = conn.execute(sa.select(sa.func.count()).where(o.c.step == step, o.c.status == "sent")).scalar_one()
        open_rows = conn.execute(
            sa.select(sa.func.count()).where(o.c.status.in_(("queued", "deferred", "sending")))
        ).scalar_one()
        waiting = conn.execute(sa.select(sa.func.count()).where(e.c.processed_at.is_(None))).scalar_one()
    return bool(done >= sent and open_rows == 0 and waiting == 0)


def _database(
    engine: sa.Engine,
) -> tuple[list[tuple[str, str | None]], set[str], set[str], dict[tuple[str, str], str]]:
    """The reports recorded, the suppressed hashes, the complainants, and each email's final status."""
    b, s, leads, o = tables.bounce_reports, tables.suppressions, tables.leads, tables.outbox
    with engine.connect() as conn:
        recorded = [(str(k), a) for k, a in conn.execute(sa.select(b.c.report_key, b.c.action))]
        suppressed = {str(h) for h in conn.execute(sa.select(s.c.email_hash)).scalars()}
        complained = {
            str(x)
            for x in conn.execute(sa.select(leads.c.email).where(leads.c.consent_status == "complained")).scalars()
        }
        rows = conn.execute(
            sa.select(leads.c.email, o.c.funnel_id, o.c.step, o.c.status).join(leads, leads.c.id == o.c.lead_id)
        ).all()
    return recorded, suppressed, complained, {(r.email, f"{r.funnel_id}/{r.step}"): r.status for r in rows}
