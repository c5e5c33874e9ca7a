"""The dispatcher: outbox rows -> rendered MIME -> SMTP, with the outcome recorded by RFC 5321 meaning.

Invariants 3, 4 and 5: consent is read again right before DATA; a message is marked `sending` in its
own commit before DATA; a failure before DATA is retried (4xx with capped backoff) or is final (5xx);
a connection lost after DATA leaves the message `sending`, which the sweep turns into `unknown`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, formataddr
from typing import Any

import aiosmtplib
import sqlalchemy as sa

from engine import outbox, store
from engine.links import Links
from engine.settings import Settings
from engine.templates import RenderedEmail, Sender, TemplateLibrary, lead_fields

log = logging.getLogger("engine.mailer")

HARD_BOUNCE = {550, 551, 553}
MAX_BACKOFF = timedelta(hours=6)
MAX_ATTEMPTS = 12
LEASE_CHUNK = 20


@dataclass
class DispatchResult:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def work(self) -> int:
        return self.sent + self.deferred + self.failed + self.unknown + self.skipped

    def add(self, other: DispatchResult) -> None:
        self.sent += other.sent
        self.deferred += other.deferred
        self.failed += other.failed
        self.unknown += other.unknown
        self.skipped += other.skipped
        self.errors.extend(other.errors)


def backoff(attempts: int) -> timedelta:
    """Capped exponential backoff: 1 min, 2, 4, ... up to 6 h."""
    return min(timedelta(minutes=2 ** max(attempts - 1, 0)), MAX_BACKOFF)


def message_id(item: outbox.OutboxItem, domain: str) -> str:
    """One Message-ID per (lead, funnel, step), the same on every retry."""
    digest = hashlib.sha256(f"{item.lead_id}:{item.funnel_id}:{item.step}".encode()).hexdigest()[:24]
    return f"<{digest}@{domain}>"


def build_message(
    rendered: RenderedEmail, item: outbox.OutboxItem, settings: Settings, links: Links, now: datetime
) -> tuple[EmailMessage, str]:
    sender = settings.sender
    domain = sender.address.rpartition("@")[2] or "localhost"
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = formataddr((sender.name, rendered.from_ or sender.address))
    msg["To"] = item.email
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(now)
    mid = message_id(item, domain)
    msg["Message-ID"] = mid
    reply_to = rendered.reply_to or sender.reply_to
    if reply_to:
        msg["Reply-To"] = reply_to
    if not item.transactional:
        https = links.unsubscribe_url(item.email, item.funnel_id)
        mailto = f"mailto:{sender.address}?subject=unsubscribe"
        msg["List-Unsubscribe"] = f"<{https}>, <{mailto}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["X-Funnel"] = f"{item.funnel_id}/{item.step}"
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg, mid


def _may_send(consent: str | None, suppressed: bool, transactional: bool) -> bool:
    """Marketing email needs a subscribed lead; a transactional one (the double opt-in confirmation, the
    report the lead asked for) may also go to a lead whose opt-in is pending. Never to a suppressed one."""
    if suppressed or consent is None:
        return False
    return consent == "subscribed" or (transactional and consent == "pending")


class Mailer:
    def __init__(
        self,
        engine: sa.Engine,
        settings: Settings,
        templates: TemplateLibrary,
        funnel_names: dict[str, str] | None = None,
    ) -> None:
        self.engine = engine
        self.funnel_names = funnel_names or {}
        self.settings = settings
        self.templates = templates
        self.links = Links(settings)
        s = settings.sender
        self.sender = Sender(s.name, s.postal_address, s.website)

    def _smtp(self, host: str, port: int) -> aiosmtplib.SMTP:
        smtp = self.settings.smtp
        return aiosmtplib.SMTP(
            hostname=host,
            port=port,
            timeout=smtp.timeout_s,
            use_tls=smtp.security == "ssl",
            start_tls=smtp.security == "starttls",
            username=smtp.username,
            password=smtp.password.get_secret_value() if smtp.password else None,
        )

    def sweep(self, now: datetime) -> int:
        # A live worker never holds a message in `sending` longer than the SMTP timeout.
        grace = timedelta(seconds=self.settings.smtp.timeout_s * 2 + 5)
        with self.engine.begin() as conn:
            return outbox.sweep_stale_sending(conn, now - grace)

    def lease(self) -> timedelta:
        """How long leased messages stay with this worker: enough for a chunk's envelopes even when
        each one runs into the SMTP timeout once. A killed worker's chunk waits this long, no more."""
        return timedelta(seconds=self.settings.smtp.timeout_s * 4 + 5)

    async def dispatch(self, now: datetime, host: str, port: int, limit: int = 200) -> DispatchResult:
        result = DispatchResult()
        result.unknown += self.sweep(now)
        smtp: aiosmtplib.SMTP | None = None
        left = limit
        try:
            # Leased a few at a time, so a short lease covers what this worker is about to do.
            while left > 0:
                with self.engine.begin() as conn:
                    items = outbox.lease_batch(conn, now, min(left, LEASE_CHUNK), self.lease())
                if not items:
                    break
                left -= len(items)
                for item in items:
                    smtp = await self._deliver(item, now, host, port, smtp, result)
        finally:
            if smtp is not None and smtp.is_connected:
                try:
                    await smtp.quit()
                except aiosmtplib.SMTPException:
                    smtp.close()
        return result

    def render(self, item: outbox.OutboxItem) -> RenderedEmail:
        context: dict[str, Any] = {
            "lead": lead_fields(item.email, item.attributes),
            "sender": self.sender,
            "funnel": {"id": item.funnel_id, "name": self.funnel_names.get(item.funnel_id, item.funnel_id)},
            "unsubscribe_url": self.links.unsubscribe_url(item.email, item.funnel_id),
            "preferences_url": self.links.preferences_url(item.email),
        }
        return self.templates.render(item.template, context)

    async def _deliver(
        self,
        item: outbox.OutboxItem,
        now: datetime,
        host: str,
        port: int,
        smtp: aiosmtplib.SMTP | None,
        result: DispatchResult,
    ) -> aiosmtplib.SMTP | None:
        consent: str | None = item.consent_status
        suppressed = item.suppressed
        if suppressed or (consent not in ("subscribed",) and not (item.transactional and consent == "pending")):
            with self.engine.begin() as conn:
                outbox.finish(conn, item.id, "skipped", now, skip_reason="no-consent", claimed_at=None)
            result.skipped += 1
            return smtp
        try:
            rendered = self.render(item)
            msg, mid = build_message(rendered, item, self.settings, self.links, now)
            payload = msg.as_bytes()
        except Exception as exc:
            with self.engine.begin() as conn:
                outbox.finish(conn, item.id, "failed", now, last_error=f"render: {exc}", claimed_at=None)
            result.failed += 1
            result.errors.append(f"{item.template}: {exc}")
            return smtp
        sender_address = self.settings.sender.address
        try:
            if smtp is None or not smtp.is_connected:
                smtp = self._smtp(host, port)
                await smtp.connect()
            else:
                await smtp.rset()
            await smtp.mail(sender_address)
            await smtp.rcpt(item.email)
        except aiosmtplib.SMTPResponseException as exc:
            self._refused(item, exc.code, exc.message, now, result)
            return smtp if smtp is not None and smtp.is_connected else None
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Nothing was handed over: safe to try again later.
            with self.engine.begin() as conn:
                outbox.defer(conn, item.id, now + backoff(item.attempts + 1), f"connect: {exc}", True)
            result.deferred += 1
            return None
        # Consent again, at the last moment: an unsubscribe that landed while this batch was leased wins.
        with self.engine.begin() as conn:
            consent, suppressed = outbox.consent_now(conn, item.lead_id)
            if not _may_send(consent, suppressed, item.transactional):
                outbox.finish(conn, item.id, "skipped", now, skip_reason="no-consent", claimed_at=None)
                result.skipped += 1
                await smtp.rset()
                return smtp
            if not outbox.mark_sending(conn, item.id, now, mid):
                await smtp.rset()
                return smtp
        try:
            await smtp.data(payload)
        except aiosmtplib.SMTPDataError as exc:
            # The server answered: it did not take the message, so the outcome is clear.
            self._refused(item, exc.code, exc.message, now, result, expect=("sending",))
            return smtp if smtp.is_connected else None
        except (aiosmtplib.SMTPException, OSError) as exc:
            with self.engine.begin() as conn:
                outbox.finish(conn, item.id, "unknown", now, expect=("sending",), last_error=f"after DATA: {exc}")
            result.unknown += 1
            return None
        with self.engine.begin() as conn:
            # A 250 settles it, even for a message the sweep already gave up on as `unknown`.
            outbox.finish(conn, item.id, "sent", now, expect=("sending", "unknown"), last_error=None)
        result.sent += 1
        return smtp

    def _refused(
        self,
        item: outbox.OutboxItem,
        code: int,
        text: str,
        now: datetime,
        result: DispatchResult,
        expect: tuple[str, ...] = outbox.PENDING,
    ) -> None:
        error = f"{code} {text}"
        with self.engine.begin() as conn:
            if 400 <= code < 500 and item.attempts + 1 < MAX_ATTEMPTS:
                outbox.defer(conn, item.id, now + backoff(item.attempts + 1), error, True, expect=expect)
                result.deferred += 1
            elif code in HARD_BOUNCE:
                outbox.finish(conn, item.id, "bounced", now, expect=expect, last_error=error, claimed_at=None)
                store.suppress(conn, item.email, "bounced", now=now)
                result.failed += 1
            else:
                outbox.finish(conn, item.id, "failed", now, expect=expect, last_error=error, claimed_at=None)
                result.failed += 1
