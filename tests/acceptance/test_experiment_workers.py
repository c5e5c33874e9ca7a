"""An auto-promoting experiment decided by three `funnel run` workers sharing one PostgreSQL database, with
leads signing up and clicking over HTTP: the experiment is decided once (one row, one log line across the
three logs), every lead that signs up after the decision gets the winner's email whatever its hash says, no
lead gets a step's email twice, and the leads assigned before keep their arm.

The engine looks at an experiment at most once a minute, first at its first tick. So the leads' history
comes first, through one worker whose clock is five days back (their metric windows have closed by now);
then three workers start together, and each looks at its first tick, before it handles any event: the
first to commit decides, the others find the decision recorded. Leads that signed up while no worker ran,
and leads signing up after the decision, all get the winner."""

from __future__ import annotations

import itertools
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from engine.core.experiments import assign, lead_key
from engine.store import leads as store
from engine.store.tables import events, experiment_decisions, leads
from tests.acceptance.conftest import Project, iso, write_emails
from tests.smtp_server import RecordingSmtpServer, _free_port

AB = """\
id: ab
name: Subject lines
entry:
  triggers:
    - event: signed_up
stages:
  - id: nurture
    steps:
      - id: welcome
        send: drip/welcome
        experiment:
          id: subject
          arms:
            - {id: plain}
            - {id: teaser, send: drip/teaser}
          metric: {click: "*", within: 3d}
          decide: {alpha: 0.05, min_per_arm: 5, promote: auto}
    on_end: stay
"""
SUBJECT = {"plain": "Welcome for you", "teaser": "Teaser for you"}
DECIDED = "experiment ab/subject decided (auto)"
WORKERS = 3
AFTER = 12  # leads signing up once the decision is seen
WAITING = 6  # leads that signed up while no worker ran
WAIT_S = 120.0  # about 20 s on an idle machine


def arm_of(address: str) -> str:
    return assign(lead_key(address), "ab", "welcome", "subject", [("plain", 1), ("teaser", 1)])


class Api:
    """The workers' HTTP apps, posted to in turn (each one that is up)."""

    def __init__(self, ports: list[int], key: str) -> None:
        self.urls = [f"http://127.0.0.1:{port}" for port in ports]
        self.headers = {"Authorization": f"Bearer {key}"}
        self.up: list[str] = []
        self._turn: Iterator[int] = itertools.count()

    def wait_until_up(self, deadline: float, every: bool = True) -> None:
        while time.monotonic() < deadline:
            self.up = [url for url in self.urls if self._healthy(url)]
            if len(self.up) == len(self.urls) or (self.up and not every):
                return
            time.sleep(0.1)
        raise AssertionError(f"HTTP apps up: {self.up} of {self.urls}")

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def post(self, body: object) -> None:
        url = self.up[next(self._turn) % len(self.up)]
        answer = httpx.post(f"{url}/v1/events", json=body, headers=self.headers, timeout=10)
        assert answer.status_code == 200, answer.text


def signup(address: str) -> dict[str, object]:
    return {"id": f"signup-{address}", "type": "signed_up", "email": address}


def wait(what: str, done: object, deadline: float) -> None:
    while time.monotonic() < deadline:
        if done() if callable(done) else done:
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_decide_once_and_every_later_lead_gets_the_winner(
    tmp_path: Path, postgres_url: str, smtp: RecordingSmtpServer
) -> None:
    project = Project(tmp_path, postgres_url, smtp)
    write_emails(project.root, ["welcome", "teaser"])
    project.add_funnel("ab", AB)
    project.extra_env.update({"FUNNEL_TICK_SECONDS": "0.2"})
    key = project.funnel("apikey", "create", "--name", "shop").stdout.strip().splitlines()[-1]
    engine = project.db()
    started = time.monotonic()
    deadline = started + WAIT_S

    # Before: sixteen leads assigned five days ago by the hash, and every teaser lead clicked its email.
    early = [f"early{i}@example.com" for i in range(16)]
    arms = {a: arm_of(a) for a in early}
    assert min(Counter(arms.values()).values()) >= 5  # both arms reach the horizon
    port = _free_port("127.0.0.1")
    history = Api([port], key)
    logs = [project.root / "history.log"]
    first = project.spawn(
        "run", "--now", iso(datetime.now(UTC) - timedelta(days=5)), log=logs[0], FUNNEL_HTTP__PORT=str(port)
    )
    try:
        history.wait_until_up(deadline)
        history.post([signup(a) for a in early])
        wait("the early emails", lambda: len(smtp.messages()) >= len(early), deadline)
        clicks = {"funnel": "ab", "step": "welcome", "link": "offer"}
        history.post(
            [
                {"id": f"click-{a}", "type": "email_clicked", "email": a, "properties": clicks}
                for a, arm in arms.items()
                if arm == "teaser"
            ]
        )
        wait("the clicks handled", lambda: _pending(engine) == 0, deadline)
    finally:
        stop([first])

    # Three workers start together; leads sign up while none runs, while they decide, and after. Each
    # worker's first tick looks at the experiment before it handles an event, so even the leads waiting
    # when they start are handled with the decision in view.
    waiting = list(itertools.islice((f"waiting{i}@example.com" for i in itertools.count()), WAITING))
    with engine.begin() as conn:
        now = datetime.now(UTC)
        for address in waiting:
            lead_id = store.upsert_lead(conn, address, now=now)
            store.record_events(conn, [store.NewEvent(f"signup-{address}", lead_id, "signed_up", now)], now=now)
    ports = [_free_port("127.0.0.1") for _ in range(WORKERS)]
    api = Api(ports, key)
    logs += [project.root / f"worker{i}.log" for i in range(WORKERS)]
    procs = [project.spawn("run", log=log, FUNNEL_HTTP__PORT=str(p)) for log, p in zip(logs[1:], ports, strict=True)]
    fresh = (f"late{i}@example.com" for i in itertools.count())
    during: list[str] = []
    after: list[str] = []
    try:
        api.wait_until_up(deadline, every=False)
        while not _decisions(engine):
            assert time.monotonic() < deadline, "no decision"
            during.append(next(fresh))
            api.post(signup(during[-1]))
            api.wait_until_up(deadline, every=False)
            time.sleep(0.1)
        api.wait_until_up(deadline)
        # Leads whose hash says plain: only the promotion gives them the teaser.
        after = list(itertools.islice((a for a in fresh if arm_of(a) == "plain"), AFTER))
        for address in after:
            api.post(signup(address))
        total = len(early) + len(waiting) + len(during) + len(after)
        wait("every lead's email", lambda: len(smtp.messages()) >= total, deadline)
        time.sleep(1.0)  # a second email, if any, would arrive now
        alive = [p.poll() is None for p in procs]
    finally:
        stop(procs)
    elapsed = time.monotonic() - started
    try:
        with engine.connect() as conn:
            decided = conn.execute(sa.select(experiment_decisions)).mappings().all()
            assigned = {
                email: properties
                for email, properties in conn.execute(
                    sa.select(leads.c.email, events.c.properties)
                    .join(leads, leads.c.id == events.c.lead_id)
                    .where(events.c.name == "experiment_assigned")
                )
            }
    finally:
        engine.dispose()

    got = smtp.messages()
    subjects = {m.rcpt[0]: m.subject for m in got}
    told = [line for log in logs for line in log.read_text().splitlines() if DECIDED in line]
    errors = [line for log in logs for line in log.read_text().splitlines() if "ERROR" in line or "Traceback" in line]
    print(
        f"\n{WORKERS} workers: decided in {len(decided)} row(s), logged {len(told)} time(s); leads {len(early)} "
        f"before, {len(waiting)} waiting, {len(during)} during, {len(after)} after; {len(got)} emails in "
        f"{elapsed:.1f} s"
    )
    assert all(alive) and errors == []
    (row,) = decided
    assert (row["arm"], row["how"], row["decided_by"]) == ("teaser", "auto", "engine")
    assert len(told) == 1 and "new leads get teaser" in told[0]
    assert set(smtp.per_lead_step().values()) == {1} and len(got) == total  # nobody got an email twice
    assert all(m.funnel_step == "ab/welcome" for m in got)
    # Before: each lead kept the arm its hash gave it.
    assert {a: (assigned[a]["arm"], bool(assigned[a].get("promoted"))) for a in early} == {
        a: (arm, False) for a, arm in arms.items()
    }
    assert {a: subjects[a] for a in early} == {a: SUBJECT[arm] for a, arm in arms.items()}
    # Waiting, and after: the winner, by the promotion.
    assert {a: (subjects[a], assigned[a]["arm"], assigned[a].get("promoted")) for a in waiting + after} == {
        a: (SUBJECT["teaser"], "teaser", True) for a in waiting + after
    }
    assert any(arm_of(a) == "plain" for a in waiting)  # the hash alone would not have given them all the teaser
    # During: either, but the email is the arm's the lead was put in.
    assert {a: subjects[a] for a in during} == {a: SUBJECT[assigned[a]["arm"]] for a in during}


def _pending(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(events).where(events.c.processed_at.is_(None))
            ).scalar_one()
        )


def _decisions(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(experiment_decisions)).scalar_one())
