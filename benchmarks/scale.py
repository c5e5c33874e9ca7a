"""Scale-out on PostgreSQL: 1, 2 and 3 sending workers against one server, each worker's share of the work,
and what one email costs in CPU on a worker and on the server.

    python benchmarks/scale.py --database-url URL [--emails 20000] [--workers 1,2,3] [--connections 8]

For each number of workers, in a fresh database on the server `--database-url` names: `--emails` due
messages are loaded (as benchmarks/send.py loads them), a minimal SMTP sink starts in its own process, then
that many worker processes start, each the real dispatcher (lease with SKIP LOCKED, consent screen, render,
MIME, SMTP over `--connections` connections, group commits) composing in its own process
(`render_processes = 0`: a worker is one process), and they send until the outbox is empty. Timed from the
moment every worker is ready to the last one's end. Checks that every message arrived exactly once.

Each worker reports what it sent and its own CPU time; the server's CPU is read from /proc (see
local_postgres.py). Prints a table, and as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from local_postgres import ServerCost, per, process_cpu_s  # noqa: E402
from scratch_database import fresh_database, is_postgres  # noqa: E402
from send import NOW, SinkProcess, load  # noqa: E402


def worker(url: str, port: int, connections: int, ready: Path, go: Path, out: Path) -> None:
    """One worker process: wait for `go`, send until nothing is left, write what it did to `out`."""
    from engine.mail.mailer import Mailer
    from engine.mail.templates import TemplateLibrary
    from engine.settings import Settings
    from engine.store.database import create_engine_for

    engine = create_engine_for(url)
    settings = Settings(
        data_dir=out.parent,
        render_processes=0,
        emails_dir=ROOT / "emails",
        smtp={"host": "127.0.0.1", "port": port, "security": "none", "connections": connections,
              "rate_per_s": 1_000_000, "messages_per_connection": 1_000_000},
    )  # fmt: skip
    mailer = Mailer(engine, settings, TemplateLibrary(ROOT / "emails"), {"lead-magnet": "Lead magnet"})
    with engine.connect():  # the pool's first connection, made before the clock starts
        pass
    ready.write_text("ready")
    while not go.exists():
        time.sleep(0.005)
    cpu = process_cpu_s(os.getpid())
    started = time.perf_counter()

    async def send() -> int:
        sent = 0
        while True:
            result = await mailer.dispatch(NOW, "127.0.0.1", port, limit=10_000)
            sent += result.sent
            if result.errors:
                raise RuntimeError(f"dispatch errors: {result.errors[:3]}")
            if result.work == 0:
                return sent

    sent = asyncio.run(send())
    seconds = time.perf_counter() - started
    cpu = process_cpu_s(os.getpid()) - cpu
    mailer.close()
    engine.dispose()
    out.write_text(json.dumps({"sent": sent, "seconds": round(seconds, 2), "cpu_s": round(cpu, 2)}))


def run(url: str, workers: int, emails: int, connections: int) -> dict[str, object]:
    import sqlalchemy as sa

    from engine.mail.templates import TemplateLibrary
    from engine.store import tables
    from engine.store.database import create_engine_for, upgrade

    folder = Path(tempfile.mkdtemp(prefix="funnel-scale-bench-"))
    with fresh_database(url, f"scale_{workers}") as given:
        upgrade(given)
        engine = create_engine_for(given)
        templates = [n for n in TemplateLibrary(ROOT / "emails").names() if n.startswith("lead-magnet/")]
        load(engine, emails, templates)
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        sink = SinkProcess(folder)
        go = folder / "go"
        procs = []
        try:
            for n in range(workers):
                args = [given, str(sink.port), str(connections), str(folder / f"ready{n}"), str(go),
                        str(folder / f"worker{n}.json")]  # fmt: skip
                procs.append(subprocess.Popen([sys.executable, __file__, "--worker", *args]))
            deadline = time.monotonic() + 120
            while not all((folder / f"ready{n}").exists() for n in range(workers)):
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError("a worker did not start")
                time.sleep(0.01)
            cost = ServerCost(engine)
            cost.start()
            started = time.perf_counter()
            go.write_text("go")
            codes = [p.wait() for p in procs]
            seconds = time.perf_counter() - started
            spent = cost.stop()
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            stats = sink.stop()
        if any(codes):
            raise RuntimeError(f"a worker failed: exit codes {codes}")
        reports = [json.loads((folder / f"worker{n}.json").read_text()) for n in range(workers)]
        with engine.begin() as conn:
            sent_rows = conn.execute(
                sa.select(sa.func.count()).select_from(tables.outbox).where(tables.outbox.c.status == "sent")
            ).scalar_one()
        engine.dispose()
    ids = stats["ids"]
    assert isinstance(ids, dict)
    sent = sum(r["sent"] for r in reports)
    worker_cpu = sum(r["cpu_s"] for r in reports)
    return {
        "workers": workers,
        "emails_per_s": round(sent / seconds, 1),
        "sent": sent,
        "shares": [round(r["sent"] / sent, 3) if sent else 0.0 for r in reports],
        "worker_emails_per_s": [round(r["sent"] / r["seconds"], 1) for r in reports],
        "worker_cpu_ms_per_email": per(worker_cpu, sent, 1000),
        "server_cpu_ms_per_email": per(spent.server_cpu_s, sent, 1000),
        "statements_per_email": per(spent.statements, sent),
        "wal_bytes_per_email": per(spent.wal_bytes, sent),
        "duplicates": sum(v - 1 for v in ids.values() if v > 1),
        "lost": emails - len(ids),
        "outbox_sent": int(sent_rows),
        "emails": emails,
    }


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        url, port, connections, ready, go, out = sys.argv[2:8]
        worker(url, int(port), int(connections), Path(ready), Path(go), Path(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True, help="A PostgreSQL server where databases may be created.")
    parser.add_argument("--emails", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--connections", type=int, default=8, help="SMTP connections per worker.")
    args = parser.parse_args()
    if not is_postgres(args.database_url):
        parser.error("--database-url: expected a PostgreSQL URL")
    results = []
    print(f"{'workers':>7} {'emails/s':>9} {'shares':<24} {'CPU ms/email: worker':>21} {'server':>7}")
    for workers in (int(w) for w in args.workers.split(",")):
        r = run(args.database_url, workers, args.emails, args.connections)
        results.append(r)
        shares = ", ".join(f"{s:.2f}" for s in r["shares"])  # type: ignore[attr-defined]
        print(f"{workers:>7} {r['emails_per_s']:>9} {shares:<24} {r['worker_cpu_ms_per_email']!s:>21} "
              f"{r['server_cpu_ms_per_email']!s:>7}", flush=True)  # fmt: skip
    print(json.dumps({"runs": results, "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
