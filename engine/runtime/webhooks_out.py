"""Outbound webhooks: stage transitions and goals to the subscriptions of `[webhooks.<name>]`, and the
calls of funnel `webhook` steps, signed, retried, in order per lead, beside the engine and never in its way.

The sender drives three short transactions of `engine.store.webhook_deliveries` (fan-out, claim, record)
around its HTTP requests and holds none open across one. A worker that dies holding a lease loses
nothing: the lease ends and another worker sends again. So a receiver may get a delivery twice (at
least once) and deduplicates by the `Funnel-Delivery` header. The decisions (payloads, retries,
cursors) are `engine.core.webhook_policy`'s, where a request may go `engine.core.webhook_targets`'s (enforced on
every connection by `engine.runtime.webhook_network`); docs/webhooks.md tells a receiver what to expect.

An endpoint that stops answering (refused, timed out, 5xx) is an outage of that endpoint (invariant 17,
`engine.runtime.outages`): one ERROR when it starts, at most one WARNING a minute while it lasts (with the
deliveries waiting for it), one INFO when it answers again; not a line per attempt. The database failing
under the sender is an outage too, not a traceback per delivery: in `funnel run` the runner's (one database,
one outage per process, said once whoever meets it first; the runner, whose ticks write, says when it is
back), alone the sender's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import httpx

from engine.core import webhook_policy as policy
from engine.core.redaction import origin
from engine.core.webhook_policy import STEP_CALLS, WebhookSettings
from engine.core.webhook_targets import Targets
from engine.runtime.outages import Backlog, Outage, Say
from engine.runtime.webhook_network import GuardedTransport, TargetRefused
from engine.store.database import DatabaseError, Engine, connect_read_only, describe_failure
from engine.store.webhook_deliveries import Claimed, claim, fan_out, has_fan_out_work, pending, record

log = logging.getLogger("engine.webhooks_out")


@dataclass
class WebhookResult:
    """What a pass did: rows fanned out into deliveries, and attempts by how they ended. `errors` are
    the deliveries that ended unsent, for the operator (the runner logs them)."""

    fanned_out: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def work(self) -> int:
        return self.fanned_out + self.sent + self.retried + self.failed

    def add(self, other: WebhookResult) -> None:
        self.fanned_out += other.fanned_out
        self.sent += other.sent
        self.retried += other.retried
        self.failed += other.failed
        self.errors.extend(other.errors)


class WebhookSender:
    """Delivers webhooks beside the engine: `run(stop)` as its own asyncio task in `funnel run`, or
    `run_once()` to send what is due now and return.

    Database work runs in threads (`asyncio.to_thread`) in short transactions, HTTP on this loop with
    at most `concurrency` requests in flight per subscription: a slow or dead receiver holds its own
    slots and nothing else, neither the ticks, nor the mailer, nor other subscriptions."""

    def __init__(
        self,
        engine: Engine,
        settings: WebhookSettings,
        clock: Callable[[], datetime] | None = None,
        *,
        batch_size: int = 500,
        jitter: Callable[[], float] = random.random,
        targets: Targets | None = None,
        database_failed: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(UTC))
        self.batch_size = batch_size
        self.jitter = jitter
        # Where requests may go; `Settings.webhook_targets()` adds the engine's own listeners.
        self.targets = targets if targets is not None else Targets.of(settings.allow_private_hosts)
        self.totals = WebhookResult()  # counts since start, for metrics
        self._client: httpx.AsyncClient | None = None
        self._wake: asyncio.Event | None = None
        # Per endpoint (its origin): whether it answers, and the deliveries given up while it did not.
        self.endpoints: dict[str, Outage] = {}
        self.given_up: dict[str, int] = {}
        # The database's outage: the caller's (`database_failed` says a failure as part of it and answers
        # whether the database caused it), or the sender's own.
        self.database = Outage("webhook sender's database", "every round")
        self.database_failed = database_failed or self._database_failed

    @property
    def lanes(self) -> list[str]:
        return [STEP_CALLS, *sorted(self.settings.subscriptions)]

    def start(self, now: datetime) -> None:
        """Fix where new subscriptions start (`start = "now"`: after the newest row at this moment). Call
        it before the engine's first tick, so what that tick records is sent; later calls change nothing."""
        self.fan_out_once(now)

    # -- the parts -------------------------------------------------------------------------------

    def fan_out_once(self, now: datetime) -> tuple[int, bool]:
        """A fan-out pass if there is anything to fan out (checked without the writer lock first)."""
        with connect_read_only(self.engine) as conn:
            if not has_fan_out_work(conn, self.settings, now):
                return 0, False
        with self.engine.begin() as conn:
            return fan_out(conn, self.settings, now, self.batch_size)

    def claim_lanes(self, free: Mapping[str, int], now: datetime) -> list[Claimed]:
        """Up to `free[lane]` deliveries of each lane, in one transaction."""
        claimed: list[Claimed] = []
        with self.engine.begin() as conn:
            for lane, limit in free.items():
                if limit > 0:
                    claimed += claim(conn, lane, now, limit, self.settings.lease)
        return claimed

    def _record(self, item: Claimed, outcome: policy.Next, now: datetime) -> bool:
        with self.engine.begin() as conn:
            return record(conn, item, outcome, now)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            lanes = len(self.settings.subscriptions) + 1
            limits = httpx.Limits(max_connections=self.settings.concurrency * lanes, max_keepalive_connections=8)
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.timeout_s),
                follow_redirects=False,  # a redirect is an answer: it could point anywhere
                trust_env=False,  # no proxy from the environment: the address policy judges the receiver itself
                transport=GuardedTransport(self.targets, limits),
            )
        return self._client

    def _target(self, item: Claimed) -> tuple[str, list[str]]:
        if item.subscription == STEP_CALLS:
            settings = self.settings
            return item.url or "", policy.secrets_of(settings.step_secret, settings.step_previous_secret)
        subscription = self.settings.subscriptions[item.subscription]
        return subscription.url, policy.secrets_of(subscription.secret, subscription.previous_secret)

    async def send(self, item: Claimed) -> policy.Outcome:
        """One attempt: POST the signed body, and what came of it. The whole request, connection to
        the answer's status, has `timeout_s`; redirects are not followed; the answer's body is not read.
        An address the policy refuses fails the delivery for good."""
        url, secrets = self._target(item)
        body = policy.encode(item.payload)
        headers = policy.request_headers(item.payload, body, attempt=item.attempts, secrets=secrets, now=self.clock())
        timeout = self.settings.timeout_s
        try:
            async with asyncio.timeout(timeout):
                async with self._http().stream("POST", url, content=body, headers=headers) as response:
                    retry_after = policy.parse_retry_after(response.headers.get("retry-after"), self.clock())
                    return policy.Answered(response.status_code, retry_after)
        except TargetRefused as refused:
            return policy.Unanswered(str(refused), permanent=True)
        except (TimeoutError, httpx.TimeoutException):
            return policy.Unanswered(f"no answer within {timeout:g}s")
        except httpx.ConnectError as error:
            return policy.Unanswered(f"could not connect: {error}".rstrip(": "))
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:
            # The error and the delivery's record name the receiver by its origin: the rest may be a secret.
            return policy.Unanswered(f"cannot call {origin(url)}: {error}", permanent=True)
        except httpx.HTTPError as error:
            return policy.Unanswered(f"{type(error).__name__}: {error}".rstrip(": "))

    async def deliver(self, item: Claimed) -> policy.Next:
        """Send one claimed delivery and record the outcome."""
        outcome = await self.send(item)
        now = self.clock()
        decided = policy.next_step(
            outcome,
            attempts=item.attempts,
            created_at=item.created_at,
            now=now,
            jitter=self.jitter(),
            policy=self.settings.retry,
        )
        self._watch(item, outcome, decided, now)
        if not await asyncio.to_thread(self._record, item, decided, now):
            log.warning("webhook delivery %d: lease ran out before its outcome was written", item.id)
        return decided

    def _watch(self, item: Claimed, outcome: policy.Outcome, decided: policy.Next, now: datetime) -> None:
        """Follow the endpoint's state by what this attempt met: no answer or a 5xx is the endpoint
        failing; any other answer is it working."""
        where = origin(self._target(item)[0])
        lane = item.subscription or "funnel step"
        if isinstance(outcome, policy.Unanswered):
            problem = None if outcome.permanent else outcome.reason
        else:
            problem = f"answered {outcome.status}" if outcome.status >= 500 else None
        endpoint = self.endpoints.get(where)
        if problem is None:
            if endpoint is not None:
                self._say(endpoint.recovered(now))
                self.given_up.pop(where, None)
            return
        if endpoint is None:
            endpoint = self.endpoints[where] = Outage(
                f"webhook endpoint {where} ({lane})", "with each delivery's backoff", backlog=self._backlog(item)
            )
        if isinstance(decided, policy.Failed):
            self.given_up[where] = self.given_up.get(where, 0) + 1
        given_up = self.given_up.get(where, 0)
        gave = f", {given_up} deliveries given up" if given_up else ""
        self._say(endpoint.failed(f"webhook endpoint {where} ({lane}): {problem}{gave}", now))

    def _backlog(self, item: Claimed) -> Callable[[datetime], Backlog | None]:
        def waiting(_: datetime) -> Backlog | None:
            try:
                with connect_read_only(self.engine) as conn:
                    count = pending(conn, [item.subscription]).get(item.subscription, 0)
            except DatabaseError:
                return None
            return Backlog(count, None, "deliveries")

        return waiting

    def _down(self, item: Claimed) -> bool:
        endpoint = self.endpoints.get(origin(self._target(item)[0]))
        return endpoint is not None and endpoint.since is not None

    def _say(self, line: Say | None) -> None:
        if line is not None:
            log.log(line.level, "%s", line.text)

    def _count(self, item: Claimed, outcome: policy.Next, result: WebhookResult) -> None:
        if isinstance(outcome, policy.Delivered):
            result.sent += 1
            return
        if isinstance(outcome, policy.RetryAt):
            result.retried += 1
            return
        result.failed += 1
        if not outcome.permanent and self._down(item):
            return  # given up because its endpoint is down: the endpoint's outage lines count it
        url, _ = self._target(item)
        lane = item.subscription or "funnel step"
        message = (
            f"webhook {policy.event_id(item.source, item.source_id)} to {lane} ({origin(url)}) not delivered: "
            f"{outcome.error}"
        )
        result.errors.append(message)

    # -- driving it ------------------------------------------------------------------------------

    async def run_once(self, max_rounds: int = 1000) -> WebhookResult:
        """Fan out, then send what is due now, round after round (the next delivery of a lane becomes due
        when the one before it is done) until nothing due is left. Retries set for later are not waited for."""
        result = WebhookResult()
        for _ in range(max_rounds):
            now = self.clock()
            queued, more = await asyncio.to_thread(self.fan_out_once, now)
            result.fanned_out += queued
            claimed = await asyncio.to_thread(
                self.claim_lanes, dict.fromkeys(self.lanes, self.settings.concurrency), now
            )
            if not claimed and not more:
                break
            outcomes = await asyncio.gather(*(self.deliver(item) for item in claimed), return_exceptions=True)
            for item, outcome in zip(claimed, outcomes, strict=True):
                if isinstance(outcome, DatabaseError):
                    # Sent, but the outcome could not be written: the lease runs out and it is sent again.
                    result.errors.append(f"webhook delivery {item.id}: outcome not recorded: {outcome}")
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    self._count(item, outcome, result)
        self.totals.add(replace(result, errors=[]))
        return result

    def wake(self) -> None:
        """Look for new transitions now rather than at the next poll (the engine just wrote some).
        Call from the loop `run` runs on."""
        if self._wake is not None:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: fan out every `poll_s` (or when woken), and keep each lane's slots busy with
        due deliveries. On stop, requests in flight get `timeout_s` to finish; one cut short keeps its
        lease and is sent again after it (at least once)."""
        self._wake = asyncio.Event()
        in_flight: dict[asyncio.Task[policy.Next], Claimed] = {}
        stopping = asyncio.ensure_future(stop.wait())
        next_fan_out = 0.0
        try:
            while not stop.is_set():
                self._collect(in_flight)
                more = False
                if self._wake.is_set() or time.monotonic() >= next_fan_out:
                    self._wake.clear()
                    next_fan_out = time.monotonic() + self.settings.poll_s
                    more = await self._guarded(self._fan_out_step)
                await self._guarded(lambda: self._fill(in_flight))
                if more:
                    continue
                waking = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    {*in_flight, stopping, waking}, timeout=self.settings.poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                waking.cancel()
        finally:
            stopping.cancel()
            if in_flight:
                await asyncio.wait(set(in_flight), timeout=self.settings.timeout_s)
                for task in in_flight:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*in_flight, return_exceptions=True)
                self._collect(in_flight)

    async def _fan_out_step(self) -> bool:
        queued, more = await asyncio.to_thread(self.fan_out_once, self.clock())
        self.totals.fanned_out += queued
        return more

    async def _fill(self, in_flight: dict[asyncio.Task[policy.Next], Claimed]) -> None:
        busy: dict[str, int] = {}
        for item in in_flight.values():
            busy[item.subscription] = busy.get(item.subscription, 0) + 1
        free = {lane: self.settings.concurrency - busy.get(lane, 0) for lane in self.lanes}
        if any(n > 0 for n in free.values()):
            for item in await asyncio.to_thread(self.claim_lanes, free, self.clock()):
                in_flight[asyncio.create_task(self.deliver(item))] = item

    def _collect(self, in_flight: dict[asyncio.Task[policy.Next], Claimed]) -> None:
        for task in [t for t in in_flight if t.done()]:
            item = in_flight.pop(task)
            if task.cancelled():
                continue
            error = task.exception()
            if error is not None:
                # The outcome could not be written (the database went away): the lease runs out and the
                # delivery is sent again.
                if not self.database_failed(error):
                    log.error("webhook delivery %d: %s", item.id, error, exc_info=error)
                continue
            result = WebhookResult()
            self._count(item, task.result(), result)
            for message in result.errors:
                log.error("%s", message)
            self.totals.add(replace(result, errors=[]))  # a running total: the messages went to the log

    async def _guarded(self, step: Callable[[], Awaitable[bool | None]]) -> bool:
        # A database hiccup must not end the sender: it is logged and the next round tries again.
        try:
            done = bool(await step())
        except DatabaseError as exc:
            if not self.database_failed(exc):
                log.exception("webhook sender: database error")
            return False
        self._say(self.database.recovered(self.clock()))  # nothing when the outage is the caller's
        return done

    def _database_failed(self, exc: BaseException) -> bool:
        """Say a failure the database caused as part of its outage; False when it is not the database's."""
        problem = describe_failure(self.engine, exc)
        if problem is None:
            return False
        self._say(self.database.failed(problem, self.clock()))
        log.debug("webhook sender: database failure", exc_info=exc)
        return True

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
