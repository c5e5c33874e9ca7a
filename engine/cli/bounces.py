"""`funnel bounces`: reports that come back after the relay's 250.

`ingest` reads one message (a file, or standard input as an MTA's pipe transport hands it) and exits as
such a transport expects: 0 when the report is taken or the message is no report, 75 (EX_TEMPFAIL) when
the database cannot record it now, so that the MTA keeps the message and tries again. `poll` reads the
configured bounce mailbox as `funnel run` does, once (`--once`, for cron or a check after setting it up)
or at its interval. `unknown` lists what matched no message or could not be classed, for an operator to
decide.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from engine.cli.common import DATABASE_HELP, database, fail, output_console, say

if TYPE_CHECKING:
    from engine.runtime.bounce_mailbox import MailboxPoller, PollResult
    from engine.settings import Settings
    from engine.store.database import Engine

EX_TEMPFAIL = 75


def register(app: typer.Typer) -> None:
    bounces = typer.Typer(help="Bounces, complaints and auto-replies that come back after sending.")
    app.add_typer(bounces, name="bounces")

    @bounces.command("ingest")
    def ingest(
        path: str = typer.Argument("-", help="The message: a file, or - for standard input (an MTA's pipe)."),
        source: str = typer.Option("ingest", help="Where it came from, as the lead's timeline will say."),
        database_url: str | None = typer.Option(None, help=DATABASE_HELP),
    ) -> None:
        """Take one returned message (a DSN, a feedback report, an auto-reply)."""
        from engine.core.bounce_outcome import Verdict
        from engine.runtime.bounce_processing import process_report
        from engine.settings import get_settings

        try:
            raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            raise fail(f"{path}: {exc.strerror}") from None
        settings = get_settings()
        try:
            with database(database_url, create=True) as engine:
                verdict, applied = process_report(
                    engine, raw, source[:16], datetime.now(UTC), settings.bounces, settings.signing_keys
                )
        except typer.Exit:
            raise typer.Exit(EX_TEMPFAIL) from None
        if verdict is Verdict.RETRY:
            raise fail("the database cannot record the report now: the MTA keeps the message for a retry", EX_TEMPFAIL)
        if verdict is Verdict.NOT_RECOGNISED:
            output_console().print("not a report: nothing recorded")
            return
        for item in applied:
            output_console().print(
                f"{item.outcome.kind} {item.outcome.failure_class or 'unclassed'} "
                f"{item.outcome.status or ''} message {item.outbox_id or 'unmatched'}: {item.action}",
                markup=False,
                highlight=False,
            )

    _register_poll(bounces)

    @bounces.command("unknown")
    def unknown(database_url: str | None = typer.Option(None, help=DATABASE_HELP)) -> None:
        """Reports that matched no message or could not be classed, newest first."""
        from engine.store import bounces as bounce_store
        from engine.store.database import connect_read_only

        with database(database_url) as engine, connect_read_only(engine) as conn:
            rows = bounce_store.unknown(conn)
        table = Table("id", "received", "source", "kind", "class", "status", "why")
        for row in rows:
            table.add_row(
                str(row.id), row.received_at.isoformat(timespec="seconds"), row.source, row.kind,
                row.failure_class or "unclassed", row.status or "", (row.diagnostic or "")[:80],
            )  # fmt: skip
        output_console().print(table)
        output_console().print(f"{len(rows)} report(s) for an operator")


def _register_poll(bounces: typer.Typer) -> None:
    @bounces.command("poll")
    def poll(
        once: bool = typer.Option(False, "--once", help="One poll, then exit (else every bounces.imap.interval_s)."),
        database_url: str | None = typer.Option(None, help=DATABASE_HELP),
    ) -> None:
        """Take the reports waiting in the bounce mailbox (bounces.imap), as `funnel run` does.

        Exits 0 after a poll that reached the mailbox, 1 when the mailbox cannot be reached or refuses
        the login, 2 when no mailbox is configured, 75 when the database could not record a report (it
        stays in the mailbox for the next poll)."""
        from engine.runtime.logs import setup
        from engine.settings import get_settings

        settings = get_settings()
        if not settings.bounces.imap.host:
            raise fail(
                "no bounce mailbox to poll: set bounces.imap.host (FUNNEL_BOUNCES__IMAP__HOST), with its "
                "username and password",
                2,
            )
        setup(settings.log_format, settings.log_level, settings.log_level_libraries)
        with database(database_url, create=True) as engine:
            poller = _poller(settings, engine)
            if once:
                # The command says a failure of the mailbox itself, without the poller's "retrying every".
                logging.getLogger("engine.bounce_mailbox").setLevel(logging.CRITICAL)
                _report_poll(poller, asyncio.run(poller.poll()))
                return
            _poll_until_stopped(poller)


def _poller(settings: Settings, engine: Engine) -> MailboxPoller:
    """The poller `funnel run` starts, handing what it fetches to the engine's report processor."""
    from engine.mail.mailer import CaFileError
    from engine.runtime.bounce_handover import utc_now
    from engine.runtime.bounce_mailbox import MailboxPoller
    from engine.runtime.bounce_processing import intake

    take = intake(engine, settings.bounces, utc_now, settings.signing_keys)
    try:
        return MailboxPoller(settings.bounces.imap, take)
    except CaFileError as exc:
        raise fail(str(exc), 2) from None


def _report_poll(poller: MailboxPoller, result: PollResult) -> None:
    """One line of counts; then the exit status says whether the poll did its work."""
    where = f"{poller.where} {poller.settings.mailbox}"
    say(output_console(), f"{where}: taken {result.taken}, left {result.left}, retried {result.retried}")
    if result.error is not None:
        raise fail(f"cannot poll {where}: {result.error}")
    if result.retried:
        raise fail(
            f"{where}: a report could not be recorded now; it stays in the mailbox for the next poll", EX_TEMPFAIL
        )


def _poll_until_stopped(poller: MailboxPoller) -> None:
    stop = asyncio.Event()
    try:
        asyncio.run(poller.run(stop))
    except KeyboardInterrupt:
        say(output_console(), "stopped")
