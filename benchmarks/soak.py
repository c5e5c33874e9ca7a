"""A soak: `funnel run` as an operator starts it (its own process, SQLite, the example project) under steady
HTTP load for N minutes, an SMTP sink process as its relay, and one relay outage early in the run; then a
drain and a clean stop. What months unattended would suffer from is measured: memory, file descriptors, the WAL,
the database's size per lead, the log's volume, the outage's lines, and the promise of every email once.

    python benchmarks/soak.py [--minutes 3] [--signups-per-s 2] [--events-per-s 5] [--outage-s S]

The load, one client at the stated rates: the example form's double opt-in signups (the sink hands each
confirmation link back; the load confirms it), and custom events for confirmed leads on the events API.
The relay (benchmarks/smtp_sink.py) is stopped from a thirty-sixth of the way in (5 s into a 3-minute run;
its port refuses connections), then started again on the same port.

Memory is judged by its slope over the second half, so that half is meant to show the engine at work, not
its start nor the outage. Both are one-off: measured in the engine (`malloc`'s and Python's own figures),
the memory the first minutes add is the allocator's free space filling up to a level (glibc keeps what
threads free in their arenas), and the outage's backlog, sent at twice the usual rate once the relay is
back, lifts that level once more; nothing in use keeps growing. So the outage and its backlog are placed
wholly in the first half: the messages it defers are tried again a minute later (`mailer.RELAY_RETRY`),
so by default the outage lasts 60 s when the run is long enough (8 minutes and more) and less in shorter
runs (20 s in a 3-minute run), so that the retry a minute after it ends 5 s before the half. `--outage-s`
sets it. The runs of 8 and 20 minutes in BENCHMARKS.md have the full minute and show the growth levelling
off.

Prints a few lines and, as its last line, one JSON object: `minutes`, `sent` (the outbox's sent emails),
`at_sink` (distinct messages the sink received), `duplicates` (copies beyond the first), `lost` (sent
but never at the sink), `rss_mb_first`, `rss_mb_last`, `rss_growth_mb_per_min` (the slope over the
second half), `fds_max`, `wal_mb_max`, `db_bytes_per_lead`, `info_lines_per_min`, `outage_log_lines`
(lines naming the relay), `http_p99_ms`, and the load that was applied.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.mail.mailer import RELAY_RETRY  # noqa: E402  (after the path: run as a script from anywhere)

FORM = "cost-of-not-recycling"
SAMPLE_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """benchmarks/smtp_sink.py on a fixed port, stopped and started again for the outage; the Message-IDs
    it received, over all its runs."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.links = folder / "links.txt"
        self.links.touch()
        self.runs = 0
        self.ids: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        port_file = self.folder / f"sink-{self.runs}.port"
        stats = self.folder / f"sink-{self.runs}.json"
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "smtp_sink.py"), str(port_file), str(stats),
             "--port", str(self.port), "--links", str(self.links)]
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the SMTP sink did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.proc = None
        stats = json.loads((self.folder / f"sink-{self.runs}.json").read_text())
        for mid, n in stats["ids"].items():
            self.ids[mid] = self.ids.get(mid, 0) + int(n)


class Samples:
    """The engine process's memory and descriptors, and the WAL's size, every few seconds."""

    def __init__(self, pid: int, wal: Path) -> None:
        self.pid, self.wal = pid, wal
        self.rss: list[tuple[float, float]] = []  # (seconds since the start, MB)
        self.fds_max = 0
        self.wal_max = 0
        self.stop = threading.Event()
        self.started = time.monotonic()

    def take(self) -> None:
        status = Path(f"/proc/{self.pid}/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        self.rss.append((time.monotonic() - self.started, kb / 1024))
        self.fds_max = max(self.fds_max, len(os.listdir(f"/proc/{self.pid}/fd")))
        if self.wal.exists():
            self.wal_max = max(self.wal_max, self.wal.stat().st_size)

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            try:
                self.take()
            except (OSError, StopIteration):
                return  # the process ended


def outage_start(seconds: float) -> float:
    return seconds / 36


def default_outage_s(seconds: float) -> float:
    """60 s, or less when the outage and the retry of its backlog would not end 5 s before the half."""
    room = seconds / 2 - outage_start(seconds) - RELAY_RETRY.total_seconds() - 5
    return max(10.0, min(60.0, room))


def slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    """Least squares over (seconds, MB), in MB a minute."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


class Load:
    """One client at the stated rates: signups, the confirmations the sink hands back, events."""

    def __init__(self, url: str, key: str, links: Path, signups_per_s: float, events_per_s: float) -> None:
        self.client = httpx.Client(base_url=url, timeout=30)
        self.key = key
        self.links = links
        self.signups_per_s, self.events_per_s = signups_per_s, events_per_s
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.signups = self.confirmed = self.events = 0
        self.read_links = 0
        self.confirmed_leads: list[int] = []

    def _timed(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.errors.append(f"{method} {path.split('/confirm/')[0]}: {type(exc).__name__}: {exc}")
            return None
        self.latencies.append((time.perf_counter() - started) * 1000)
        return response

    def signup(self) -> None:
        n = self.signups
        data = {"email": f"lead{n}@soak.example", "first_name": f"Lead{n}", "company": "Soak Ltd", "consent": "yes"}
        response = self._timed("POST", f"/forms/{FORM}", data=data)
        if response is not None and response.status_code != 303:
            self.errors.append(f"signup answered {response.status_code}")
        self.signups += 1

    def confirm_new(self) -> None:
        lines = self.links.read_text().splitlines()
        for link in lines[self.read_links :]:
            response = self._timed("POST", link)
            if response is not None and response.status_code != 303:
                self.errors.append(f"confirmation answered {response.status_code}")
            self.confirmed += 1
        self.read_links = len(lines)

    def event(self) -> None:
        if not self.confirmed:
            return
        lead = self.events % self.confirmed
        body = {"id": f"ev-{self.events}", "type": "page_viewed", "email": f"lead{lead}@soak.example",
                "properties": {"page": "pricing"}}  # fmt: skip
        response = self._timed("POST", "/v1/events", json=body, headers={"Authorization": f"Bearer {self.key}"})
        if response is not None and response.status_code != 200:
            self.errors.append(f"event answered {response.status_code}")
        self.events += 1

    def run_for(self, seconds: float, on_second: Any) -> None:
        """The load at a steady rate: each second its share of signups and events, then the confirmations."""
        started = time.monotonic()
        second = 0
        while (elapsed := time.monotonic() - started) < seconds:
            on_second(elapsed)
            while self.signups < (second + 1) * self.signups_per_s:
                self.signup()
            target = (second + 1) * self.events_per_s
            while self.events < target and self.confirmed:
                self.event()
            self.confirm_new()
            second += 1
            time.sleep(max(0.0, started + second - time.monotonic()))


def wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("funnel run did not come up; see its log") from None
        time.sleep(0.05)


def drained(db: Path) -> bool:
    """Nothing in flight and nothing due within the next two minutes (later steps of the funnel wait days)."""
    with sqlite3.connect(db, timeout=30) as conn:
        (busy,) = conn.execute(
            "SELECT count(*) FROM outbox WHERE status = 'sending' OR (status IN ('queued', 'deferred')"
            " AND next_attempt_at <= datetime('now', '+2 minutes'))"
        ).fetchone()
        (events,) = conn.execute("SELECT count(*) FROM events WHERE processed_at IS NULL").fetchone()
    return busy == 0 and events == 0


def db_bytes(db: Path) -> int:
    """The database's size on disk with its WAL folded in (a checkpoint first: the WAL's size is not data)."""
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in db.parent.glob(f"{db.name}*"))


def soak(minutes: float, signups_per_s: float, events_per_s: float, outage_s: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="funnel-soak-"))
    for name in ("funnels", "emails", "pages", "config"):
        shutil.copytree(ROOT / name, folder / name)
    config = folder / "config" / "funnel.toml"
    # One client posts every signup: the form's limit on confirmations per client must not stop the run.
    limit = "confirm_within_hours = 72\nconfirmations_per_ip = 1000000"
    config.write_text(config.read_text().replace("confirm_within_hours = 72", limit, 1))
    sink = Sink(folder, free_port())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env.update(
        FUNNEL_DATA_DIR=str(folder / "data"),
        FUNNEL_BASE_URL=url,
        FUNNEL_HTTP__PORT=str(port),
        FUNNEL_SMTP__HOST="127.0.0.1",
        FUNNEL_SMTP__PORT=str(sink.port),
        FUNNEL_SMTP__SECURITY="none",
        FUNNEL_LOG_LEVEL="INFO",
        PYTHONPATH=str(ROOT),
    )
    funnel = [sys.executable, "-m", "engine.cli"]
    made = subprocess.run([*funnel, "apikey", "create", "--name", "soak"], cwd=folder, env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    key = made.stdout.strip().splitlines()[-1]
    db = folder / "data" / "funnel.db"
    empty = db_bytes(db)  # migrated by `apikey create`: what any database is before its first lead
    log_path = folder / "run.log"
    sink.start()
    log = log_path.open("wb")
    proc = subprocess.Popen([*funnel, "run"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    samples = Samples(proc.pid, db.with_name("funnel.db-wal"))
    sampler = threading.Thread(target=samples.run, daemon=True)
    load = Load(url, key, sink.links, signups_per_s, events_per_s)
    seconds = minutes * 60
    outage_from = outage_start(seconds)
    state = {"down": False, "done": False}

    def on_second(elapsed: float) -> None:
        if not state["done"] and not state["down"] and elapsed >= outage_from:
            sink.stop()  # its port refuses connections now
            state["down"] = True
        elif state["down"] and elapsed >= outage_from + outage_s:
            sink.start()
            state["down"], state["done"] = False, True

    try:
        wait_http(url, proc)
        samples.take()
        sampler.start()
        load.run_for(seconds, on_second)
        if state["down"]:
            sink.start()
        deadline = time.monotonic() + 180  # deferred emails come back a minute after the relay's return
        while True:
            load.confirm_new()
            if drained(db) and load.read_links >= len(sink.links.read_text().splitlines()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the engine did not drain within 3 minutes; see its log")
            time.sleep(1)
    finally:
        samples.stop.set()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
        log.close()
        if sink.proc is not None:
            sink.stop()
        load.client.close()
    text = log_path.read_text(errors="replace")
    lines = text.splitlines()
    with sqlite3.connect(db) as conn:
        sent_ids = {mid for (mid,) in conn.execute("SELECT message_id FROM outbox WHERE status = 'sent'")}
        (leads,) = conn.execute("SELECT count(*) FROM leads").fetchone()
        statuses = dict(conn.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall())
    grown = db_bytes(db) - empty
    half = [p for p in samples.rss if p[0] >= seconds / 2]
    latencies = sorted(load.latencies)
    figures = {
        "minutes": minutes,
        "sent": len(sent_ids),
        "at_sink": len(sink.ids),
        "duplicates": sum(n - 1 for n in sink.ids.values()),
        "lost": len(sent_ids - set(sink.ids)),
        "rss_mb_first": round(samples.rss[0][1], 1),
        "rss_mb_last": round(samples.rss[-1][1], 1),
        "rss_growth_mb_per_min": round(slope_mb_per_min(half), 3),
        "fds_max": samples.fds_max,
        "wal_mb_max": round(samples.wal_max / 2**20, 2),
        "db_bytes_per_lead": round(grown / leads) if leads else None,
        "info_lines_per_min": round(sum(1 for line in lines if " INFO " in line) / minutes, 1),
        "outage_log_lines": sum(1 for line in lines if f"relay 127.0.0.1:{sink.port}" in line),
        "http_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
        "log_bytes_per_min": round(len(text.encode()) / minutes),
        "rss_mb_by_minute": [round(mb, 1) for at, mb in samples.rss if at % 60 < SAMPLE_S],
        "signups": load.signups,
        "confirmed": load.confirmed,
        "events": load.events,
        "requests": len(latencies),
        "http_errors": len(load.errors),
        "outage_s": outage_s,
        "outage_from_s": round(outage_from),
        "signups_per_s": signups_per_s,
        "events_per_s": events_per_s,
        "leads": leads,
        "outbox": statuses,
        "exit_code": code,
    }
    if load.errors:
        print("HTTP errors (first 5):", *load.errors[:5], sep="\n  ", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--signups-per-s", type=float, default=2.0)
    parser.add_argument("--events-per-s", type=float, default=5.0)
    parser.add_argument(
        "--outage-s", type=float, default=None, help="How long the relay is away (default: 60 s, less in short runs)."
    )
    args = parser.parse_args()
    seconds = args.minutes * 60
    outage = default_outage_s(seconds) if args.outage_s is None else min(args.outage_s, seconds / 2)
    f = soak(args.minutes, args.signups_per_s, args.events_per_s, outage)
    print(
        f"{f['minutes']} min: {f['signups']} signups, {f['confirmed']} confirmed, {f['events']} events; "
        f"sent {f['sent']}, at the sink {f['at_sink']}, duplicates {f['duplicates']}, lost {f['lost']}"
    )
    print(
        f"memory {f['rss_mb_first']} -> {f['rss_mb_last']} MB ({f['rss_growth_mb_per_min']} MB/min over the second "
        f"half); fds at most {f['fds_max']}; WAL at most {f['wal_mb_max']} MB; {f['db_bytes_per_lead']} bytes a lead"
    )
    print(
        f"log: {f['info_lines_per_min']} INFO lines/min, {f['log_bytes_per_min']} bytes/min; "
        f"the {f['outage_s']:.0f} s outage: {f['outage_log_lines']} lines; HTTP p99 {f['http_p99_ms']} ms"
    )
    print(json.dumps(f))


if __name__ == "__main__":
    main()
