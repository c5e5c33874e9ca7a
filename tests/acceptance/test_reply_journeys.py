"""Replies stop a sequence, end to end: the engine sends through a real SMTP server, the lead answers the
email's own Reply-To, the reply comes back through `funnel bounces ingest` (an MTA's pipe) or the LMTP
receiver of `funnel run`, becomes one `email_replied` event, and the next step's email is not sent; the
lead who did not answer (or whose out-of-office did) gets it. The forward reaches the sender's inbox,
through the same relay, byte for byte."""

from __future__ import annotations

import asyncio
import smtplib
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.utils import getaddresses
from pathlib import Path

import sqlalchemy as sa

from engine.authoring.validation import load_funnels
from engine.runtime.runner import Runner
from engine.settings import Settings
from engine.store import leads as store
from engine.store import tables
from tests.acceptance.conftest import Project, iso, write_emails
from tests.mail_servers import free_port
from tests.smtp_server import Received, RecordingSmtpServer

KEY = "s" * 43
# The sequence waits for an answer: a reply ends it, silence goes on to the tip.
WAITS = """\
id: drip
name: Drip
entry:
  triggers:
    - event: signed_up
stages:
  - id: nurture
    steps:
      - id: welcome
        send: drip/welcome
      - id: answer
        wait_for:
          event: email_replied
          timeout: 1d
          on_event: {exit: replied}
      - id: tip
        send: drip/tip
    on_end: exit
"""
# The same with an exit rule, which hears a reply at any step.
EXITS = """\
id: drip
name: Drip
entry:
  triggers:
    - event: signed_up
stages:
  - id: nurture
    steps:
      - id: welcome
        send: drip/welcome
      - id: pause
        wait: 1d
      - id: tip
        send: drip/tip
    on_end: exit
exits:
  - event: email_replied
    where: {funnel: drip}
    reason: replied
"""


def answer(to: Received, text: str = "Yes, call me on Monday.", extra: str = "") -> bytes:
    """What a lead's mail program writes on "Reply": to the Reply-To, quoting the Message-ID."""
    original = message_from_bytes(to.raw)
    [(_, reply_to)] = getaddresses([str(original["Reply-To"])])
    return (
        f"From: {to.rcpt[0]}\r\nTo: {reply_to}\r\nSubject: Re: {to.subject}\r\n{extra}"
        f"Message-ID: <answer.{to.rcpt[0]}>\r\nIn-Reply-To: {to.message_id}\r\n\r\n{text}\r\n"
    ).encode()


def exits(url: str) -> dict[str, str | None]:
    engine = sa.create_engine(url)
    try:
        e, leads = tables.enrollments, tables.leads
        with engine.connect() as conn:
            rows = conn.execute(sa.select(leads.c.email, e.c.exit_reason).join(leads, leads.c.id == e.c.lead_id))
            return {r.email: r.exit_reason for r in rows}
    finally:
        engine.dispose()


def test_a_reply_through_the_pipe_stops_the_sequence_and_is_forwarded_unchanged(project: Project) -> None:
    write_emails(project.root, ["welcome", "tip"])
    project.add_funnel("drip", WAITS)
    project.extra_env.update(
        FUNNEL_SECRET_KEY=KEY, FUNNEL_REPLIES__DOMAIN="reply.shop.test", FUNNEL_REPLIES__FORWARD_TO="owner@inbox.test"
    )
    start = datetime.now(UTC)
    for lead in ("ada", "bo"):
        project.funnel("event", f"{lead}@example.com", "signed_up", "--id", f"signup-{lead}", "--at", iso(start))
    project.funnel("run", "--once", "--now", iso(start))
    welcomes = {m.rcpt[0]: m for m in project.smtp.wait_for(2)}
    assert sorted(welcomes) == ["ada@example.com", "bo@example.com"]

    reply = answer(welcomes["ada@example.com"])
    (project.root / "reply.eml").write_bytes(reply)
    taken = project.funnel("bounces", "ingest", "reply.eml")
    assert "replied, forwarded" in taken.stdout, taken.stdout
    again = project.funnel("bounces", "ingest", "reply.eml")  # the MTA's second copy
    assert "duplicate" in again.stdout, again.stdout
    project.funnel("run", "--once", "--now", iso(start + timedelta(minutes=5)))
    project.funnel("run", "--once", "--now", iso(start + timedelta(days=1, minutes=10)))

    got = project.smtp.wait_for(4, timeout=2)
    assert sorted((m.rcpt[0], m.funnel_step) for m in got if m.funnel_step) == [
        ("ada@example.com", "drip/welcome"),  # ada answered: her sequence stopped before the tip
        ("bo@example.com", "drip/tip"),
        ("bo@example.com", "drip/welcome"),
    ]
    [forward] = [m for m in got if not m.funnel_step]
    assert forward.rcpt == ("owner@inbox.test",) and forward.raw == reply  # byte for byte, once
    assert exits(project.database_url) == {"ada@example.com": "replied", "bo@example.com": "sequence-end"}


def test_a_reply_over_lmtp_to_funnel_run_stops_the_sequence_and_an_auto_reply_does_not(tmp_path: Path) -> None:
    write_emails(tmp_path, ["welcome", "tip"])
    (tmp_path / "funnels").mkdir()
    (tmp_path / "funnels" / "drip.yaml").write_text(EXITS)
    loaded = load_funnels([tmp_path / "funnels"], emails_dir=tmp_path / "emails")
    assert not loaded.errors
    now = [datetime.now(UTC).replace(microsecond=0)]
    with RecordingSmtpServer() as relay:
        settings = Settings(
            data_dir=tmp_path / "data",
            emails_dir=tmp_path / "emails",
            funnels_dir=tmp_path / "funnels",
            secret_key=KEY,
            http={"enabled": False},
            smtp={"host": relay.host, "port": relay.port, "security": "none", "timeout_s": 5},
            replies={"domain": "reply.shop.test", "forward_to": "owner@inbox.test", "forward_automatic": False},
            bounces={"receiver": {"port": 0}},
        )
        runner = Runner(settings, loaded.funnels, lambda: now[0])
        try:
            asyncio.run(_lmtp_scenario(runner, relay, now))
        finally:
            runner.close()
        url = settings.effective_database_url
    sent = [(m.rcpt[0], m.funnel_step) for m in relay.messages() if m.funnel_step]
    assert sorted(sent) == [
        ("ada@example.com", "drip/welcome"),
        ("bo@example.com", "drip/tip"),  # an out-of-office is no answer
        ("bo@example.com", "drip/welcome"),
    ]
    assert [m.rcpt for m in relay.messages() if not m.funnel_step] == [("owner@inbox.test",)]  # ada's only
    assert exits(url) == {"ada@example.com": "replied", "bo@example.com": "sequence-end"}


async def _lmtp_scenario(runner: Runner, relay: RecordingSmtpServer, now: list[datetime]) -> None:
    assert runner.receiver is not None
    await runner.receiver.start()
    try:
        with runner.engine.begin() as conn:
            for lead in ("ada", "bo"):
                lead_id = store.upsert_lead(conn, f"{lead}@example.com", now=now[0])
                event = store.NewEvent(f"signup-{lead}", lead_id, "signed_up", now[0], {}, "test")
                store.record_events(conn, [event], now=now[0])
        await runner.step()
        welcomes = {m.rcpt[0]: m for m in relay.wait_for(2)}
        away = answer(welcomes["bo@example.com"], "I am away.", "Auto-Submitted: auto-replied\r\n")
        for lead, message in (("ada@example.com", answer(welcomes["ada@example.com"])), ("bo@example.com", away)):
            to = str(message_from_bytes(message)["To"])
            refused = await asyncio.to_thread(_lmtp, runner.receiver.port, lead, to, message)
            assert refused == {}
        now[0] += timedelta(minutes=1)
        await runner.step()
        now[0] += timedelta(days=1, minutes=10)
        await runner.step()
        await runner.step()
    finally:
        await runner.receiver.stop(5)


def _lmtp(port: int, sender: str, recipient: str, message: bytes) -> dict[str, tuple[int, bytes]]:
    with smtplib.LMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mta.test")
        return client.sendmail(sender, [recipient], message)


def test_the_pipe_exits_75_while_the_relay_is_down_and_takes_the_reply_once_it_is_back(
    sqlite_project: Project,
) -> None:
    project = sqlite_project
    write_emails(project.root, ["welcome", "tip"])
    project.add_funnel("drip", WAITS)
    project.extra_env.update(FUNNEL_SECRET_KEY=KEY, FUNNEL_REPLIES__DOMAIN="reply.shop.test")
    start = datetime.now(UTC)
    project.funnel("event", "ada@example.com", "signed_up", "--id", "signup-ada", "--at", iso(start))
    project.funnel("run", "--once", "--now", iso(start))
    [welcome] = project.smtp.wait_for(1)
    (project.root / "reply.eml").write_bytes(answer(welcome))

    project.extra_env["FUNNEL_SMTP__PORT"] = str(free_port())  # nothing listens there
    down = project.funnel("bounces", "ingest", "reply.eml", check=False)
    assert down.returncode == 75, down.stdout + down.stderr  # postfix keeps the message and tries again
    assert "did not take the forward" in down.stdout
    del project.extra_env["FUNNEL_SMTP__PORT"]
    back = project.funnel("bounces", "ingest", "reply.eml")
    assert "reply message 1: duplicate, forwarded" in back.stdout, back.stdout  # recorded once, forwarded now
    forwards = [m for m in project.smtp.wait_for(2) if not m.funnel_step]
    assert [(m.rcpt, m.mail_from) for m in forwards] == [(("hello@greenleaf.example",), "hello@greenleaf.example")]
    project.funnel("run", "--once", "--now", iso(start + timedelta(days=1, minutes=10)))
    assert [m.funnel_step for m in project.smtp.wait_for(3, timeout=1) if m.funnel_step] == ["drip/welcome"]
