"""Send throughput end to end, next to the raw speed of SMTP itself, measured in the same run.

    python benchmarks/send.py [--emails 100000] [--connections 8] [--raw 20000] [--database-url URL]

Loads `--emails` due messages into the outbox (one per lead, the example funnel's templates in turn,
leads with accented names), starts a minimal SMTP sink in a separate process, then:
- end to end: the real dispatcher leases them, renders each template, builds the MIME bytes, sends over
  a pool of `--connections` connections and commits every outcome, until the outbox is empty;
- three languages: `--emails` more, to leads spread over English, German and French, from a funnel with
  `languages: {default: en, others: [de, fr]}` whose templates each have a German and a French copy
  (`lead-magnet/de/...`, `lead-magnet/fr/...`): each lead gets its own language's, chosen per email;
- raw: aiosmtplib sends one pre-built message `--raw` times to the same sink over the same number of
  connections.
Checks that every message arrived exactly once (by Message-ID), that the outbox says `sent` for all, and
that it recorded each lead's language. Prints a table, and as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    import sqlalchemy as sa

    from engine.mail.mailer import Mailer

# The engine is imported inside the functions: a render process (spawned) re-imports this script, and
# should carry no more than it does under `funnel run`.

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CHUNK = 5_000
NAMES = ["Zoë", "Łukasz", "Ana", "Søren", "Chloé", "Jürgen", "Priya", "Seán", "Mia", "José"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_rss_mb() -> dict[int, float]:
    """Each live child process's own peak (VmHWM), read before it exits: the kernel's per-child
    maxrss would count the parent's pages copied at fork time too."""
    peaks: dict[int, float] = {}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            hwm = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), "0")
            peaks[int(pid)] = int(hwm) / 1024
    return peaks


# The three languages of the second pass, the funnel's default first.
LANGUAGES = ("en", "de", "fr")


def translated_copy(emails: Path, templates: list[str]) -> Path:
    """The example's `emails/` folder copied, with a German and a French copy of each template in the
    language folders beside it: the same texts, so the passes differ only by choosing a translation."""
    copy = Path(tempfile.mkdtemp(prefix="funnel-send-bench-emails-")) / "emails"
    shutil.copytree(emails, copy)
    for name in templates:
        folder, _, stem = name.rpartition("/")
        for language in LANGUAGES[1:]:
            target = copy / folder / language
            target.mkdir(exist_ok=True)
            for source in (copy / folder).glob(f"{stem}.*"):
                if source.is_file() and not (target / source.name).exists():
                    shutil.copyfile(source, target / source.name)
    return copy


def load(engine: sa.Engine, count: int, templates: list[str], offset: int = 0, languages: tuple[str, ...] = ()) -> None:
    """`count` leads (numbered from `offset`), each with one due email; with `languages`, the i-th of
    them reads `languages[i % len(languages)]`."""
    import sqlalchemy as sa

    from engine.store import tables

    created = NOW - timedelta(days=1)
    for start in range(offset, offset + count, CHUNK):
        n = min(CHUNK, offset + count - start)
        with engine.begin() as conn:
            first = conn.execute(sa.select(sa.func.coalesce(sa.func.max(tables.leads.c.id), 0))).scalar_one()
            conn.execute(
                tables.leads.insert(),
                [
                    {
                        "email": f"lead-{start + i:07d}@bench.example",
                        "attributes": {"first_name": NAMES[i % len(NAMES)], "company": "Bench Ltd", "employees": 20},
                        "tags": [],
                        "score": 0,
                        "timezone": "Europe/London",
                        "language": languages[(start - offset + i) % len(languages)] if languages else None,
                        "consent_status": "subscribed",
                        "created_at": created,
                        "updated_at": created,
                    }
                    for i in range(n)
                ],
            )
            conn.execute(
                tables.outbox.insert(),
                [
                    {
                        "lead_id": first + 1 + i,
                        "funnel_id": "lead-magnet",
                        "step": "bench",
                        "template": templates[(start + i) % len(templates)],
                        "stage": "inquiry",
                        "transactional": False,
                        "status": "queued",
                        "due_at": NOW,
                        "next_attempt_at": NOW,
                        "attempts": 0,
                        "created_at": NOW,
                    }
                    for i in range(n)
                ],
            )


class SinkProcess:
    def __init__(self, folder: Path, envelopes: bool = False) -> None:
        self.port_file = folder / "sink.port"
        self.stats_file = folder / "sink.json"
        sink = [sys.executable, str(ROOT / "benchmarks" / "smtp_sink.py"), str(self.port_file), str(self.stats_file)]
        self.proc = subprocess.Popen(sink + (["--envelopes"] if envelopes else []))
        deadline = time.monotonic() + 30
        while not (self.port_file.exists() and self.port_file.read_text()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the SMTP sink did not start")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())

    def stop(self) -> dict[str, object]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        stats: dict[str, object] = json.loads(self.stats_file.read_text())
        return stats


def e2e_pass(mailer: Mailer, port: int, sink_pid: int) -> tuple[int, float, float]:
    """Everything due sent end to end: (sent, seconds, CPU seconds of this process and its render
    processes, read before they stop)."""
    from local_postgres import worker_cpu_s

    cpu = worker_cpu_s({sink_pid})
    started = time.perf_counter()
    try:
        sent = asyncio.run(send_e2e(mailer, port))
        seconds = time.perf_counter() - started
        cpu = worker_cpu_s({sink_pid}) - cpu
    finally:
        mailer.close()
    return sent, seconds, cpu


async def send_e2e(mailer: Mailer, port: int) -> int:
    sent = 0
    while True:
        result = await mailer.dispatch(NOW, "127.0.0.1", port, limit=10_000)
        sent += result.sent
        if result.errors:
            raise RuntimeError(f"dispatch errors: {result.errors[:3]}")
        if result.work == 0:
            return sent


async def send_raw(payload: bytes, count: int, connections: int, port: int) -> None:
    import aiosmtplib

    async def one_connection(n: int) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30, start_tls=False)
        await smtp.connect()
        for _ in range(n):
            await smtp.sendmail("hello@greenleaf.example", ["lead@bench.example"], payload)
        await smtp.quit()

    share = [count // connections + (1 if i < count % connections else 0) for i in range(connections)]
    await asyncio.gather(*(one_connection(n) for n in share))


def main() -> None:
    import sqlalchemy as sa

    from engine.core.outbox_item import OutboxItem
    from engine.mail.mailer import Mailer
    from engine.mail.templates import TemplateLibrary
    from engine.settings import Settings
    from engine.store import tables
    from engine.store.database import create_engine_for, upgrade

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from local_postgres import ServerCost, per, worker_cpu_s

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emails", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--render-processes", type=int, default=1, help="0: compose in the dispatcher's process.")
    parser.add_argument("--raw", type=int, default=20_000, help="Messages for the raw SMTP measurement.")
    parser.add_argument("--database-url", default=None, help="Default: a SQLite file in a temp folder.")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="funnel-send-bench-"))
    url = args.database_url or f"sqlite:///{folder / 'bench.db'}"
    sink = SinkProcess(folder)
    try:
        upgrade(url)
        engine = create_engine_for(url)
        templates = [n for n in TemplateLibrary(ROOT / "emails").names() if n.startswith("lead-magnet/")]
        emails_dir = translated_copy(ROOT / "emails", templates)
        library = TemplateLibrary(emails_dir)
        started = time.perf_counter()
        load(engine, args.emails, templates)
        with engine.begin() as conn:
            # Statistics for the planner, as autovacuum (PostgreSQL) or a long-running outbox would have them.
            conn.exec_driver_sql("ANALYZE")
        print(
            f"loaded {args.emails:,} due emails in {time.perf_counter() - started:.1f} s"
            f" (peak memory so far {peak_rss_mb():.0f} MB)",
            flush=True,
        )

        settings = Settings(
            data_dir=folder,
            render_processes=args.render_processes,
            emails_dir=emails_dir,
            smtp={
                "host": "127.0.0.1",
                "port": sink.port,
                "security": "none",
                "connections": args.connections,
                "rate_per_s": 1_000_000,
                "messages_per_connection": 1_000_000,
            },
        )
        mailer = Mailer(engine, settings, library, {"lead-magnet": "Lead magnet"})
        cost = ServerCost(engine)
        cost.start()
        cpu = worker_cpu_s({sink.proc.pid})
        started = time.perf_counter()
        try:
            sent = asyncio.run(send_e2e(mailer, sink.port))
            e2e_s = time.perf_counter() - started
            # The dispatcher and its render processes, read before the render processes stop.
            cpu = worker_cpu_s({sink.proc.pid}) - cpu
            spent = cost.stop()
            children = children_peak_rss_mb()
        finally:
            mailer.close()
        e2e_rate = sent / e2e_s

        # The same again, to leads in three languages, from a funnel that declares them.
        load(engine, args.emails, templates, offset=args.emails, languages=LANGUAGES)
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        languages = {"lead-magnet": LANGUAGES}
        multilingual = Mailer(engine, settings, library, {"lead-magnet": "Lead magnet"}, funnel_languages=languages)
        cost.start()
        sent_3, e2e_3_s, cpu_3 = e2e_pass(multilingual, sink.port, sink.proc.pid)
        spent_3 = cost.stop()
        e2e_3_rate = sent_3 / e2e_3_s
        with engine.connect() as conn:
            written = dict(
                conn.execute(
                    sa.select(tables.outbox.c.language, sa.func.count())
                    .where(tables.outbox.c.language.is_not(None))
                    .group_by(tables.outbox.c.language)
                ).all()
            )

        with engine.begin() as conn:
            statuses = dict(
                conn.execute(sa.select(tables.outbox.c.status, sa.func.count()).group_by(tables.outbox.c.status)).all()
            )
        sample = OutboxItem(
            1,
            1,
            "lead@bench.example",
            "subscribed",
            {"first_name": "Zoë"},
            "lead-magnet",
            "raw",
            templates[0],
            "inquiry",
            False,
            0,
            False,
        )
        payload = mailer.compose(sample, NOW).payload
        started = time.perf_counter()
        asyncio.run(send_raw(payload, args.raw, args.connections, sink.port))
        raw_s = time.perf_counter() - started
        raw_rate = args.raw / raw_s
    finally:
        stats = sink.stop()
    ids = stats["ids"]
    assert isinstance(ids, dict)
    raw_id = "<" + payload.split(b"Message-ID: <", 1)[1].split(b">", 1)[0].decode() + ">"
    bench_ids = {k: v for k, v in ids.items() if k != raw_id}
    duplicates = sum(v - 1 for v in bench_ids.values() if v > 1)
    lost = 2 * args.emails - len(bench_ids)
    expected = {lang: len(range(i, args.emails, len(LANGUAGES))) for i, lang in enumerate(LANGUAGES)}
    figures = {
        "e2e_emails_per_s": round(e2e_rate, 1),
        "raw_smtp_per_s": round(raw_rate, 1),
        "ratio": round(e2e_rate / raw_rate, 3),
        # The second pass, leads in three languages, and its rate as a share of the first's (one language).
        "e2e_three_languages_per_s": round(e2e_3_rate, 1),
        "three_languages_ratio": round(e2e_3_rate / e2e_rate, 3),
        # What one email of each pass costs: steadier than the rates on a loaded machine.
        "worker_cpu_ms_per_email_three_languages": per(cpu_3, sent_3, 1000),
        "server_cpu_ms_per_email_three_languages": per(spent_3.server_cpu_s, sent_3, 1000),
        # The outbox's `language` of the second pass's messages: each lead's own (en, de, fr in turn).
        "outbox_languages": written,
        "outbox_languages_expected": expected,
        "emails": sent + sent_3,
        "duplicates": duplicates,
        "lost": lost,
        "outbox_sent": int(statuses.get("sent", 0)),
        "connections": args.connections,
        "database": url.split(":", 1)[0],
        # What one email costs: CPU in this process and its render processes, and on PostgreSQL the
        # server's own CPU, the round trips this process made and the statements the server ran.
        "worker_cpu_ms_per_email": per(cpu, sent, 1000),
        "server_cpu_ms_per_email": per(spent.server_cpu_s, sent, 1000),
        "round_trips_per_email": per(spent.round_trips, sent) if cost.postgres else None,
        "statements_per_email": per(spent.statements, sent),
        "wal_bytes_per_email": per(spent.wal_bytes, sent),
        # The dispatcher (this process), and every child apart: render processes and the sink.
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_children_mb": sorted(round(v, 1) for v in children.values()),
    }
    print(f"{'end to end':<12} {sent:>9,} emails in {e2e_s:6.1f} s  {e2e_rate:8.1f} emails/s")
    print(f"{'3 languages':<12} {sent_3:>9,} emails in {e2e_3_s:6.1f} s  {e2e_3_rate:8.1f} emails/s")
    print(f"{'raw SMTP':<12} {args.raw:>9,} emails in {raw_s:6.1f} s  {raw_rate:8.1f} emails/s")
    print(
        f"three languages / one: {figures['three_languages_ratio']}; CPU per email in the worker"
        f" {figures['worker_cpu_ms_per_email_three_languages']} ms, on the server"
        f" {figures['server_cpu_ms_per_email_three_languages']} ms (outbox languages {written})"
    )
    print(f"ratio {figures['ratio']}, duplicates {duplicates}, lost {lost}, outbox statuses {statuses}")
    print(
        f"per email: {figures['worker_cpu_ms_per_email']} ms CPU in the worker, "
        f"{figures['server_cpu_ms_per_email']} ms on the server, {figures['round_trips_per_email']} round trips, "
        f"{figures['statements_per_email']} statements"
    )
    print(json.dumps(figures))
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(emails_dir.parent, ignore_errors=True)
    if os.environ.get("BENCH_STRICT") and (duplicates or lost or written != expected):
        sys.exit(1)


if __name__ == "__main__":
    main()
