"""The disk under the SQLite database fills up while `funnel run` (a real process) takes signups over its
HTTP API and sends a two-email drip; then space is freed and the engine finishes by itself.

The full disk is the operating system's, not SQLite's: the engine runs with a file-size limit
(RLIMIT_FSIZE, SIGXFSZ ignored), so a write past it fails with EFBIG exactly where a full disk fails
with ENOSPC: in `write(2)`, under SQLite, which answers "disk I/O error". (`PRAGMA max_page_count`
would only stop the main file growing, from inside SQLite, with an error of its own.) The test lowers
the limit of the running process below what its files already hold (`prlimit(2)`), so the WAL can take
no frame at all, holds it there while signups keep coming, and raises it again without a restart.

What must hold: the engine names the problem and the file (not a bare traceback), keeps running and
recovers once writes succeed; a signup is either refused (the client sends it again: invariant 7, 2xx
only after the commit) or kept; every lead gets both emails, none twice (invariants 1, 2, 3).
"""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from engine.store import apikeys
from engine.store.database import upgrade
from engine.store.tables import events, leads, outbox
from tests.acceptance.conftest import Project, write_emails
from tests.faults.conftest import size
from tests.faults.engine_state import left as still_to_do
from tests.faults.tally import Tally, count
from tests.smtp_server import RecordingSmtpServer, _free_port

FUNNEL = """\
id: disk
name: Drip on a full disk
entry:
  triggers:
    - event: signed_up
stages:
  - id: course
    steps:
      - id: welcome
        send: drip/welcome
      - id: pause
        wait: 1s
      - id: tip
        send: drip/tip
    on_end: exit
"""
STEPS = ("welcome", "tip")
LEADS = size(150, 600)
WALLS = size(1, 3)
BATCH = 5  # signups per request
PACE_S = 0.15  # between requests: leads keep arriving before, during and after each full disk
WALL_S = 1.0
# What the engine may write per file in normal times: a small volume, far above what these leads need.
VOLUME_BYTES = 1 << 30
# Below the WAL's header and first frame (32 + 24 + 4,096 bytes): while it holds, no write gets through.
FULL_BYTES = 4096
FINISH_TIMEOUT_S = size(40.0, 90.0)


def _fsize_limited(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        # Ignored, SIGXFSZ no longer kills the writer: the write fails with EFBIG, as on a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


class _Engine:
    """`funnel run` with a file-size limit. Its output goes through a pipe, which no limit applies to,
    into `log` and `text`."""

    def __init__(self, project: Project, log: Path, port: int) -> None:
        self.proc = subprocess.Popen(
            project.command("run"),
            cwd=project.root,
            env=project.env(PYTHONUNBUFFERED="1", FUNNEL_HTTP__PORT=str(port)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_fsize_limited(VOLUME_BYTES),
        )
        self.log = log
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log, "a") as out:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                out.write(line)
                with self._lock:
                    self._lines.append(line)

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def wait_for(self, needle: str, timeout: float, times: int = 1) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.text.count(needle) >= times:
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def disk_full(self, full: bool) -> None:
        _, hard = resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (FULL_BYTES if full else VOLUME_BYTES, hard))

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        return code


class _Signups:
    """A client posting signups in small batches, each sent again until the engine answers 2xx."""

    def __init__(self, base_url: str, key: str) -> None:
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        self.posted = 0  # leads whose batch the engine accepted
        self.refused: Counter[str] = Counter()  # why attempts failed, by HTTP status or exception
        self.error: BaseException | None = None
        self.stopping = threading.Event()  # the scenario ended early: stop sending again
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for first in range(0, LEADS, BATCH):
                batch = [
                    {"id": f"signup-{n}", "type": "signed_up", "email": f"lead{n}@example.com"}
                    for n in range(first, min(first + BATCH, LEADS))
                ]
                while not self._post(batch):
                    if self.stopping.wait(0.2):
                        return
                self.posted += len(batch)
                time.sleep(PACE_S)
        except BaseException as exc:
            self.error = exc
        finally:
            self.client.close()

    def _post(self, batch: list[dict[str, str]]) -> bool:
        try:
            response = self.client.post("/v1/events", json=batch)
        except httpx.TransportError as exc:
            self.refused[type(exc).__name__] += 1
            return False
        if response.is_success:
            return True
        if response.status_code != 503 or "Retry-After" not in response.headers:
            # A full disk is the caller's cue to send again later, said as such: not a 4xx, not a bare 500.
            raise AssertionError(f"{response.status_code} {dict(response.headers)}: {response.text}")
        self.refused[str(response.status_code)] += 1
        return False


@pytest.mark.slow
def test_a_full_disk_stops_writes_loses_nothing_and_the_engine_recovers(
    tmp_path: Path, fault_report: Callable[[Tally], None]
) -> None:
    database = tmp_path / "data" / "funnel.db"
    with RecordingSmtpServer() as smtp:
        project = Project(tmp_path, f"sqlite:///{database}", smtp)
        write_emails(project.root, list(STEPS))
        project.add_funnel("disk", FUNNEL)
        # The SMTP timeout stays the project's 2 s: on a busy machine a shorter one defers a message by a
        # minute (a timeout before DATA), well past the end of the scenario.
        project.extra_env.update({"FUNNEL_TICK_SECONDS": "0.2", "FUNNEL_BATCH_SIZE": "100"})
        upgrade(project.database_url)
        db = project.db()
        with db.begin() as conn:
            key = apikeys.create(conn, "signup form", datetime.now(UTC))
        port = _free_port("127.0.0.1")
        log = tmp_path / "run.log"
        started = time.monotonic()
        run = _Engine(project, log, port)
        signups = _Signups(f"http://127.0.0.1:{port}", key)
        walls: list[tuple[int, int]] = []  # (leads accepted, emails received) when each wall went up
        try:
            assert run.wait_for("ticking every", 30), run.text
            signups.thread.start()
            for wall in range(WALLS):
                # Each wall comes while signups are still arriving and emails are going out.
                mark = LEADS * (2 * wall + 1) // (2 * WALLS + 1)
                deadline = time.monotonic() + 30
                while signups.posted < mark and signups.thread.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.05)
                walls.append((signups.posted, len(smtp.messages())))
                run.disk_full(True)
                # Full for a while, and at least until a tick has failed on it. A round of sending that
                # meets the full disk first runs to its end: each of its messages waits for the ledger's
                # next try (backing off up to 5 s) before it is given up, so that can take a while.
                time.sleep(WALL_S)
                run.wait_for("retrying every tick", 90, times=wall + 1)
                assert run.proc.poll() is None, "the engine keeps running while the disk is full"
                during = len(smtp.messages())
                run.disk_full(False)
                # The next wall only once the engine has written again (counted at the end).
                run.wait_for("database working again", 15, times=wall + 1)
                walls[-1] = (walls[-1][0], during - walls[-1][1])
            signups.thread.join(timeout=60)
            assert signups.error is None, signups.error
            deadline = time.monotonic() + FINISH_TIMEOUT_S
            while time.monotonic() < deadline and still_to_do(db, LEADS) != (0, 0):
                time.sleep(0.25)
            left = still_to_do(db, LEADS)
            code = run.stop()
            with db.connect() as conn:
                rows = conn.execute(
                    sa.select(leads.c.email, outbox.c.step, outbox.c.status).join(leads, leads.c.id == outbox.c.lead_id)
                ).all()
                recorded = conn.execute(
                    sa.select(sa.func.count(), sa.func.count(events.c.processed_at)).select_from(events)
                ).one()
        finally:
            signups.stopping.set()
            if run.proc.poll() is None:
                run.stop()
            db.dispose()
        received = smtp.per_lead_step()

    text = log.read_text()
    expected = {(f"lead{n}@example.com", f"disk/{step}") for n in range(LEADS) for step in STEPS}
    by_key = {(r.email, f"disk/{r.step}"): r.status for r in rows}
    tally = count("full disk (SQLite)", faults=WALLS, leads=LEADS, expected=expected, received=received, outbox=by_key)
    said = [line for line in text.splitlines() if "retrying every tick" in line]
    tally.notes.append(
        f"{time.monotonic() - started:.0f} s; signups refused and sent again {dict(signups.refused)}; "
        f"per wall (leads in, emails during): {walls}; outbox {dict(Counter(by_key.values()))}; "
        f"unknown and delivered {sum(received[k] for k, s in by_key.items() if s == 'unknown')}"
    )
    if said:
        tally.notes.append(f"the engine said: {said[0].split(' ERROR ', 1)[-1]}")
    fault_report(tally)
    if not tally.clean or left != (0, 0):
        print(text[-6000:])

    assert code == 0, text[-3000:]
    # One clear line per full disk: which database, what is wrong; no traceback per failed tick.
    assert len(said) == WALLS, text[-6000:]
    clear = re.compile(
        rf"ERROR engine.runner database {re.escape(str(database))}: disk I/O error \(SQLITE_IOERR_WRITE\): "
        r"file too large, this process may write no file beyond 4,096 bytes \(ulimit -f\) and funnel.db-wal is "
    )
    assert all(clear.search(line) for line in said), said
    assert text.count("database working again") == WALLS
    assert "tick failed" not in text
    refused = sum(n for why, n in signups.refused.items() if why.isdigit())
    assert refused >= WALLS, "signups arrived while the disk was full, and the engine refused them"
    assert recorded == (LEADS, LEADS), "every signup recorded once and handled"
    assert left == (0, 0), "every lead finishes the funnel, every email is final"
    assert tally.duplicated == 0
    assert tally.lost == 0
    assert tally.strays == 0
    assert set(by_key) == expected
