"""`funnel outbox`: the engine's own outbox, as `/ops/outbox` shows it (messages by status with their
reasons and Message-IDs; `funnel outbox decide` settles an `unknown` one), for an operator with a relay
and a terminal. `funnel sink`: the `.eml` files the local sink stored, when there is no relay.

Thin: the queries and the decision are `engine.store.dashboard_data`'s, the same as the dashboard's.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table
from rich.text import Text

from engine.cli.common import DATABASE_HELP, database, fail, output_console, say

if TYPE_CHECKING:
    from engine.store.dashboard_data import OutboxMessage

# What needs a look: a decision (unknown), a reason to read (failed), a retry on its way (deferred).
NEEDS_A_LOOK = ["unknown", "failed", "deferred"]
outbox_app = typer.Typer(
    help="The engine's outbox: messages by status, and deciding an `unknown` one.", invoke_without_command=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(outbox_app, name="outbox")
    app.command("sink")(sink)


@outbox_app.callback()
def outbox_list(
    ctx: typer.Context,
    status: list[str] = typer.Option(
        NEEDS_A_LOOK,
        "--status",
        "-s",
        help="Only messages in this state; repeat for more. Default: unknown, failed, deferred.",
    ),
    limit: int = typer.Option(200, "--limit", "-n", help="At most this many, oldest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line."),
    database_url: str | None = typer.Option(None, "--database-url", help=DATABASE_HELP),
) -> None:
    """The outbox's counts by status, then its messages in the given states with their reasons and
    Message-IDs (search the relay's log for an `unknown` one's, then `funnel outbox decide`)."""
    if ctx.invoked_subcommand is not None:
        return
    from engine.store import dashboard_data
    from engine.store.database import connect_read_only
    from engine.store.tables import OUTBOX_STATUSES

    for wanted in status:
        if wanted not in OUTBOX_STATUSES:
            raise fail(f"--status: expected one of {', '.join(OUTBOX_STATUSES)}, found {wanted!r}", 2)
    with database(database_url) as engine, connect_read_only(engine) as conn:
        counts = dashboard_data.outbox_counts(conn)
        found = dashboard_data.messages(conn, status, limit)
    console = output_console()
    if as_json:
        for message in found:
            say(console, json.dumps(_as_dict(message)))
        return
    say(console, "outbox: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    if not found:
        say(console, f"no message is {' or '.join(status)}")
        return
    table = Table(title=f"{len(found)} message(s): {', '.join(status)}", title_justify="left")
    for column in ("#", "status", "lead", "email", "attempts", "when", "Message-ID", "reason"):
        table.add_column(column, no_wrap=column in ("#", "status", "attempts", "Message-ID"))
    for m in found:
        when = f"retry {_time(m.next_attempt_at)}" if m.status in ("queued", "deferred") else _time(m.sent_at)
        cells = (str(m.id), m.status, m.email, f"{m.funnel}/{m.step}", str(m.attempts), when, m.message_id, m.reason)
        table.add_row(*(Text(cell or "") for cell in cells))  # as written: no markup, no emoji codes
    console.print(table)


@outbox_app.command("decide")
def outbox_decide(
    message_id: int = typer.Argument(..., metavar="ID", help="The message's number (`funnel outbox` lists it)."),
    decision: str = typer.Argument(..., metavar="sent|resend", help="sent: the relay took it; resend: queue it again."),
    by: str = typer.Option(os.environ.get("USER") or "ops", "--by", help="Who decides; recorded with the decision."),
    database_url: str | None = typer.Option(None, "--database-url", help=DATABASE_HELP),
) -> None:
    """Settle an `unknown` message, as the dashboard's outbox page does: `sent` if the relay's log shows
    its Message-ID accepted, `resend` if the relay has no trace of it (the lead gets it twice if it did)."""
    from datetime import UTC

    from engine.store import dashboard_data

    if decision not in dashboard_data.DECISIONS:
        raise fail(f"decision: expected 'sent' or 'resend', found {decision!r}", 2)
    with database(database_url) as engine, engine.begin() as conn:
        status = dashboard_data.status_of(conn, message_id)
        changed = status == "unknown" and dashboard_data.decide(conn, message_id, decision, by, datetime.now(UTC))
    if status is None:
        raise fail(f"no message {message_id} in the outbox")
    if not changed:
        raise fail(f"message {message_id} is not unknown (it is {status}): nothing changed")
    then = "marked sent" if decision == "sent" else "queued to be sent again on the next round"
    say(output_console(), f"message {message_id} {then}, by {by}")


def sink(
    message: str | None = typer.Argument(None, help="Show this message (a file name from the list)."),
    limit: int = typer.Option(20, "--limit", "-n", help="How many of the newest messages to list."),
) -> None:
    """List the emails the local sink received (newest first), or show one."""
    from email import message_from_bytes
    from email.policy import default

    from engine.settings import get_settings

    folder = get_settings().data_dir / "outbox"
    files = sorted(folder.glob("*.eml"), reverse=True) if folder.is_dir() else []
    console = output_console()
    if message is not None:
        matches = [f for f in files if f.name.startswith(message)]
        if not matches:
            raise fail(f"no message {message!r} in {folder}")
        say(console, matches[0].read_text(errors="replace"))
        return
    table = Table(title=f"{len(files)} message(s) in {folder}")
    for col in ("file", "time", "to", "subject", "funnel / step"):
        table.add_column(col)
    for f in files[:limit]:
        msg = message_from_bytes(f.read_bytes(), policy=default)
        cells = (f.name, msg["Date"], msg["To"], msg["Subject"], msg["X-Funnel"])
        table.add_row(*(Text(str(cell or "")) for cell in cells))
    console.print(table)


def _time(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%MZ") if at is not None else ""


def _as_dict(m: OutboxMessage) -> dict[str, Any]:
    return {
        "id": m.id,
        "status": m.status,
        "email": m.email,
        "funnel": m.funnel,
        "step": m.step,
        "template": m.template,
        "transactional": m.transactional,
        "attempts": m.attempts,
        "sent_at": m.sent_at.isoformat() if m.sent_at else None,
        "next_attempt_at": m.next_attempt_at.isoformat() if m.next_attempt_at else None,
        "message_id": m.message_id,
        "reason": m.reason,
    }
