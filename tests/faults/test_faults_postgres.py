"""The PostgreSQL server restarts under load: two `funnel run` workers (real processes) share a server of
this scenario's own while leads sign up in waves and a two-email drip goes out; the server is restarted
(`pg_ctl restart -m fast`: sessions cut, transactions rolled back) or stopped for a while and started
again, once in short mode, several times in full mode.

What must hold: the workers ride it out without a restart of their own (a tick that fails says once
which database failed and how, the next ticks retry, and the worker says when it works again); every
lead finishes; every email is
sent once or is `unknown` (a session cut between DATA and the recorded outcome), never twice
(invariants 1, 2, 3, 8).
"""

from __future__ import annotations

import os
import pwd
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.store import leads as store
from engine.store.database import create_engine_for, upgrade
from engine.store.tables import events, leads, outbox
from tests.acceptance.conftest import Project, write_emails
from tests.conftest import _LocalPostgres, _postgres_bindir
from tests.faults.conftest import size
from tests.faults.engine_state import left as still_to_do
from tests.faults.tally import Tally, count
from tests.required import missing
from tests.smtp_server import RecordingSmtpServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

FUNNEL = """\
id: pg
name: Drip across server restarts
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
WORKERS = 2
LEADS = size(150, 1000)
WAVE = size(15, 20)  # leads per wave
WAVE_GAP_S = 0.15
# Each restart: seconds the server stays down between stop and start (0: `pg_ctl restart` in one go).
DOWNTIMES = (1.5,) if LEADS < 1000 else (1.5, 0.0, 3.0, 0.0)
FINISH_TIMEOUT_S = size(60.0, 120.0)


class _Server(_LocalPostgres):
    """The suite's throwaway server, stopped and started again under the workers' feet."""

    def restart(self, down_s: float) -> None:
        ctl = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log")]
        if down_s > 0:
            self._run(*ctl, "-m", "fast", "-w", "stop")
            time.sleep(down_s)
        # On a stopped server `restart` starts it with the options of its last start (postmaster.opts).
        self._run(*ctl, "-m", "fast", "-w", "-t", "60", "restart")


@pytest.fixture
def server() -> Iterator[_Server]:
    bindir = _postgres_bindir()
    if bindir is None:
        missing("no PostgreSQL binaries (initdb, pg_ctl) found: this scenario restarts a server of its own")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root and there is no `postgres` user to run the server as")
    pg = _Server(bindir)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


class _Signups:
    """Leads signing up in waves from another process's point of view (this one's connection pool): a
    wave that meets the restart is written again, which its event ids make harmless (invariant 7)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.signed_up = 0
        self.retries = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()  # the scenario ended early: stop writing again
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for first in range(0, LEADS, WAVE):
                while not self._wave(first, min(first + WAVE, LEADS)):
                    self.retries += 1
                    if self.stopping.wait(0.2):
                        return
                self.signed_up = min(first + WAVE, LEADS)
                time.sleep(WAVE_GAP_S)
        except BaseException as exc:
            self.error = exc

    def _wave(self, first: int, end: int) -> bool:
        now = datetime.now(UTC)
        try:
            with self.engine.begin() as conn:
                for n in range(first, end):
                    lead_id = store.upsert_lead(conn, f"lead{n}@example.com", now=now)
                    store.record_events(conn, [store.NewEvent(f"signup-{n}", lead_id, "signed_up", now)], now=now)
        except (sa.exc.OperationalError, sa.exc.InterfaceError):
            return False
        return True


def _settled(engine: sa.Engine, timeout: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = still_to_do(engine, LEADS)
        except sa.exc.OperationalError:
            left = (-1, -1)
        if left == (0, 0) or time.monotonic() > deadline:
            return left
        time.sleep(0.25)


def test_workers_ride_out_server_restarts(
    tmp_path: Path, server: _Server, fault_report: Callable[[Tally], None]
) -> None:
    url = server.url.set(database="funnel")
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql('CREATE DATABASE "funnel"')
    admin.dispose()
    upgrade(url)
    with RecordingSmtpServer() as smtp:
        project = Project(tmp_path, url.render_as_string(hide_password=False), smtp)
        write_emails(project.root, list(STEPS))
        project.add_funnel("pg", FUNNEL)
        # The SMTP timeout stays the project's 2 s: on a busy machine a shorter one defers a message by a
        # minute (a timeout before DATA), well past the end of the scenario.
        project.extra_env.update({"FUNNEL_TICK_SECONDS": "0.2", "FUNNEL_BATCH_SIZE": "50"})
        db = create_engine_for(url)
        logs = [tmp_path / f"worker{i}.log" for i in range(WORKERS)]
        started = time.monotonic()
        procs = [project.spawn("run", log=log, PYTHONUNBUFFERED="1") for log in logs]
        signups = _Signups(db)
        restarts: list[tuple[int, int, float]] = []  # (leads signed up, emails received, seconds it took)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(b"ticking every" in log.read_bytes() for log in logs):
                time.sleep(0.05)
            signups.thread.start()
            for i, down_s in enumerate(DOWNTIMES):
                # Each restart while leads are arriving and emails going out.
                mark = LEADS * (2 * i + 1) // (2 * len(DOWNTIMES) + 1)
                deadline = time.monotonic() + 30
                while signups.signed_up < mark and signups.thread.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.05)
                at = (signups.signed_up, len(smtp.messages()))
                began = time.monotonic()
                server.restart(down_s)
                restarts.append((*at, time.monotonic() - began))
                time.sleep(1.0)  # let the workers meet the new server before the next restart
            signups.thread.join(timeout=60)
            assert signups.error is None, signups.error
            left = _settled(db, FINISH_TIMEOUT_S)
            alive = [p.poll() is None for p in procs]
        finally:
            signups.stopping.set()
            for p in procs:
                p.terminate()
            codes = [p.wait(timeout=30) for p in procs]
        with db.connect() as conn:
            rows = conn.execute(
                sa.select(leads.c.email, outbox.c.step, outbox.c.status).join(leads, leads.c.id == outbox.c.lead_id)
            ).all()
            recorded = conn.execute(
                sa.select(sa.func.count(), sa.func.count(events.c.processed_at)).select_from(events)
            ).one()
        db.dispose()
        received = smtp.per_lead_step()

    texts = [log.read_text() for log in logs]
    expected = {(f"lead{n}@example.com", f"pg/{step}") for n in range(LEADS) for step in STEPS}
    by_key = {(r.email, f"pg/{r.step}"): r.status for r in rows}
    tally = count(
        "PostgreSQL restarts",
        faults=len(DOWNTIMES),
        leads=LEADS,
        expected=expected,
        received=received,
        outbox=by_key,
    )
    said = [line.split(" ERROR ", 1)[-1] for text in texts for line in text.splitlines() if "retrying every" in line]
    recovered = sum(text.count("database working again") for text in texts)
    tally.notes.append(
        f"{WORKERS} workers, {time.monotonic() - started:.0f} s; restarts (leads in, emails out, seconds down): "
        f"{[(n, m, round(s, 1)) for n, m, s in restarts]}; signup waves written again {signups.retries}; "
        f"outages reported {len(said)}, recoveries {recovered}; outbox {dict(Counter(by_key.values()))}"
    )
    if said:
        tally.notes.append(f"a worker said: {said[0]}")
    fault_report(tally)
    if not tally.clean or left != (0, 0):
        for text in texts:
            print(text[-4000:])

    assert all(alive), "the workers ride out the restarts without one of their own"
    assert codes == [0] * WORKERS
    # Every worker met the restarts: in a tick, or in a round of sending (which retries its writes itself
    # and so may end after the server is back, without a tick having failed).
    assert all("retrying every tick" in text or "psycopg.OperationalError" in text for text in texts)
    # A tick that failed said so once, with the database and the server's own words, and the worker said
    # when it worked again; no traceback per tick.
    assert all(
        line.startswith(f"engine.runner database postgresql+psycopg://127.0.0.1:{server.port}/funnel: ")
        for line in said
    ), said
    assert recovered == len(said)
    # One database, one outage per process: a worker's sender meeting the same restart adds no line of its own.
    assert all(sum("retrying every" in line for line in text.splitlines()) <= len(DOWNTIMES) for text in texts), said
    assert not any("tick failed" in text for text in texts)
    assert recorded == (LEADS, LEADS), "every signup recorded once and handled"
    assert left == (0, 0), "every lead finishes the funnel, every email is final"
    assert tally.duplicated == 0
    assert tally.lost == 0
    assert tally.strays == 0
    assert set(by_key) == expected
