"""Exceptions of any type while sending (invariant 14). A fake relay connection throws arbitrary exceptions
(the SMTP library's own, OS errors, and anything else: a UnicodeEncodeError, a KeyError, a RuntimeError
whose text runs over several lines) at random points of the conversation: connecting, MAIL, RCPT, DATA
before or after the relay took the message, RSET, QUIT. Some messages also kill the render process that
composes them, every time. The database is a real SQLite file; the mailer, its ledger, the composer and
the screen are the engine's own. Only the relay connection and the render pool are fakes: the property is
about the mailer's bookkeeping, not about SMTP.

Round after round, the clock moving to the next due message, until nothing is pending: every message ends
`sent`, `failed`, `bounced` or `unknown` within its attempt budget, with a one-line reason when it did not
go; nothing is delivered twice; a message the relay took is `sent` or `unknown`, never retried.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections import Counter
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosmtplib
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from engine.core.outbox_item import OutboxItem
from engine.mail.composer import Composer, Failed, Prepared
from engine.mail.mailer import MAX_ATTEMPTS, Mailer
from engine.mail.templates import TemplateLibrary
from engine.mail.throttle import Throttle
from engine.settings import Settings
from engine.store.database import create_engine_for, upgrade
from engine.store.tables import leads, outbox
from tests.acceptance.conftest import queue_email
from tests.faults.conftest import full, size
from tests.faults.tally import Key, Tally, count

EMAILS = Path(__file__).resolve().parent.parent / "fixtures" / "emails"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
FINAL = {"sent", "failed", "bounced", "unknown", "skipped"}
EXAMPLES = size(40, 400)
# Far more than any example needs: a message stuck in a loop would reach it.
ROUNDS = 500

# What a connection may throw: (name, factory). The SMTP library's errors and replies, the OS's, and the
# kind nobody planned for.
EXCEPTIONS: tuple[tuple[str, Callable[[], Exception]], ...] = (
    ("UnicodeEncodeError", lambda: UnicodeEncodeError("ascii", "idn@bücher.example", 5, 6, "ordinal not in range")),
    ("ValueError", lambda: ValueError("Address contains characters not permitted")),
    ("KeyError", lambda: KeyError("auth")),
    ("TypeError", lambda: TypeError("expected bytes, found NoneType")),
    ("RuntimeError", lambda: RuntimeError("first line\nsecond line\nthird")),
    ("AssertionError", lambda: AssertionError()),
    ("ZeroDivisionError", lambda: ZeroDivisionError("division by zero")),
    ("RecursionError", lambda: RecursionError("maximum recursion depth exceeded")),
    ("EOFError", lambda: asyncio.IncompleteReadError(b"25", 5)),
    ("ConnectionResetError", lambda: ConnectionResetError(104, "Connection reset by peer")),
    ("TimeoutError", lambda: TimeoutError()),
    ("SSLError", lambda: ssl.SSLError(1, "[SSL: BAD_RECORD_MAC] bad record mac")),
    ("SMTPServerDisconnected", lambda: aiosmtplib.SMTPServerDisconnected("Connection lost")),
    ("SMTPTimeoutError", lambda: aiosmtplib.SMTPTimeoutError("Timed out waiting for server response")),
    ("SMTP 421", lambda: aiosmtplib.SMTPResponseException(421, "4.7.0 closing")),
    ("SMTP 451", lambda: aiosmtplib.SMTPResponseException(451, "4.3.0 try later")),
    ("SMTP 550", lambda: aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such user", "x")),
    ("SMTP 554", lambda: aiosmtplib.SMTPResponseException(554, "5.7.1 refused\nsee the policy")),
    ("SMTP 552 at DATA", lambda: aiosmtplib.SMTPDataError(552, "5.3.4 too big")),
    ("SMTP garbled", lambda: aiosmtplib.SMTPResponseException(-1, "Malformed SMTP response line: ...")),
)


@dataclass(frozen=True)
class Fault:
    name: str
    make: Callable[[], Exception]
    delivered: bool  # at DATA: the relay took the whole message before the exception


@dataclass
class Relay:
    """The relay as the fake connections see it: call after call (every command of every connection
    counts), the planned fault at a call number, and what it took."""

    plan: dict[int, Fault]
    calls: int = 0
    thrown: Counter[str] = field(default_factory=Counter)
    delivered: Counter[Key] = field(default_factory=Counter)

    def fault(self, point: str) -> Fault | None:
        found = self.plan.get(self.calls)
        self.calls += 1
        if found is not None:
            self.thrown[f"{found.name} at {point}"] += 1
        return found


class FakeConnection:
    """What the mailer uses of `aiosmtplib.SMTP`, answering 250 unless the plan says otherwise."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.is_connected = False
        self.rcpt_to = ""

    def _maybe(self, point: str) -> None:
        fault = self.relay.fault(point)
        if fault is not None:
            raise fault.make()

    async def connect(self) -> None:
        self._maybe("connect")
        self.is_connected = True

    async def mail(self, sender: str) -> None:
        self._maybe("mail")

    async def rcpt(self, recipient: str) -> None:
        self._maybe("rcpt")
        self.rcpt_to = recipient

    async def data(self, payload: bytes) -> None:
        fault = self.relay.fault("data")
        exc = fault.make() if fault is not None else None
        # A reply (4xx, 5xx) says the relay did not take it; anything else may come after it did.
        replied = isinstance(exc, aiosmtplib.SMTPResponseException) and 400 <= exc.code < 600
        if fault is None or (fault.delivered and not replied):
            header = next(line for line in payload.split(b"\r\n") if line.startswith(b"X-Funnel: "))
            self.relay.delivered[(self.rcpt_to, header.removeprefix(b"X-Funnel: ").decode())] += 1
        if exc is not None:
            raise exc

    async def rset(self) -> None:
        self._maybe("rset")

    async def quit(self) -> None:
        self.is_connected = False
        self._maybe("quit")

    def close(self) -> None:
        self.is_connected = False


class FakeRenderPool:
    """Composes with the engine's composer, in this process; a batch holding a message addressed to a
    `poison-` mailbox loses its process, as a render process killed by the OS would."""

    def __init__(self, composer: Composer, broken: Counter[str]) -> None:
        self.composer = composer
        self.broken = broken

    async def compose_many(self, items: list[OutboxItem], now: datetime) -> list[Prepared | Failed]:
        await asyncio.sleep(0)
        if any(i.email.startswith("poison-") for i in items):
            self.broken["render process died"] += 1
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")
        return self.composer.compose_many(items, now)

    def close(self) -> None:
        pass


class FaultyMailer(Mailer):
    """The engine's mailer, connected to the fake relay and composing in the fake render pool."""

    def __init__(self, engine: sa.Engine, relay: Relay) -> None:
        smtp = {"host": "relay.invalid", "security": "none", "rate_per_s": 100_000, "connections": 2}
        super().__init__(engine, Settings(smtp=smtp, render_processes=1), TemplateLibrary(EMAILS))
        self.relay = relay
        # The rounds run on the test's clock, and so does the pause a 421 or 451 asks for.
        self.now = T0
        self.throttle = Throttle(100_000, clock=lambda: (self.now - T0).total_seconds())

    def _smtp(self, host: str, port: int) -> Any:
        return FakeConnection(self.relay)

    def _new_pool(self) -> Any:
        return FakeRenderPool(self.composer, self.relay.thrown)


faults = st.dictionaries(
    st.integers(0, 40),
    st.builds(
        lambda named, delivered: Fault(named[0], named[1], delivered), st.sampled_from(EXCEPTIONS), st.booleans()
    ),
    max_size=30,
)


@dataclass
class Totals:
    examples: int = 0
    messages: int = 0
    thrown: Counter[str] = field(default_factory=Counter)
    expected: set[Key] = field(default_factory=set)
    received: Counter[Key] = field(default_factory=Counter)
    outbox: dict[Key, str] = field(default_factory=dict)
    rounds: int = 0


def rows(engine: sa.Engine) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(
                    leads.c.email, outbox.c.funnel_id, outbox.c.step, outbox.c.status, outbox.c.attempts,
                    outbox.c.last_error, outbox.c.next_attempt_at, outbox.c.claimed_at,
                ).join(leads, leads.c.id == outbox.c.lead_id)
            )
        )  # fmt: skip


def next_round(found: list[sa.Row[Any]], now: datetime, lease: timedelta) -> datetime | None:
    """When the next pending message may be taken: its retry time, or the end of a lease left on it."""
    times = [
        max(r.next_attempt_at, (r.claimed_at + lease) if r.claimed_at else r.next_attempt_at)
        for r in found
        if r.status in ("queued", "deferred")
    ]
    return max(min(times), now + timedelta(seconds=1)) if times else None


def test_any_exception_while_sending_ends_each_message_in_a_final_state_within_its_budget(
    tmp_path: Path, fault_report: Callable[[Tally], None]
) -> None:
    template_db = tmp_path / "template.db"
    upgrade(f"sqlite:///{template_db}")
    totals = Totals()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
        phases=list(Phase) if full() else [Phase.explicit, Phase.generate],
    )
    @given(plan=faults, good=st.integers(1, 6), poisoned=st.integers(0, 2))
    def example(plan: dict[int, Fault], good: int, poisoned: int) -> None:
        n = totals.examples
        totals.examples += 1
        path = tmp_path / f"example-{n}.db"
        shutil.copyfile(template_db, path)
        engine = create_engine_for(f"sqlite:///{path}")
        try:
            addresses = [f"lead{i}@d{i % 3}.example" for i in range(good)]
            addresses += [f"poison-{i}@d{i}.example" for i in range(poisoned)]
            for i, address in enumerate(addresses):
                queue_email(engine, address, f"step-{i}", T0, template="lead-magnet/report")
            relay = Relay(plan)
            mailer = FaultyMailer(engine, relay)
            now: datetime | None = T0
            rounds = 0
            while now is not None:
                mailer.now = now
                asyncio.run(mailer.dispatch(now, "relay.invalid", 25))
                rounds += 1
                assert rounds <= ROUNDS, rows(engine)
                now = next_round(rows(engine), now, mailer.lease())
            mailer.close()
            found = rows(engine)
        finally:
            engine.dispose()
            path.unlink()

        totals.rounds += rounds
        totals.messages += len(found)
        totals.thrown.update(relay.thrown)
        totals.received.update({(f"{n}:{a}", s): c for (a, s), c in relay.delivered.items()})
        for r in found:
            key = (f"{n}:{r.email}", f"{r.funnel_id}/{r.step}")
            totals.outbox[key] = r.status
            if r.status not in ("failed", "bounced"):
                totals.expected.add(key)
            delivered = relay.delivered[(r.email, f"{r.funnel_id}/{r.step}")]
            assert r.status in FINAL, r
            assert 0 <= r.attempts <= MAX_ATTEMPTS, r
            assert delivered <= 1, r
            if r.status == "sent":
                assert delivered == 1, r
            elif r.status in ("failed", "bounced"):
                assert delivered == 0, r
            if r.status != "sent":
                assert r.last_error and "\n" not in r.last_error, r
            if r.email.startswith("poison-"):
                assert (r.status, r.attempts) == ("failed", MAX_ATTEMPTS), r

    example()

    tally = count(
        "arbitrary send exceptions",
        faults=sum(totals.thrown.values()),
        leads=totals.messages,
        expected=totals.expected,
        received=totals.received,
        outbox=totals.outbox,
    )
    statuses = Counter(totals.outbox.values())
    kinds = Counter(name.split(" at ")[0] for name in totals.thrown.elements())
    tally.notes.append(
        f"{totals.examples} examples, {totals.rounds} rounds; outbox {dict(sorted(statuses.items()))}; "
        f"thrown {', '.join(f'{k} x{v}' for k, v in kinds.most_common())}"
    )
    fault_report(tally)
    assert tally.duplicated == 0
    assert tally.lost == 0
    assert tally.strays == 0
    assert totals.examples >= EXAMPLES // 2
