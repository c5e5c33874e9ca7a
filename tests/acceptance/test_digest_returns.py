"""The daily digest's line about what came back after the relay's 250: the day's hard bounces, soft
bounces and complaints, the complaint rate against the mailbox providers' limits (WARN past 0.1%, and
the 0.3% at which they block bulk senders), and the reports waiting for an operator. The history is
built by the worker, the mailer and the bounce processor with real reports; the digest goes to a real
SMTP server."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from engine.runtime import digest
from engine.settings import Settings
from engine.store.digests import Returns
from tests import bounce_history
from tests.smtp_server import RecordingSmtpServer


def digest_of(engine: Engine, now: datetime) -> str:
    with RecordingSmtpServer() as smtp:
        settings = Settings(
            digest={"to": ["ops@greenleaf.example"], "timezone": "UTC"},
            smtp={"host": smtp.host, "port": smtp.port, "security": "none"},
        )
        outcome = asyncio.run(digest.send(engine, settings, now, smtp.host, smtp.port))
        [message] = smtp.messages()
    assert outcome.endswith("sent")
    return message.body


def test_the_digest_says_the_days_bounces_complaints_and_rate_and_what_waits(engine: Engine, tmp_path: Path) -> None:
    bounce_history.build(engine, tmp_path)
    first = digest_of(engine, bounce_history.T0 + timedelta(days=1) - timedelta(hours=1))
    # 23 November: seven welcome emails, one refused for the sender's reasons (failed), one refused by
    # the relay for its address, one bounced later: four delivered. Back came the dead address, one for
    # an address nobody has, a full mailbox, a complaint.
    assert (
        "Bounces and complaints: 3 hard bounces, 1 soft bounce, 1 complaint; complaint rate 25.00% of 4 delivered "
        "(WARN: past 0.1%; providers block bulk senders past 0.3%)"
    ) in first
    assert "Bounce reports waiting for an operator: 1 (1 new; `funnel bounces unknown` lists them)" in first
    assert "@" not in first.replace("ops@greenleaf.example", "")  # counts, never an address

    second = digest_of(engine, bounce_history.T0 + timedelta(days=2) - timedelta(hours=1))
    assert "0 hard bounces, 0 soft bounces, 1 complaint; complaint rate 25.00% of 4 delivered (WARN" in second
    assert "Bounce reports waiting for an operator: 1 (0 new;" in second


def test_the_complaint_rate_is_judged_against_the_providers_limits() -> None:
    under = digest.returns_lines(Returns(hard_bounces=1, complaints=1, delivered=2000))
    assert under[0] == (
        "Bounces and complaints: 1 hard bounce, 0 soft bounces, 1 complaint; complaint rate 0.05% of 2000 "
        "delivered (under 0.1%; providers block bulk senders past 0.3%)"
    )
    at_limit = digest.returns_lines(Returns(complaints=1, delivered=1000))[0]
    assert "0.10% of 1000 delivered (under 0.1%" in at_limit  # past it, not at it
    assert "(WARN: past 0.1%" in digest.returns_lines(Returns(complaints=2, delivered=1000))[0]
    nothing = digest.returns_lines(Returns(complaints=1))[0]
    assert "none delivered that day (WARN" in nothing
    assert digest.returns_lines(Returns())[0].endswith("complaint rate: none delivered that day")
