"""Ingestion speed, end to end: events posted over HTTP and handled by the engine, and the CSV import.

    python benchmarks/ingest.py [--leads 10000] [--clients 2] [--rows 100000] [--only http,import]

- http_events_per_s: the real app (`engine.http.api.create_app`) under uvicorn in its own process, on a
  loopback port, over a fresh SQLite file with the example funnel (funnels/lead-magnet.yaml) published;
  a worker process (`engine.runtime.worker.Worker`, ticking as `funnel run` does: again at once while there is
  work, else after the tick interval) handles the events as they arrive; client threads post batches of
  1,000. Each lead gets a `form_submitted` for the report (enrollment and the report email queued), a
  click on the pricing link (a stage transition and the call invitation), and two events the funnel
  does not react to; about 1% of the posted events are replays of ids already sent. The figure is
  events / (first POST until every recorded event has `processed_at`). Sending is not part of it: the
  queued emails stay in the outbox (no mailer runs).
- import_rows_per_s: `benchmarks/import_csv.py`'s run (check pass, then batched writes) on --rows rows.
- form_to_email_ms: `benchmarks/form_latency.py`: the example signup form posted to `funnel run` (its own
  process, the default settings), until aiosmtpd on loopback has the first email; median of
  --form-samples leads (also the maximum, and confirm -> the report email).

Each measurement is one function in MEASUREMENTS returning its figures; the summary prints them all and,
as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from engine.store import apikeys, tables  # noqa: E402
from engine.store.database import connect_read_only, create_engine_for, upgrade  # noqa: E402

BATCH = 1000
DEADLINE_S = 900  # the whole HTTP run stops by itself after this, finished or not
FORM = "cost-of-not-recycling"


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------------
# The two other processes: the HTTP app and the worker
# --------------------------------------------------------------------------------------------------


def serve(database_url: str, port: int, data_dir: Path) -> None:
    """The HTTP app alone, as `funnel api` serves it (without the access log)."""
    import uvicorn

    from engine.http.api import create_app
    from engine.settings import Settings

    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        funnels_dir=ROOT / "funnels",
        emails_dir=ROOT / "emails",
        pages_dir=ROOT / "pages",
        base_url=f"http://127.0.0.1:{port}",
    )
    engine = create_engine_for(database_url)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn shuts down on SIGINT, then raises it again
        uvicorn.run(create_app(settings, engine), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    engine.dispose()
    print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1)}), flush=True)


def work(database_url: str, tick_s: float, batch_size: int) -> None:
    """A worker: publishes the funnel, then ticks until SIGTERM. Like `funnel run`, it ticks again at
    once after a tick that found work and otherwise waits the tick interval."""
    from engine.authoring.validation import load_funnels
    from engine.runtime.worker import TickResult, Worker

    loaded = load_funnels([ROOT / "funnels"], emails_dir=ROOT / "emails")
    if loaded.errors:
        raise SystemExit("\n".join(str(e) for e in loaded.errors))
    engine = create_engine_for(database_url)
    worker = Worker(engine, {f.id: f for f in loaded.funnels}, batch_size)
    worker.publish(datetime.now(UTC))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    total = TickResult()
    busy = 0.0
    while not stop.is_set():
        started = time.perf_counter()
        result = worker.tick(datetime.now(UTC))
        if result.work:
            busy += time.perf_counter() - started
        total.add(result)
        if result.work == 0:
            stop.wait(tick_s)
    engine.dispose()
    print(
        json.dumps(
            {
                "events": total.events,
                "enrolled": total.enrolled,
                "transitions": total.transitions,
                "emails_queued": total.emails_queued,
                "errors": total.errors[:5],
                "busy_s": round(busy, 2),
                "cpu_s": round(time.process_time(), 2),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
        ),
        flush=True,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(*args: str, profile: Path | None = None) -> subprocess.Popen[str]:
    """This script in another role; under cProfile (stats written to `profile`) if asked."""
    python = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    return subprocess.Popen(
        [*python, str(Path(__file__).resolve()), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stop(process: subprocess.Popen[str], how: signal.Signals = signal.SIGTERM) -> dict[str, Any]:
    """Stop a process this script started; its last output line is its JSON report."""
    if process.poll() is None:
        process.send_signal(how)
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    lines = [line for line in (out or "").splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


# --------------------------------------------------------------------------------------------------
# The clients
# --------------------------------------------------------------------------------------------------


def batches(leads: int, replay_every: int = 100) -> list[list[dict[str, Any]]]:
    """Batches of up to 1,000 events in which a lead's events are spread out as they would be in real
    traffic: batch k has the signups of group k, the pricing clicks of group k-1 and the other events
    of groups k-2 and k-3 (a group is a quarter of a batch's leads). Every `replay_every`-th event is
    followed by a replay of an event from the batch before (same id: a duplicate)."""
    group = BATCH // 4
    groups = (leads + group - 1) // group

    def members(g: int) -> range:
        return range(g * group, min((g + 1) * group, leads)) if 0 <= g < groups else range(0)

    def event(kind: str, i: int) -> dict[str, Any]:
        email = f"lead{i}@bench.example"
        if kind == "form":
            return {"id": f"form-{i}", "type": "form_submitted", "email": email, "properties": {"form": FORM}}
        if kind == "click":
            return {"id": f"click-{i}", "type": "email_clicked", "email": email, "properties": {"link": "pricing"}}
        if kind == "page":
            return {"id": f"page-{i}", "type": "page_viewed", "email": email, "properties": {"path": "/pricing"}}
        return {"id": f"video-{i}", "type": "video_played", "email": email, "properties": {"video": "intro"}}

    out: list[list[dict[str, Any]]] = []
    previous: list[dict[str, Any]] = []
    for k in range(groups + 3):
        fresh = (
            [event("form", i) for i in members(k)]
            + [event("click", i) for i in members(k - 1)]
            + [event("page", i) for i in members(k - 2)]
            + [event("video", i) for i in members(k - 3)]
        )
        batch: list[dict[str, Any]] = []
        for n, item in enumerate(fresh, 1):
            batch.append(item)
            if previous and n % replay_every == 0:
                batch.append(previous[n % len(previous)])
        for start in range(0, len(batch), BATCH):
            out.append(batch[start : start + BATCH])
        previous = fresh
    return out


@dataclass
class Posted:
    accepted: int = 0
    duplicates: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def post_all(url: str, key: str, work: list[list[dict[str, Any]]], clients: int, deadline: float) -> Posted:
    """Client threads, each posting every `clients`-th batch in turn, all starting together."""
    posted = Posted()
    start = threading.Barrier(clients)

    def client(index: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            start.wait()
            for batch in work[index::clients]:
                if time.monotonic() > deadline:
                    with posted.lock:
                        posted.failures.append("deadline passed before every batch was posted")
                    return
                response = http.post("/v1/events", json=batch)
                with posted.lock:
                    if response.status_code == 200:
                        answer = response.json()
                        posted.accepted += answer["accepted"]
                        posted.duplicates += answer["duplicates"]
                    else:
                        posted.failures.append(f"{response.status_code}: {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return posted


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


def _wait_until(check: Callable[[], bool], deadline: float, every: float = 0.01) -> bool:
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()


def measure_http_events(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Events per second over HTTP, each one recorded and then handled by the worker."""
    db_path = folder / "http.db"
    url = f"sqlite:///{db_path}"
    upgrade(url)
    engine = create_engine_for(url)
    with engine.begin() as conn:
        key = apikeys.create(conn, "benchmark", datetime.now(UTC))
    port = _free_port()
    profiles = args.profile
    if profiles is not None:
        profiles.mkdir(parents=True, exist_ok=True)
    server = _spawn(
        "serve", "--database-url", url, "--port", str(port), "--data-dir", str(folder),
        profile=profiles / "server.prof" if profiles else None,
    )  # fmt: skip
    worker = _spawn(
        "work", "--database-url", url, "--tick", str(args.tick), "--batch-size", str(args.worker_batch),
        profile=profiles / "worker.prof" if profiles else None,
    )  # fmt: skip
    deadline = time.monotonic() + DEADLINE_S
    base = f"http://127.0.0.1:{port}"
    try:
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError("the worker did not start")

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        if not _wait_until(up, time.monotonic() + 30, every=0.05):
            raise RuntimeError("the HTTP app did not start")
        work_list = batches(args.leads)
        sent = sum(len(b) for b in work_list)
        unique = len({e["id"] for b in work_list for e in b})

        e = tables.events

        def pending() -> int:
            with connect_read_only(engine) as conn:
                return int(conn.execute(sa.select(sa.func.count()).where(e.c.processed_at.is_(None))).scalar_one())

        started = time.perf_counter()
        posted = post_all(base, key, work_list, args.clients, deadline)
        answered = time.perf_counter() - started
        processed_all = _wait_until(lambda: pending() == 0, deadline)
        elapsed = time.perf_counter() - started
    finally:
        server_report = _stop(server, signal.SIGINT)
        worker_report = _stop(worker)
    with connect_read_only(engine) as conn:

        def count(table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())

        recorded = count(e)
        processed = count(e, e.c.processed_at.is_not(None))
        figures = {
            "leads": count(tables.leads),
            "enrollments": count(tables.enrollments),
            "transitions": count(tables.stage_transitions),
            "outbox": count(tables.outbox),
        }
    engine.dispose()
    if posted.failures or not processed_all:
        print(f"problems: {posted.failures[:5]}; everything processed: {processed_all}", file=sys.stderr)
    return {
        "http_events_per_s": round(recorded / elapsed) if processed_all else 0,
        "http_post_events_per_s": round(sent / answered),
        "events": recorded,
        "posted": sent,
        "processed": processed,
        "accepted": posted.accepted,
        "duplicates": posted.duplicates,
        "lost": unique - recorded,
        "failed_posts": len(posted.failures),
        "http_s": round(elapsed, 2),
        "posting_s": round(answered, 2),
        "clients": args.clients,
        **figures,
        "worker": worker_report,
        "server": server_report,
    }


def measure_import(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """`funnel import`'s check and write passes over a generated file of --rows leads."""
    import import_csv

    result = import_csv.run(args.rows, folder / "import", funnel=False)
    return {"import_rows_per_s": result["import_rows_per_s"], "import_rows": result["rows"]}


def measure_form(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """`benchmarks/form_latency.py`: the example form posted to `funnel run`, until the SMTP server has
    the first email (the confirmation: the form is double opt-in), and confirm until the report."""
    import form_latency

    return form_latency.measure(args.form_samples)


# Name, function: each takes the arguments and a scratch folder and returns its figures, which go into
# the final JSON object as they are (names ending in _per_s or _ms are headline figures). A new one,
# such as the form-to-first-email latency, is one more function in this list.
MEASUREMENTS: list[tuple[str, Callable[[argparse.Namespace, Path], dict[str, Any]]]] = [
    ("http", measure_http_events),
    ("import", measure_import),
    ("form", measure_form),
]


_KNOWN = {
    "http_events_per_s",
    "http_post_events_per_s",
    "import_rows_per_s",
    "form_to_email_ms",
    "form_to_email_ms_max",
    "confirm_to_email_ms",
    "confirm_to_email_ms_max",
}


def summary(figures: dict[str, Any]) -> list[str]:
    lines = []
    if "http_events_per_s" in figures:
        lines += [
            f"HTTP: {figures['posted']:,} events posted ({figures['duplicates']:,} replays) by {figures['clients']} "
            f"client(s) in {figures['posting_s']} s ({figures['http_post_events_per_s']:,} events/s answered)",
            f"      {figures['processed']:,} of {figures['events']:,} recorded events handled by the worker after "
            f"{figures['http_s']} s: {figures['http_events_per_s']:,} events/s; lost {figures['lost']}, "
            f"failed posts {figures['failed_posts']}",
            f"      {figures['leads']:,} leads, {figures['enrollments']:,} enrollments, "
            f"{figures['transitions']:,} transitions, {figures['outbox']:,} emails in the outbox",
            f"      worker: {json.dumps(figures['worker'])}",
        ]
    if "import_rows_per_s" in figures:
        lines.append(f"import: {figures['import_rows']:,} rows at {figures['import_rows_per_s']:,} rows/s")
    if "form_to_email_ms" in figures:
        lines.append(
            f"form: post -> first email (the confirmation) accepted: median {figures['form_to_email_ms']} ms, "
            f"max {figures['form_to_email_ms_max']} ms; confirm -> the report: median "
            f"{figures['confirm_to_email_ms']} ms ({figures['form_samples']} leads, `funnel run` as started by a user)"
        )
    # A measurement added later shows its headline figures without a line of its own here.
    lines += [f"{k}: {v}" for k, v in figures.items() if k.endswith(("_per_s", "_ms")) and k not in _KNOWN]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    serve_args = sub.add_parser("serve", help=argparse.SUPPRESS)
    serve_args.add_argument("--database-url", required=True)
    serve_args.add_argument("--port", type=int, required=True)
    serve_args.add_argument("--data-dir", type=Path, required=True)
    work_args = sub.add_parser("work", help=argparse.SUPPRESS)
    work_args.add_argument("--database-url", required=True)
    work_args.add_argument("--tick", type=float, required=True)
    work_args.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--leads", type=int, default=10_000, help="Leads; each gets 4 events (default 10,000).")
    parser.add_argument("--clients", type=int, default=2, help="Client threads posting at once.")
    parser.add_argument("--rows", type=int, default=100_000, help="Rows for the import measurement.")
    parser.add_argument("--tick", type=float, default=0.2, help="The worker's tick interval when idle, seconds.")
    parser.add_argument("--worker-batch", type=int, default=500, help="Events per worker batch (batch_size).")
    parser.add_argument(
        "--only", default=None, help="Comma-separated measurements: " + ", ".join(n for n, _ in MEASUREMENTS)
    )
    parser.add_argument("--form-samples", type=int, default=20, help="Leads signing up through the form.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory.")
    parser.add_argument(
        "--profile", type=Path, default=None, help="Run the app and the worker under cProfile; stats go to this folder."
    )
    args = parser.parse_args()
    if args.role == "serve":
        serve(args.database_url, args.port, args.data_dir)
        return
    if args.role == "work":
        work(args.database_url, args.tick, args.batch_size)
        return

    wanted = set(args.only.split(",")) if args.only else {n for n, _ in MEASUREMENTS}
    folder = Path(tempfile.mkdtemp(prefix="funnel-ingest-bench-"))
    figures: dict[str, Any] = {}
    try:
        for name, measure in MEASUREMENTS:
            if name in wanted:
                figures.update(measure(args, folder))
    finally:
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    for line in summary(figures):
        print(line)
    processes = [figures.get("server", {}).get("peak_rss_mb", 0.0), figures.get("worker", {}).get("peak_rss_mb", 0.0)]
    figures["peak_rss_mb"] = round(max(peak_rss_mb(), *processes), 1)
    figures["peak_rss_mb_client"] = round(peak_rss_mb(), 1)
    print(f"peak RSS: {figures['peak_rss_mb']} MB (largest process)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
