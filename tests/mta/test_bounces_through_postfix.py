"""Bounces the way they really come back: the engine sends through postfix, postfix delivers to
dovecot or to a server that refuses the sender, writes the delivery status notifications itself and
hands them back over LMTP to the engine's own receiver, whose report processor matches each to its
message by the signed return path (VERP) and acts on it.

- a mailbox that does not exist (5.1.1): the message bounces, the address is suppressed, and the
  lead's next email is never sent;
- a full mailbox (5.2.2): a soft bounce, the address kept;
- a receiving server that refuses the sender as blocklisted (5.7.1): the message fails, the lead is
  kept and its next email goes out; the refusals passing the threshold raise that domain's alarm.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.mail.mailer import Mailer
from engine.mail.templates import TemplateLibrary
from engine.runtime.bounce_processing import intake
from engine.runtime.bounce_receiver import BounceReceiver
from engine.settings import BounceReceiverSettings, BounceSettings, Settings, SmtpSettings
from engine.store import domain_alarms, tables
from engine.store import leads as store
from engine.store.database import create_engine_for, upgrade
from engine.views import lead_timeline
from tests.acceptance.conftest import queue_email
from tests.mail_servers import Dovecot, Postfix, require

EMAILS = Path(__file__).resolve().parent.parent / "fixtures" / "emails"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
BLOCKLISTED = "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
BOUNCE_DOMAIN = "bounce.example"  # return paths are bounces+TOKEN@ here; postfix hands its mail to the receiver


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    upgrade(url)
    db = create_engine_for(url)
    yield db
    db.dispose()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    require()
    with Dovecot({"ann": None, "full": 1}) as server:
        yield server


def statuses(engine: sa.Engine) -> dict[tuple[str, str], str]:
    o, leads = tables.outbox, tables.leads
    with engine.connect() as conn:
        rows = conn.execute(sa.select(leads.c.email, o.c.step, o.c.status).join(leads, leads.c.id == o.c.lead_id))
        return {(r.email, r.step): r.status for r in rows}


def reports(engine: sa.Engine) -> dict[str, tuple[str | None, str | None, str | None, str | None]]:
    b, leads = tables.bounce_reports, tables.leads
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(leads.c.email, b.c.failure_class, b.c.status, b.c.action, b.c.matched_by).join(
                leads, leads.c.id == b.c.lead_id
            )
        )
        return {r.email: (r.failure_class, r.status, r.action, r.matched_by) for r in rows}


def alarmed(engine: sa.Engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        return [(a.domain, a.reports) for a in domain_alarms.active(conn, NOW)]


def count_reports(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(tables.bounce_reports)).scalar_one())


async def send_and_hear_back(engine: sa.Engine, dovecot: Dovecot, expected_reports: int) -> None:
    # Two refusals of the sender from one domain within the hour raise its alarm.
    bounces = BounceSettings(domain=BOUNCE_DOMAIN, receiver=BounceReceiverSettings(port=0), sender_fault_alarm=2)
    settings = Settings(bounces=bounces)
    receiver = BounceReceiver(bounces, intake(engine, bounces, lambda: NOW, settings.signing_keys))
    await receiver.start()
    routes = {
        "mail.example.com": f"lmtp:inet:127.0.0.1:{dovecot.lmtp_port}",
        BOUNCE_DOMAIN: f"lmtp:inet:127.0.0.1:{receiver.port}",
    }
    try:
        with Postfix(routes, remote_refuse={"blocked.example.com": BLOCKLISTED}) as postfix:
            settings = Settings(
                smtp=SmtpSettings(host="127.0.0.1", port=postfix.port, security="none", timeout_s=10), bounces=bounces
            )
            await Mailer(engine, settings, TemplateLibrary(EMAILS)).dispatch(NOW, "127.0.0.1", postfix.port)
            deadline = time.monotonic() + 60
            while count_reports(engine) < expected_reports:
                assert time.monotonic() < deadline, f"reports after 60 s: {reports(engine)}\n{postfix.log()[-3000:]}"
                await asyncio.sleep(0.2)
    finally:
        await receiver.stop(5)


def test_postfixs_own_reports_suppress_a_dead_address_only(engine: sa.Engine, dovecot: Dovecot) -> None:
    for address in ("ghost@mail.example.com", "full@mail.example.com", "ann@mail.example.com", "x@blocked.example.com"):
        queue_email(engine, address, "first", NOW)
    asyncio.run(send_and_hear_back(engine, dovecot, expected_reports=3))

    assert reports(engine) == {
        "ghost@mail.example.com": ("address_gone", "5.1.1", "suppressed", "token"),
        "full@mail.example.com": ("mailbox_trouble", "5.2.2", "soft bounce", "token"),
        "x@blocked.example.com": ("sender_fault", "5.7.1", "failed, lead kept", "token"),
    }
    assert statuses(engine) == {
        ("ghost@mail.example.com", "first"): "bounced",
        ("full@mail.example.com", "first"): "sent",
        ("ann@mail.example.com", "first"): "sent",
        ("x@blocked.example.com", "first"): "failed",
    }
    with engine.connect() as conn:
        suppressed = {a for a in ("ghost", "full", "ann") if store.is_suppressed(conn, f"{a}@mail.example.com")}
        assert suppressed == {"ghost"}
        assert not store.is_suppressed(conn, "x@blocked.example.com")
    assert alarmed(engine) == []  # one refusal of the sender is below the threshold

    # The sequence goes on: the dead address gets no second email; the lead refused for the sender's
    # reputation does.
    for address in ("ghost@mail.example.com", "x@blocked.example.com"):
        queue_email(engine, address, "second", NOW)
    asyncio.run(send_and_hear_back(engine, dovecot, expected_reports=4))
    after = statuses(engine)
    with engine.connect() as conn:
        why = [e.what for e in lead_timeline.read(conn, "ghost@mail.example.com").entries if e.kind == "report"]
    # `funnel lead show` says why the lead gets no more mail, and from which report.
    assert (
        why
        and why[0].startswith("dsn report via lmtp, address_gone 5.1.1 (message ")
        and "by token; suppressed" in why[0]
    )
    assert after[("ghost@mail.example.com", "second")] == "skipped"
    assert after[("x@blocked.example.com", "second")] == "failed"  # refused again, and tried: not suppressed
    assert alarmed(engine) == [("blocked.example.com", 2)]  # the second refusal passes the threshold
