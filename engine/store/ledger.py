"""Group commit for the send pipeline. Every SMTP connection hands its state changes here; they go to
the database together, one short transaction per round of server replies instead of two per email. The
transaction runs in the round's database thread: while it waits for the database (a server's round trips,
SQLite's writer lock) the event loop goes on reading replies and sending, and what comes in meanwhile
makes the next transaction's group.

What must happen before DATA still does: `claim` returns only after the commit that marked the message
`sending` (with consent read again in that same transaction). Outcomes after DATA are queued and
committed with the next round; a worker killed before that commit leaves the message in `sending`,
which the sweep reports as `unknown`, never resent.

When the database fails, a claim raises `RecordingFailed`: not the message's fault, so it spends no
attempt; it stays leased and is tried again when the lease ends. The failure is kept (`failure`) for the
round to report as a database outage, once, instead of a traceback per message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from engine.core.outbox_item import OutboxItem
from engine.store import leads as store
from engine.store import outbox
from engine.store.outbox import Change
from engine.store.screen import GO, Later, Never, Screen, Verdict

log = logging.getLogger("engine.ledger")

T = TypeVar("T")

# Someone else marked the message first (another worker whose lease had run out): not ours to send.
TAKEN = "taken"


class RecordingFailed(Exception):
    """The database could not record a claim: the message is not sent, and not to blame."""


@dataclass(slots=True)
class _Claim:
    item: OutboxItem
    message_id: str
    language: str | None
    verdict: asyncio.Future[Verdict]


class Ledger:
    def __init__(self, engine: sa.Engine, screen: Screen, now: datetime, db: Executor) -> None:
        self.engine = engine
        self.screen = screen
        self.now = now
        # The one thread that talks to the database for this round: the event loop goes on with the SMTP
        # sessions while a flush waits for the server, and what arrives meanwhile joins the next flush.
        self.db = db
        self._claims: list[_Claim] = []
        self._changes: list[Change] = []
        self._bounces: list[str] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._conn: sa.Connection | None = None  # used in the database thread only
        self.failure: Exception | None = None  # the database's last failure this round, if any

    async def claim(self, item: OutboxItem, message_id: str, language: str | None = None) -> Verdict:
        """GO once the message is committed as `sending` (with the language it was written in); else why
        not (recorded already)."""
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._claims.append(_Claim(item, message_id, language, future))
        self._wake.set()
        return await future

    def record(self, change: Change) -> None:
        self._changes.append(change)
        self._wake.set()

    def suppress(self, email: str) -> None:
        self._bounces.append(email)
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            # The replies that are already in join this round.
            await asyncio.sleep(0)
            if self._claims or self._changes or self._bounces:
                if await self.flush():
                    failures = 0
                else:
                    failures += 1
                    await asyncio.sleep(min(0.1 * 2**failures, 5.0))
            if self._closing and (failures >= 5 or not (self._claims or self._changes or self._bounces)):
                # Outcomes that could not be written leave their messages `sending` or leased: the
                # sweep reports the former as unknown, the lease expiry retries the latter.
                await self._in_db(self._release)
                return

    async def _in_db(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.db, call, *args)

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        self._closing = True
        self._wake.set()

    async def flush(self) -> bool:
        claims, changes, bounces = self._claims, self._changes, self._bounces
        self._claims, self._changes, self._bounces = [], [], []
        try:
            verdicts = await self._in_db(self._write, claims, changes, bounces)
        except Exception as exc:
            # Nothing was written. Outcomes are kept for the next round.
            self._changes[:0], self._bounces[:0] = changes, bounces
            self._wake.set()
            if not isinstance(exc, sa.exc.SQLAlchemyError) and claims:
                # Not the database: a fault in what a claim runs, about one of the messages (the screen
                # already judges each on its own). Each claim alone, so the trouble stays with its message.
                for claim, outcome in zip(claims, await self._in_db(self._claim_each, claims), strict=True):
                    if isinstance(outcome, sa.exc.SQLAlchemyError):
                        self.failure = outcome
                        outcome = RecordingFailed(str(outcome))
                    _settle(claim, outcome)
                return True
            # A claim fails, and its message stays leased until the lease runs out, then it is tried again.
            log.debug("recording send outcomes failed", exc_info=True)
            self.failure = exc
            for claim in claims:
                _settle(claim, RecordingFailed(str(exc)))
            return False
        for claim, verdict in zip(claims, verdicts, strict=True):
            _settle(claim, verdict)
        return True

    def _write(self, claims: list[_Claim], changes: list[Change], bounces: list[str]) -> list[Verdict]:
        """One transaction: the outcomes, the bounces, then the claims (in the database thread)."""
        try:
            # One connection for the whole round: a flush is a short transaction, not a pool checkout.
            if self._conn is None:
                self._conn = self.engine.connect()
            conn = self._conn
            with conn.begin():
                outbox.apply(conn, changes)
                for email in bounces:
                    store.suppress(conn, email, "bounced", now=self.now)
                return self._claim(conn, claims) if claims else []
        except BaseException:
            self._release()
            raise

    def _claim_each(self, claims: list[_Claim]) -> list[Verdict | Exception]:
        """Each claim in a transaction of its own (in the database thread): its verdict, or what it raised."""
        out: list[Verdict | Exception] = []
        for claim in claims:
            try:
                if self._conn is None:
                    self._conn = self.engine.connect()
                with self._conn.begin():
                    (verdict,) = self._claim(self._conn, [claim])
            except Exception as exc:
                self._release()
                out.append(exc)
                continue
            out.append(verdict)
        return out

    def _claim(self, conn: sa.Connection, claims: list[_Claim]) -> list[Verdict]:
        """Mark the claims the screen lets go `sending`; record why the others wait or never go. An
        `Unsure` verdict goes back to the connection, which records the failed try."""
        verdicts = self.screen.judge(conn, [c.item for c in claims], self.now, fresh=True)
        go = {c.item.id: c.message_id for c, v in zip(claims, verdicts, strict=True) if v == GO}
        marked = outbox.mark_sending(conn, go, self.now, {c.item.id: c.language for c in claims})
        follow: list[Change] = []
        final: list[Verdict] = []
        for claim, verdict in zip(claims, verdicts, strict=True):
            if verdict == GO and claim.item.id not in marked:
                verdict = TAKEN
            elif isinstance(verdict, (Later, Never)):
                follow.append(screened(claim.item.id, verdict))
            final.append(verdict)
        outbox.apply(conn, follow)
        return final


def _settle(claim: _Claim, outcome: Verdict | Exception) -> None:
    if claim.verdict.done():
        return
    if isinstance(outcome, Exception):
        claim.verdict.set_exception(outcome)
    else:
        claim.verdict.set_result(outcome)


def screened(message_id: int, verdict: Later | Never) -> Change:
    """The outbox change for a message the screen held back."""
    if isinstance(verdict, Later):
        values = {"status": "deferred", "next_attempt_at": verdict.until, "claimed_at": None}
        return Change(message_id, {**values, "last_error": verdict.reason})
    return Change(message_id, {"status": "skipped", "skip_reason": verdict.reason, "claimed_at": None})
