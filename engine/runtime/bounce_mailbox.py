"""The bounce mailbox poller: reports that land in a mailbox the sender already has, read over IMAP.

Every `interval_s` one TLS session looks at the messages of the folder not judged yet (by UID), hands
each to the `Intake`, and acts on the verdict:
- TAKEN: moved to `move_to` (created if missing) or deleted. Nothing else ever leaves the mailbox.
- NOT_RECOGNISED: left as it was, not even marked \\Seen (it is read with BODY.PEEK). Its UID is kept in
  memory, with the folder's UIDVALIDITY, so later polls do not hand it over again; after a restart it is
  handed over once more, and the intake says the same.
- RETRY: left, and the poll stops there: the engine cannot record reports now, the next poll tries again.

One line a poll says what it took and left, only when it did something. A server that cannot be
reached, refuses the login or breaks off is an outage, said once (invariant 17), like the intake's.

The client is IMAPClient: a complete parser of IMAP's responses, UID commands, MOVE (RFC 6851) and
UIDPLUS's UID EXPUNGE (RFC 4315), folder names in modified UTF-7, TLS with the engine's SSLContext. It is
synchronous, so each command runs in a worker thread; a poll a minute costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from engine.core.bounce_outcome import Intake, Verdict
from engine.core.durations import in_words
from engine.mail.mailer import CaFileError
from engine.runtime.bounce_handover import Handover, utc_now
from engine.runtime.outages import Outage, Say
from engine.settings import BounceMailboxSettings

log = logging.getLogger("engine.bounce_mailbox")

SOURCE = "imap"
# Errors of the connection and of the server, as the library raises them: its own derive from imaplib's.
IMAP_ERRORS = (OSError, imaplib.IMAP4.error)


@dataclass
class PollResult:
    """What one poll did: messages taken (moved or deleted), left (not reports, or too large), handed
    back for a retry; `error` when the mailbox failed on the way."""

    taken: int = 0
    left: int = 0
    retried: int = 0
    error: str | None = None


def tls_context(settings: BounceMailboxSettings) -> ssl.SSLContext:
    """The server's certificate is checked against the system's CAs, or `ca_file` alone when set."""
    if settings.ca_file is None:
        return ssl.create_default_context()
    path = settings.ca_file
    try:
        return ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise CaFileError(f"bounces.imap.ca_file: {path}: file not found") from None
    except ssl.SSLError as exc:
        raise CaFileError(f"bounces.imap.ca_file: {path}: no PEM certificate in it ({exc.reason or exc})") from None
    except OSError as exc:
        raise CaFileError(f"bounces.imap.ca_file: {path}: cannot read it ({exc.strerror or exc})") from None


def describe(exc: BaseException) -> str:
    """A failure of the mailbox, in a line that says what to look at."""
    if isinstance(exc, LoginError):
        return f"login refused ({exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message}); set bounces.imap.ca_file for a private CA"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


class MailboxPoller:
    """`await poll()` once, or `await run(stop)` at the interval until `stop` is set."""

    def __init__(
        self, settings: BounceMailboxSettings, intake: Intake, clock: Callable[[], datetime] = utc_now
    ) -> None:
        if not settings.host:
            raise ValueError("bounces.imap.host is not set")
        self.settings = settings
        self.host = settings.host
        self.context = tls_context(settings)  # before the first poll: a bad file stops the start
        self.clock = clock
        self.where = f"bounce mailbox {settings.host}:{settings.port}"
        self.mailbox = Outage(self.where, f"every {in_words(timedelta(seconds=settings.interval_s))}")
        self.handover = Handover(intake, SOURCE, "at the next poll", clock)
        self.uidvalidity: int | None = None
        self.judged: set[int] = set()  # UIDs left in the folder: not reports, or too large

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "polling %s %s every %s",
            self.where, self.settings.mailbox, in_words(timedelta(seconds=self.settings.interval_s)),
        )  # fmt: skip
        while not stop.is_set():
            try:
                await self.poll()
            except Exception:
                log.exception("bounce mailbox poll failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.interval_s)

    async def poll(self) -> PollResult:
        result = PollResult()
        try:
            client = await asyncio.to_thread(self._open)
        except IMAP_ERRORS as exc:
            return self._failed(exc, result)
        try:
            await self._round(client, result)
        except IMAP_ERRORS as exc:
            return self._failed(exc, result)
        finally:
            await asyncio.to_thread(_close, client)
        self._say(self.mailbox.recovered(self.clock()))
        if result.taken or result.left:
            log.debug(
                "%s %s: taken=%d left=%d retried=%d",
                self.where, self.settings.mailbox, result.taken, result.left, result.retried,
            )  # fmt: skip
        return result

    def _failed(self, exc: BaseException, result: PollResult) -> PollResult:
        result.error = describe(exc)
        self._say(self.mailbox.failed(f"{self.where}: {result.error}", self.clock()))
        log.debug("bounce mailbox failure", exc_info=exc)
        return result

    def _open(self) -> IMAPClient:
        settings = self.settings
        client = IMAPClient(
            self.host, port=settings.port, ssl=True, ssl_context=self.context, timeout=settings.timeout_s
        )
        try:
            password = settings.password.get_secret_value() if settings.password else ""
            client.login(settings.username, password)
            selected = client.select_folder(settings.mailbox)
        except BaseException:
            _close(client)
            raise
        uidvalidity = int(selected[b"UIDVALIDITY"])
        if uidvalidity != self.uidvalidity:
            # The folder was recreated: its UIDs name other messages now.
            self.uidvalidity, self.judged = uidvalidity, set()
        return client

    async def _round(self, client: IMAPClient, result: PollResult) -> None:
        present = set(await asyncio.to_thread(client.search, ["UNDELETED"]))
        self.judged &= present  # forget what is gone
        todo = sorted(present - self.judged)
        if not todo:
            return
        sizes = await asyncio.to_thread(client.fetch, todo, ["RFC822.SIZE"])
        for uid in todo:
            size = sizes.get(uid, {}).get(b"RFC822.SIZE")
            if size is None:
                continue  # removed by someone else since the search
            if int(size) > self.settings.max_message_bytes:
                log.warning(
                    "%s %s: message UID %d has %d bytes, over bounces.imap.max_message_bytes: left in the mailbox",
                    self.where, self.settings.mailbox, uid, size,
                )  # fmt: skip
                self.judged.add(uid)
                result.left += 1
                continue
            fetched = await asyncio.to_thread(client.fetch, [uid], ["BODY.PEEK[]"])
            raw = fetched.get(uid, {}).get(b"BODY[]")
            if raw is None:
                continue
            verdict = await self.handover(bytes(raw))
            if verdict is Verdict.RETRY:
                result.retried += 1
                return
            if verdict is Verdict.NOT_RECOGNISED:
                self.judged.add(uid)
                result.left += 1
                continue
            await asyncio.to_thread(self._remove, client, uid)
            result.taken += 1

    def _remove(self, client: IMAPClient, uid: int) -> None:
        """A taken message leaves the folder: moved to `move_to`, or deleted."""
        if self.settings.on_taken == "move":
            target = self.settings.move_to
            if not client.folder_exists(target):
                with contextlib.suppress(imaplib.IMAP4.error):  # created meanwhile by another client
                    client.create_folder(target)
                    client.subscribe_folder(target)
            if client.has_capability("MOVE"):
                client.move([uid], target)
                return
            client.copy([uid], target)
        client.delete_messages([uid])
        if client.has_capability("UIDPLUS"):
            client.uid_expunge([uid])
        else:
            # Without UIDPLUS, EXPUNGE also removes what others flagged \Deleted: they asked for that.
            client.expunge()

    def _say(self, line: Say | None) -> None:
        if line is not None:
            log.log(line.level, "%s", line.text)


def _close(client: Any) -> None:
    """Log out; a connection already broken is closed quietly."""
    try:
        client.logout()
    except Exception:
        with contextlib.suppress(Exception):
            client.shutdown()
