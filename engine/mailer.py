"""The dispatcher: outbox rows -> rendered MIME -> a pool of SMTP connections, with every outcome
recorded by its RFC 5321 meaning.

Invariants 3, 4 and 5: consent is read again in the transaction that marks a message `sending`, and
that commit happens before DATA; a failure before DATA is retried (4xx, with capped backoff) or final
(5xx); a connection lost after DATA leaves the message `sending`, which the sweep turns into
`unknown`. A message held back by a rate limit or a timing rule is requeued, never dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiosmtplib
import sqlalchemy as sa

from engine import outbox
from engine.ledger import TAKEN, Ledger, screened
from engine.links import Links
from engine.mime import build_mime, dkim_sign, load_dkim_key
from engine.outbox import Change, OutboxItem
from engine.screen import GO, Later, Never, Screen
from engine.settings import Settings
from engine.templates import RenderedEmail, Sender, TemplateLibrary, lead_fields
from engine.throttle import Throttle
from engine.timing import TimingRules

log = logging.getLogger("engine.mailer")

HARD_BOUNCE = {550, 551, 553}
# Replies big mailbox providers use for "slow down": the whole domain waits, not just one message.
THROTTLING = {421, 451}
MAX_BACKOFF = timedelta(hours=6)
MAX_ATTEMPTS = 12
# How long a connection may wait for a domain's rate-limit slot before the message is requeued instead.
PATIENCE_S = 0.25


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


@dataclass(frozen=True, slots=True)
class Prepared:
    item: OutboxItem
    payload: bytes
    message_id: str


def backoff(attempts: int) -> timedelta:
    """Capped exponential backoff: 1 min, 2, 4, ... up to 6 h."""
    return min(timedelta(minutes=2 ** max(attempts - 1, 0)), MAX_BACKOFF)


def message_id(item: OutboxItem, domain: str) -> str:
    """One Message-ID per (lead, funnel, step), the same on every retry."""
    digest = hashlib.sha256(f"{item.lead_id}:{item.funnel_id}:{item.step}".encode()).hexdigest()[:24]
    return f"<{digest}@{domain}>"


def _deferred(item: OutboxItem, until: datetime, error: str, count_attempt: bool, expect: tuple[str, ...]) -> Change:
    values: dict[str, Any] = {
        "status": "deferred",
        "next_attempt_at": until,
        "claimed_at": None,
        "last_error": error[:2000],
    }
    if count_attempt:
        values["attempts"] = item.attempts + 1
    return Change(item.id, values, expect)


def _final(item: OutboxItem, status: str, error: str | None, expect: tuple[str, ...]) -> Change:
    return Change(item.id, {"status": status, "last_error": error, "claimed_at": None}, expect)


class Mailer:
    def __init__(
        self,
        engine: sa.Engine,
        settings: Settings,
        templates: TemplateLibrary,
        funnel_names: dict[str, str] | None = None,
        funnel_zones: dict[str, str] | None = None,
    ) -> None:
        self.engine = engine
        self.funnel_names = funnel_names or {}
        self.settings = settings
        self.templates = templates
        self.links = Links(settings)
        s = settings.sender
        self.sender = Sender(s.name, s.postal_address, s.website)
        self.domain = s.address.rpartition("@")[2] or "localhost"
        delivery = settings.delivery
        self.screen = Screen(
            TimingRules.parse(delivery.quiet_hours, delivery.max_per_day),
            funnel_zones or {},
            delivery.default_timezone,
        )
        smtp = settings.smtp
        self.throttle = Throttle(smtp.rate_per_s, smtp.domain_rate_per_s, smtp.domain_rates)
        dkim = settings.dkim
        self.dkim_key = load_dkim_key(dkim.private_key_file) if dkim.enabled and dkim.private_key_file else None

    # -- composing ---------------------------------------------------------------------------------

    def render(self, item: OutboxItem) -> RenderedEmail:
        return self.templates.render(item.template, self.context(item))

    def context(self, item: OutboxItem) -> dict[str, Any]:
        return {
            "lead": lead_fields(item.email, item.attributes),
            "sender": self.sender,
            "funnel": {"id": item.funnel_id, "name": self.funnel_names.get(item.funnel_id, item.funnel_id)},
            "unsubscribe_url": self.links.unsubscribe_url(item.email, item.funnel_id),
            "preferences_url": self.links.preferences_url(item.email),
        }

    def compose(self, item: OutboxItem, now: datetime, rendered: RenderedEmail | None = None) -> Prepared:
        """The exact bytes the server gets: headers, text and HTML parts, DKIM signature if configured."""
        context = self.context(item)
        rendered = rendered or self.templates.render(item.template, context)
        sender = self.settings.sender
        mid = message_id(item, self.domain)
        unsubscribe = None
        if not item.transactional:
            unsubscribe = (context["unsubscribe_url"], f"mailto:{sender.address}?subject=unsubscribe")
        payload = build_mime(
            from_name=sender.name,
            from_address=rendered.from_ or sender.address,
            to=item.email,
            subject=rendered.subject,
            date=now,
            message_id=mid,
            reply_to=rendered.reply_to or sender.reply_to,
            list_unsubscribe=unsubscribe,
            extra_headers=[("X-Funnel", f"{item.funnel_id}/{item.step}")],
            text=rendered.text,
            html=rendered.html,
        )
        dkim = self.settings.dkim
        if self.dkim_key is not None and dkim.selector and dkim.domain:
            payload = dkim_sign(payload, selector=dkim.selector, domain=dkim.domain, private_key=self.dkim_key)
        return Prepared(item, payload, mid)

    # -- dispatching -------------------------------------------------------------------------------

    def sweep(self, now: datetime) -> int:
        # A live worker never holds a message in `sending` longer than the SMTP timeout.
        grace = timedelta(seconds=self.settings.smtp.timeout_s * 2 + 5)
        with self.engine.begin() as conn:
            return outbox.sweep_stale_sending(conn, now - grace)

    def lease(self) -> timedelta:
        """How long leased messages stay with this worker: enough for the ones queued for a connection
        even when each runs into the SMTP timeout once, and any rate-limit wait."""
        return timedelta(seconds=self.settings.smtp.timeout_s * 4 + PATIENCE_S * 4 + 5)

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

    async def dispatch(self, now: datetime, host: str, port: int, limit: int = 200) -> DispatchResult:
        """Send up to `limit` due messages over a pool of connections, then return."""
        result = DispatchResult()
        result.unknown += self.sweep(now)
        ledger = Ledger(self.engine, self.screen, now)
        recorder = asyncio.create_task(ledger.run())
        connections = self.settings.smtp.connections
        queue: asyncio.Queue[Prepared | None] = asyncio.Queue(maxsize=connections * 2)
        pool = [
            asyncio.create_task(_Connection(self, ledger, result, now, host, port).run(queue))
            for _ in range(connections)
        ]
        try:
            await self._produce(queue, ledger, now, limit, result)
        finally:
            for _ in pool:
                await queue.put(None)
            await asyncio.gather(*pool, return_exceptions=True)
            await ledger.close()
            await recorder
        return result

    async def _produce(
        self, queue: asyncio.Queue[Prepared | None], ledger: Ledger, now: datetime, limit: int, result: DispatchResult
    ) -> None:
        chunk = max(20, self.settings.smtp.connections * 8)
        left = limit
        while left > 0:
            with self.engine.begin() as conn:
                items = outbox.lease_batch(conn, now, min(left, chunk), self.lease())
                verdicts = self.screen.judge(conn, items, now, fresh=False)
                held = [(i, v) for i, v in zip(items, verdicts, strict=True) if isinstance(v, (Later, Never))]
                outbox.apply(conn, [screened(i.id, v) for i, v in held])
            if not items:
                return
            left -= len(items)
            for _, later_or_never in held:
                if isinstance(later_or_never, Later):
                    result.deferred += 1
                else:
                    result.skipped += 1
            for item, verdict in zip(items, verdicts, strict=True):
                if verdict != GO:
                    continue
                try:
                    prepared = self.compose(item, now)
                except Exception as exc:
                    ledger.record(_final(item, "failed", f"render: {exc}", outbox.PENDING))
                    result.failed += 1
                    result.errors.append(f"{item.template}: {exc}")
                    continue
                await queue.put(prepared)
                # Rendering is CPU work on the loop: let the connections read their replies in between.
                await asyncio.sleep(0)


class _Connection:
    """One SMTP session, reused for message after message; reconnects when the server drops it."""

    def __init__(
        self, mailer: Mailer, ledger: Ledger, result: DispatchResult, now: datetime, host: str, port: int
    ) -> None:
        self.mailer = mailer
        self.ledger = ledger
        self.result = result
        self.now = now
        self.host = host
        self.port = port
        self.smtp: aiosmtplib.SMTP | None = None
        self.sent_here = 0
        self.dirty = False  # an envelope was started and not finished: RSET before the next one

    async def run(self, queue: asyncio.Queue[Prepared | None]) -> None:
        try:
            while (prepared := await queue.get()) is not None:
                try:
                    await self._send(prepared)
                except Exception as exc:
                    # Whatever went wrong, the message is still leased and not `sending`: it is retried
                    # when the lease runs out.
                    log.exception("sending %s failed", prepared.item.id)
                    self.result.errors.append(f"{prepared.item.template}: {exc}")
                    self._drop()
        finally:
            await self._quit()

    async def _send(self, p: Prepared) -> None:
        item, now = p.item, self.now
        wait = self.mailer.throttle.reserve(item.domain, PATIENCE_S)
        if wait is None:
            until = now + timedelta(seconds=max(self.mailer.throttle.delay(item.domain), 1.0))
            self.ledger.record(_deferred(item, until, f"rate limit for {item.domain}", False, outbox.PENDING))
            self.result.deferred += 1
            return
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            smtp = await self._session()
            await smtp.mail(self.mailer.settings.sender.address)
            self.dirty = True
            await smtp.rcpt(item.email)
        except aiosmtplib.SMTPResponseException as exc:
            self._refused(item, exc.code, exc.message, outbox.PENDING)
            if exc.code == 421:
                self._drop()
            return
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Nothing was handed over: safe to try again later.
            until = now + backoff(item.attempts + 1)
            self.ledger.record(_deferred(item, until, f"connect: {exc}", True, outbox.PENDING))
            self.result.deferred += 1
            self._drop()
            return
        try:
            verdict = await self.ledger.claim(item, p.message_id)
        except Exception:
            await self._reset()
            raise
        if verdict != GO:
            if verdict == TAKEN:
                pass
            elif isinstance(verdict, Later):
                self.result.deferred += 1
            elif isinstance(verdict, Never):
                self.result.skipped += 1
            await self._reset()
            return
        try:
            await smtp.data(p.payload)
        except aiosmtplib.SMTPDataError as exc:
            # The server answered: it did not take the message, so the outcome is clear.
            self._refused(item, exc.code, exc.message, ("sending",))
            self.dirty = False
            return
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.ledger.record(_final(item, "unknown", f"after DATA: {exc}", ("sending",)))
            self.result.unknown += 1
            self._drop()
            return
        self.dirty = False
        self.sent_here += 1
        # A 250 settles it, even for a message the sweep already gave up on as `unknown`.
        self.ledger.record(Change(item.id, {"status": "sent", "last_error": None}, ("sending", "unknown")))
        self.result.sent += 1

    async def _session(self) -> aiosmtplib.SMTP:
        limit = self.mailer.settings.smtp.messages_per_connection
        if self.smtp is not None and self.smtp.is_connected and self.sent_here >= limit:
            await self._quit()
        if self.smtp is None or not self.smtp.is_connected:
            self.smtp = self.mailer._smtp(self.host, self.port)
            self.sent_here = 0
            self.dirty = False
            await self.smtp.connect()
        elif self.dirty:
            await self.smtp.rset()
            self.dirty = False
        return self.smtp

    async def _reset(self) -> None:
        if self.smtp is not None and self.smtp.is_connected:
            try:
                await self.smtp.rset()
                self.dirty = False
            except (aiosmtplib.SMTPException, OSError):
                self._drop()

    def _drop(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
        self.smtp = None

    async def _quit(self) -> None:
        if self.smtp is not None and self.smtp.is_connected:
            try:
                await self.smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                self.smtp.close()
        self.smtp = None

    def _refused(self, item: OutboxItem, code: int, text: str, expect: tuple[str, ...]) -> None:
        error = f"{code} {text}"
        if 400 <= code < 500 and item.attempts + 1 < MAX_ATTEMPTS:
            delay = backoff(item.attempts + 1)
            if code in THROTTLING:
                self.mailer.throttle.pause(item.domain, delay.total_seconds())
            self.ledger.record(_deferred(item, self.now + delay, error, True, expect))
            self.result.deferred += 1
        elif code in HARD_BOUNCE:
            self.ledger.record(_final(item, "bounced", error, expect))
            self.ledger.suppress(item.email)
            self.result.failed += 1
        else:
            self.ledger.record(_final(item, "failed", error, expect))
            self.result.failed += 1
