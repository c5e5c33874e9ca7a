"""The dispatcher: outbox rows -> rendered MIME -> a pool of SMTP connections, with every outcome
recorded by its RFC 5321 meaning.

Invariants 3, 4 and 5: consent is read again in the transaction that marks a message `sending`, and
that commit happens before DATA; a failure before DATA is retried (4xx, with capped backoff) or final
(5xx); a connection lost after DATA makes the message `unknown`, and so does a worker that died there
(the sweep finds it in `sending`). A message held back by a rate limit or a timing rule is requeued,
never dropped.

Invariant 14: whatever goes wrong with one message, an exception of any type included, is that message's
outcome. Before DATA it costs one of its attempts (then `failed` when they are spent); from DATA on it is
`unknown`. Only a session with the relay that cannot be opened (connect, TLS, login) and the database
failing to record spend no attempt: those are outages, said once by the runner, and the messages wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import traceback
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiosmtplib

from engine.core.bounce_outcome import ADDRESS_GONE
from engine.core.failure_classes import classify_reply
from engine.core.outbox_item import OutboxItem
from engine.core.redaction import pseudonymise
from engine.core.timing import TimingRules
from engine.mail.composer import Composer, Failed, Prepared
from engine.mail.renderpool import RenderPool
from engine.mail.templates import RenderedEmail, TemplateLibrary
from engine.mail.throttle import Throttle
from engine.settings import Settings, SmtpSettings
from engine.store import outbox
from engine.store.database import Engine
from engine.store.ledger import TAKEN, Ledger, RecordingFailed, screened
from engine.store.outbox import Change
from engine.store.screen import GO, Later, Never, Screen, Unsure, Verdict

log = logging.getLogger("engine.mailer")

# Replies big mailbox providers use for "slow down": the whole domain waits, not just one message.
THROTTLING = {421, 451}
MAX_BACKOFF = timedelta(hours=6)
MAX_ATTEMPTS = 12
# How long a connection may wait for a domain's rate-limit slot before the message is requeued instead.
PATIENCE_S = 0.25
RELAY_RETRY = timedelta(minutes=1)
# Messages handed to the composer together, and the future of their composed messages.
_Batch = tuple[list[OutboxItem], "asyncio.Future[list[Prepared | Failed]]"]


@dataclass
class DispatchResult:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # about one message each (a template, an exception)
    # The relay: what failed when a session could not be opened, or whether one was (it works).
    relay_error: str | None = None
    relay_reached: bool = False
    # The database failed to record outcomes or claims: their messages wait, leased, without an attempt.
    database_error: Exception | None = None

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
        self.relay_error = other.relay_error or self.relay_error
        self.relay_reached = self.relay_reached or other.relay_reached
        self.database_error = other.database_error or self.database_error

    def count(self, change: Change) -> None:
        """Count a message's outcome by the state its change gives it."""
        status = change.values["status"]
        if status == "deferred":
            self.deferred += 1
        elif status == "unknown":
            self.unknown += 1
        elif status in ("failed", "bounced"):
            self.failed += 1


class CaFileError(ValueError):
    """`smtp.ca_file` cannot be used: said at start, not at the first send."""


def check_ca_file(smtp: SmtpSettings) -> None:
    """The relay's CA bundle, when one is set and TLS is on: it exists, can be read and holds a PEM
    certificate. Raises a CaFileError naming the setting and the file."""
    if smtp.ca_file is None or smtp.security == "none":
        return
    path = smtp.ca_file
    try:
        # What aiosmtplib does with it when it opens a session.
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except FileNotFoundError:
        raise CaFileError(f"smtp.ca_file: {path}: file not found") from None
    except ssl.SSLError as exc:
        raise CaFileError(f"smtp.ca_file: {path}: no PEM certificate in it ({exc.reason or exc})") from None
    except OSError as exc:
        raise CaFileError(f"smtp.ca_file: {path}: cannot read it ({exc.strerror or exc})") from None


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


def _one_line(text: str, limit: int = 500) -> str:
    """A reason as one line: an SMTP reply or an exception's text may run over several."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def reason(exc: BaseException) -> str:
    """An exception nobody planned for, as one line: its type, then what it says."""
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _deferred(item: OutboxItem, until: datetime, error: str, count_attempt: bool, expect: tuple[str, ...]) -> Change:
    values: dict[str, Any] = {
        "status": "deferred",
        "next_attempt_at": until,
        "claimed_at": None,
        "last_error": _one_line(error),
    }
    if count_attempt:
        values["attempts"] = item.attempts + 1
    return Change(item.id, values, expect)


def _final(item: OutboxItem, status: str, error: str | None, expect: tuple[str, ...]) -> Change:
    """The message's last state. A try that ended before DATA counts here; one that reached DATA was
    counted when it was marked `sending`."""
    values: dict[str, Any] = {"status": status, "last_error": _one_line(error) if error else None, "claimed_at": None}
    if expect == outbox.PENDING:
        values["attempts"] = item.attempts + 1
    return Change(item.id, values, expect)


def _try_failed(item: OutboxItem, now: datetime, error: str) -> Change:
    """A try that failed before DATA for a reason that may not last (a connection lost, an exception):
    it costs one attempt, and is retried with backoff until the attempts are spent, then `failed`."""
    if item.attempts + 1 < MAX_ATTEMPTS:
        return _deferred(item, now + backoff(item.attempts + 1), error, True, outbox.PENDING)
    return _final(item, "failed", f"{error} (after {MAX_ATTEMPTS} attempts)", outbox.PENDING)


def _said(item: OutboxItem, change: Change) -> str:
    """A message's failure as the runner logs it: which message, what became of it, why (the lead's
    address, which a relay's reply or an exception may quote, as its pseudonym)."""
    outcome = "retried later" if change.values["status"] == "deferred" else change.values["status"]
    why = pseudonymise(str(change.values["last_error"]), item.email)
    return f"message {item.id} ({item.funnel_id}/{item.step}) {outcome}: {why}"


@dataclass(frozen=True, slots=True)
class _Crashed:
    """A message whose render process died while composing it alone: it may be the cause, or not."""

    item: OutboxItem
    error: str


class Mailer:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        templates: TemplateLibrary,
        funnel_names: dict[str, str] | None = None,
        funnel_zones: dict[str, str] | None = None,
        funnel_languages: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.composer = Composer(settings, templates, funnel_names, funnel_languages)
        delivery = settings.delivery
        self.screen = Screen(
            TimingRules.parse(delivery.quiet_hours, delivery.max_per_day),
            funnel_zones or {},
            delivery.default_timezone,
            pause_domains=settings.bounces.pause_domain_on_alarm,
        )
        smtp = settings.smtp
        self.throttle = Throttle(smtp.rate_per_s, smtp.domain_rate_per_s, smtp.domain_rates)
        self.pool: RenderPool | None = None
        # Set when the engine stops: the round in flight sends what it has leased and leases no more.
        self.stopping = False

    def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.close()

    def _new_pool(self) -> RenderPool:
        settings, composer = self.settings, self.composer
        return RenderPool(
            settings.render_processes,
            settings,
            composer.templates.emails_dir,
            composer.funnel_names,
            composer.funnel_languages,
        )

    def _pool(self) -> RenderPool:
        if self.pool is None:
            self.pool = self._new_pool()
        return self.pool

    def render(self, item: OutboxItem, now: datetime) -> RenderedEmail:
        return self.composer.render(item, now)

    def compose(
        self, item: OutboxItem, now: datetime, rendered: RenderedEmail | None = None, mid: str | None = None
    ) -> Prepared:
        return self.composer.compose(item, now, rendered, mid)

    # -- dispatching -------------------------------------------------------------------------------

    def sweep(self, now: datetime) -> int:
        # A live worker never holds a message in `sending` longer than the SMTP timeout.
        grace = timedelta(seconds=self.settings.smtp.timeout_s * 2 + 5)
        with self.engine.begin() as conn:
            lost = outbox.sweep_stale_sending(conn, now - grace)
        for message in lost:
            said_unknown(message.id, f"{message.funnel_id}/{message.step}", outbox.STALE_SENDING)
        return len(lost)

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
        # Leases and flushes wait for the database in this thread, one at a time, while the loop sends.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="funnel-db") as db:
            ledger = Ledger(self.engine, self.screen, now, db)
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
        result.database_error = ledger.failure
        return result

    async def _produce(
        self, queue: asyncio.Queue[Prepared | None], ledger: Ledger, now: datetime, limit: int, result: DispatchResult
    ) -> None:
        """Lease, screen and compose in one task, hand the messages to the connections in this one. With
        render processes, several batches are composed at once while the connections send."""
        processes = self.settings.render_processes
        pending: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=processes * 2 + 1 if processes else 1)
        feeder = asyncio.create_task(self._lease_and_compose(pending, ledger.db, now, limit, result))
        try:
            while (batch := await pending.get()) is not None:
                items, future = batch
                try:
                    composed: list[Prepared | Failed | _Crashed] = list(await future)
                except Exception as exc:
                    composed = await self._compose_alone(items, now, exc)
                for prepared in composed:
                    if isinstance(prepared, Failed):
                        # Composing is deterministic (a template error, an address MIME cannot carry): a
                        # second try would fail the same way.
                        change = _final(prepared.item, "failed", f"render: {prepared.error}", outbox.PENDING)
                    elif isinstance(prepared, _Crashed):
                        change = _try_failed(prepared.item, now, prepared.error)
                    else:
                        await queue.put(prepared)
                        continue
                    ledger.record(change)
                    result.count(change)
                    result.errors.append(_said(prepared.item, change))
            await feeder  # a lease that failed fails the round, loudly
        finally:
            if not feeder.done():
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)

    async def _compose_alone(
        self, items: list[OutboxItem], now: datetime, exc: Exception
    ) -> list[Prepared | Failed | _Crashed]:
        """A render process died holding this batch (the OS killed it, or one of these messages did): a
        new process composes each message alone, so the others go now and only one that kills its
        process again spends an attempt."""
        why = pseudonymise(reason(exc), *(item.email for item in items))
        log.warning("render process failed on %d message(s): %s; composing them one by one", len(items), why)
        if isinstance(exc, BrokenProcessPool):
            self.close()
        out: list[Prepared | Failed | _Crashed] = []
        for item in items:
            try:
                out.extend(await self._pool().compose_many([item], now))
            except Exception as alone:
                if isinstance(alone, BrokenProcessPool):
                    self.close()
                out.append(_Crashed(item, f"render process: {reason(alone)}"))
        return out

    async def _lease_and_compose(
        self,
        pending: asyncio.Queue[_Batch | None],
        db: Executor,
        now: datetime,
        limit: int,
        result: DispatchResult,
    ) -> None:
        chunk = max(20, self.settings.smtp.connections * 8)
        part = 16 if self.settings.render_processes else 1
        left = limit
        loop = asyncio.get_running_loop()
        try:
            while left > 0 and not self.stopping:
                items, verdicts, unsure = await loop.run_in_executor(db, self._lease, now, min(left, chunk))
                if not items:
                    break
                left -= len(items)
                ready = self._leased(items, verdicts, unsure, result)
                for start in range(0, len(ready), part):
                    items = ready[start : start + part]
                    await pending.put((items, self._compose_part(items, now)))
                    # Composing in this process is CPU work on the loop: let the connections read replies.
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise  # the consumer stopped: nobody waits for the end mark
        except Exception:
            await pending.put(None)
            raise
        await pending.put(None)

    def _lease(
        self, now: datetime, limit: int
    ) -> tuple[list[OutboxItem], list[Verdict], list[tuple[OutboxItem, Change]]]:
        """Lease due messages and hold back those the screen says no to (in the database thread): the
        messages, their verdicts, and the failed tries of those the screen was unsure about."""
        with self.engine.begin() as conn:
            items = outbox.lease_batch(conn, now, limit, self.lease())
            verdicts = self.screen.judge(conn, items, now, fresh=False)
            held = [(i, v) for i, v in zip(items, verdicts, strict=True) if isinstance(v, (Later, Never))]
            unsure = [(i, _try_failed(i, now, v.reason)) for i, v in zip(items, verdicts, strict=True)
                      if isinstance(v, Unsure)]  # fmt: skip
            outbox.apply(conn, [screened(i.id, v) for i, v in held] + [change for _, change in unsure])
        return items, verdicts, unsure

    @staticmethod
    def _leased(
        items: list[OutboxItem],
        verdicts: list[Verdict],
        unsure: list[tuple[OutboxItem, Change]],
        result: DispatchResult,
    ) -> list[OutboxItem]:
        """Count what a lease held back; the messages to send."""
        for verdict in verdicts:
            if isinstance(verdict, Later):
                result.deferred += 1
            elif isinstance(verdict, Never):
                result.skipped += 1
        for item, change in unsure:
            result.count(change)
            result.errors.append(_said(item, change))
        return [i for i, v in zip(items, verdicts, strict=True) if v == GO]

    def _compose_part(self, items: list[OutboxItem], now: datetime) -> asyncio.Future[list[Prepared | Failed]]:
        if self.settings.render_processes:
            return asyncio.ensure_future(self._pool().compose_many(items, now))
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
        self.handed = False  # the message in hand is `sending`: from here an unclear end is `unknown`

    async def run(self, queue: asyncio.Queue[Prepared | None]) -> None:
        try:
            while (prepared := await queue.get()) is not None:
                await self._send_one(prepared)
        finally:
            await self._quit()

    async def _send_one(self, p: Prepared) -> None:
        """One message, whatever happens: an exception nobody planned for (the SMTP library unable to
        encode an address, a bug) is that message's outcome, and the next message goes on."""
        self.handed = False
        try:
            await self._send(p)
        except RecordingFailed:
            # The database, not the message: it stays leased, with no attempt spent, and is tried again
            # when the lease runs out. The round reports the database outage once.
            self._drop()
        except Exception as exc:
            if log.isEnabledFor(logging.DEBUG):  # the traceback, with the recipient as its pseudonym
                said = pseudonymise(traceback.format_exc(), p.item.email)
                log.debug("sending message %d raised: %s", p.item.id, said.rstrip())
            self._drop()
            if self.handed:
                self._unknown(p.item, f"after DATA: {reason(exc)}")
            else:
                change = _try_failed(p.item, self.now, reason(exc))
                self.ledger.record(change)
                self.result.count(change)
                self.result.errors.append(_said(p.item, change))

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
        except Exception as exc:
            # Opening the session involves no message: whatever fails there (a refused login, a local
            # host name the library cannot encode in EHLO) is the relay's or the settings' outage.
            said = _one_line(str(exc)) if isinstance(exc, (aiosmtplib.SMTPException, OSError)) else reason(exc)
            error = f"relay {self.host}:{self.port}: {said}"
            self._relay_failed(item, error)
            self.relay_down.append(error)
            self._drop()
            return
        self.result.relay_reached = True
        try:
            await smtp.mail(p.mail_from)
            self.dirty = True
            await smtp.rcpt(p.rcpt)
        except aiosmtplib.SMTPResponseException as exc:
            self._refused(item, exc.code, exc.message, outbox.PENDING)
            if exc.code == 421:
                self._drop()
            return
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Nothing was handed over: safe to try again later.
            change = _try_failed(item, now, f"relay {self.host}:{self.port} before DATA: {exc}")
            self.ledger.record(change)
            self.result.count(change)
            self._drop()
            return
        try:
            verdict = await self.ledger.claim(item, p.message_id, p.language)
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
            elif isinstance(verdict, Unsure):
                change = _try_failed(item, now, verdict.reason)
                self.ledger.record(change)
                self.result.count(change)
                self.result.errors.append(_said(item, change))
            await self._reset()
            return
        self.handed = True
        try:
            await smtp.data(p.payload)
        except aiosmtplib.SMTPDataError as exc:
            # The server answered: it did not take the message, so the outcome is clear.
            self._refused(item, exc.code, exc.message, ("sending",))
            self.dirty = False
            return
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._drop()
            self._unknown(item, f"after DATA: {exc}")
            return
        self.dirty = False
        self.sent_here += 1
        # A 250 settles it, even for a message the sweep already gave up on as `unknown`.
        self.ledger.record(Change(item.id, {"status": "sent", "last_error": None}, ("sending", "unknown")))
        self.result.sent += 1

    def _unknown(self, item: OutboxItem, error: str) -> None:
        """DATA went out and no clear answer came back: the relay may have the message or not."""
        change = _final(item, "unknown", error, ("sending",))
        self.ledger.record(change)
        self.result.unknown += 1
        why = pseudonymise(str(change.values["last_error"]), item.email)
        said_unknown(item.id, f"{item.funnel_id}/{item.step}", why)

    def _relay_failed(self, item: OutboxItem, error: str) -> None:
        """The relay, not this message: connecting, TLS or the login failed. The message waits a minute
        without spending one of its attempts, and the rest of this round is not tried against a relay
        that just failed. The runner says so once for the whole outage."""
        self.ledger.record(_deferred(item, self.now + RELAY_RETRY, error, False, outbox.PENDING))
        self.result.deferred += 1
        self.result.relay_error = self.result.relay_error or error

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
            except Exception:
                self._drop()

    def _drop(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is not None:
            with contextlib.suppress(Exception):
                smtp.close()

    async def _quit(self) -> None:
        if self.smtp is not None and self.smtp.is_connected:
            try:
                await self.smtp.quit()
            except Exception:
                self._drop()
        self.smtp = None

    def _refused(self, item: OutboxItem, code: int, text: str, expect: tuple[str, ...]) -> None:
        error = f"{code} {text}"
        if not 400 <= code < 600:
            # Not a reply at all (a garbled line): the relay did not decide anything about the message.
            self._drop()
            if expect != outbox.PENDING:
                self._unknown(item, f"after DATA: {error}")
                return
            change = _try_failed(item, self.now, f"relay {self.host}:{self.port}: {error}")
            self.ledger.record(change)
            self.result.count(change)
            return
        if 400 <= code < 500 and item.attempts + 1 < MAX_ATTEMPTS:
            delay = backoff(item.attempts + 1)
            if code in THROTTLING:
                self.mailer.throttle.pause(item.domain, delay.total_seconds())
            self.ledger.record(_deferred(item, self.now + delay, error, True, expect))
            self.result.deferred += 1
        elif classify_reply(code, text) == ADDRESS_GONE:
            # Only a refusal about the address costs it (invariant 4): a 550 5.7.1 for the sender's
            # reputation fails this message and keeps the lead.
            self.ledger.record(_final(item, "bounced", error, expect))
            self.ledger.suppress(item.email)
            self.result.failed += 1
        else:
            self.ledger.record(_final(item, "failed", error, expect))
            self.result.failed += 1


def said_unknown(message: int, funnel_step: str, error: str) -> None:
    """Each message that becomes `unknown` is said once, by its id: an operator looks the relay's log up
    for its Message-ID (`funnel outbox --status unknown` shows it; the log would take it for an address)
    and decides."""
    log.warning(
        "message %d (%s) is unknown: %s; decide with `funnel outbox decide %d sent|resend` or on /ops/outbox",
        message, funnel_step, error, message,
    )  # fmt: skip
