"""Outbound webhooks against a real HTTP receiver on loopback (`http.server` in a thread, checking every
signature as a receiver would), on SQLite and PostgreSQL, with stage transitions and goals made by the
real worker. The sender's clock is the test's, so backoff can be stepped through; everything else
(sockets, database, threads) is real. Loopback is a refused range for webhooks: the tests that reach
the receiver name its host in `allow_private_hosts`, and the others prove it is refused without."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.authoring.validation import load_funnels
from engine.core import signatures
from engine.core.webhook_policy import WebhookSettings
from engine.runtime.webhooks_out import WebhookSender
from engine.runtime.worker import Worker
from engine.settings import HttpSettings, Settings
from engine.store import leads as store
from engine.store import tables
from engine.store.database import create_engine_for
from engine.store.webhook_deliveries import failures, pending
from tests.smtp_server import _free_port

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
SECRET = "whsec_crm_MP56PnSGiUDc1eGDsRoWAKPT1RHyMfl2Wc8oW"
STEP_SECRET = "whsec_steps_FrLku7fc7QnfpUIBG6m_XlfGOfac-oiHL"
RECEIVER_HOST = "127.0.0.1"  # the receiver's host, allowed where a test means to reach it

FUNNEL = """\
id: trial
name: Trial
entry:
  triggers:
    - event: signed_up
stages:
  - id: inquiry
    steps:
      - id: pause
        wait: 30d
  - id: customer
    steps:
      - id: notify-sales
        webhook:
          url: {step_url}
          payload: {{team: sales}}
      - id: settle
        wait: 30d
transitions:
  - id: upgrade
    from: inquiry
    on: {{event: upgraded}}
    to: customer
goal:
  id: paid
  event: paid
"""


class Clock:
    def __init__(self, at: datetime = NOW) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


@dataclass
class Reply:
    status: int = 200
    delay: float = 0.0
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: signatures.Verified | signatures.Refusal

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def delivery(self) -> str:
        return self.headers["funnel-delivery"]


class _Listening(ThreadingHTTPServer):
    # Room for every connection two senders open at once (the default backlog is 5): a connection the
    # kernel drops on a full queue is a test's artefact, not the sender's doing.
    request_queue_size = 64


class Receiver:
    """A webhook receiver: verifies each request's signature with the secret of its path (as the sender's
    clock sees the time) and answers as `reply` says; records everything in arrival order."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.secrets = {"/crm": SECRET, "/slow": SECRET, "/steps": STEP_SECRET}
        self.received: list[Received] = []
        self.reply: Callable[[Received], Reply] = lambda _: Reply()
        self.arrived = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                secret = receiver.secrets.get(self.path, "")
                verified = signatures.verify([secret], self.headers.get(signatures.HEADER), body, receiver.clock())
                request = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, verified)
                with receiver._lock:
                    receiver.received.append(request)
                    answer = receiver.reply(request)
                receiver.arrived.set()
                if answer.delay:
                    receiver.release.wait(answer.delay)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:
                    pass  # the sender gave up or died meanwhile

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Listening(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def paths(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def receiver(clock: Clock) -> Iterator[Receiver]:
    served = Receiver(clock)
    served.thread.start()
    yield served
    served.release.set()
    served.server.shutdown()
    served.server.server_close()


@dataclass
class Scene:
    engine: Engine
    worker: Worker
    clock: Clock
    url: str

    def event(self, email: str, name: str, **attributes: Any) -> None:
        """Record an event for `email` and let the worker handle everything due."""
        with self.engine.begin() as conn:
            lead = store.upsert_lead(conn, email, attributes=attributes, now=self.clock())
            key = f"{email}-{name}-{self.clock().isoformat()}"
            store.record_events(conn, [store.NewEvent(key, lead, name, self.clock())], now=self.clock())
        self.worker.run_until_idle(self.clock())

    def deliveries(self, **where: Any) -> list[Any]:
        d = tables.webhook_deliveries
        query = sa.select(d).where(*(d.c[k] == v for k, v in where.items())).order_by(d.c.id)
        with self.engine.connect() as conn:
            return list(conn.execute(query))


@pytest.fixture
def funnel_engine(db_url: str, receiver: Receiver, clock: Clock, tmp_path: Path) -> Iterator[Scene]:
    folder = tmp_path / "funnels"
    folder.mkdir()
    (folder / "trial.yaml").write_text(FUNNEL.format(step_url=receiver.url("/steps")))
    loaded = load_funnels([folder], emails_dir=None)
    assert not loaded.errors, loaded.errors
    engine = create_engine_for(db_url)
    worker = Worker(engine, {f.id: f for f in loaded.funnels})
    worker.publish(clock())
    yield Scene(engine, worker, clock, db_url)
    engine.dispose()


def settings(receiver: Receiver, **options: Any) -> WebhookSettings:
    crm = {"url": receiver.url("/crm"), "secret": SECRET, "attributes": ["first_name"], **options.pop("crm", {})}
    allowed = {"allow_private_hosts": [RECEIVER_HOST]}
    return WebhookSettings.model_validate({"step_secret": STEP_SECRET, "crm": crm, **allowed, **options})


def sender(env: Scene, webhooks: WebhookSettings, engine: Engine | None = None) -> WebhookSender:
    # jitter 0.5: every wait is exactly its base (10 s, 20 s, 40 s ...)
    return WebhookSender(engine or env.engine, webhooks, env.clock, jitter=lambda: 0.5)


def run_once(webhook_sender: WebhookSender) -> Any:
    async def once() -> Any:
        try:
            return await webhook_sender.run_once()
        finally:
            await webhook_sender.aclose()

    return asyncio.run(once())


def test_transitions_goals_and_step_calls_are_signed_and_delivered(funnel_engine: Scene, receiver: Receiver) -> None:
    env = funnel_engine
    crm = sender(env, settings(receiver))
    run_once(crm)  # the subscription starts here
    env.event("ana@example.com", "signed_up", first_name="Ana", company="Acme")
    env.event("ana@example.com", "upgraded")
    env.clock.advance(minutes=1)
    env.event("ana@example.com", "paid")

    result = run_once(crm)

    assert (result.sent, result.retried, result.failed, result.errors) == (4, 0, 0, [])
    assert all(isinstance(r.verified, signatures.Verified) for r in receiver.received)
    events = [r.event for r in receiver.paths("/crm")]
    assert [(e["type"], e.get("transition", {}).get("to")) for e in events] == [
        ("transition", "inquiry"),
        ("transition", "customer"),
        ("goal", None),
    ]
    entered, upgraded, paid = events
    assert entered["lead"] == {
        "id": entered["lead"]["id"],
        "email": "ana@example.com",
        "attributes": {"first_name": "Ana"},
    }
    assert entered["transition"]["from"] is None  # entering the funnel
    assert entered["transition"]["cause"] == {"kind": "event", "ref": f"ana@example.com-signed_up-{NOW.isoformat()}"}
    assert upgraded["transition"]["from"] == "inquiry" and upgraded["transition"]["cause"]["kind"] == "event"
    assert paid["goal"] == {"id": "paid", "within_window": True} and paid["occurred_at"] == "2026-11-24T09:01:00Z"
    for request in receiver.paths("/crm"):
        assert request.delivery == request.event["id"]
        assert request.headers["funnel-event"] == request.event["type"] and request.headers["funnel-attempt"] == "1"

    (call,) = receiver.paths("/steps")
    assert isinstance(call.verified, signatures.Verified)  # with the step secret
    assert call.event["step"] == "notify-sales" and call.event["payload"] == {"team": "sales"}
    assert call.event["lead"] == {"id": entered["lead"]["id"], "email": "ana@example.com"}
    assert {r.status for r in env.deliveries()} == {"sent"}
    with env.engine.connect() as conn:
        calls = conn.execute(sa.select(tables.webhook_calls.c.status, tables.webhook_calls.c.attempts)).all()
    assert [tuple(c) for c in calls] == [("sent", 1)]

    assert run_once(crm).work == 0  # nothing is sent twice
    assert len(receiver.received) == 4


def test_a_failing_receiver_is_retried_with_backoff_then_delivered(funnel_engine: Scene, receiver: Receiver) -> None:
    env = funnel_engine
    crm = sender(env, settings(receiver, crm={"events": ["transition"]}))
    run_once(crm)
    replies = iter([Reply(503, body=b"maintenance"), Reply(502)])
    receiver.reply = lambda request: next(replies, Reply())
    env.event("ana@example.com", "signed_up")

    assert run_once(crm).retried == 1
    (row,) = env.deliveries(subscription="crm")
    assert (row.status, row.attempts, row.last_status, row.last_error) == (
        "queued",
        1,
        503,
        "HTTP 503 Service Unavailable",
    )
    assert row.next_attempt_at == NOW + timedelta(seconds=10)
    with env.engine.connect() as conn:
        assert pending(conn) == {"crm": 1}

    env.clock.advance(seconds=9)
    assert run_once(crm).work == 0  # not before its time
    env.clock.advance(seconds=1)
    assert run_once(crm).retried == 1
    assert env.deliveries(subscription="crm")[0].next_attempt_at == NOW + timedelta(seconds=30)  # 10 s, then 20 s
    env.clock.advance(seconds=20)
    assert run_once(crm).sent == 1

    attempts = receiver.paths("/crm")
    assert [r.headers["funnel-attempt"] for r in attempts] == ["1", "2", "3"]
    assert len({r.delivery for r in attempts}) == 1 and len({r.body for r in attempts}) == 1
    signed_at = [r.verified.timestamp for r in attempts if isinstance(r.verified, signatures.Verified)]
    assert signed_at == [int((NOW + timedelta(seconds=s)).timestamp()) for s in (0, 10, 30)]  # signed afresh
    (row,) = env.deliveries(subscription="crm")
    assert (row.status, row.attempts, row.last_error, row.finished_at) == ("sent", 3, None, NOW + timedelta(seconds=30))
    with env.engine.connect() as conn:
        assert pending(conn) == {}


def test_an_endpoint_down_is_said_once_when_it_fails_once_a_minute_and_once_when_it_is_back(
    funnel_engine: Scene, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    env = funnel_engine
    crm = sender(env, settings(receiver, crm={"events": ["transition"]}))
    run_once(crm)
    receiver.reply = lambda _: Reply(503)
    for n in range(5):
        env.event(f"lead{n}@example.com", "signed_up")

    async def rounds() -> None:
        # Five deliveries failing, retried at 10, 30 and 70 s (the backoff), answered at 150 s.
        for second in range(0, 170, 10):
            env.clock.at = NOW + timedelta(seconds=second)
            if second == 150:
                receiver.reply = lambda _: Reply()
            await crm.run_once()
        await crm.aclose()

    with caplog.at_level(logging.INFO, logger="engine"):
        asyncio.run(rounds())

    where = receiver.url("").rstrip("/")
    said = [(r.levelname, r.getMessage()) for r in caplog.records if where in r.getMessage()]
    assert [level for level, _ in said] == ["ERROR", "WARNING", "INFO"], said
    assert said[0][1] == f"webhook endpoint {where} (crm): answered 503; retrying with each delivery's backoff"
    assert said[1][1].endswith("still failing after 1 minute 10 seconds, failures: 16; 5 deliveries waiting"), said
    assert said[2][1].startswith(f"webhook endpoint {where} (crm) working again after 2 minutes 30 seconds"), said
    assert len(receiver.paths("/crm")) == 25  # 25 attempts, three lines
    assert {r.status for r in env.deliveries(subscription="crm")} == {"sent"}


def test_a_lead_waits_for_its_earlier_delivery_while_other_leads_go_on(
    funnel_engine: Scene, receiver: Receiver
) -> None:
    env = funnel_engine
    crm = sender(env, settings(receiver, crm={"events": ["transition"]}))
    run_once(crm)
    env.event("ana@example.com", "signed_up")
    env.event("ana@example.com", "upgraded")
    env.event("bob@example.com", "signed_up")
    env.event("bob@example.com", "upgraded")
    failed_once: set[str] = set()

    def ana_first_fails(request: Received) -> Reply:
        event = request.event
        first_entry = request.path == "/crm" and event["transition"]["to"] == "inquiry"
        if first_entry and event["lead"]["email"] == "ana@example.com" and request.delivery not in failed_once:
            failed_once.add(request.delivery)
            return Reply(500)
        return Reply()

    receiver.reply = ana_first_fails
    first = run_once(crm)
    assert (first.sent, first.retried) == (2 + 2, 1)  # and both upgrades' step calls, in a lane of their own
    seen: dict[str, list[str]] = {}
    for r in receiver.paths("/crm"):  # lanes of different leads run side by side, so only order within a lead counts
        seen.setdefault(r.event["lead"]["email"], []).append(r.event["transition"]["to"])
    assert seen == {"ana@example.com": ["inquiry"], "bob@example.com": ["inquiry", "customer"]}

    env.clock.advance(seconds=10)
    assert run_once(crm).sent == 2
    ana = [r.event["transition"]["to"] for r in receiver.paths("/crm") if r.event["lead"]["email"] == "ana@example.com"]
    assert ana == ["inquiry", "inquiry", "customer"]  # the retry first, then the one that waited for it


def test_a_refusal_is_recorded_and_the_lead_s_later_deliveries_go_on(funnel_engine: Scene, receiver: Receiver) -> None:
    env = funnel_engine
    crm = sender(env, settings(receiver, crm={"events": ["transition"]}))
    run_once(crm)
    env.event("ana@example.com", "signed_up")
    env.event("ana@example.com", "upgraded")
    refuse_entry = {"inquiry": Reply(422, body=b'{"error": "unknown stage inquiry"}')}
    receiver.reply = lambda r: refuse_entry.get(r.event["transition"]["to"], Reply()) if r.path == "/crm" else Reply()

    result = run_once(crm)

    assert (result.sent, result.failed) == (1 + 1, 1)  # with the upgrade's step call
    assert result.errors == [
        f"webhook {receiver.paths('/crm')[0].delivery} to crm (http://127.0.0.1:{receiver.server.server_address[1]})"
        " not delivered: HTTP 422 Unprocessable Entity"
    ]
    refused, went_on = env.deliveries(subscription="crm")
    # The status line only: what a receiver answers is not kept (it could be anything the URL serves).
    assert (refused.status, refused.attempts, refused.last_status) == ("failed", 1, 422)
    assert refused.last_error == "HTTP 422 Unprocessable Entity"
    assert went_on.status == "sent"
    with env.engine.connect() as conn:
        assert [row.id for row in failures(conn)] == [refused.id]


def test_an_unreachable_receiver_is_retried_for_a_day_then_given_up(funnel_engine: Scene, receiver: Receiver) -> None:
    env = funnel_engine
    down = f"http://127.0.0.1:{_free_port('127.0.0.1')}/crm"  # nothing listens there
    crm = sender(env, settings(receiver, crm={"url": down, "events": ["transition"]}))
    run_once(crm)
    env.event("ana@example.com", "signed_up")

    async def until_given_up() -> None:
        while not (result := await crm.run_once()).failed:
            assert result.retried == 1
            (row,) = env.deliveries(subscription="crm")
            assert row.last_error.startswith("could not connect")
            env.clock.at = row.next_attempt_at
        await crm.aclose()

    asyncio.run(until_given_up())

    (row,) = env.deliveries(subscription="crm")
    assert (row.status, row.attempts, row.last_status) == ("failed", 32, None)
    assert row.last_error.startswith("gave up after 32 attempts in 23 hours 25 minutes; last: could not connect")
    assert NOW + timedelta(hours=23) < row.finished_at <= NOW + timedelta(hours=24)


def test_a_receiver_slower_than_the_timeout_is_retried(funnel_engine: Scene, receiver: Receiver) -> None:
    env = funnel_engine
    crm = sender(env, settings(receiver, timeout_s=0.3, crm={"events": ["transition"]}))
    run_once(crm)
    env.event("ana@example.com", "signed_up")
    receiver.reply = lambda _: Reply(delay=2)

    started = time.monotonic()
    assert run_once(crm).retried == 1
    assert time.monotonic() - started < 1.5
    (row,) = env.deliveries(subscription="crm")
    assert (row.status, row.last_error) == ("queued", "no answer within 0.3s")


def test_a_slow_receiver_delays_neither_ticks_nor_other_subscriptions(funnel_engine: Scene, receiver: Receiver) -> None:
    env = funnel_engine
    slow_and_fast = settings(
        receiver,
        poll_s=0.05,
        crm={"events": ["transition"]},
        slow={"url": receiver.url("/slow"), "secret": SECRET, "events": ["transition"], "start": "beginning"},
    )
    receiver.reply = lambda request: Reply(delay=3) if request.path == "/slow" else Reply()
    # Ana's entry is older than both subscriptions: only "slow", which starts from the beginning, gets it,
    # and its receiver sits on it while the rest happens.
    env.event("ana@example.com", "signed_up")
    crm = WebhookSender(env.engine, slow_and_fast, env.clock)

    async def scenario() -> tuple[float, float, float]:
        stop = asyncio.Event()
        running = asyncio.create_task(crm.run(stop))
        assert await asyncio.to_thread(receiver.arrived.wait, 10)
        assert [r.path for r in receiver.received] == ["/slow"]
        # While the slow receiver holds its request: a tick that records a stage transition ...
        started = time.monotonic()
        await asyncio.to_thread(env.event, "bob@example.com", "signed_up")
        tick = time.monotonic() - started
        # ... the loop stays responsive ...
        started = time.monotonic()
        await asyncio.sleep(0.01)
        lag = time.monotonic() - started
        # ... and the other subscription gets Bob's transition at once.
        started = time.monotonic()
        while not receiver.paths("/crm"):
            await asyncio.sleep(0.01)
            assert time.monotonic() - started < 5
        fast = time.monotonic() - started
        stop.set()
        receiver.release.set()
        await running
        await crm.aclose()
        return tick, lag, fast

    tick, lag, fast = asyncio.run(scenario())
    assert tick < 1.0, f"a tick took {tick:.2f}s while a receiver was slow"
    assert lag < 0.2
    assert fast < 1.0
    assert [r.event["lead"]["email"] for r in receiver.paths("/crm")] == ["bob@example.com"]
    assert all(isinstance(r.verified, signatures.Verified) for r in receiver.received)


# -- where a webhook may go ------------------------------------------------------------------------


def only_crm(url: str, **options: Any) -> WebhookSettings:
    crm = {"url": url, "secret": SECRET, "events": ["transition"], "start": "beginning"}
    return WebhookSettings.model_validate({"crm": crm, **options})


def test_a_receiver_on_loopback_is_refused_unless_its_host_is_allowed(funnel_engine: Scene, receiver: Receiver) -> None:
    env = funnel_engine
    env.event("ana@example.com", "signed_up")

    result = run_once(sender(env, only_crm(receiver.url("/crm"))))

    assert receiver.received == []
    (row,) = env.deliveries(subscription="crm")
    assert (row.status, row.attempts, row.last_status) == ("failed", 1, None)  # refused for good, not retried
    assert row.last_error.startswith("refused: 127.0.0.1 is a loopback address (127.0.0.0/8)")
    assert "webhooks.allow_private_hosts" in row.last_error
    assert result.failed == 1 and "refused: 127.0.0.1" in result.errors[0]

    env.event("bob@example.com", "signed_up")
    allowed = only_crm(receiver.url("/crm"), allow_private_hosts=[RECEIVER_HOST])
    assert run_once(sender(env, allowed)).sent == 1
    assert [r.event["lead"]["email"] for r in receiver.paths("/crm")] == ["bob@example.com"]


def test_a_name_that_resolves_to_loopback_is_refused(funnel_engine: Scene, receiver: Receiver) -> None:
    env = funnel_engine
    env.event("ana@example.com", "signed_up")
    by_name = f"http://localhost:{receiver.server.server_address[1]}/crm"
    # The address is allowed as written, not whatever resolves to it: the name is another host.
    run_once(sender(env, only_crm(by_name, allow_private_hosts=[RECEIVER_HOST])))

    assert receiver.received == []
    (row,) = env.deliveries(subscription="crm")
    assert row.status == "failed" and row.last_error.startswith("refused: localhost resolves to ")
    assert "a loopback address" in row.last_error


def test_a_funnel_step_calling_a_private_address_is_refused_when_it_is_sent(
    funnel_engine: Scene, receiver: Receiver
) -> None:
    env = funnel_engine
    env.event("ana@example.com", "signed_up")
    env.event("ana@example.com", "upgraded")  # the customer stage's `webhook` step calls /steps

    run_once(sender(env, WebhookSettings(step_secret=STEP_SECRET)))

    assert receiver.paths("/steps") == []
    with env.engine.connect() as conn:
        (call,) = conn.execute(sa.select(tables.webhook_calls.c.status, tables.webhook_calls.c.last_error)).all()
    assert call.status == "failed" and call.last_error.startswith("refused: 127.0.0.1 is a loopback address")


def test_the_engine_s_own_http_app_is_never_a_receiver(funnel_engine: Scene, receiver: Receiver) -> None:
    env = funnel_engine
    port = receiver.server.server_address[1]
    # The receiver stands where the engine's HTTP app listens: a webhook to /ops would act as the engine.
    app = Settings(
        http=HttpSettings(port=port),
        webhooks=only_crm(receiver.url("/ops/outbox"), allow_private_hosts=[RECEIVER_HOST]),
    )
    env.event("ana@example.com", "signed_up")

    run_once(WebhookSender(env.engine, app.webhooks, env.clock, targets=app.webhook_targets()))

    assert receiver.received == []
    (row,) = env.deliveries(subscription="crm")
    assert row.status == "failed" and row.last_error == f"refused: 127.0.0.1:{port} is the engine's own HTTP app"


def test_an_engine_listening_on_every_address_is_refused_on_each_of_them(
    funnel_engine: Scene, receiver: Receiver
) -> None:
    env = funnel_engine
    port = receiver.server.server_address[1]
    # The app on 0.0.0.0: every address of this machine leads to it on its port, so the sender finds out
    # once connected (the connection's two ends are the same address) and sends nothing.
    app = Settings(
        http=HttpSettings(host="0.0.0.0", port=port),
        webhooks=only_crm(receiver.url("/ops/outbox"), allow_private_hosts=[RECEIVER_HOST]),
    )
    env.event("ana@example.com", "signed_up")

    run_once(WebhookSender(env.engine, app.webhooks, env.clock, targets=app.webhook_targets()))

    assert receiver.received == []
    (row,) = env.deliveries(subscription="crm")
    assert row.status == "failed" and row.last_error == f"refused: 127.0.0.1:{port} is the engine's own HTTP app"


def test_the_sender_connects_to_the_address_it_checked(
    funnel_engine: Scene, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: a name that passes the check with one answer and is then resolved again to another.
    The sender resolves once and connects to what it checked. (A resolver that changes its answer between
    two lookups is simulated: the test cannot own a DNS zone.)"""
    env = funnel_engine
    real = socket.getaddrinfo
    answers = iter(["127.0.0.2", *["127.0.0.1"] * 10])  # checked, then where the receiver listens
    asked: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("rebind.example", b"rebind.example"):
            asked.append("rebind.example")
            return real(next(answers), port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    env.event("ana@example.com", "signed_up")
    url = f"http://rebind.example:{receiver.server.server_address[1]}/crm"

    run_once(sender(env, only_crm(url, allow_private_hosts=["rebind.example"], timeout_s=2)))

    assert receiver.received == []  # 127.0.0.2 was checked, so 127.0.0.2 was called: nothing listens there
    assert asked == ["rebind.example"]
    (row,) = env.deliveries(subscription="crm")
    assert row.status == "queued" and row.last_error.startswith("could not connect")


def test_a_redirect_is_not_followed(funnel_engine: Scene, receiver: Receiver) -> None:
    env = funnel_engine
    metadata = "http://169.254.169.254/latest/meta-data/"
    receiver.reply = lambda r: Reply(302, body=b"moved", headers={"Location": metadata})
    env.event("ana@example.com", "signed_up")

    run_once(sender(env, only_crm(receiver.url("/crm"), allow_private_hosts=[RECEIVER_HOST])))

    assert [r.path for r in receiver.received] == ["/crm"]
    (row,) = env.deliveries(subscription="crm")
    assert (row.status, row.last_status, row.last_error) == ("failed", 302, "HTTP 302 Found")


CRASHING_SENDER = """
import asyncio, sys
from datetime import datetime
from engine.store.database import create_engine_for
from engine.core.webhook_policy import WebhookSettings

from engine.runtime.webhooks_out import WebhookSender
database, hook, secret, now = sys.argv[1:5]
at = datetime.fromisoformat(now)
crm = {"url": hook, "secret": secret, "events": ["transition"], "start": "beginning"}
settings = WebhookSettings.model_validate({"timeout_s": 60, "allow_private_hosts": ["127.0.0.1"], "crm": crm})
asyncio.run(WebhookSender(create_engine_for(database), settings, lambda: at).run_once())
"""


def test_a_sender_killed_mid_request_loses_nothing(funnel_engine: Scene, receiver: Receiver) -> None:
    env = funnel_engine
    env.event("ana@example.com", "signed_up")
    replies = iter([Reply(delay=60)])
    receiver.reply = lambda _: next(replies, Reply())
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_SENDER, env.url, receiver.url("/crm"), SECRET, NOW.isoformat()], cwd=ROOT
    )
    try:
        assert receiver.arrived.wait(30), "the sender never called"
    finally:
        process.kill()
        process.wait(10)
    (row,) = env.deliveries(subscription="crm")
    assert (row.status, row.attempts) == ("queued", 1)  # claimed, never finished

    webhooks = settings(receiver, timeout_s=60, crm={"events": ["transition"], "start": "beginning"})
    env.clock.advance(seconds=webhooks.lease.total_seconds() - 1)
    assert run_once(sender(env, webhooks)).work == 0  # its lease still holds
    env.clock.advance(seconds=2)
    assert run_once(sender(env, webhooks)).sent == 1

    first, second = receiver.paths("/crm")
    assert first.delivery == second.delivery  # at least once: the receiver deduplicates by this header
    assert [first.headers["funnel-attempt"], second.headers["funnel-attempt"]] == ["1", "2"]
    (row,) = env.deliveries(subscription="crm")
    assert (row.status, row.attempts) == ("sent", 2)


def test_two_senders_share_the_work_and_keep_each_lead_in_order(funnel_engine: Scene, receiver: Receiver) -> None:
    env = funnel_engine
    webhooks = settings(receiver, crm={"events": ["transition"]})
    run_once(sender(env, webhooks))
    leads = [f"lead{i}@example.com" for i in range(12)]
    for email in leads:
        env.event(email, "signed_up")
        env.event(email, "upgraded")
    receiver.reply = lambda _: Reply(delay=0.02)
    engines = [create_engine_for(env.url) for _ in range(2)]

    async def both() -> None:
        senders = [sender(env, webhooks, engine) for engine in engines]
        await asyncio.gather(*(s.run_once() for s in senders))
        for s in senders:
            await s.aclose()

    try:
        asyncio.run(both())
    finally:
        for engine in engines:
            engine.dispose()

    crm = receiver.paths("/crm")
    assert sorted(r.delivery for r in crm) == sorted({r.delivery for r in crm})  # none twice
    assert len(crm) == 2 * len(leads) and len(receiver.paths("/steps")) == len(leads)
    for email in leads:
        stages = [r.event["transition"]["to"] for r in crm if r.event["lead"]["email"] == email]
        assert stages == ["inquiry", "customer"]
    assert {r.status for r in env.deliveries()} == {"sent"}


def test_a_subscription_starts_now_unless_told_to_start_from_the_beginning(
    funnel_engine: Scene, receiver: Receiver
) -> None:
    env = funnel_engine
    env.event("old@example.com", "signed_up")
    webhooks = settings(
        receiver,
        crm={"events": ["transition"]},
        archive={"url": receiver.url("/crm"), "secret": SECRET, "events": ["transition"], "start": "beginning"},
    )
    run_once(sender(env, webhooks))
    env.event("new@example.com", "signed_up")
    run_once(sender(env, webhooks))
    by_subscription = {
        name: [r.payload["lead"]["email"] for r in env.deliveries(subscription=name)] for name in ("crm", "archive")
    }
    assert by_subscription == {"crm": ["new@example.com"], "archive": ["old@example.com", "new@example.com"]}


def cursor(env: Scene) -> tuple[Any, ...]:
    c = tables.webhook_cursors
    with env.engine.connect() as conn:
        return tuple(conn.execute(sa.select(c.c.last_id, c.c.last_key, c.c.gaps, c.c.updated_at)).one())


def test_a_transition_given_the_id_of_an_erased_one_is_still_sent(funnel_engine: Scene, receiver: Receiver) -> None:
    """SQLite gives the next row the largest rowid + 1: once the newest rows are erased, their ids come back."""
    env = funnel_engine
    crm = sender(env, settings(receiver, crm={"events": ["transition"]}))
    run_once(crm)
    env.event("ana@example.com", "signed_up")
    run_once(crm)
    with env.engine.begin() as conn:
        conn.execute(sa.delete(tables.leads).where(tables.leads.c.email == "ana@example.com"))
    assert run_once(crm).work == 0
    settled = cursor(env)
    assert run_once(crm).work == 0 and cursor(env) == settled  # it looks back once, not on every pass
    env.event("bob@example.com", "signed_up")

    run_once(crm)

    assert [r.event["lead"]["email"] for r in receiver.paths("/crm")] == ["ana@example.com", "bob@example.com"]
    assert [r.payload["lead"]["email"] for r in env.deliveries()] == ["bob@example.com"]  # Ana's went with her


@pytest.mark.postgres
def test_a_transition_committed_after_a_later_one_is_still_sent(
    postgres_url: str, receiver: Receiver, clock: Clock
) -> None:
    """On PostgreSQL ids are handed out at insert and become visible at commit: a cursor that passed id N+1
    must still pick up N when its transaction commits later."""
    engine = create_engine_for(postgres_url)
    env = Scene(engine, Worker(engine, {}), clock, postgres_url)
    crm = sender(env, settings(receiver, crm={"events": ["transition"]}))
    run_once(crm)
    with engine.begin() as conn:
        leads = {e: store.upsert_lead(conn, e, now=NOW) for e in ("slow@example.com", "quick@example.com")}

    def transition(lead_id: int) -> dict[str, Any]:
        return {"lead_id": lead_id, "funnel_id": "trial", "version": "v1", "from_stage": None,
                "to_stage": "inquiry", "cause_kind": "entry", "at": NOW}  # fmt: skip

    try:
        with engine.connect() as slow:
            held = slow.begin()
            slow.execute(sa.insert(tables.stage_transitions).values(transition(leads["slow@example.com"])))
            with engine.begin() as quick:
                quick.execute(sa.insert(tables.stage_transitions).values(transition(leads["quick@example.com"])))
            run_once(crm)
            assert [r.event["lead"]["email"] for r in receiver.paths("/crm")] == ["quick@example.com"]
            held.commit()
        run_once(crm)
        assert [r.event["lead"]["email"] for r in receiver.paths("/crm")] == ["quick@example.com", "slow@example.com"]
        with engine.connect() as conn:
            assert conn.execute(sa.select(tables.webhook_cursors.c.gaps)).scalar_one() == []
    finally:
        engine.dispose()
