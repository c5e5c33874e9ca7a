"""Bounce processing: delivery status notifications about mail the engine really sent, taken end to end.

    python benchmarks/bounces.py [--reports 10000]

Loads `--reports` due messages (one per lead, as benchmarks/send.py does), sends them with the real
dispatcher to the benchmarks' SMTP sink with a bounce domain set, so each has its own VERP return path,
and keeps the envelope the sink saw for each Message-ID. Then builds one RFC 3464 report per message
from what was on the wire, in turn:

- 5.1.1 user unknown (a hard bounce), 5.2.2 mailbox full (a soft bounce), 4.4.7 delayed, 5.7.1 blocked
  (the sender's fault);
- most addressed to the message's return path (matched by token), one in four to the sender's plain
  address (matched by the returned Message-ID only), one in fifty naming two recipients (the lead and
  the mailbox the lead forwards to);

and hands each to `process_report`, the function `funnel bounces ingest` and the LMTP receiver call
(read, match, act, one transaction per report). Checks that every outcome matched its message, that
every address a hard bounce names is suppressed and no other, and the outbox statuses the reports
imply. Prints a table, and as its last line one JSON object. With BENCH_PROFILE=FILE, the reports'
part runs under cProfile and its statistics go to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from send import NOW, SinkProcess, load, peak_rss_mb, send_e2e  # noqa: E402  (a sibling script)

BOUNCE_DOMAIN = "bounces.bench.example"
SENDER = "hello@greenleaf.example"
FORWARD_DOMAIN = "forward.bench.example"


@dataclass(frozen=True)
class Failure:
    name: str
    action: str
    status: str
    diagnostic: str
    subject: str


FAILURES = [
    Failure("user unknown", "failed", "5.1.1", "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
            "Undelivered Mail Returned to Sender"),
    Failure("mailbox full", "failed", "5.2.2", "552 5.2.2 <{rcpt}>: Mailbox full, over quota",
            "Undelivered Mail Returned to Sender"),
    Failure("delayed", "delayed", "4.4.7", "451 4.4.7 Temporary lookup failure, will retry",
            "Delayed Mail (still being retried)"),
    Failure("blocked", "failed", "5.7.1", "550 5.7.1 Service unavailable; client host blocked using a blocklist",
            "Undelivered Mail Returned to Sender"),
]  # fmt: skip
EXPECTED_CLASS = {
    "5.1.1": "address_gone",
    "5.2.2": "mailbox_trouble",
    "4.4.7": "mailbox_trouble",
    "5.7.1": "sender_fault",
}


def recipient_block(rcpt: str, failure: Failure, original: str | None = None) -> str:
    lines = []
    if original:
        lines.append(f"Original-Recipient: rfc822;{original}")
    lines += [
        f"Final-Recipient: rfc822; {rcpt}",
        f"Action: {failure.action}",
        f"Status: {failure.status}",
        "Remote-MTA: dns; mx.receiver.example",
        f"Diagnostic-Code: smtp; {failure.diagnostic.format(rcpt=rcpt)}",
    ]
    if failure.action == "delayed":
        lines.append(f"Will-Retry-Until: {format_datetime(NOW + timedelta(days=5))}")
    return "\r\n".join(lines) + "\r\n"


def dsn(n: int, message_id: str, mail_from: str, rcpt: str, failure: Failure, by_token: bool, forward: bool) -> bytes:
    """A postfix-like report about one message: to its return path (or the plain sender), its headers returned."""
    to = mail_from if by_token else SENDER
    boundary = f"bench-{n}/mx.receiver.example"
    blocks = [recipient_block(rcpt, failure)]
    if forward:  # the lead's mailbox forwards to another, which failed too
        local = rcpt.partition("@")[0]
        blocks.append(recipient_block(f"{local}@{FORWARD_DOMAIN}", FAILURES[0], original=None))
    text = (
        f"From: MAILER-DAEMON@mx.receiver.example (Mail Delivery System)\r\n"
        f"To: {to}\r\n"
        + (f"Delivered-To: {to}\r\n" if by_token else "")
        + f"Subject: {failure.subject}\r\n"
        f"Date: {format_datetime(NOW)}\r\n"
        f"Message-ID: <dsn-{n}@mx.receiver.example>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "This is the mail system at host mx.receiver.example.\r\n\r\n"
        + ("Your message could not be delivered to one or more recipients.\r\n" if failure.action == "failed"
           else "Your message could not be delivered yet; the mail system will keep trying.\r\n")
        + f"\r\n<{rcpt}>: host mx.receiver.example said: {failure.diagnostic.format(rcpt=rcpt)}\r\n"
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.receiver.example\r\n"
        f"X-Postfix-Sender: rfc822; {mail_from}\r\n"
        f"Arrival-Date: {format_datetime(NOW)}\r\n"
        "\r\n" + "\r\n".join(blocks) + "\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        f"Return-Path: <{mail_from}>\r\n"
        f"From: Greenleaf <{SENDER}>\r\n"
        f"To: {rcpt}\r\n"
        "Subject: Your guide\r\n"
        f"Message-ID: {message_id}\r\n"
        "\r\n"
        f"--{boundary}--\r\n"
    )  # fmt: skip
    return text.encode()


@dataclass(frozen=True)
class Case:
    raw: bytes
    failure: Failure
    by_token: bool
    addresses: tuple[str, ...]  # every recipient the report names


class Took(NamedTuple):
    outbox_id: int | None
    action: str
    failure_class: str | None
    status: str | None


def build(envelopes: dict[str, list[object]]) -> list[Case]:
    cases = []
    for n, (message_id, (mail_from, rcpts)) in enumerate(sorted(envelopes.items())):
        assert isinstance(mail_from, str) and isinstance(rcpts, list)
        rcpt = str(rcpts[0])
        failure = FAILURES[n % len(FAILURES)]
        by_token = n % 4 != 1
        forward = n % 50 == 7
        names = (rcpt, f"{rcpt.partition('@')[0]}@{FORWARD_DOMAIN}") if forward else (rcpt,)
        cases.append(Case(dsn(n, message_id, mail_from, rcpt, failure, by_token, forward), failure, by_token, names))
    return cases


def send_all(engine: object, count: int, folder: Path) -> dict[str, list[object]]:
    """The real dispatcher sends every message to the sink; the envelopes the sink saw, by Message-ID."""
    from engine.mail.mailer import Mailer
    from engine.mail.templates import TemplateLibrary

    library = TemplateLibrary(ROOT / "emails")
    templates = [n for n in library.names() if n.startswith("lead-magnet/")]
    load(engine, count, templates)  # type: ignore[arg-type]
    sink = SinkProcess(folder, envelopes=True)
    try:
        settings = settings_for(folder, sink.port)
        mailer = Mailer(engine, settings, library, {"lead-magnet": "Lead magnet"})  # type: ignore[arg-type]
        try:
            asyncio.run(send_e2e(mailer, sink.port))
        finally:
            mailer.close()
    finally:
        stats = sink.stop()
    envelopes = stats["envelopes"]
    assert isinstance(envelopes, dict)
    return envelopes


def settings_for(folder: Path, port: int = 25) -> object:
    from engine.settings import Settings

    return Settings(
        data_dir=folder,
        render_processes=1,
        emails_dir=ROOT / "emails",
        secret_key=KEY,
        sender={"address": SENDER, "name": "Greenleaf"},
        bounces={"domain": BOUNCE_DOMAIN},
        smtp={"host": "127.0.0.1", "port": port, "security": "none", "connections": 8, "rate_per_s": 1_000_000,
              "messages_per_connection": 1_000_000},
    )  # fmt: skip


KEY = secrets.token_urlsafe(32)


def take_all(engine: object, cases: list[Case], settings: object) -> tuple[float, float, list[float], list[Took]]:
    from engine.core.bounce_outcome import Verdict
    from engine.runtime.bounce_processing import process_report

    keys = settings.signing_keys  # type: ignore[attr-defined]
    bounces = settings.bounces  # type: ignore[attr-defined]
    times: list[float] = []
    applied: list[Took] = []
    started, cpu = time.perf_counter(), time.process_time()
    for case in cases:
        t = time.perf_counter()
        verdict, items = process_report(engine, case.raw, "ingest", NOW, bounces, keys)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t)
        if verdict is not Verdict.TAKEN:
            raise RuntimeError(f"a report was not taken: {verdict}")
        # What the checks need, not the outcomes themselves (their raw reports would stay alive).
        applied += [Took(a.outbox_id, a.action, a.outcome.failure_class, a.outcome.status) for a in items]
    return time.perf_counter() - started, time.process_time() - cpu, times, applied


def database_says(engine: object) -> tuple[set[str], dict[str, int]]:
    """The suppressed address hashes, and the outbox's statuses."""
    import sqlalchemy as sa

    from engine.store import tables

    with engine.begin() as conn:  # type: ignore[attr-defined]
        hashes = {str(h) for h in conn.execute(sa.select(tables.suppressions.c.email_hash)).scalars()}
        o = tables.outbox
        statuses = {
            str(s): int(c) for s, c in conn.execute(sa.select(o.c.status, sa.func.count()).group_by(o.c.status))
        }
    return hashes, statuses


def problems_of(cases: list[Case], applied: list[Took], hashes: set[str], statuses: dict[str, int]) -> list[str]:
    from engine.store.leads import email_hash

    out = []
    gone = {a for c in cases for i, a in enumerate(c.addresses) if i > 0 or c.failure.status == "5.1.1"}
    named = {a for c in cases for a in c.addresses}
    missing = [a for a in gone if email_hash(a) not in hashes]
    if missing:
        out.append(f"{len(missing)} addresses a hard bounce names are not suppressed, e.g. {missing[0]}")
    strangers = hashes - {email_hash(a) for a in gone}
    if strangers:
        out.append(f"{len(strangers)} suppressed addresses no hard bounce names ({len(named)} named in all)")
    wrong = [a for a in applied if a.failure_class != EXPECTED_CLASS.get(a.status or "")]
    if wrong:
        out.append(f"{len(wrong)} outcomes classed otherwise than their status says")
    # A message ends as its first final report says: the lead's own block comes first.
    blocked = sum(1 for c in cases if c.failure.status == "5.7.1")
    hard = sum(
        1 for c in cases if c.failure.status == "5.1.1" or (len(c.addresses) > 1 and c.failure.status != "5.7.1")
    )
    if statuses.get("bounced", 0) != hard or statuses.get("failed", 0) != blocked:
        out.append(f"outbox statuses {statuses}: expected {hard} bounced and {blocked} failed")
    return out


def main() -> None:
    from engine.store.database import create_engine_for, upgrade

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=10_000, help="Messages sent, and reports about them.")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="funnel-bounce-bench-"))
    try:
        url = f"sqlite:///{folder / 'bench.db'}"
        upgrade(url)
        engine = create_engine_for(url)
        started = time.perf_counter()
        envelopes = send_all(engine, args.reports, folder)
        print(f"sent {len(envelopes):,} emails in {time.perf_counter() - started:.1f} s", flush=True)
        cases = build(envelopes)
        settings = settings_for(folder)
        if os.environ.get("BENCH_PROFILE"):
            import cProfile

            with cProfile.Profile() as profile:
                seconds, cpu_s, times, applied = take_all(engine, cases, settings)
            profile.dump_stats(os.environ["BENCH_PROFILE"])
        else:
            seconds, cpu_s, times, applied = take_all(engine, cases, settings)
        hashes, statuses = database_says(engine)
        problems = problems_of(cases, applied, hashes, statuses)
        engine.dispose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    unmatched = sum(1 for a in applied if a.outbox_id is None)
    times.sort()
    figures = {
        "reports": len(cases),
        "reports_per_s": round(len(cases) / seconds, 1),
        "outcomes": len(applied),
        "unmatched": unmatched,
        "matched_by_token_reports": sum(1 for c in cases if c.by_token),
        "matched_by_message_id_reports": sum(1 for c in cases if not c.by_token),
        "multi_recipient_reports": sum(1 for c in cases if len(c.addresses) > 1),
        "per_class": dict(Counter(f.name for f in (c.failure for c in cases))),
        "actions": dict(Counter(a.action for a in applied)),
        "outbox": statuses,
        "suppressed": len(hashes),
        # The CPU this process spent on them: what the figure would be on a core of its own (the
        # machine is shared; the wall-clock figure moves with the load, this one much less).
        "cpu_s": round(cpu_s, 1),
        "reports_per_cpu_s": round(len(cases) / cpu_s, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "p50_ms": round(statistics.median(times) * 1000, 2),
        "p99_ms": round(times[int(len(times) * 0.99) - 1] * 1000, 2),
        "problems": problems,
        "database": "sqlite",
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(
        f"{len(cases):,} reports ({len(applied):,} outcomes) in {seconds:.1f} s: {figures['reports_per_s']:,} reports/s"
    )
    print(
        f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms; unmatched {unmatched}; actions {figures['actions']}"
    )
    for problem in problems:
        print(f"problem: {problem}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
