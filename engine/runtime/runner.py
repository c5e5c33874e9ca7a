"""`funnel run`: wires the store, the worker, the mailer and the local sink, and lets APScheduler tick.

APScheduler only drives the loop (invariant 8): a missed or doubled tick changes nothing, because every
tick asks the database what is due. There is no scheduler job per lead.

An outage of the database or of the relay is said as a state change (invariant 17, `engine.runtime.outages`):
once when it starts, at most once a minute while it lasts, once when it is over. The rounds themselves are
DEBUG lines; INFO gets one summary a minute (`engine.runtime.summary`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import uvicorn
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from engine.core import signup
from engine.core.bounce_outcome import Intake
from engine.core.definition import Funnel
from engine.http.api import create_app
from engine.http.metrics import Metrics
from engine.mail.mailer import RELAY_RETRY, DispatchResult, Mailer, check_ca_file, reason
from engine.mail.mailsink import start_sink
from engine.mail.templates import TemplateLibrary
from engine.runtime import bounce_processing, digest, pruning
from engine.runtime.bounce_mailbox import MailboxPoller
from engine.runtime.bounce_receiver import BounceReceiver
from engine.runtime.outages import Backlog, Outage, Say
from engine.runtime.replies import ReplyDesk
from engine.runtime.summary import Counts, Summary
from engine.runtime.webhooks_out import WebhookSender
from engine.runtime.worker import TickResult, Worker
from engine.settings import Settings
from engine.store import domain_alarms, outbox
from engine.store.database import DBAPIError, create_engine_for, describe_failure, upgrade

log = logging.getLogger("engine.runner")
# How long a stop waits for the round in flight (systemd's default TimeoutStopSec is 90 s).
STOP_GRACE_S = 30.0
# The first prune waits for the start's first rounds (a backlog after downtime goes out first).
PRUNE_FIRST_AFTER_S = 10.0
# A tick due while one runs finds the lock held and asks for one more round; APScheduler need not say so.
logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
logging.getLogger("apscheduler.executors").setLevel(logging.ERROR)


@dataclass
class Totals:
    tick: TickResult
    mail: DispatchResult


class Clock:
    """The engine's clock: real UTC time, optionally shifted (to replay downtime or test `--now`)."""

    def __init__(self, fixed: datetime | None = None) -> None:
        self.offset = (fixed - datetime.now(UTC)) if fixed else timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Runner:
    def __init__(
        self,
        settings: Settings,
        funnels: Sequence[Funnel],
        clock: Callable[[], datetime],
        intake: Intake | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        if settings.smtp.host:
            check_ca_file(settings.smtp)  # before anything is written: a start that fails changes nothing
        url = settings.effective_database_url
        if url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(url)
        self.engine = create_engine_for(url)
        # The ways in for reports that `funnel run` serves itself, when configured; `intake` records them
        # (by default the engine's own report processor, on this database).
        self.receiver: BounceReceiver | None = None
        self.poller: MailboxPoller | None = None
        bounces = settings.bounces
        # Mail to the reply domain comes in the same ways; its forwards use the relay (set below).
        self.replies = ReplyDesk(self.engine, settings, None, clock) if settings.replies.domain else None
        if bounces.receiver.port is not None or bounces.imap.host:
            take = intake or bounce_processing.intake(
                self.engine, bounces, clock, settings.signing_keys, replies=self.replies
            )
            if bounces.receiver.port is not None:
                self.receiver = BounceReceiver(bounces, take, clock, settings.replies.domain)
            if bounces.imap.host:
                self.poller = MailboxPoller(bounces.imap, take, clock)
        self.metrics = Metrics()
        self.summary = Summary(clock())  # the INFO line a minute; each round's is DEBUG
        # Ticks fail on a full disk or a database server restarting; the engine keeps ticking, so every
        # tick retries and it recovers by itself once the cause is gone.
        self.database = Outage("database", "every tick")
        self.worker = Worker(self.engine, {f.id: f for f in funnels}, settings.batch_size)
        self.worker.publish(clock())
        self.mailer = Mailer(
            self.engine,
            settings,
            TemplateLibrary(settings.emails_dir),
            {f.id: f.name for f in funnels},
            {f.id: f.timezone for f in funnels},
            signup.outbox_languages(funnels, {form_id: spec.event for form_id, spec in settings.forms.items()}),
        )
        self.webhooks = WebhookSender(
            self.engine,
            settings.webhooks,
            clock,
            batch_size=settings.batch_size,
            targets=settings.webhook_targets(),
            database_failed=self.database_failed,  # one database, one outage: the runner's
        )
        self.webhooks.start(clock())  # fix where new subscriptions start, before the first tick
        self.sink = None
        if settings.smtp.host:
            self.smtp_host, self.smtp_port = settings.smtp.host, settings.smtp.port
        else:
            self.sink = start_sink(settings.data_dir / "outbox")
            self.smtp_host, self.smtp_port = "127.0.0.1", int(self.sink.port)
            # The local sink speaks plain SMTP on loopback.
            settings.smtp.security = "none"
        if self.replies is not None:
            self.replies.relay = (self.smtp_host, self.smtp_port)
        # Messages the relay could not take wait a minute, with no attempt spent (`mailer.RELAY_RETRY`).
        self.relay = Outage(f"relay {self.smtp_host}:{self.smtp_port}", "every minute", backlog=self.mail_backlog)

    def mail_backlog(self, now: datetime) -> Backlog | None:
        """The messages waiting for the relay (deferred by it for `RELAY_RETRY` included), for the lines
        of its outage; None when the database cannot say."""
        try:
            with self.engine.connect() as conn:
                count, oldest = outbox.waiting(conn, now + RELAY_RETRY)
        except DBAPIError:
            return None
        return Backlog(count, oldest)

    def close(self) -> None:
        self.mailer.close()
        if self.sink is not None:
            self.sink.stop()
        self.engine.dispose()

    async def step(self) -> Totals:
        now = self.clock()
        with self.metrics.tick_seconds.time():
            tick = await asyncio.to_thread(self.worker.tick, now)
        await asyncio.to_thread(self.end_alarms, now)  # before sending: what an ended alarm held goes now
        with self.metrics.dispatch_seconds.time():
            mail = await self.mailer.dispatch(now, self.smtp_host, self.smtp_port, self.settings.batch_size)
        self.summary.add(
            Counts(
                tick.events, tick.enrolled, tick.transitions, mail.sent, mail.deferred, mail.failed, mail.unknown,
                mail.skipped,
            )
        )  # fmt: skip
        if tick.work or mail.work:
            log.debug(
                "tick events=%d advanced=%d enrolled=%d transitions=%d sent=%d deferred=%d failed=%d unknown=%d",
                tick.events,
                tick.advanced,
                tick.enrolled,
                tick.transitions,
                mail.sent,
                mail.deferred,
                mail.failed,
                mail.unknown,
            )
        for error in tick.errors + mail.errors:
            log.error("%s", error)
        if mail.relay_error is not None:
            self._say(self.relay.failed(mail.relay_error, now))
        elif mail.relay_reached:
            self._say(self.relay.recovered(now))
        if mail.database_error is not None:
            if not self.database_failed(mail.database_error):
                log.error("recording send outcomes failed: %s", reason(mail.database_error))
        elif tick.work or mail.work:
            # A tick with nothing to write proves nothing about a disk that was full.
            self._say(self.database.recovered(now))
        self._say(self.summary.due(now))
        if tick.work:
            self.webhooks.wake()  # new transitions, goals or step calls: no need to wait for the poll
        return Totals(tick, mail)

    def database_failed(self, exc: BaseException) -> bool:
        """Say a failure the database caused, as part of its outage; False when the database is not the
        cause (a bug keeps its traceback)."""
        problem = describe_failure(self.engine, exc)
        if problem is None:
            return False
        self._say(self.database.failed(problem, self.clock()))
        log.debug("database failure", exc_info=exc)
        return True

    def _say(self, line: Say | None) -> None:
        if line is not None:
            log.log(line.level, "%s", line.text)

    async def run_once(self) -> Totals:
        """Process everything due now (events, steps, emails) until nothing is left, then return."""
        total = Totals(TickResult(), DispatchResult())
        for _ in range(100_000):
            step = await self.step()
            total.tick.add(step.tick)
            total.mail.add(step.mail)
            if step.tick.work == 0 and (step.mail.work - step.mail.deferred) == 0:
                break
        webhooks = await self.webhooks.run_once()
        await self.webhooks.aclose()
        for error in webhooks.errors:
            log.error("%s", error)
        self._say(self.summary.flush(self.clock()))
        return total

    async def run_forever(self) -> None:
        scheduler = AsyncIOScheduler(timezone=UTC)
        busy = asyncio.Lock()
        again = asyncio.Event()

        async def tick() -> None:
            if busy.locked():
                again.set()  # new work arrived mid-tick: one more round right after, not at the next interval
                return
            async with busy:
                again.clear()
                try:
                    # Round after round while there is work (a full batch of events from a separate
                    # `funnel api`, emails still due) or new work was announced; then wait for the interval.
                    while not stop.is_set():
                        done = await self.step()
                        if not (again.is_set() or done.tick.work or done.mail.work - done.mail.deferred):
                            break
                        again.clear()
                except Exception as exc:
                    if not self.database_failed(exc):
                        log.exception("tick failed")

        scheduler.add_job(
            tick,
            "interval",
            seconds=self.settings.tick_seconds,
            next_run_time=datetime.now(UTC),
            # Two: a nudge while a tick runs must reach `tick`, which then asks for one more round (the lock
            # keeps ticks one at a time); with one, APScheduler would drop it until the next interval.
            max_instances=2,
            coalesce=True,
            id="tick",
        )
        self._schedule_upkeep(scheduler)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def wake() -> None:
            with contextlib.suppress(JobLookupError):  # stopping: the job is gone
                scheduler.modify_job("tick", next_run_time=datetime.now(UTC))

        def tick_now() -> None:
            # The HTTP app committed work (an event, a confirmation email): tick now, not at the interval.
            loop.call_soon_threadsafe(wake)

        http = self.http_server(tick_now) if self.settings.http.enabled else None
        serving = asyncio.create_task(http.serve()) if http else None
        sending = asyncio.create_task(self.webhooks.run(stop))  # its own task: a slow receiver never holds a tick
        polling = asyncio.create_task(self.poller.run(stop)) if self.poller is not None else None
        scheduler.start()
        try:
            if self.receiver is not None:
                await self.receiver.start()
            if serving is None:
                await stop.wait()
            else:
                # While it serves, uvicorn takes SIGINT/SIGTERM itself and stops; either ending stops all.
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
        finally:
            stop.set()  # no new round starts
            self.mailer.stopping = True
            scheduler.pause()
            await self._finish_round(busy)  # before the shutdown, which would cancel the running tick
            scheduler.shutdown(wait=False)
            await self._stop_report_intake(polling)
            if http is not None and serving is not None:
                http.should_exit = True
                await asyncio.gather(serving, return_exceptions=True)
            await asyncio.gather(sending, return_exceptions=True)
            await self.webhooks.aclose()
            self._say(self.summary.flush(self.clock()))

    def _schedule_upkeep(self, scheduler: AsyncIOScheduler) -> None:
        """The daily digest and the retention prune, when the settings ask for them."""
        retention = self.settings.retention
        if retention.on:
            scheduler.add_job(
                asyncio.to_thread,
                "interval",
                args=(pruning.run_once, self.engine, retention, self.clock),
                minutes=retention.every_minutes,
                next_run_time=datetime.now(UTC) + timedelta(seconds=PRUNE_FIRST_AFTER_S),
                id="prune",
                coalesce=True,
                max_instances=1,
            )
        if self.settings.digest.to:
            scheduler.add_job(
                self.send_digest, digest.trigger(self.settings), id="digest", coalesce=True, misfire_grace_time=3600
            )

    async def _stop_report_intake(self, polling: asyncio.Task[None] | None) -> None:
        if self.receiver is not None:
            await self.receiver.stop(STOP_GRACE_S)
        if polling is not None:
            await asyncio.gather(polling, return_exceptions=True)  # a poll in flight ends its round first

    async def _finish_round(self, busy: asyncio.Lock) -> None:
        """Let the round in flight end before stopping: cut off between DATA and the relay's reply, a
        message could only be marked `unknown` at the next start, and each restart would leave some."""
        if not busy.locked():
            return
        grace = max(STOP_GRACE_S, 2 * self.settings.smtp.timeout_s)
        log.info("stopping: letting the round in flight finish (at most %.0f s)", grace)
        try:
            await asyncio.wait_for(busy.acquire(), timeout=grace)
        except TimeoutError:
            log.warning("stopping with a round still in flight: messages in DATA will be marked unknown")

    def end_alarms(self, now: datetime) -> None:
        """Domain alarms whose end has come are ended (said once, held email released). A read first:
        an idle engine takes no writer lock for it."""
        try:
            with self.engine.connect() as conn:
                if not domain_alarms.ending(conn, now):
                    return
            with self.engine.begin() as conn:
                domain_alarms.end_due(conn, now)
        except DBAPIError:
            pass  # the database is away: the tick says so; the alarms end on the next one

    async def send_digest(self) -> None:
        try:
            log.info("%s", await digest.send(self.engine, self.settings, self.clock(), self.smtp_host, self.smtp_port))
        except Exception:
            log.exception("daily digest failed")

    def http_server(self, nudge: Callable[[], None] | None = None) -> uvicorn.Server:
        """The HTTP app on this process's loop, beside the scheduler. A port already in use stops
        `funnel run` with uvicorn's message naming the address."""
        config = uvicorn.Config(
            create_app(self.settings, self.engine, self.clock, nudge, self.metrics),
            host=self.settings.http.host,
            port=self.settings.http.port,
            log_level="warning",
            log_config=None,  # uvicorn's records go through the scrubbing handler of `engine.runtime.logs`
            lifespan="off",
            timeout_keep_alive=self.settings.http.keep_alive_s,
        )
        # Access lines are a library's, logged from `log_level_libraries` (off by default); the level
        # uvicorn set above is for its own start, stop and errors.
        logging.getLogger("uvicorn.access").setLevel(logging.NOTSET)
        return uvicorn.Server(config)
