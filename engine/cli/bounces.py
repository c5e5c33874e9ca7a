"""`funnel bounces`: reports that come back after the relay's 250.

`ingest` reads one message (a file, or standard input as an MTA's pipe transport hands it) and exits as
such a transport expects: 0 when the report is taken or the message is no report, 75 (EX_TEMPFAIL) when
the database cannot record it now, so that the MTA keeps the message and tries again. `poll` reads the
configured bounce mailbox as `funnel run` does, once (`--once`, for cron or a check after setting it up)
or at its interval. `unknown` lists what matched no message or could not be classed, for an operator to
decide. `lift` lets a bounced address be mailed again (its mailbox was fixed), with a reason kept in its
consent records; `alarms` lists the receiving domains that refused the sender, and `alarms --clear
DOMAIN` ends one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from engine.cli.common import DATABASE_HELP, database, fail, lead_address, operator_name, output_console, say

if TYPE_CHECKING:
    from engine.runtime.bounce_mailbox import MailboxPoller, PollResult
    from engine.settings import Settings
    from engine.store.database import Engine

EX_TEMPFAIL = 75


def lift(
    address: str = typer.Argument(..., help="The address whose bounce to lift."),
    reason: str = typer.Option(..., "--reason", help="Why it may be mailed again (kept in its consent records)."),
    by: str | None = typer.Option(None, "--by", help="Who lifts it (default: the system user running this)."),
    database_url: str | None = typer.Option(None, help=DATABASE_HELP),
) -> None:
    """Mail a bounced address again (its mailbox was fixed): a hard or soft bounce suppression is lifted,
    soft bounces count afresh. Refused for a complaint, an unsubscribe, an erasure, or an address that
    is not bounced: those are the lead's own choices."""
    from engine.store import consents

    email = lead_address(address)
    if not reason.strip():
        raise fail("--reason: say why the address may be mailed again (it is kept with the lift)", 2)
    who = operator_name(by)
    act = consents.ConsentAct("lifted", f"operator {who}"[:200], fields={"reason": reason.strip(), "by": who})
    with database(database_url) as engine, engine.begin() as conn:
        refusal = consents.lift_refusal(conn, email)
        done = consents.lift_bounce(conn, email, act, datetime.now(UTC)) if refusal is None else None
    if done is None:
        raise fail(f"{email}: not lifted: {refusal or 'nothing to lift'}")
    stays = f"; the lead stays {done.after}" if done.after != "subscribed" else ""
    say(
        output_console(),
        f"{email}: bounce lifted by {who} ({reason.strip()}): consent {done.before} -> {done.after}{stays}",
    )


def alarms(
    clear: str | None = typer.Option(None, "--clear", help="End this domain's alarm now (its held email goes)."),
    reason: str | None = typer.Option(None, "--reason", help="With --clear: why (kept with the alarm)."),
    by: str | None = typer.Option(None, "--by", help="With --clear: who (default: the system user running this)."),
    days: int = typer.Option(30, "--days", min=1, help="Alarms of this many days back, and any still on."),
    database_url: str | None = typer.Option(None, help=DATABASE_HELP),
) -> None:
    """Receiving domains whose reports said they refuse the sender (blocklisting, policy, authentication)."""
    from engine.store import domain_alarms
    from engine.store.database import connect_read_only

    now = datetime.now(UTC)
    if clear is not None:
        if not (reason or "").strip():
            raise fail("--clear needs --reason: say what was fixed (it is kept with the alarm)", 2)
        who = operator_name(by)
        with database(database_url) as engine, engine.begin() as conn:
            ended = domain_alarms.clear(conn, clear.strip().lower(), now, who, (reason or "").strip())
        if ended is None:
            raise fail(f"{clear}: no alarm is on for this domain")
        say(output_console(), f"{ended.domain}: alarm cleared by {who}; its held email is due again")
        return
    with database(database_url) as engine, connect_read_only(engine) as conn:
        rows = domain_alarms.listing(conn, now - timedelta(days=days))
    table = Table("domain", "raised", "reports", "last report", "state")
    for alarm in rows:
        if alarm.active(now):
            state = f"ON until {alarm.ends_at.isoformat(timespec='minutes')} unless more come"
        elif alarm.cleared_by:
            state = f"cleared {alarm.ended_at:%Y-%m-%dT%H:%M} by {alarm.cleared_by}: {alarm.clear_reason}"
        else:
            state = f"over {(alarm.ended_at or alarm.ends_at):%Y-%m-%dT%H:%M}"
        table.add_row(
            alarm.domain, alarm.raised_at.isoformat(timespec="minutes"), str(alarm.reports),
            alarm.last_report_at.isoformat(timespec="minutes"), state,
        )  # fmt: skip
    output_console().print(table)
    on = sum(1 for a in rows if a.active(now))
    say(output_console(), f"{on} alarm(s) on, {len(rows) - on} over in the last {days} days")


def register(app: typer.Typer) -> None:
    bounces = typer.Typer(help="Bounces, complaints and auto-replies that come back after sending.")
    app.add_typer(bounces, name="bounces")
    bounces.command("lift")(lift)
    bounces.command("alarms")(alarms)

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
    def unknown(
        limit: int = typer.Option(100, "--limit", min=1, help="Show at most this many, newest first."),
        database_url: str | None = typer.Option(None, help=DATABASE_HELP),
    ) -> None:
        """Reports that matched no message or could not be classed, newest first."""
        from engine.store import bounces as bounce_store
        from engine.store.database import connect_read_only

        with database(database_url) as engine, connect_read_only(engine) as conn:
            rows = bounce_store.unknown(conn, limit)
            total = bounce_store.kept_count(conn)
        table = Table("id", "received", "source", "kind", "class", "status", "why")
        for row in rows:
            table.add_row(
                str(row.id), row.received_at.isoformat(timespec="seconds"), row.source, row.kind,
                row.failure_class or "unclassed", row.status or "", (row.diagnostic or "")[:80],
            )  # fmt: skip
        output_console().print(table)
        shown = f"{len(rows)} shown, the newest (--limit); " if len(rows) < total else ""
        output_console().print(f"{shown}{total} report(s) for an operator (also on the dashboard: /ops/bounces)")


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
    """The poller `funnel run` starts, handing what it fetches to the engine's report processor (and
    mail to the reply domain, when one is set, to the replies' desk, which forwards through the relay)."""
    from engine.mail.mailer import CaFileError
    from engine.runtime.bounce_handover import utc_now
    from engine.runtime.bounce_mailbox import MailboxPoller
    from engine.runtime.bounce_processing import intake
    from engine.runtime.replies import ReplyDesk

    relay = (settings.smtp.host, settings.smtp.port) if settings.smtp.host else None
    replies = ReplyDesk(engine, settings, relay, utc_now) if settings.replies.domain else None
    take = intake(engine, settings.bounces, utc_now, settings.signing_keys, replies=replies)
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
