"""A relay that misbehaves on purpose: aiosmtpd on loopback, in a thread of the test process (so it
outlives the engine processes), recording every message it accepts. The test tells it to:

- flap: stop listening and cut its open sessions (connections are refused), then come back;
- throttle: above `throttle_per_s` messages a second, answer 454 4.7.0 (sometimes 451 or 421) to MAIL,
  RCPT or DATA, the way a relay under load or a provider's rate limit does;
- drop after DATA: for a fraction of messages, take the whole DATA and close the connection without a
  reply. Whether the message was delivered is then unknowable to the sender; the server keeps some of
  them (`keep_dropped`), as a real relay might deliver a message whose reply got lost;
- fail one message: the next message to an address gets a given reply (a 4xx or a 5xx) at RCPT or DATA.

Every injected fault is counted, and every message accepted is kept in arrival order.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP

from tests.smtp_server import _free_port

Key = tuple[str, str]  # (recipient, "funnel/step")
COMMANDS = ("MAIL", "RCPT", "DATA")
# Replies relays use for "not now": mostly 454, sometimes 451, now and then 421 (and closing).
THROTTLE_REPLIES = (
    (454, "4.7.0 Too many messages, slow down"),
    (451, "4.7.1 Try again later"),
    (421, "4.7.0 Too many connections, closing"),
)
THROTTLE_WEIGHTS = (7, 2, 1)


# What a relay says with each code it refuses with: the address for 550, 551 and 553, the message or the
# sender for the others (so that only the first ones cost the address).
REPLIES = {
    550: "5.1.1 Mailbox unavailable",
    551: "5.1.6 User not local",
    553: "5.1.3 Bad destination mailbox address syntax",
    552: "5.3.4 Message too big for system",
    554: "5.7.1 Rejected by policy",
}
ADDRESS_REFUSALS = frozenset({550, 551, 553})


@dataclass(frozen=True, slots=True)
class Arrival:
    """One message the server accepted (or kept although it never replied)."""

    seq: int  # arrival order, shared by every message of this server
    rcpt: tuple[str, ...]
    funnel_step: str  # the X-Funnel header: "<funnel>/<step>"
    replied: bool  # False: kept from a connection dropped after DATA


@dataclass(frozen=True, slots=True)
class Refusal:
    code: int
    command: str
    rcpt: str | None  # known from RCPT on
    funnel_step: str | None  # known at DATA only


class FlakyHandler:
    """The aiosmtpd handler: decides a transaction's fate at MAIL and carries it out at its command."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.throttle_per_s: float | None = None
        self.drop_after_data = 0.0
        self.keep_dropped = 0.5
        self._aimed: dict[str, deque[tuple[int, str]]] = {}  # address -> (code, command), next first
        self._admitted: deque[float] = deque()  # when the transactions of the last second started
        self._fate: dict[int, tuple[int, str, str]] = {}  # id(session) -> (code, text, command)
        self.arrivals: list[Arrival] = []
        self.refusals: list[Refusal] = []
        self.dropped: list[tuple[Key, bool]] = []  # ((recipient, funnel/step), kept by the server)
        self._data = 0  # messages that reached the end of DATA

    # -- fate of a transaction ------------------------------------------------------------------------

    def _decide(self, session: Any) -> None:
        with self.lock:
            now = time.monotonic()
            while self._admitted and self._admitted[0] <= now - 1.0:
                self._admitted.popleft()
            if self.throttle_per_s is not None and len(self._admitted) >= self.throttle_per_s:
                code, text = self.rng.choices(THROTTLE_REPLIES, THROTTLE_WEIGHTS)[0]
                self._fate[id(session)] = (code, text, self.rng.choice(COMMANDS))
                return
            self._admitted.append(now)
            self._fate.pop(id(session), None)

    def _refuse_at(self, server: Any, session: Any, command: str, rcpt: str | None, step: str | None) -> str | None:
        with self.lock:
            aimed = self._aimed.get(rcpt or "")
            if aimed and aimed[0][1] == command:
                code, _ = aimed.popleft()
                text = REPLIES.get(code, "4.3.0 Try again later" if code < 500 else "5.3.0 Rejected")
            else:
                fate = self._fate.get(id(session))
                if fate is None or fate[2] != command:
                    return None
                del self._fate[id(session)]
                code, text, _ = fate
            self.refusals.append(Refusal(code, command, rcpt, step))
        if code == 421:
            # 421 closes the channel (RFC 5321 3.8): the reply goes out, then the connection ends.
            asyncio.get_running_loop().call_later(0.01, _close, server)
        return f"{code} {text}"

    # -- aiosmtpd hooks -----------------------------------------------------------------------------

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self._decide(session)
        refused = self._refuse_at(server, session, "MAIL", None, None)
        if refused is not None:
            return refused
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        refused = self._refuse_at(server, session, "RCPT", address.lower(), None)
        if refused is not None:
            return refused
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content or envelope.content
        rcpt = tuple(str(r).lower() for r in envelope.rcpt_tos)
        step = _funnel_step(raw)
        refused = self._refuse_at(server, session, "DATA", rcpt[0] if rcpt else None, step)
        if refused is not None:
            return refused
        with self.lock:
            # Evenly spread, not drawn: a short run still drops its share, and keeps its share of those.
            self._data += 1
            dropping = _every(self._data, self.drop_after_data)
            kept = not dropping or _every(len(self.dropped) + 1, self.keep_dropped)
            if dropping:
                self.dropped.extend(((r, step), kept) for r in rcpt)
            if kept:
                self.arrivals.append(Arrival(len(self.arrivals), rcpt, step, replied=not dropping))
        if dropping:
            # The whole message is here; the client never hears so.
            server.transport.close()
            return "250 never heard"
        return "250 Message accepted for delivery"

    def aim(self, address: str, code: int, command: str) -> None:
        with self.lock:
            self._aimed.setdefault(address.lower(), deque()).append((code, command))

    def forget(self, session: Any) -> None:
        with self.lock:
            self._fate.pop(id(session), None)


def _every(n: int, fraction: float) -> bool:
    """Whether the n-th (from 1) of a series is one of the `fraction` picked, spread evenly."""
    return int(n * fraction) > int((n - 1) * fraction)


def _close(server: Any) -> None:
    if server.transport is not None:
        server.transport.close()


def _funnel_step(raw: bytes) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    for line in head.splitlines():
        if line.lower().startswith(b"x-funnel:"):
            return line.split(b":", 1)[1].strip().decode()
    return ""


class _Session(SMTP):
    """aiosmtpd's SMTP protocol, known to the server while its connection is open (a flap cuts it)."""

    def __init__(self, handler: FlakyHandler, live: set[_Session], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._live = live
        self._flaky = handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._live.discard(self)
        if self.session is not None:
            self._flaky.forget(self.session)
        super().connection_lost(error)


class FlakySmtpServer:
    """`with FlakySmtpServer(seed=...) as relay:` then point the engine at `relay.env()`; set the
    faults with `relay.throttle(...)`, `relay.drop(...)`, `relay.flap(...)`, `relay.fail(...)`."""

    def __init__(self, seed: int = 5321, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = _free_port(host)
        self.handler = FlakyHandler(seed)
        self.flaps = 0
        self._live: set[_Session] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="flaky-smtp", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def __enter__(self) -> FlakySmtpServer:
        self._thread.start()
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # -- faults -------------------------------------------------------------------------------------

    def up(self) -> None:
        """Listen (again), on the same port."""
        self._call(self._listen())

    def down(self) -> None:
        """Stop listening and cut every open session, like a relay restarting."""
        self._call(self._stop_listening())

    def flap(self, down_s: float) -> None:
        self.down()
        self.flaps += 1
        time.sleep(down_s)
        self.up()

    def throttle(self, per_s: float | None) -> None:
        self.handler.throttle_per_s = per_s

    def drop(self, fraction: float, keep: float = 0.5) -> None:
        self.handler.drop_after_data = fraction
        self.handler.keep_dropped = keep

    def fail(self, address: str, code: int, command: str) -> None:
        """The next message to `address` gets `code` at `command` (RCPT or DATA); once."""
        assert command in ("RCPT", "DATA")
        self.handler.aim(address, code, command)

    # -- what happened ------------------------------------------------------------------------------

    def arrivals(self, since: int = 0) -> list[Arrival]:
        """The messages kept, in arrival order, from the `since`-th on."""
        with self.handler.lock:
            return self.handler.arrivals[since:]

    def refusals(self, since: int = 0) -> list[Refusal]:
        with self.handler.lock:
            return self.handler.refusals[since:]

    def dropped(self) -> list[tuple[Key, bool]]:
        with self.handler.lock:
            return list(self.handler.dropped)

    def per_lead_step(self, arrivals: Iterable[Arrival] | None = None) -> Counter[Key]:
        """How many copies each (recipient, funnel/step) got."""
        got = self.arrivals() if arrivals is None else arrivals
        return Counter((rcpt, a.funnel_step) for a in got for rcpt in a.rcpt)

    @property
    def faults(self) -> int:
        """Flaps, refusals and connections dropped after DATA, so far."""
        with self.handler.lock:
            return self.flaps + len(self.handler.refusals) + len(self.handler.dropped)

    def env(self) -> dict[str, str]:
        """The engine's settings that send to this server."""
        return {
            "FUNNEL_SMTP__HOST": self.host,
            "FUNNEL_SMTP__PORT": str(self.port),
            "FUNNEL_SMTP__SECURITY": "none",
            # The relay does the throttling here; the engine's own pacing stays out of the way.
            "FUNNEL_SMTP__RATE_PER_S": "100000",
        }

    # -- the server's loop --------------------------------------------------------------------------

    def _call(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await self._loop.create_server(
                lambda: _Session(self.handler, self._live, hostname=self.host), self.host, self.port
            )

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for session in list(self._live):
            if session.transport is not None:
                session.transport.abort()
        self._live.clear()
        await asyncio.sleep(0)

    async def _shutdown(self) -> None:
        await self._stop_listening()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
