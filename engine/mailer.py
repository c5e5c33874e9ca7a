"""The dispatcher: outbox rows -> rendered MIME -> a pool of SMTP connections, with every outcome
recorded by its RFC 5321 meaning.

Invariants 3, 4 and 5: consent is read again in the transaction that marks a message `sending`, and
that commit happens before DATA; a failure before DATA is retried (4xx, with capped backoff) or final
(5xx); a connection lost after DATA leaves the message `sending`, which the sweep turns into
`unknown`. A message held back by a rate limit or a timing rule is requeued, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiosmtplib
import sqlalchemy as sa

from engine import outbox
from engine.composer import Composer, Failed, Prepared
from engine.ledger import TAKEN, Ledger, screened
from engine.outbox import Change
from engine.outbox_item import OutboxItem
from engine.renderpool import RenderPool
from engine.screen import GO, Later, Never, Screen
from engine.settings import Settings, SmtpSettings
from engine.templates import RenderedEmail, TemplateLibrary
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
RELAY_RETRY = timedelta(minutes=1)


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


def client_options(smtp: SmtpSettings) -> dict[str, Any]:
    """aiosmtplib's connection options from the settings: TLS mode, the CA to trust, the login."""
    return {
        "timeout": smtp.timeout_s,
        "use_tls": smtp.security == "ssl",
        "start_tls": smtp.security == "starttls",
        "cert_bundle": str(smtp.ca_file) if smtp.ca_file else None,
        "username": smtp.username,
        "password": smtp.password.get_secret_value() if smtp.password else None,
    }


def backoff(attempts: int) -> timedelta:
    """Capped exponential backoff: 1 min, 2, 4, ... up to 6 h."""
    return min(timedelta(minutes=2 ** max(attempts - 1, 0)), MAX_BACKOFF)


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
        self.settings = settings
        self.composer = Composer(settings, templates, funnel_names)
        delivery = settings.delivery
        self.screen = Screen(
            TimingRules.parse(delivery.quiet_hours, delivery.max_per_day),
            funnel_zones or {},
            delivery.default_timezone,
        )
        smtp = settings.smtp
        self.throttle = Throttle(smtp.rate_per_s, smtp.domain_rate_per_s, smtp.domain_rates)
        self.pool: RenderPool | None = None
        # Set when the engine stops: the round in flight sends what it has leased and leases no more.
        self.stopping = False

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def render(self, item: OutboxItem) -> RenderedEmail:
        return self.composer.render(item)

    def compose(self, item: OutboxItem, now: datetime, rendered: RenderedEmail | None = None) -> Prepared:
        return self.composer.compose(item, now, rendered)

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
        return aiosmtplib.SMTP(hostname=host, port=port, **client_options(self.settings.smtp))

    async def dispatch(self, now: datetime, host: str, port: int, limit: int = 200) -> DispatchResult:
        """Send up to `limit` due messages over a pool of connections, then return."""
        result = DispatchResult()
        result.unknown += self.sweep(now)
        ledger = Ledger(self.engine, self.screen, now)
        recorder = asyncio.create_task(ledger.run())
        connections = self.settings.smtp.connections
        queue: asyncio.Queue[Prepared | None] = asyncio.Queue(maxsize=connections * 2)
        relay_down: list[str] = []  # shared: once the relay fails a session, the round stops trying it
        pool = [
            asyncio.create_task(_Connection(self, ledger, result, now, host, port, relay_down).run(queue))
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
        """Lease, screen and compose in one task, hand the messages to the connections in this one. With
        render processes, several batches are composed at once while the connections send."""
        processes = self.settings.render_processes
        if processes and self.pool is None:
            self.pool = RenderPool(processes, self.settings, self.composer.templates.emails_dir,
                                   self.composer.funnel_names)
        pending: asyncio.Queue[asyncio.Future[list[Prepared | Failed]] | None] = asyncio.Queue(
            maxsize=processes * 2 + 1 if processes else 1
        )
        feeder = asyncio.create_task(self._lease_and_compose(pending, now, limit, result))
        try:
            while (batch := await pending.get()) is not None:
                try:
                    composed = await batch
                except Exception:
                    # A render process died: its batch stays leased and is tried again when the lease ends.
                    self.close()
                    raise
                for prepared in composed:
                    if isinstance(prepared, Failed):
                        ledger.record(_final(prepared.item, "failed", f"render: {prepared.error}", outbox.PENDING))
                        result.failed += 1
                        result.errors.append(prepared.error)
                    else:
                        await queue.put(prepared)
            await feeder  # a lease that failed fails the round, loudly
        finally:
            if not feeder.done():
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)

    async def _lease_and_compose(
        self,
        pending: asyncio.Queue[asyncio.Future[list[Prepared | Failed]] | None],
        now: datetime,
        limit: int,
        result: DispatchResult,
    ) -> None:
        chunk = max(20, self.settings.smtp.connections * 8)
        part = 16 if self.pool else 1
        left = limit
        try:
            while left > 0 and not self.stopping:
                leased, ready = self._lease(now, min(left, chunk), result)
                if not leased:
                    break
                left -= leased
                for start in range(0, len(ready), part):
                    await pending.put(self._compose_part(ready[start : start + part], now))
                    # Composing in this process is CPU work on the loop: let the connections read replies.
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise  # the consumer stopped: nobody waits for the end mark
        except Exception:
            await pending.put(None)
            raise
        await pending.put(None)

    def _lease(self, now: datetime, limit: int, result: DispatchResult) -> tuple[int, list[OutboxItem]]:
        """Lease due messages; hold back those the screen says no to. (how many leased, the ones to send)"""
        with self.engine.begin() as conn:
            items = outbox.lease_batch(conn, now, limit, self.lease())
            verdicts = self.screen.judge(conn, items, now, fresh=False)
            held = [(i, v) for i, v in zip(items, verdicts, strict=True) if isinstance(v, (Later, Never))]
            outbox.apply(conn, [screened(i.id, v) for i, v in held])
        for _, verdict in held:
            if isinstance(verdict, Later):
                result.deferred += 1
            else:
                result.skipped += 1
        return len(items), [i for i, v in zip(items, verdicts, strict=True) if v == GO]

    def _compose_part(self, items: list[OutboxItem], now: datetime) -> asyncio.Future[list[Prepared | Failed]]:
        if self.pool is not None:
            return asyncio.ensure_future(self.pool.compose_many(items, now))
        future: asyncio.Future[list[Prepared | Failed]] = asyncio.get_running_loop().create_future()
        future.set_result(self.composer.compose_many(items, now))
        return future


class _Connection:
    """One SMTP session, reused for message after message; reconnects when the server drops it."""

    def __init__(
        self,
        mailer: Mailer,
        ledger: Ledger,
        result: DispatchResult,
        now: datetime,
        host: str,
        port: int,
        relay_down: list[str],
    ) -> None:
        self.mailer = mailer
        self.relay_down = relay_down
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
        if self.relay_down:
            self._relay_failed(item, self.relay_down[0])
            return
        try:
            smtp = await self._session()
        except (aiosmtplib.SMTPException, OSError) as exc:
            error = f"relay {self.host}:{self.port}: {exc}"
            self._relay_failed(item, error)
            self.relay_down.append(error)
            self._drop()
            return
        try:
            await smtp.mail(self.mailer.settings.sender.address)
            self.dirty = True
            await smtp.rcpt(p.rcpt)
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

    def _relay_failed(self, item: OutboxItem, error: str) -> None:
        """The relay, not this message: connecting, TLS or the login failed. The message waits a minute
        without spending one of its attempts, and the rest of this round is not tried against a relay
        that just failed."""
        self.ledger.record(_deferred(item, self.now + RELAY_RETRY, error, False, outbox.PENDING))
        self.result.deferred += 1
        if error not in self.result.errors:
            self.result.errors.append(error)

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
