"""What each SMTP outcome does to a message, against a real aiosmtpd server scripted per recipient
(invariants 3 and 4): 4xx before DATA is retried later, 5xx is final (550 also suppresses the
address), a connection lost before DATA is retried, one lost after DATA or a reply that never comes is
`unknown` and never resent, and one recipient's failure never makes another's message go twice."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from engine import store, tables
from engine.mailer import Mailer
from engine.settings import Settings, SmtpSettings
from engine.templates import TemplateLibrary
from tests.acceptance.conftest import queue_email
from tests.smtp_server import _free_port

EMAILS = Path(__file__).resolve().parent.parent / "fixtures" / "emails"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
TIMEOUT_S = 1.0


class ScriptedHandler:
    """Answers by the recipient's local part: `rcpt-450@...` gets 450 at RCPT, `data-552@...` gets 552
    after DATA, `drop-rcpt@...` / `drop-data@...` lose the connection there, `stall@...` never replies
    to DATA. Everyone else is accepted."""

    def __init__(self) -> None:
        self.accepted: list[str] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        local = address.split("@")[0]
        if local.startswith("rcpt-"):
            code = local.removeprefix("rcpt-")
            return f"{code} scripted refusal"
        if local == "drop-rcpt":
            server.transport.close()
            return "421 closing"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        local = envelope.rcpt_tos[0].split("@")[0]
        if local.startswith("data-"):
            return f"{local.removeprefix('data-')} scripted refusal"
        if local == "drop-data":
            self.accepted.append(envelope.rcpt_tos[0])  # the server has it; the client never hears so
            server.transport.close()
            return "250 never heard"
        if local == "stall":
            self.accepted.append(envelope.rcpt_tos[0])
            await asyncio.sleep(TIMEOUT_S * 4)
            return "250 too late"
        self.accepted.append(envelope.rcpt_tos[0])
        return "250 OK"


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedHandler, int]]:
    handler = ScriptedHandler()
    port = _free_port("127.0.0.1")
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=60)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def queue(engine: sa.Engine, addresses: list[str]) -> None:
    for i, address in enumerate(addresses):
        queue_email(engine, address, f"step-{i}", NOW)


def outcome(engine: sa.Engine) -> dict[str, tuple[str, int, str | None]]:
    o, leads = tables.outbox, tables.leads
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(leads.c.email, o.c.status, o.c.attempts, o.c.last_error).join(leads, leads.c.id == o.c.lead_id)
        ).all()
    return {r.email: (r.status, r.attempts, r.last_error) for r in rows}


def dispatch(engine: sa.Engine, port: int) -> None:
    settings = Settings(smtp=SmtpSettings(host="127.0.0.1", port=port, security="none", timeout_s=TIMEOUT_S))
    mailer = Mailer(engine, settings, TemplateLibrary(EMAILS))
    asyncio.run(mailer.dispatch(NOW, "127.0.0.1", port))


@pytest.mark.parametrize("code", ["421", "450", "451", "452", "454"])
def test_a_4xx_refusal_before_data_is_retried_later(engine: sa.Engine, scripted: tuple[ScriptedHandler, int],
                                                    code: str) -> None:
    handler, port = scripted
    queue(engine, [f"rcpt-{code}@example.com", "ok@example.com"])
    dispatch(engine, port)
    result = outcome(engine)
    status, attempts, error = result[f"rcpt-{code}@example.com"]
    assert (status, attempts) == ("deferred", 1) and error is not None and error.startswith(code)
    assert result["ok@example.com"][0] == "sent"
    assert handler.accepted == ["ok@example.com"]
    with engine.connect() as conn:
        retry_at = conn.execute(sa.select(tables.outbox.c.next_attempt_at).where(
            tables.outbox.c.status == "deferred")).scalar_one()
    assert retry_at > NOW  # requeued with a backoff, not skipped and not hammered


def test_550_is_a_hard_bounce_that_suppresses_the_address(engine: sa.Engine,
                                                          scripted: tuple[ScriptedHandler, int]) -> None:
    _, port = scripted
    queue(engine, ["rcpt-550@example.com", "ok@example.com"])
    dispatch(engine, port)
    result = outcome(engine)
    assert result["rcpt-550@example.com"][0] == "bounced"
    assert result["ok@example.com"][0] == "sent"
    with engine.connect() as conn:
        assert store.is_suppressed(conn, "rcpt-550@example.com")
        assert not store.is_suppressed(conn, "ok@example.com")


@pytest.mark.parametrize("code", ["552", "554"])
def test_a_5xx_reply_to_data_is_a_final_failure(engine: sa.Engine, scripted: tuple[ScriptedHandler, int],
                                               code: str) -> None:
    handler, port = scripted
    queue(engine, [f"data-{code}@example.com", "ok@example.com"])
    dispatch(engine, port)
    result = outcome(engine)
    assert result[f"data-{code}@example.com"][0] == "failed"
    assert result["ok@example.com"][0] == "sent"
    dispatch(engine, port)  # nothing is tried again
    assert handler.accepted == ["ok@example.com"]


def test_a_connection_lost_before_data_is_retried(engine: sa.Engine, scripted: tuple[ScriptedHandler, int]) -> None:
    handler, port = scripted
    queue(engine, ["drop-rcpt@example.com"])
    dispatch(engine, port)
    assert outcome(engine)["drop-rcpt@example.com"][0] == "deferred"
    assert handler.accepted == []


@pytest.mark.parametrize("address", ["drop-data@example.com", "stall@example.com"])
def test_no_reply_after_data_is_unknown_and_never_resent(engine: sa.Engine, scripted: tuple[ScriptedHandler, int],
                                                        address: str) -> None:
    handler, port = scripted
    queue(engine, [address, "ok@example.com"])
    dispatch(engine, port)
    dispatch(engine, port)
    result = outcome(engine)
    assert result[address][0] == "unknown"
    assert result["ok@example.com"][0] == "sent"
    # The server got the unknown message once and the other one once: no resend of either.
    assert sorted(handler.accepted) == sorted([address, "ok@example.com"])


@pytest.mark.parametrize("render_processes", [0, 1])
def test_a_template_past_the_bounds_fails_its_own_message_and_the_round_goes_on(
    engine: sa.Engine, scripted: tuple[ScriptedHandler, int], tmp_path: Path, render_processes: int
) -> None:
    handler, port = scripted
    emails = tmp_path / "emails"
    shutil.copytree(EMAILS, emails)
    (emails / "lead-magnet" / "huge.md").write_text(
        "---\nsubject: Big\n---\nHello,\n\n{{ lead.email | center(5000000) }}\n\n{{ unsubscribe_url }}\n"
    )
    queue_email(engine, "first@example.com", "step-0", NOW)
    queue_email(engine, "huge@example.com", "step-1", NOW, template="lead-magnet/huge")
    queue_email(engine, "last@example.com", "step-2", NOW)
    settings = Settings(
        smtp=SmtpSettings(host="127.0.0.1", port=port, security="none", timeout_s=TIMEOUT_S),
        render_processes=render_processes,
    )
    mailer = Mailer(engine, settings, TemplateLibrary(emails))
    try:
        result = asyncio.run(mailer.dispatch(NOW, "127.0.0.1", port))
    finally:
        mailer.close()
    assert (result.sent, result.failed) == (2, 1)
    status, attempts, error = outcome(engine)["huge@example.com"]
    assert (status, attempts) == ("failed", 0)
    assert error == (
        f"render: lead-magnet/huge: {(emails / 'lead-magnet' / 'huge.md').as_posix()}:6: center(5,000,000) would"
        " build more than 1,000,000 characters (the most a template may build or write)"
    )
    assert sorted(handler.accepted) == ["first@example.com", "last@example.com"]
