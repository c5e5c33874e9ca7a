"""Delivery against a real aiosmtpd server: a bounded pool of reused connections, the global and
per-domain rate limits, a domain that asks us to slow down, and the timing rules across funnels (quiet
hours, a daily cap in the lead's zone). Whatever holds a message back requeues it: nothing is skipped,
nothing is sent twice."""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dkim  # type: ignore[import-untyped]
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from engine.mail.mailer import DispatchResult, Mailer
from engine.mail.renderpool import RenderPool
from engine.mail.templates import TemplateLibrary
from engine.settings import Settings
from engine.store import tables
from tests.acceptance.conftest import queue_email
from tests.smtp_server import _free_port

EMAILS = Path(__file__).resolve().parent.parent / "fixtures" / "emails"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # 11:00 in Berlin


class CountingHandler:
    """Accepts everything, slowly enough that concurrent sessions overlap; counts sessions, the most
    DATA commands in flight at once, and what each recipient got. `throttle-<n>@` addresses get a 421
    at RCPT the first n times."""

    def __init__(self, data_delay: float = 0.0) -> None:
        self.data_delay = data_delay
        self.sessions: set[int] = set()
        self.in_data = 0
        self.most_in_data = 0
        self.received: Counter[tuple[str, str]] = Counter()
        self.refusals: Counter[str] = Counter()
        self.raw: list[bytes] = []

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions.add(id(session))
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        local = address.split("@")[0]
        if local.startswith("throttle-") and self.refusals[address] < int(local.split("-")[1]):
            self.refusals[address] += 1
            return "421 4.7.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_data += 1
        self.most_in_data = max(self.most_in_data, self.in_data)
        try:
            await asyncio.sleep(self.data_delay)
        finally:
            self.in_data -= 1
        self.raw.append(envelope.original_content or envelope.content)
        lines = envelope.content.decode().splitlines()
        funnel_step = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("X-Funnel:")), "")
        self.received[(envelope.rcpt_tos[0], funnel_step)] += 1
        return "250 OK"


def serve(handler: CountingHandler) -> tuple[Controller, int]:
    port = _free_port("127.0.0.1")
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=60)
    controller.start()
    return controller, port


def queue(
    engine: sa.Engine,
    address: str,
    steps: list[tuple[str, str, bool]],
    timezone: str | None = None,
) -> None:
    """Queue emails for one lead: (funnel, step, transactional) each."""
    for funnel, step, transactional in steps:
        queue_email(engine, address, step, NOW, funnel=funnel, transactional=transactional, timezone=timezone)


def statuses(engine: sa.Engine) -> dict[tuple[str, str], tuple[str, int, datetime | None]]:
    o, leads = tables.outbox, tables.leads
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(leads.c.email, o.c.step, o.c.status, o.c.attempts, o.c.next_attempt_at).join(
                leads, leads.c.id == o.c.lead_id
            )
        ).all()
    return {(r.email, r.step): (r.status, r.attempts, r.next_attempt_at) for r in rows}


def dispatch(engine: sa.Engine, port: int, now: datetime = NOW, **settings: Any) -> DispatchResult:
    smtp = {"host": "127.0.0.1", "port": port, "security": "none", "timeout_s": 5.0, "rate_per_s": 10_000}
    smtp.update(settings.pop("smtp", {}))
    mailer = Mailer(engine, Settings(smtp=smtp, **settings), TemplateLibrary(EMAILS))
    return asyncio.run(mailer.dispatch(now, "127.0.0.1", port, limit=1000))


def test_a_bounded_pool_of_reused_connections_sends_each_message_once(engine: sa.Engine) -> None:
    handler = CountingHandler(data_delay=0.02)
    controller, port = serve(handler)
    try:
        for i in range(60):
            queue(engine, f"lead{i}@example.com", [("f", "welcome", False)])
        result = dispatch(engine, port, smtp={"connections": 4})
    finally:
        controller.stop()
    assert result.sent == 60
    assert len(handler.received) == 60 and set(handler.received.values()) == {1}
    # Four sessions carried sixty messages, and they really ran side by side.
    assert len(handler.sessions) == 4
    assert 2 <= handler.most_in_data <= 4


def test_a_connection_is_renewed_after_its_message_quota(engine: sa.Engine) -> None:
    handler = CountingHandler()
    controller, port = serve(handler)
    try:
        for i in range(10):
            queue(engine, f"lead{i}@example.com", [("f", "welcome", False)])
        dispatch(engine, port, smtp={"connections": 1, "messages_per_connection": 3})
    finally:
        controller.stop()
    assert sum(handler.received.values()) == 10
    assert len(handler.sessions) == 4  # 3 + 3 + 3 + 1


def test_the_global_rate_limit_paces_sending(engine: sa.Engine) -> None:
    handler = CountingHandler()
    controller, port = serve(handler)
    try:
        for i in range(30):
            queue(engine, f"lead{i}@example.com", [("f", "welcome", False)])
        started = time.monotonic()
        result = dispatch(engine, port, smtp={"connections": 4, "rate_per_s": 20})
        elapsed = time.monotonic() - started
    finally:
        controller.stop()
    assert result.sent == 30
    # A second's burst (20), then 10 more at 20/s: at least half a second.
    assert elapsed >= 0.45


def test_a_domain_limit_requeues_what_cannot_go_soon_and_sends_it_later_once(engine: sa.Engine) -> None:
    handler = CountingHandler()
    controller, port = serve(handler)
    try:
        for i in range(6):
            queue(engine, f"slow{i}@slow.example", [("f", "welcome", False)])
            queue(engine, f"fast{i}@fast.example", [("f", "welcome", False)])
        limits = {"connections": 2, "domain_rates": {"slow.example": 1}}
        first = dispatch(engine, port, smtp=limits)
        after_first = statuses(engine)
        later = [dispatch(engine, port, NOW + timedelta(minutes=m), smtp=limits) for m in range(1, 8)]
    finally:
        controller.stop()
    fast = {k: v for k, v in after_first.items() if k[0].startswith("fast")}
    slow = {k: v for k, v in after_first.items() if k[0].startswith("slow")}
    assert {s for s, _, _ in fast.values()} == {"sent"}
    # At 1/s, one goes now; the rest would hold a connection for seconds, so they wait in the outbox
    # instead, with no attempt counted, and the other domain is not held up behind them.
    requeued = [v for v in slow.values() if v[0] == "deferred"]
    assert len(requeued) == 5 and all(attempts == 0 for _, attempts, _ in requeued)
    assert first.skipped == 0 and first.failed == 0
    assert sum(r.sent for r in later) == len(requeued)
    assert {s for s, _, _ in statuses(engine).values()} == {"sent"}
    assert sum(handler.received.values()) == 12 and set(handler.received.values()) == {1}


def test_a_throttling_reply_pauses_the_domain_and_the_messages_are_requeued(engine: sa.Engine) -> None:
    handler = CountingHandler()
    controller, port = serve(handler)
    try:
        queue(engine, "throttle-1@busy.example", [("f", "welcome", False)])
        for i in range(4):
            queue(engine, f"other{i}@busy.example", [("f", "welcome", False)])
            queue(engine, f"lead{i}@calm.example", [("f", "welcome", False)])
        dispatch(engine, port, smtp={"connections": 1})
        held = statuses(engine)
        dispatch(engine, port, NOW + timedelta(minutes=5), smtp={"connections": 1})
    finally:
        controller.stop()
    busy = {k[0]: v for k, v in held.items() if k[0].endswith("@busy.example")}
    calm = {k[0]: v for k, v in held.items() if k[0].endswith("@calm.example")}
    assert {s for s, _, _ in calm.values()} == {"sent"}
    assert busy["throttle-1@busy.example"][:2] == ("deferred", 1)  # the refused one counts an attempt
    # The others for that domain were not even tried: requeued, no attempt counted.
    others = [v for k, v in busy.items() if k.startswith("other")]
    assert [v[:2] for v in others] == [("deferred", 0)] * 4
    assert {s for s, _, _ in statuses(engine).values()} == {"sent"}
    assert set(handler.received.values()) == {1} and len(handler.received) == 9


def test_the_daily_cap_and_quiet_hours_hold_across_funnels_in_the_leads_zone(engine: sa.Engine) -> None:
    handler = CountingHandler()
    controller, port = serve(handler)
    rules = {"delivery": {"quiet_hours": "21:00-08:00", "max_per_day": 1}}
    try:
        queue(
            engine,
            "jo@example.com",
            [("lead-magnet", "nurture-1", False), ("webinar", "invite", False), ("lead-magnet", "report", True)],
            timezone="Europe/Berlin",
        )
        first = dispatch(engine, port, **rules)
        after_first = statuses(engine)
        queue(engine, "night@example.com", [("webinar", "invite", False)], timezone="Europe/Berlin")
        # 22:30 in Berlin: quiet hours for the new lead; still the same full day for Jo.
        evening = dispatch(engine, port, datetime(2026, 11, 23, 21, 30, tzinfo=UTC), **rules)
        after_evening = statuses(engine)
        morning = dispatch(engine, port, datetime(2026, 11, 24, 7, 0, tzinfo=UTC), **rules)
    finally:
        controller.stop()
    assert first.sent == 2 and first.deferred == 1  # the report is transactional: the cap does not apply
    held = [v for k, v in after_first.items() if v[0] == "deferred"]
    # Deferred to 08:00 Berlin the next day (07:00 UTC), without counting an attempt.
    assert held == [("deferred", 0, datetime(2026, 11, 24, 7, 0, tzinfo=UTC))]
    assert (evening.sent, evening.deferred) == (0, 1)
    assert after_evening[("night@example.com", "invite")] == ("deferred", 0, datetime(2026, 11, 24, 7, 0, tzinfo=UTC))
    assert morning.sent == 2
    assert {s for s, _, _ in statuses(engine).values()} == {"sent"}
    assert set(handler.received.values()) == {1} and len(handler.received) == 4


def test_render_processes_send_the_same_messages_and_a_broken_template_fails_alone(
    engine: sa.Engine, tmp_path: Path
) -> None:
    emails = tmp_path / "emails"
    shutil.copytree(EMAILS, emails)
    (emails / "lead-magnet" / "broken.md").write_text("---\nsubject: Hi\n---\n{{ lead.email | nosuchfilter }}\n")
    handler = CountingHandler()
    controller, port = serve(handler)
    try:
        for i in range(20):
            queue(engine, f"lead{i}@example.com", [("f", "welcome", False)])
        queue_email(engine, "broken@example.com", "welcome", NOW, template="lead-magnet/broken")
        settings = Settings(
            render_processes=1, smtp={"host": "127.0.0.1", "port": port, "security": "none", "rate_per_s": 10_000}
        )
        mailer = Mailer(engine, settings, TemplateLibrary(emails))
        try:
            result = asyncio.run(mailer.dispatch(NOW, "127.0.0.1", port, limit=1000))
        finally:
            mailer.close()
    finally:
        controller.stop()
    assert (result.sent, result.failed) == (20, 1)
    assert "nosuchfilter" in result.errors[0]
    assert statuses(engine)[("broken@example.com", "welcome")][0] == "failed"
    assert len(handler.received) == 20 and set(handler.received.values()) == {1}


def test_a_render_process_that_dies_costs_its_messages_nothing_and_the_round_goes_on(engine: sa.Engine) -> None:
    """The OS kills the render process (out of memory, an operator's kill): the batch it held is composed
    again in a new process, each message alone, and sent in the same round; no attempt is counted for
    messages that compose fine."""
    handler = CountingHandler()
    controller, port = serve(handler)
    try:
        for i in range(20):
            queue(engine, f"lead{i}@example.com", [("f", "welcome", False)])
        settings = Settings(
            render_processes=1, smtp={"host": "127.0.0.1", "port": port, "security": "none", "rate_per_s": 10_000}
        )
        mailer = Mailer(engine, settings, TemplateLibrary(EMAILS))
        mailer.pool = RenderPool(1, settings, EMAILS, {})
        try:
            asyncio.run(mailer.pool.compose_many([], NOW))  # the process is up
            for process in multiprocessing.active_children():
                os.kill(process.pid, signal.SIGKILL)
                process.join(10)
            result = asyncio.run(mailer.dispatch(NOW, "127.0.0.1", port, limit=1000))
        finally:
            mailer.close()
    finally:
        controller.stop()
    assert (result.sent, result.failed, result.deferred) == (20, 0, 0)
    assert {s for s, _, _ in statuses(engine).values()} == {"sent"}
    assert {a for _, a, _ in statuses(engine).values()} == {1}  # the send itself, nothing more
    assert len(handler.received) == 20 and set(handler.received.values()) == {1}


def test_an_email_that_includes_a_file_outside_the_emails_folder_fails_and_sends_nothing_of_it(
    engine: sa.Engine, tmp_path: Path
) -> None:
    emails = tmp_path / "emails"
    shutil.copytree(EMAILS, emails)
    (tmp_path / ".env").write_text("FUNNEL_SMTP__PASSWORD=hunter2-relay-password\n")
    (emails / "_partials").mkdir()
    (emails / "_partials" / "notes.txt").symlink_to(Path("..", "..", ".env"))
    (emails / "lead-magnet" / "leak.md").write_text(
        "---\nsubject: Hi\n---\nHello.\n\n{% include '_partials/notes.txt' %}\n"
    )
    handler = CountingHandler()
    controller, port = serve(handler)
    try:
        queue(engine, "ok@example.com", [("f", "welcome", False)])
        queue_email(engine, "leak@example.com", "welcome", NOW, template="lead-magnet/leak")
        smtp = {"host": "127.0.0.1", "port": port, "security": "none", "rate_per_s": 10_000}
        mailer = Mailer(engine, Settings(smtp=smtp), TemplateLibrary(emails))
        result = asyncio.run(mailer.dispatch(NOW, "127.0.0.1", port))
    finally:
        controller.stop()
    assert (result.sent, result.failed) == (1, 1)
    [error] = result.errors
    assert f"{(emails / 'lead-magnet/leak.md').as_posix()}:6: " in error and "outside" in error, error
    assert statuses(engine)[("leak@example.com", "welcome")][0] == "failed"
    assert list(handler.received) == [("ok@example.com", "f/welcome")]
    assert not any(b"hunter2" in raw for raw in handler.raw)


def test_a_dkim_signed_email_verifies_at_the_receiver_and_covers_the_unsubscribe_headers(
    engine: sa.Engine, tmp_path: Path
) -> None:
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name.rstrip(b".") == b"mail._domainkey.greenleaf.example" else None

    handler = CountingHandler()
    controller, port = serve(handler)
    try:
        queue(engine, "jo@example.com", [("lead-magnet", "nurture-1", False)])
        result = dispatch(
            engine, port, dkim={"selector": "mail", "domain": "greenleaf.example", "private_key_file": key}
        )
    finally:
        controller.stop()
    assert result.sent == 1
    (raw,) = handler.raw
    assert raw.startswith(b"DKIM-Signature:")
    assert dkim.verify(raw, dnsfunc=dns)
    signed = re.search(rb"h=([^;]+);", raw.replace(b"\r\n", b"").replace(b" ", b"").replace(b"\t", b""))
    assert signed is not None
    headers = signed.group(1).lower().split(b":")
    assert b"list-unsubscribe" in headers and b"list-unsubscribe-post" in headers
    # A relay that rewrites the unsubscribe link breaks the signature.
    tampered = raw.replace(b"List-Unsubscribe: <http", b"List-Unsubscribe: <xttp", 1)
    assert tampered != raw and not dkim.verify(tampered, dnsfunc=dns)
