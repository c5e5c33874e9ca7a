"""What each SMTP outcome does to a message, against a real aiosmtpd server scripted per recipient
(invariants 3 and 4): 4xx before DATA is retried later, 5xx is final (550 also suppresses the
address), a connection lost before DATA is retried, one lost after DATA or a reply that never comes is
`unknown` and never resent, and one recipient's failure never makes another's message go twice."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from engine.mail.mailer import MAX_ATTEMPTS, Mailer
from engine.mail.templates import TemplateLibrary
from engine.settings import Settings, SmtpSettings
from engine.store import leads as store
from engine.store import tables
from engine.store.database import create_engine_for
from engine.store.decisions import apply_decisions
from tests.acceptance.conftest import queue_email
from tests.smtp_server import _free_port

EMAILS = Path(__file__).resolve().parent.parent / "fixtures" / "emails"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
TIMEOUT_S = 1.0


# What a relay says about an address that does not exist, by code.
REFUSALS = {"550": "5.1.1 <x>: Recipient address rejected: User unknown", "551": "5.1.6 User not local"}


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
            return f"{code} {REFUSALS.get(code, 'scripted refusal')}"
        if local == "blocked":
            return "550 5.7.1 Client host [192.0.2.1] blocked using zen.spamhaus.org"
        if local == "bare":
            return "550 Requested action not taken"
        if local == "drop-rcpt":
            server.transport.close()
            return "421 closing"
        if local == "garble":  # a reply no SMTP client can read: the library raises what it raises
            return "garbled\x00 reply without a code"
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
def test_a_4xx_refusal_before_data_is_retried_later(
    engine: sa.Engine, scripted: tuple[ScriptedHandler, int], code: str
) -> None:
    handler, port = scripted
    queue(engine, [f"rcpt-{code}@example.com", "ok@example.com"])
    dispatch(engine, port)
    result = outcome(engine)
    status, attempts, error = result[f"rcpt-{code}@example.com"]
    assert (status, attempts) == ("deferred", 1) and error is not None and error.startswith(code)
    assert result["ok@example.com"][0] == "sent"
    assert handler.accepted == ["ok@example.com"]
    with engine.connect() as conn:
        retry_at = conn.execute(
            sa.select(tables.outbox.c.next_attempt_at).where(tables.outbox.c.status == "deferred")
        ).scalar_one()
    assert retry_at > NOW  # requeued with a backoff, not skipped and not hammered


def test_550_is_a_hard_bounce_that_suppresses_the_address(
    engine: sa.Engine, scripted: tuple[ScriptedHandler, int]
) -> None:
    _, port = scripted
    queue(engine, ["rcpt-550@example.com", "ok@example.com"])
    dispatch(engine, port)
    result = outcome(engine)
    assert result["rcpt-550@example.com"][0] == "bounced"
    assert result["ok@example.com"][0] == "sent"
    with engine.connect() as conn:
        assert store.is_suppressed(conn, "rcpt-550@example.com")
        assert not store.is_suppressed(conn, "ok@example.com")


def test_a_550_for_the_senders_reputation_or_for_no_stated_reason_fails_the_message_and_keeps_the_address(
    engine: sa.Engine, scripted: tuple[ScriptedHandler, int]
) -> None:
    """Invariant 4: a relay answering `550 5.7.1 ... blocked using a blocklist` must not suppress every lead
    it touches; nor may a bare 550 whose words say nothing about the address."""
    _, port = scripted
    queue(engine, ["blocked@example.com", "bare@example.com"])
    dispatch(engine, port)
    result = outcome(engine)
    assert result["blocked@example.com"][:2] == ("failed", 1)
    assert result["bare@example.com"][:2] == ("failed", 1)
    assert "5.7.1" in (result["blocked@example.com"][2] or "")
    with engine.connect() as conn:
        assert not store.is_suppressed(conn, "blocked@example.com")
        assert not store.is_suppressed(conn, "bare@example.com")


@pytest.mark.parametrize("code", ["552", "554"])
def test_a_5xx_reply_to_data_is_a_final_failure(
    engine: sa.Engine, scripted: tuple[ScriptedHandler, int], code: str
) -> None:
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
def test_no_reply_after_data_is_unknown_and_never_resent(
    engine: sa.Engine, scripted: tuple[ScriptedHandler, int], address: str
) -> None:
    handler, port = scripted
    queue(engine, [address, "ok@example.com"])
    dispatch(engine, port)
    dispatch(engine, port)
    result = outcome(engine)
    assert result[address][0] == "unknown"
    assert result["ok@example.com"][0] == "sent"
    # The server got the unknown message once and the other one once: no resend of either.
    assert sorted(handler.accepted) == sorted([address, "ok@example.com"])


def _kept_from_before(engine: sa.Engine, address: str, step: str) -> None:
    """A lead row written before the address rules (as the old entries stored it), with a message due."""
    from engine.core.journey import Decision, Enrollment, SendEmail

    with engine.begin() as conn:
        lead_id = conn.execute(
            sa.insert(tables.leads)
            .values(email=address, attributes={}, tags=[], score=0, consent_status="subscribed")
            .values(created_at=NOW, updated_at=NOW)
            .returning(tables.leads.c.id)
        ).scalar_one()
        state = Enrollment("f", "v1", "active", "s", None, "ready", NOW, None, NOW, NOW)
        lead = store.get_lead(conn, lead_id)
        assert lead is not None
        command = SendEmail(step, "lead-magnet/report", "s", NOW)
        apply_decisions(conn, [(lead_id, Decision(state, lead, (command,)))], NOW)


def test_rows_kept_from_before_the_address_rules_go_out_in_ascii_or_fail_alone(
    engine: sa.Engine, scripted: tuple[ScriptedHandler, int]
) -> None:
    handler, port = scripted
    _kept_from_before(engine, "idn@bücher.example", "idn")  # an IDN domain kept in Unicode
    _kept_from_before(engine, "erased <erased1@example.com>", "named")  # typed with a display name
    _kept_from_before(engine, "josé@example.com", "utf8")  # a local part only SMTPUTF8 can carry
    with engine.begin() as conn:
        store.suppress(conn, "erased1@example.com", "erased")
    queue(engine, ["ok@example.com"])
    dispatch(engine, port)
    result = outcome(engine)
    assert result["idn@bücher.example"][:2] == ("sent", 1)
    assert sorted(handler.accepted) == ["idn@xn--bcher-kva.example", "ok@example.com"]  # RCPT in ASCII
    for kept, why in (("erased <erased1@example.com>", "display name"), ("josé@example.com", "SMTPUTF8")):
        status, _, error = result[kept]
        assert status == "failed" and error is not None and why in error, result[kept]
    dispatch(engine, port)  # each reached its final state: nothing is tried again
    assert len(handler.accepted) == 2


def due_again(engine: sa.Engine) -> datetime | None:
    o = tables.outbox
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.min(o.c.next_attempt_at)).where(o.c.status.in_(("queued", "deferred")))
        ).scalar_one()


def test_a_message_whose_sending_raises_counts_its_attempts_and_ends_failed_while_the_others_go(
    engine: sa.Engine, scripted: tuple[ScriptedHandler, int]
) -> None:
    """A relay whose answer to RCPT no SMTP client can read makes the library raise. The message is not
    left leased: every try counts an attempt, and after the budget it is `failed` with a one-line
    reason."""
    handler, port = scripted
    odd = "garble@example.com"
    queue(engine, [odd, "ok@example.com", "ok2@example.com"])
    settings = Settings(smtp=SmtpSettings(host="127.0.0.1", port=port, security="none", timeout_s=TIMEOUT_S))
    mailer = Mailer(engine, settings, TemplateLibrary(EMAILS))
    first = asyncio.run(mailer.dispatch(NOW, "127.0.0.1", port))
    result = outcome(engine)
    assert result["ok@example.com"][0] == result["ok2@example.com"][0] == "sent"
    status, attempts, error = result[odd]
    assert (status, attempts) == ("deferred", 1), result[odd]
    assert error is not None and "\n" not in error and "Malformed SMTP response" in error
    assert (first.sent, first.deferred) == (2, 1)
    rounds = 1
    while (when := due_again(engine)) is not None:
        asyncio.run(mailer.dispatch(when, "127.0.0.1", port))
        rounds += 1
        assert rounds <= MAX_ATTEMPTS, outcome(engine)[odd]
    status, attempts, error = outcome(engine)[odd]
    assert (status, attempts, rounds) == ("failed", MAX_ATTEMPTS, MAX_ATTEMPTS), error
    assert error is not None and "\n" not in error and "Malformed SMTP response" in error
    assert sorted(handler.accepted) == ["ok2@example.com", "ok@example.com"]


def test_a_message_that_becomes_unknown_is_logged_with_its_id(
    engine: sa.Engine, scripted: tuple[ScriptedHandler, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, port = scripted
    queue(engine, ["drop-data@example.com", "ok@example.com"])
    with caplog.at_level(logging.INFO, logger="engine"):
        dispatch(engine, port)
    with engine.connect() as conn:
        (message,) = conn.execute(sa.select(tables.outbox.c.id).where(tables.outbox.c.status == "unknown")).scalars()
    said = [r for r in caplog.records if "unknown" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert said[0].levelno == logging.WARNING
    assert f"message {message} " in said[0].getMessage() and "f/step-0" in said[0].getMessage()


def test_a_message_left_sending_by_a_dead_worker_is_logged_when_it_becomes_unknown(
    engine: sa.Engine, scripted: tuple[ScriptedHandler, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, port = scripted
    queue(engine, ["lost@example.com"])
    o = tables.outbox
    with engine.begin() as conn:
        conn.execute(sa.update(o).values(status="sending", claimed_at=NOW - timedelta(hours=1)))
        (message,) = conn.execute(sa.select(o.c.id)).scalars()
    with caplog.at_level(logging.INFO, logger="engine"):
        dispatch(engine, port)
    assert outcome(engine)["lost@example.com"][0] == "unknown"
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"message {message} " in line and "unknown" in line for line in said), said


OTHERS = "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
TERMINATE = f"SELECT pg_terminate_backend(pid) {OTHERS}"
SESSIONS = f"SELECT count(*) {OTHERS}"


class CuttingHandler(ScriptedHandler):
    """At RCPT for `cut@...`, the database server ends every session of the engine's database (a
    PostgreSQL restart, a failover), right before the engine claims that message. It waits first until
    the message before it is recorded `sent`: the engine writes outcomes in the background and retries a
    write that fails, so a write still under way would meet the cut instead of the claim, and the
    claim would find the database back."""

    def __init__(self, admin: sa.Engine, database: str, watch: sa.Engine) -> None:
        super().__init__()
        self.admin, self.database, self.watch = admin, database, watch
        self.armed = True

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.armed and address.startswith("cut@"):
            for _ in range(200):
                if outcome(self.watch).get("ok@example.com", ("",))[0] == "sent":
                    break
                await asyncio.sleep(0.05)
            with self.admin.connect() as conn:
                conn.exec_driver_sql(TERMINATE, (self.database,))
                for _ in range(100):
                    if not conn.exec_driver_sql(SESSIONS, (self.database,)).scalar_one():
                        break
                    await asyncio.sleep(0.05)
        return await super().handle_RCPT(server, session, envelope, address, options)


def test_a_database_failure_while_claiming_spends_no_attempt_and_is_reported_once(
    postgres_url: str, postgres_admin: sa.Engine
) -> None:
    """The database, not the message: the claim fails, the message stays leased with no attempt spent,
    the round reports the database failure (the runner says it once, as an outage), and the message goes
    once the lease has run out. The outcomes already in hand are written when the database is back."""
    engine = create_engine_for(postgres_url)
    watch = sa.create_engine(sa.make_url(postgres_url), poolclass=sa.NullPool)  # no pooled session to cut
    handler = CuttingHandler(postgres_admin, sa.make_url(postgres_url).database or "", watch)
    port = _free_port("127.0.0.1")
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=60)
    controller.start()
    try:
        queue(engine, ["ok@example.com", "cut@example.com"])
        smtp = SmtpSettings(host="127.0.0.1", port=port, security="none", timeout_s=TIMEOUT_S, connections=1)
        mailer = Mailer(engine, Settings(smtp=smtp), TemplateLibrary(EMAILS))
        first = asyncio.run(mailer.dispatch(NOW, "127.0.0.1", port))
        after_first = outcome(engine)
        handler.armed = False  # the database stays up from now on
        second = asyncio.run(mailer.dispatch(NOW + mailer.lease() + timedelta(seconds=1), "127.0.0.1", port))
        after_second = outcome(engine)
    finally:
        controller.stop()
        engine.dispose()
        watch.dispose()
    assert isinstance(first.database_error, sa.exc.DBAPIError)
    assert after_first["ok@example.com"][0] == "sent"
    assert after_first["cut@example.com"][:2] == ("queued", 0)
    assert second.database_error is None and second.sent == 1
    assert after_second["cut@example.com"][:2] == ("sent", 1)
    assert sorted(handler.accepted) == ["cut@example.com", "ok@example.com"]


def test_a_message_the_screen_cannot_judge_spends_its_attempts_and_the_others_go(
    engine: sa.Engine, scripted: tuple[ScriptedHandler, int]
) -> None:
    """A lead's time zone that no longer exists (stored before the engine checked zones, or dropped by a
    tzdata update) makes the timing rules raise for that lead's message: it fails alone, attempt by
    attempt, and the messages leased with it go."""
    handler, port = scripted
    queue(engine, ["gone@example.com", "ok@example.com", "ok2@example.com"])
    with engine.begin() as conn:
        conn.execute(
            sa.update(tables.leads).where(tables.leads.c.email == "gone@example.com").values(timezone="Mars/Olympus")
        )
    smtp = SmtpSettings(host="127.0.0.1", port=port, security="none", timeout_s=TIMEOUT_S)
    settings = Settings(smtp=smtp, delivery={"quiet_hours": "21:00-08:00"})
    mailer = Mailer(engine, settings, TemplateLibrary(EMAILS))
    asyncio.run(mailer.dispatch(NOW, "127.0.0.1", port))
    result = outcome(engine)
    assert result["ok@example.com"][0] == result["ok2@example.com"][0] == "sent"
    status, attempts, error = result["gone@example.com"]
    assert (status, attempts) == ("deferred", 1) and error is not None and "Mars/Olympus" in error
    rounds = 1
    while (when := due_again(engine)) is not None:
        asyncio.run(mailer.dispatch(when, "127.0.0.1", port))
        rounds += 1
        assert rounds <= MAX_ATTEMPTS
    assert outcome(engine)["gone@example.com"][:2] == ("failed", MAX_ATTEMPTS)
    assert sorted(handler.accepted) == ["ok2@example.com", "ok@example.com"]


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
    assert (status, attempts) == ("failed", 1)
    assert error == (
        f"render: lead-magnet/huge: {(emails / 'lead-magnet' / 'huge.md').as_posix()}:6: center(5,000,000) would"
        " build more than 1,000,000 characters (the most a template may build or write)"
    )
    assert sorted(handler.accepted) == ["first@example.com", "last@example.com"]
