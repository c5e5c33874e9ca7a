"""`funnel demo-month`: a month of made-up leads through a funnel, written to a real database by the real
engine, so `funnel report`, `funnel lead show` and the dashboard have something true to show.

Unlike `funnel simulate` (the pure core, one lead at a time, nothing stored), this runs the Worker on a
virtual clock: leads sign up through the funnel's entry event with a consent record, the worker moves
them and queues emails, and a stand-in for the relay takes what is due through the send pipeline's own
steps (lease, consent and timing screen, `sending`, outcome) without SMTP. Delivered emails get opened
and clicked, some leads book a call and buy, a few unsubscribe or ask for a refund, a few addresses
bounce. Every draw comes from a generator seeded by (seed, lead number): the same command writes the
same month.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engine.authoring.simulation import DEFAULT_ZONES, FIRST_NAMES, email_links
from engine.authoring.virtualclock import entry_event
from engine.core import journey
from engine.core.definition import Funnel
from engine.core.outbox_item import OutboxItem
from engine.core.own_events import engine_id
from engine.core.timing import TimingRules
from engine.mail.composer import message_id
from engine.runtime.worker import Worker
from engine.settings import Settings
from engine.store import consents, demo_month, ingest, outbox
from engine.store import leads as store
from engine.store.database import Connection, Engine
from engine.store.ledger import screened
from engine.store.screen import GO, Later, Never, Screen

DOMAIN = "demo.example"
COMPANIES = ("Packaging", "Foods", "Cafe", "Print", "Dental", "Hotels", "Freight", "Studio", "Bakery", "Garage")
MAX_STEP = timedelta(minutes=15)
BATCH = 500


@dataclass(frozen=True)
class Behaviour:
    """How the made-up leads behave. Shares are per email delivered unless they say otherwise."""

    open: float = 0.45
    click: float = 0.35  # of the opened emails: one of the email's links
    unsubscribe: float = 0.012  # marketing emails only
    buy: float = 0.04  # per lead, on its own, some days after signing up
    buy_after_call: float = 0.4  # per lead who clicked the email's book-a-call link
    refund: float = 0.08  # per buyer
    bad_mailbox: float = 0.02  # per lead: the address bounces (550) at the first email
    unclear: float = 0.003  # the connection drops after DATA: the outcome is unknown


@dataclass
class MonthResult:
    leads: int = 0
    events: int = 0
    delivered: int = 0
    bounced: int = 0
    unknown: int = 0
    held_back: int = 0  # skipped or deferred at send time (no consent, quiet hours, daily cap)
    rounds: int = 0
    elapsed_s: float = 0.0


@dataclass
class _Person:
    number: int
    lead_id: int
    email: str
    rng: random.Random
    bad_mailbox: bool
    unsubscribed: bool = False
    bought: bool = False


@dataclass(order=True)
class _Due:
    at: datetime
    seq: int
    kind: str = field(compare=False)  # signup | event | unsubscribe
    number: int = field(compare=False)
    name: str = field(default="", compare=False)
    event_id: str = field(default="", compare=False)
    properties: dict[str, Any] = field(default_factory=dict, compare=False)


class DemoMonth:
    def __init__(
        self,
        engine: Engine,
        funnel: Funnel,
        screen: Screen,
        links: Mapping[str, tuple[str, ...]],
        seed: int = 0,
        behaviour: Behaviour = Behaviour(),
    ) -> None:
        self.engine = engine
        self.funnel = funnel
        self.screen = screen
        self.links = links
        self.seed = seed
        self.b = behaviour
        self.worker = Worker(engine, {funnel.id: funnel})
        self.people: dict[int, _Person] = {}  # by lead number
        self.by_lead: dict[int, _Person] = {}  # by lead id
        self.queue: list[_Due] = []
        self.seq = 0
        self.result = MonthResult()

    def _at(self, at: datetime, kind: str, number: int, **more: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, _Due(at, self.seq, kind, number, **more))

    def run(self, leads: int, start: datetime, days: int) -> MonthResult:
        started = time.perf_counter()
        until = start + timedelta(days=days)
        arrivals = random.Random(f"{self.seed}:arrivals")
        for number in range(1, leads + 1):
            self._at(start + timedelta(seconds=arrivals.random() * days * 86400), "signup", number)
        self.worker.publish(start)
        now, wake, mail = start, None, None
        while True:
            wrote = self._write_due(now)
            moved = 0
            if wrote or (wake is not None and wake <= now):
                moved = self._tick(now)
            if moved or (mail is not None and mail <= now):
                self._relay(now)
            self.result.rounds += 1
            wake, mail = self._due_times()
            upcoming = min((t for t in (wake, mail, self.queue[0].at if self.queue else None) if t), default=None)
            if upcoming is None or upcoming > until:
                break
            # Rounds at least a step apart: work is done at most a quarter of an hour after it fell due.
            now = max(upcoming, min(now + MAX_STEP, until))
        self.result.elapsed_s = time.perf_counter() - started
        return self.result

    def _tick(self, now: datetime) -> int:
        """Worker ticks until a tick leaves nothing behind (a batch not full: the due enrollments a
        tick's events made due are in its own second half)."""
        work = 0
        while True:
            done = self.worker.tick(now)
            work += done.work
            if max(done.events, done.advanced) < self.worker.batch_size:
                return work

    def _due_times(self) -> tuple[datetime | None, datetime | None]:
        """When the next enrollment wakes and the next email is due."""
        with self.engine.connect() as conn:
            return demo_month.next_due(conn)

    # -- what the leads do ------------------------------------------------------------------------

    def _write_due(self, now: datetime) -> bool:
        if not self.queue or self.queue[0].at > now:
            return False
        with self.engine.begin() as conn:
            new: list[store.NewEvent] = []
            while self.queue and self.queue[0].at <= now:
                due = heapq.heappop(self.queue)
                if due.kind == "signup":
                    new.append(self._signup(conn, due.number, due.at))
                elif due.kind == "unsubscribe":
                    person = self.people[due.number]
                    act = consents.ConsentAct("withdrawn", "one-click", ip=_ip(due.number), user_agent="Mail client")
                    consents.unsubscribe(conn, person.email, act, due.at)
                    self.result.events += 1
                else:
                    lead_id = self.people[due.number].lead_id
                    new.append(store.NewEvent(due.event_id, lead_id, due.name, due.at, due.properties, "demo"))
            self.result.events += ingest.record(conn, new, now)[0]
        return True

    def _signup(self, conn: Connection, number: int, at: datetime) -> store.NewEvent:
        rng = random.Random(f"{self.seed}:{number}")
        first = rng.choice(FIRST_NAMES)
        company = f"{rng.choice(('Acme', 'Northwind', 'Bayside', 'Oakfield', 'Fernside'))} {rng.choice(COMPANIES)}"
        email = f"{first.lower()}.{number}@{company.split()[0].lower()}.{DOMAIN}"
        employees = int(rng.lognormvariate(3.2, 1.2)) + 1
        entry = entry_event(self.funnel, journey.Lead(id=email), at, engine_id("demo", self.seed, number, "signup"))
        if entry is None:
            raise ValueError(f"funnel {self.funnel.id!r} has no event entry trigger for a signup to use")
        form = str(entry.properties.get("form") or entry.name)
        lead_id = store.upsert_lead(
            conn,
            email,
            attributes={"first_name": first, "company": company, "employees": employees},
            timezone=rng.choice(DEFAULT_ZONES),
            consent="subscribed",
            consent_source=f"form {form}",
            now=at,
        )
        fields = {"first_name": first, "company": company}
        act = consents.ConsentAct(
            "given",
            f"form {form}",
            form_id=form,
            text_version="1",
            ip=_ip(number),
            user_agent="Mozilla/5.0",
            fields=fields,
        )
        consents.record(conn, lead_id, act, at)
        person = _Person(number, lead_id, email, rng, bad_mailbox=rng.random() < self.b.bad_mailbox)
        self.people[number] = person
        self.by_lead[lead_id] = person
        self.result.leads += 1
        if rng.random() < self.b.buy:
            self._buy(person, at + timedelta(days=2 + rng.random() * 23))
        return store.NewEvent(entry.id, lead_id, entry.name, at, dict(entry.properties), "form")

    def _buy(self, person: _Person, at: datetime) -> None:
        if person.bought:
            return
        person.bought = True
        n, rng = person.number, person.rng
        self._at(at, "event", n, name="purchase_completed", event_id=engine_id("demo", self.seed, n, "purchase"))
        if rng.random() < self.b.refund:
            later = at + timedelta(days=3 + rng.random() * 17)
            self._at(later, "event", n, name="refund_issued", event_id=engine_id("demo", self.seed, n, "refund"))

    def _react(self, item: OutboxItem, delivered_at: datetime) -> None:
        """A delivered email: maybe opened, then maybe a link clicked; maybe the lead has had enough."""
        person = self.by_lead[item.lead_id]
        rng, n, b = person.rng, person.number, self.b
        where = {"funnel": item.funnel_id, "step": item.step}
        key = f"{item.lead_id}:{item.funnel_id}:{item.step}"
        if rng.random() < b.open:
            opened = delivered_at + timedelta(minutes=5 + rng.random() * 18 * 60)
            self._at(opened, "event", n, name="email_opened", event_id=engine_id("open", key), properties=where)
            links = self.links.get(item.template, ())
            if links and rng.random() < b.click:
                link = rng.choice(links)
                clicked = opened + timedelta(minutes=1 + rng.random() * 120)
                props = {"link": link, "url": f"https://greenleaf.example/{link}", **where}
                self._at(
                    clicked, "event", n, name="email_clicked", event_id=engine_id("click", key, link), properties=props
                )
                if link == "book-call" and rng.random() < b.buy_after_call:
                    self._buy(person, clicked + timedelta(days=1 + rng.random() * 11))
        if not item.transactional and not person.unsubscribed and rng.random() < b.unsubscribe:
            person.unsubscribed = True
            self._at(delivered_at + timedelta(minutes=10 + rng.random() * 2 * 1440), "unsubscribe", n)

    # -- the relay ----------------------------------------------------------------------------------

    def _relay(self, now: datetime) -> None:
        """What the mailer does with due messages, minus SMTP: lease, screen, mark `sending`, record the
        outcome (a bounce suppresses the address, as a 550 does)."""
        while True:
            with self.engine.begin() as conn:
                items = outbox.lease_batch(conn, now, BATCH)
                verdicts = self.screen.judge(conn, items, now, fresh=True)
                go = {i.id: message_id(i, DOMAIN) for i, v in zip(items, verdicts, strict=True) if v == GO}
                marked = outbox.mark_sending(conn, go, now)
                changes = [
                    screened(i.id, v) for i, v in zip(items, verdicts, strict=True) if isinstance(v, Later | Never)
                ]
                self.result.held_back += len(changes)
                for item in items:
                    if item.id in marked:
                        changes.append(self._outcome(conn, item, now))
                outbox.apply(conn, changes)
            if len(items) < BATCH:
                return

    def _outcome(self, conn: Connection, item: OutboxItem, now: datetime) -> outbox.Change:
        person = self.by_lead[item.lead_id]
        if person.bad_mailbox:
            store.suppress(conn, item.email, "bounced", now=now)
            self.result.bounced += 1
            error = "550 5.1.1 <mailbox> does not exist"
            return outbox.Change(item.id, {"status": "bounced", "last_error": error, "claimed_at": None}, ("sending",))
        if person.rng.random() < self.b.unclear:
            self.result.unknown += 1
            error = "after DATA: connection lost"
            return outbox.Change(item.id, {"status": "unknown", "last_error": error, "claimed_at": None}, ("sending",))
        self.result.delivered += 1
        self._react(item, now)
        return outbox.Change(item.id, {"status": "sent", "last_error": None}, ("sending",))


def screen_for(settings: Settings, funnel: Funnel) -> Screen:
    """The mailer's screen, built as `engine.mail.mailer.Mailer` builds it from the settings."""
    delivery = settings.delivery
    rules = TimingRules.parse(delivery.quiet_hours, delivery.max_per_day)
    return Screen(rules, {funnel.id: funnel.timezone}, delivery.default_timezone)


def run(
    engine: Engine, funnel: Funnel, settings: Settings, leads: int, days: int, start: datetime, seed: int = 0
) -> MonthResult:
    """A month (or `days`) of `leads` made-up leads through `funnel`, signing up from `start` on."""
    links = email_links(funnel, settings.emails_dir)
    return DemoMonth(engine, funnel, screen_for(settings, funnel), links, seed).run(leads, start, days)


def _ip(number: int) -> str:
    return f"198.51.100.{number % 250 + 1}"  # documentation range (RFC 5737)


def is_empty(conn: Connection) -> bool:
    return demo_month.no_leads(conn)
