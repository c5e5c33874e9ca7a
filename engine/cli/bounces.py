"""`funnel bounces`: reports that come back after the relay's 250.

`ingest` reads one message (a file, or standard input as an MTA's pipe transport hands it) and exits as
such a transport expects: 0 when the report is taken or the message is no report, 75 (EX_TEMPFAIL) when
the database cannot record it now, so that the MTA keeps the message and tries again. `unknown` lists
what matched no message or could not be classed, for an operator to decide.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from engine.cli.common import DATABASE_HELP, database, fail, output_console

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
        """Take one returned message (a DSN, a feedback report, an auto-reply), or a reply to the reply domain."""
        from engine.core.bounce_outcome import Verdict
        from engine.runtime.bounce_processing import process_report
        from engine.settings import get_settings

        try:
            raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            raise fail(f"{path}: {exc.strerror}") from None
        settings = get_settings()
        if settings.replies.domain is not None:
            _take_reply(raw, source[:16], database_url)
        try:
            with database(database_url, create=True) as engine:
                verdict, applied = process_report(
                    engine, raw, source[:16], datetime.now(UTC), settings.bounces, settings.signing_keys
                )
        except typer.Exit:
            raise typer.Exit(EX_TEMPFAIL) from None
        if verdict is Verdict.RETRY:
            raise typer.Exit(EX_TEMPFAIL)
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


def _take_reply(raw: bytes, source: str, database_url: str | None) -> None:
    """Mail to the reply domain: taken as a reply (and the command ends), else left to the reports."""
    import asyncio

    from engine.core.bounce_outcome import Verdict
    from engine.core.replies import read_reply
    from engine.mail.forward import ForwardError
    from engine.runtime.replies import ReplyDesk
    from engine.settings import get_settings

    settings = get_settings()
    replies, domain = settings.replies, settings.replies.domain
    if domain is None or read_reply(raw, replies.local_part, domain, settings.bounces.local_part) is None:
        return
    relay = (settings.smtp.host, settings.smtp.port) if settings.smtp.host else None
    try:
        with database(database_url, create=True) as engine:
            desk = ReplyDesk(engine, settings, relay, lambda: datetime.now(UTC))
            taken = asyncio.run(desk.take(raw, source))
    except ForwardError as exc:
        output_console().print(f"reply recorded, not forwarded now: {exc}", markup=False, highlight=False)
        raise typer.Exit(EX_TEMPFAIL) from None
    except typer.Exit:
        raise typer.Exit(EX_TEMPFAIL) from None
    assert taken is not None
    if taken.verdict is Verdict.RETRY:
        output_console().print(f"reply not taken now: {taken.action}", markup=False, highlight=False)
        raise typer.Exit(EX_TEMPFAIL)
    forwarded = ", forwarded" if taken.forwarded else ""
    output_console().print(
        f"reply message {taken.outbox_id or 'unmatched'}: {taken.action}{forwarded}", markup=False, highlight=False
    )
    raise typer.Exit(0)
