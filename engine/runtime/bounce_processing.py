"""One processor for every way a report comes in: read it, then record what it says in one transaction.

`funnel bounces ingest` (an MTA's pipe), the LMTP receiver and the mailbox poller hand it raw messages;
provider webhooks hand it outcomes they read themselves. Its verdict is what the way in tells its MTA:
taken (recorded, matched or kept for an operator), not a report (left alone), or try again later (the
database is away: nothing is lost, the MTA or the mailbox keeps the message). Mail to the reply domain is
no report: `replies.ReplyDesk` takes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from engine.core.bounce_outcome import COMPLAINT, NOT_FAILURE, Intake, Outcome, Verdict
from engine.core.bounce_reports import Report, ReportKind, read_report
from engine.runtime.replies import ReplyDesk
from engine.settings import BounceSettings
from engine.store.bounces import Applied, record_outcomes
from engine.store.database import DBAPIError, Engine

log = logging.getLogger("engine.bounces")


def record(
    engine: Engine, outcomes: Sequence[Outcome], now: datetime, settings: BounceSettings, keys: Sequence[str] = ()
) -> list[Applied] | None:
    """Outcomes recorded in one transaction; None when the database cannot take them now."""
    try:
        with engine.begin() as conn:
            return record_outcomes(conn, outcomes, now, settings, keys)
    except DBAPIError as exc:
        # Not a line per report: the way in says the outage once (invariant 17), or its exit status does.
        log.debug("bounce reports: the database cannot record them now (%s)", exc.orig)
        return None


def outcomes_of(report: Report, raw: bytes, source: str) -> tuple[Outcome, ...]:
    """One outcome per recipient the report names. A report that names none (a complaint with its
    recipient redacted, an auto-reply, what no detector reads) is one outcome about the message its
    token or Message-ID names; of the failures only a complaint then acts (its message says whose), the
    rest are kept for an operator rather than cost an address the report does not name."""
    key = hashlib.sha256(raw).hexdigest()
    token, message_id = report.verp_token, report.message_id
    if report.recipients:
        return tuple(
            Outcome(
                key,
                source,
                "delay" if r.action == "delayed" else str(report.kind),
                r.failure_class,
                r.address,
                status=r.status or None,
                diagnostic=r.diagnostic or None,
                token=token,
                message_id=message_id,
                raw=raw,
            )
            for r in report.recipients
        )
    acts = report.failure_class in (COMPLAINT, NOT_FAILURE) and report.kind != ReportKind.UNREADABLE
    klass = report.failure_class if acts else None
    return (Outcome(key, source, str(report.kind), klass, token=token, message_id=message_id, raw=raw),)


def process_report(
    engine: Engine, raw: bytes, source: str, now: datetime, settings: BounceSettings, keys: Sequence[str] = ()
) -> tuple[Verdict, list[Applied]]:
    report = read_report(raw, settings.local_part)
    if report.kind == ReportKind.NOT_REPORT:
        return Verdict.NOT_RECOGNISED, []
    applied = record(engine, outcomes_of(report, raw, source), now, settings, keys)
    if applied is None:
        return Verdict.RETRY, []
    for item in applied:
        if item.action != "duplicate":
            log.debug(
                "%s report (%s, %s): message %s, %s",
                item.outcome.kind, source, item.outcome.failure_class or "unclassed", item.outbox_id or "unmatched",
                item.action,
            )  # fmt: skip
    return Verdict.TAKEN, applied


def intake(
    engine: Engine,
    settings: BounceSettings,
    clock: Callable[[], datetime],
    keys: Sequence[str] = (),
    replies: ReplyDesk | None = None,
) -> Intake:
    """The processor as the LMTP receiver and the poller take it: off the event loop, in a thread. With
    `replies`, mail to the reply domain is a reply, taken by it; the rest is read as a report."""

    async def take(raw: bytes, source: str) -> Verdict:
        if replies is not None:
            taken = await replies.take(raw, source)
            if taken is not None:
                return taken.verdict
        verdict, _ = await asyncio.to_thread(process_report, engine, raw, source, clock(), settings, keys)
        return verdict

    return take
