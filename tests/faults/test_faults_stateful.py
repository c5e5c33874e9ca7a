"""The engine against random interleavings: a hypothesis state machine signs leads up, clicks (which moves
them to another stage), replays earlier events, moves a virtual clock, ticks, sends, unsubscribes leads and
makes the relay refuse a message now and then (4xx or 5xx, at RCPT or DATA). Each example runs the real
worker, ingestion, consent and mailer code on a SQLite file of its own, sending to a real SMTP server on
loopback.

After every step: no (lead, step) arrived twice; nothing arrived for a lead after its unsubscribe (by the
relay's arrival order) or after its address bounced; every message that arrived is recorded as handed over.
At the end of an example the clock runs far ahead and the engine sends until idle: every outbox row is
final, every delivered one is `sent`, and every lead still subscribed got exactly the emails the pure
journey core says its path calls for (invariants 2, 4, 5, 7), less those the relay refused for good.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from engine.authoring.validation import load_funnels
from engine.authoring.virtualclock import drive
from engine.core.definition import Funnel
from engine.core.journey import Event, Lead, SendEmail
from engine.http.api_v1 import EventIn, record_items
from engine.mail.mailer import DispatchResult, Mailer
from engine.mail.templates import TemplateLibrary
from engine.runtime.worker import Worker
from engine.settings import Settings
from engine.store import consents, ingest
from engine.store.database import create_engine_for, upgrade
from engine.store.tables import enrollments, leads, outbox
from tests.acceptance.conftest import write_emails
from tests.faults.conftest import full, size
from tests.faults.flaky_smtp import ADDRESS_REFUSALS, FlakySmtpServer
from tests.faults.tally import Key, Tally, count

FUNNEL = """\
id: nurture
name: Nurture
allowed_lateness: 365d
entry:
  triggers:
    - event: signed_up
stages:
  - id: cold
    steps:
      - id: welcome
        send: drip/welcome
      - id: pause1
        wait: 1h
      - id: tip
        send: drip/tip
      - id: pause2
        wait: 1d
      - id: nudge
        send: drip/nudge
    on_end: stay
  - id: warm
    steps:
      - id: offer
        send: drip/offer
      - id: pause3
        wait: 2h
      - id: last
        send: drip/last
    on_end: exit
transitions:
  - id: clicked
    from: [cold]
    on: {event: email_clicked}
    to: warm
exits:
  - event: unsubscribed
    reason: unsubscribed
"""
TEMPLATES = ["welcome", "tip", "nudge", "offer", "last"]
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
GAPS = (timedelta(0), timedelta(minutes=1), timedelta(minutes=20), timedelta(hours=1), timedelta(hours=5),
        timedelta(days=1), timedelta(days=3))  # fmt: skip
# What the relay may answer one message: retried later (4xx), bounced and suppressed (550, 553), failed.
FAILURES = ((421, "RCPT"), (450, "RCPT"), (451, "DATA"), (454, "DATA"), (550, "RCPT"), (553, "RCPT"),
            (550, "DATA"), (552, "DATA"), (554, "DATA"))  # fmt: skip
FINAL = {"sent", "unknown", "failed", "bounced", "skipped"}
EXAMPLES = size(25, 300)
STEPS_PER_EXAMPLE = size(40, 50)


@dataclass
class World:
    """What the examples share: the migrated database they copy, the funnel, the templates, the relay,
    and the totals of the tally."""

    root: Path
    template_db: Path
    funnel: Funnel
    templates: TemplateLibrary
    relay: FlakySmtpServer
    done: Counter[str] = field(default_factory=Counter)  # examples, and how often each rule ran
    expected: set[Key] = field(default_factory=set)
    received: Counter[Key] = field(default_factory=Counter)
    outbox: dict[Key, str] = field(default_factory=dict)
    leads: int = 0
    faults: int = 0
    numbers: itertools.count[int] = field(default_factory=itertools.count)


@dataclass
class Signed:
    """A lead as the machine knows it."""

    address: str
    at: datetime
    clicks: list[Event] = field(default_factory=list)


class EngineMachine(RuleBasedStateMachine):
    world: ClassVar[World]
    leads = Bundle("leads")

    def __init__(self) -> None:
        super().__init__()
        w = self.world
        self.n = next(w.numbers)
        self.db = w.root / f"example-{self.n}.db"
        shutil.copy(w.template_db, self.db)
        self.engine = create_engine_for(f"sqlite:///{self.db}")
        self.worker = Worker(self.engine, {w.funnel.id: w.funnel})
        smtp = {"host": w.relay.host, "port": w.relay.port, "security": "none", "timeout_s": 2, "connections": 2}
        self.settings = Settings(smtp={**smtp, "rate_per_s": 100_000})
        self.now = T0
        self.signed: dict[str, Signed] = {}
        self.events: list[EventIn] = []  # every event recorded once, for replays
        self.arrivals0 = len(w.relay.arrivals())
        self.refusals0 = len(w.relay.refusals())
        self.cut: dict[str, int] = {}  # address -> arrivals from this seq on would break consent

    # -- rules ----------------------------------------------------------------------------------------

    def record(self, event: EventIn) -> tuple[int, int]:
        return ingest.in_transaction(self.engine, lambda conn: record_items(conn, [event], "api", self.now))

    @initialize(target=leads, n=st.integers(1, 3))
    def first_leads(self, n: int) -> object:
        """A few leads from the start, so that every example has someone to move."""
        return multiple(*(self.sign_up() for _ in range(n)))

    @rule(target=leads)
    def sign_up(self) -> str:
        self.world.done["sign up"] += 1
        address = f"x{self.n}-{len(self.signed)}@d{len(self.signed) % 3}.example"
        event = EventIn(id=f"signup-{address}", type="signed_up", email=address, occurred_at=self.now.isoformat())
        assert self.record(event) == (1, 0)
        self.events.append(event)
        self.signed[address] = Signed(address, self.now)
        return address

    @rule(lead=leads)
    def click(self, lead: str) -> None:
        self.world.done["click"] += 1
        signed = self.signed[lead]
        event = EventIn(id=f"click-{lead}-{len(signed.clicks)}", type="email_clicked", email=lead,
                        occurred_at=self.now.isoformat(), properties={"link": "pricing"})  # fmt: skip
        assert self.record(event) == (1, 0)
        self.events.append(event)
        signed.clicks.append(Event(event.id, event.type, self.now, event.properties))

    @precondition(lambda self: self.events)
    @rule(data=st.data(), later=st.booleans())
    def replay(self, data: st.DataObject, later: bool) -> None:
        """The same event id again (a sender retrying), at its own time or stamped now: nothing changes."""
        self.world.done["replay"] += 1
        event = data.draw(st.sampled_from(self.events))
        again = event.model_copy(update={"occurred_at": self.now}) if later else event
        assert self.record(again) == (0, 1)

    @rule(gap=st.sampled_from(GAPS))
    def advance(self, gap: timedelta) -> None:
        self.world.done["advance"] += 1
        self.now += gap

    @rule()
    def tick(self) -> None:
        self.world.done["tick"] += 1
        result = self.worker.tick(self.now)
        assert not result.errors, result.errors

    @rule()
    def dispatch(self) -> None:
        self.world.done["dispatch"] += 1
        result = self.send()
        assert not result.errors, result.errors

    @rule(lead=leads)
    def unsubscribe(self, lead: str) -> None:
        """The one-click route's consent change, committed before the next message can be claimed."""
        self.world.done["unsubscribe"] += 1
        with self.engine.begin() as conn:
            consents.unsubscribe(conn, lead, consents.ConsentAct("withdrawn", "one-click"), self.now)
        self.cut.setdefault(lead, len(self.world.relay.arrivals()))

    @rule(lead=leads, failure=st.sampled_from(FAILURES))
    def refuse(self, lead: str, failure: tuple[int, str]) -> None:
        """The relay will refuse the next message to this lead, once."""
        self.world.done["refuse"] += 1
        self.world.relay.fail(lead, *failure)

    def send(self) -> DispatchResult:
        # A mailer per round, as a worker process has: its rate limits and pauses run on the real clock,
        # which a virtual clock leaves behind.
        mailer = Mailer(self.engine, self.settings, self.world.templates)
        relay = self.world.relay
        result = asyncio.run(mailer.dispatch(self.now, relay.host, relay.port))
        # An address that bounced is suppressed once the round's outcomes are written: no later round
        # may send to it. (Messages of the same round were in flight side by side.)
        for refusal in relay.refusals(self.refusals0):
            if refusal.code in ADDRESS_REFUSALS and refusal.rcpt is not None:
                self.cut.setdefault(refusal.rcpt, len(relay.arrivals()))
        return result

    # -- invariants -----------------------------------------------------------------------------------

    def arrived(self) -> Counter[Key]:
        return self.world.relay.per_lead_step(self.world.relay.arrivals(self.arrivals0))

    @invariant()
    def nothing_twice(self) -> None:
        twice = {k: n for k, n in self.arrived().items() if n > 1}
        assert not twice, twice

    @invariant()
    def nothing_after_consent_ends(self) -> None:
        late = [(a.rcpt, a.funnel_step, a.seq) for a in self.world.relay.arrivals(self.arrivals0)
                for r in a.rcpt if r in self.cut and a.seq >= self.cut[r]]  # fmt: skip
        assert not late, (late, self.cut)

    @invariant()
    def what_arrived_was_handed_over(self) -> None:
        statuses = self.statuses()
        wrong = {k: statuses.get(k) for k in self.arrived() if statuses.get(k) not in ("sent", "unknown")}
        assert not wrong, wrong

    def statuses(self) -> dict[Key, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(leads.c.email, outbox.c.funnel_id, outbox.c.step, outbox.c.status).join(
                    leads, leads.c.id == outbox.c.lead_id
                )
            ).all()
        return {(r.email, f"{r.funnel_id}/{r.step}"): r.status for r in rows}

    # -- the end of an example ------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self.finish()
        finally:
            self.engine.dispose()
            self.db.unlink(missing_ok=True)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.db}{suffix}").unlink(missing_ok=True)

    def finish(self) -> None:
        """Run the clock far ahead, tick and send until idle; then everything is final and each lead
        still subscribed got what its path calls for."""
        for _ in range(12):
            self.now += timedelta(days=3)
            self.worker.run_until_idle(self.now)
            while self.send().work:
                pass
            if not self.open_work():
                break
        assert not self.open_work()
        self.nothing_twice()
        self.nothing_after_consent_ends()

        statuses = self.statuses()
        received = self.arrived()
        refusals = self.world.relay.refusals(self.refusals0)
        assert set(statuses.values()) <= FINAL, Counter(statuses.values())
        # This relay answers every command, so no outcome may be left unknown (that is for lost replies).
        assert "unknown" not in statuses.values(), Counter(statuses.values())
        assert all(statuses.get(k) == "sent" for k in received), {k: statuses.get(k) for k in received}
        # Only the relay fails or bounces a message, once per refusal for good.
        given_up = Counter(s for s in statuses.values() if s in ("failed", "bounced"))
        assert given_up["bounced"] == sum(1 for r in refusals if r.code in ADDRESS_REFUSALS)
        assert given_up["failed"] == sum(1 for r in refusals if r.code >= 500 and r.code not in ADDRESS_REFUSALS)

        expected: set[Key] = set()
        seq_of = {(r, a.funnel_step): a.seq for a in self.world.relay.arrivals(self.arrivals0) for r in a.rcpt}
        lead_ids = self.lead_ids()
        for address, signed in self.signed.items():
            keys = {k for k in statuses if k[0] == address}
            if address in self.cut:
                # Unsubscribed or bounced: what went before the cut was wanted; nothing after it is.
                cut = self.cut[address]
                expected |= {k for k in keys if statuses[k] in ("sent", "unknown") and seq_of.get(k, -1) < cut}
                continue
            path = self.path(signed, lead_ids[address])
            assert keys == path, (address, sorted(keys), sorted(path))
            expected |= {k for k in path if statuses[k] not in ("failed", "bounced")}
        w = self.world
        w.done["examples"] += 1
        w.leads += len(self.signed)
        w.faults += len(refusals)
        w.expected |= expected
        w.received.update(received)
        w.outbox.update(statuses)
        tally = count("one example", faults=len(refusals), leads=len(self.signed), expected=expected,
                      received=received, outbox=statuses)  # fmt: skip
        assert (tally.duplicated, tally.lost, tally.strays) == (0, 0, 0), tally

    def open_work(self) -> int:
        """Outbox rows not final, and enrollments still waiting for the clock."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(sa.func.count()).select_from(outbox).where(outbox.c.status.not_in(sorted(FINAL)))
            ).scalar_one()
            waiting = conn.execute(
                sa.select(sa.func.count())
                .select_from(enrollments)
                .where(enrollments.c.status == "active", enrollments.c.wake_at.is_not(None))
            ).scalar_one()
        return int(rows + waiting)

    def lead_ids(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {email: lead_id for email, lead_id in conn.execute(sa.select(leads.c.email, leads.c.id))}

    def path(self, signed: Signed, lead_id: int) -> set[Key]:
        """The emails the pure core sends this lead, from its signup and its clicks."""
        funnel = self.world.funnel
        entry = Event(f"signup-{signed.address}", "signed_up", signed.at)
        run = drive(funnel, Lead(str(lead_id)), entry, signed.at, signed.clicks, self.now)
        return {(signed.address, f"{funnel.id}/{c.step}") for c in run.commands() if isinstance(c, SendEmail)}


def test_random_interleavings_never_send_twice_lose_nothing_and_respect_unsubscribes(
    tmp_path: Path, fault_report: Callable[[Tally], None]
) -> None:
    emails = write_emails(tmp_path, TEMPLATES)
    (tmp_path / "funnels").mkdir()
    (tmp_path / "funnels" / "nurture.yaml").write_text(FUNNEL)
    loaded = load_funnels([tmp_path / "funnels"], emails_dir=emails)
    assert not loaded.errors, loaded.errors
    template_db = tmp_path / "template.db"
    upgrade(f"sqlite:///{template_db}")
    with FlakySmtpServer(seed=8058) as relay:
        world = World(tmp_path, template_db, loaded.funnels[0], TemplateLibrary(emails), relay)
        EngineMachine.world = world
        run_state_machine_as_test(
            EngineMachine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS_PER_EXAMPLE,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                # Shrinking replays the engine hundreds of times (minutes): the full run does it, the short
                # one reports the failing example as found.
                phases=list(Phase) if full() else [Phase.explicit, Phase.generate],
            ),
        )
    tally = count("stateful: random interleavings", faults=world.faults, leads=world.leads,
                  expected=world.expected, received=world.received, outbox=world.outbox)  # fmt: skip
    statuses = Counter(world.outbox.values())
    rules = ", ".join(f"{k} {v}" for k, v in sorted(world.done.items()) if k != "examples")
    tally.notes.append(f"{world.done['examples']} examples; rules run: {rules}")
    tally.notes.append(f"outbox {dict(sorted(statuses.items()))}")
    fault_report(tally)
    assert tally.duplicated == 0
    assert tally.lost == 0
    assert tally.strays == 0
    assert world.done["examples"] >= EXAMPLES // 2
