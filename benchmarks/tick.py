"""Tick cost against the number of leads: the claim must use the index, so a tick over 1,000,000 leads
costs about what it costs over 10,000, and memory stays flat (leads are never all loaded).

    python benchmarks/tick.py [--sizes 10000,100000,1000000] [--database-url URL]

For each size, in an empty database (a SQLite file, or with a PostgreSQL --database-url a database created
for it on that server and dropped after): bulk-load leads and enrollments (1% due now), time the claim of
one batch, then run full ticks (claim, pure core, commit of state, transitions and outbox rows) over every
due row.
Prints a table, the claim's query plan, and as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.authoring.validation import load_funnels  # noqa: E402
from engine.runtime.worker import Worker  # noqa: E402
from engine.store import leads as store  # noqa: E402
from engine.store import tables  # noqa: E402
from engine.store.database import create_engine_for, upgrade  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from local_postgres import ServerCost, per, process_cpu_s  # noqa: E402
from scratch_database import fresh_database, is_postgres  # noqa: E402

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CHUNK = 20_000
CLAIM_LIMIT = 100


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(engine: sa.Engine, size: int, funnel_id: str, version: str, first_step: str) -> None:
    """Leads in the nurture wait; every 100th is due now, the rest in a week."""
    later = NOW + timedelta(days=7)
    entered = NOW - timedelta(days=2)
    for start in range(0, size, CHUNK):
        count = min(CHUNK, size - start)
        with engine.begin() as conn:
            first_id = conn.execute(sa.select(sa.func.coalesce(sa.func.max(tables.leads.c.id), 0))).scalar_one()
            conn.execute(
                tables.leads.insert(),
                [
                    {
                        "email": f"lead-{start + i:07d}@bench.example",
                        "attributes": {"first_name": "Bench", "company": "Bench Ltd", "employees": 20},
                        "tags": [],
                        "score": 0,
                        "timezone": "Europe/London",
                        "consent_status": "subscribed",
                        "created_at": entered,
                        "updated_at": entered,
                    }
                    for i in range(count)
                ],
            )
            conn.execute(
                tables.enrollments.insert(),
                [
                    {
                        "lead_id": first_id + 1 + i,
                        "funnel_id": funnel_id,
                        "version": version,
                        "status": "active",
                        "stage": "comparison",
                        "step": first_step,
                        "phase": "waiting",
                        "due": entered,
                        "wake_at": NOW - timedelta(minutes=1) if (start + i) % 100 == 0 else later,
                        "entered_at": entered,
                        "stage_entered_at": entered,
                        "sent": ["deliver-report", "nurture-benefits"],
                        "spent_timers": [],
                        "updated_at": entered,
                    }
                    for i in range(count)
                ],
            )


def bench(size: int, url: str | None, batch: int) -> dict[str, float | str | bool | None]:
    folder = Path(tempfile.mkdtemp(prefix="funnel-bench-"))
    # Each size starts from an empty database: a SQLite file of its own, or a database of its own on the server.
    fresh = fresh_database(url, f"tick_{size}") if url and is_postgres(url) else nullcontext(url)
    try:
        with fresh as given:
            return _bench(size, given or f"sqlite:///{folder / 'bench.db'}", batch)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _bench(size: int, db_url: str, batch: int) -> dict[str, float | str | bool | None]:
    upgrade(db_url)
    engine = create_engine_for(db_url)
    funnel = load_funnels([ROOT / "funnels"], emails_dir=ROOT / "emails").funnels[0]
    wait_step = "wait-before-hidden-costs"
    t0 = time.perf_counter()
    load(engine, size, funnel.id, funnel.version, wait_step)
    load_s = time.perf_counter() - t0
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE")
        else:
            conn.exec_driver_sql("ANALYZE")
    # The claim alone, rolled back: what a tick pays to find its work. The same LIMIT at every size
    # (100, what the smallest size has due), so the sizes compare like for like.
    claims = []
    for _ in range(5):
        with engine.connect() as conn, conn.begin() as tx:
            t = time.perf_counter()
            rows = store.claim_due_enrollments(conn, NOW, CLAIM_LIMIT)
            claims.append((time.perf_counter() - t) * 1000)
            tx.rollback()
    with engine.connect() as conn:
        plan = store.explain_due_claim(conn, NOW, CLAIM_LIMIT)
    uses_index = "ix_enrollments_wake_active" in plan
    worker = Worker(engine, {funnel.id: funnel}, batch)
    due = size // 100
    cost = ServerCost(engine)
    cost.start()
    cpu = process_cpu_s(os.getpid())
    t = time.perf_counter()
    processed = 0
    while True:
        result = worker.process_due(NOW)
        if result.advanced == 0:
            break
        processed += result.advanced
    elapsed = time.perf_counter() - t
    cpu = process_cpu_s(os.getpid()) - cpu
    spent = cost.stop()
    engine.dispose()
    return {
        "size": size,
        "load_s": round(load_s, 1),
        "claim_ms": round(sorted(claims)[len(claims) // 2], 2),
        "claimed": len(rows),
        "due": due,
        "processed": processed,
        "due_rows_per_s": round(processed / elapsed, 1) if elapsed else 0.0,
        "uses_index": uses_index,
        # What one due row costs: CPU in this process, and on PostgreSQL the server's own CPU, the round
        # trips this process made and the statements the server ran.
        "worker_cpu_ms_per_row": per(cpu, processed, 1000),
        "server_cpu_ms_per_row": per(spent.server_cpu_s, processed, 1000),
        "round_trips_per_row": per(spent.round_trips, processed) if cost.postgres else None,
        "statements_per_row": per(spent.statements, processed),
        "wal_bytes_per_row": per(spent.wal_bytes, processed),
        "plan": plan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--database-url", default=None, help="Default: a SQLite file in a temp folder.")
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    print(
        f"{'leads':>10} {'load s':>8} {'claim ms':>9} {'due':>7} {'processed':>9} {'due rows/s':>11} index"
        "   per row: CPU ms here, on the server, round trips, statements"
    )
    for size in sizes:
        r = bench(size, args.database_url, args.batch)
        results.append(r)
        print(
            f"{r['size']:>10,} {r['load_s']:>8} {r['claim_ms']:>9} {r['due']:>7} {r['processed']:>9} "
            f"{r['due_rows_per_s']:>11} {r['uses_index']!s:>5}   {r['worker_cpu_ms_per_row']}, "
            f"{r['server_cpu_ms_per_row']}, {r['round_trips_per_row']}, {r['statements_per_row']}",
            flush=True,
        )
    print("\nclaim plan at the largest size:\n" + str(results[-1]["plan"]))
    by_size = {r["size"]: r for r in results}
    summary: dict[str, object] = {}
    for size, key in ((10_000, "10k"), (100_000, "100k"), (1_000_000, "1m")):
        if size in by_size:
            summary[f"claim_ms_{key}"] = by_size[size]["claim_ms"]
    largest = results[-1]
    summary["due_rows_per_s_1m" if largest["size"] == 1_000_000 else f"due_rows_per_s_{largest['size']}"] = largest[
        "due_rows_per_s"
    ]
    summary["claim_uses_index"] = all(bool(r["uses_index"]) for r in results)
    # Every size's figures, whatever the sizes were (`benchmarks/run --quick` uses small ones).
    summary["sizes"] = [{k: v for k, v in r.items() if k not in ("load_s", "claimed", "plan")} for r in results]
    summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
