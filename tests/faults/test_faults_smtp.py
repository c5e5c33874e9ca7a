"""A relay that misbehaves while `funnel run` (a real process) drives leads through a short drip funnel:
it flaps (refuses connections, cuts its sessions), throttles (454/451/421 to MAIL, RCPT or DATA above a
rate), and drops some connections after the whole DATA without a reply. Then the relay recovers and the
engine finishes.

What must hold (invariants 2, 3, 4): every expected email is `sent` and arrived once, or is `unknown`;
nothing arrives twice; a message refused with a 4xx is requeued and sent later, never skipped; a message
whose connection dropped after DATA is `unknown`, reported, and never sent again (whether the relay kept
it or not).

The first round runs on the real clock, leads signing up in waves. Every refusal defers a message by a
minute or more, so the later rounds start the engine with its clock moved on (`--now`): the requeued
messages meet the faults again, then a healthy relay.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.store import leads as store
from engine.store.database import upgrade
from engine.store.tables import enrollments, events, leads, outbox
from tests.acceptance.conftest import Project, iso, write_emails
from tests.faults.conftest import size
from tests.faults.flaky_smtp import FlakySmtpServer
from tests.faults.tally import Tally, count

FUNNEL = """\
id: drip
name: Drip under a flaky relay
allowed_lateness: 1d
entry:
  triggers:
    - event: signed_up
stages:
  - id: course
    steps:
      - id: welcome
        send: drip/welcome
      - id: pause1
        wait: 2s
      - id: tip
        send: drip/tip
      - id: pause2
        wait: 2s
      - id: offer
        send: drip/offer
    on_end: exit
"""
STEPS = ("welcome", "tip", "offer")
LEADS = size(210, 1500)
WAVES = size(6, 20)
WAVE_GAP_S = 0.4
FLAP_EVERY = 2  # waves
FLAP_S = 0.6
DOMAINS = 24
THROTTLE_PER_S = 50
DROP = 0.03
# Rounds after the first, each with the engine's clock this much further on: faults still on.
LATER_ROUNDS = [timedelta(minutes=5 * 4**i) for i in range(size(1, 3))]
# Then the relay is healthy; a round per shift until every email is final.
FINISH = (timedelta(hours=2), timedelta(days=1), timedelta(days=3))
SETTLE_TIMEOUT_S = size(40, 150)
assert LEADS % WAVES == 0
# The minute summaries, and the last one each process says as it stops.
SUMMARY_LINE = re.compile(r"in the last [^:]*: events=\d+ .* unknown=(\d+)")


def address(n: int) -> str:
    return f"lead{n}@d{n % DOMAINS}.example"


def sign_up(engine: sa.Engine, first: int, n: int) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for i in range(first, first + n):
            lead_id = store.upsert_lead(conn, address(i), now=now)
            store.record_events(conn, [store.NewEvent(f"signup-{i}", lead_id, "signed_up", now)], now=now)


def settled(engine: sa.Engine, signed: int, horizon: datetime) -> bool:
    """Every lead signed so far has left the drip, no event waits, nothing is in flight, and nothing is
    due before `horizon` (what is left waits for a retry minutes away)."""
    with engine.connect() as conn:
        exited = conn.execute(
            sa.select(sa.func.count()).select_from(enrollments).where(enrollments.c.status == "exited")
        ).scalar_one()
        waiting_events = conn.execute(
            sa.select(sa.func.count()).select_from(events).where(events.c.processed_at.is_(None))
        ).scalar_one()
        busy = conn.execute(
            sa.select(sa.func.count())
            .select_from(outbox)
            .where(
                (outbox.c.status == "sending")
                | (outbox.c.status.in_(("queued", "deferred")) & (outbox.c.next_attempt_at <= horizon))
            )
        ).scalar_one()
    return exited == signed and waiting_events == 0 and busy == 0


def final_rows(engine: sa.Engine) -> list[sa.Row[tuple[str, str, str, int]]]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(leads.c.email, outbox.c.step, outbox.c.status, outbox.c.attempts).join(
                    leads, leads.c.id == outbox.c.lead_id
                )
            )
        )


def wait_ready(log: Path, before: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_bytes().count(b"ticking every") > before:
            return
        time.sleep(0.05)
    raise AssertionError("funnel run did not start:\n" + log.read_text()[-3000:])


def once(project: Project, log: Path, now: datetime) -> None:
    """`funnel run --once` with the engine's clock at `now`; what it says goes to the log."""
    done = project.funnel("run", "--once", "--now", iso(now))
    with log.open("a") as out:
        out.write(done.stdout + done.stderr)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    return proc.wait(timeout=30)


@pytest.mark.slow
def test_a_flaky_relay_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, fault_report: Callable[[Tally], None]
) -> None:
    started = time.monotonic()
    log = tmp_path / "run.log"
    with FlakySmtpServer(seed=5321) as relay:
        project = Project(tmp_path, f"sqlite:///{tmp_path / 'data' / 'funnel.db'}", relay)  # type: ignore[arg-type]
        write_emails(project.root, list(STEPS))
        project.add_funnel("drip", FUNNEL)
        project.extra_env.update({"FUNNEL_TICK_SECONDS": "0.2", "FUNNEL_BATCH_SIZE": "200", "FUNNEL_LOG_LEVEL": "INFO"})
        upgrade(project.database_url)
        engine = project.db()
        phases: list[str] = []
        try:
            relay.throttle(THROTTLE_PER_S)
            relay.drop(DROP)

            # Round 1, on the real clock: waves of signups, the relay flapping now and then.
            proc = project.spawn("run", log=log, PYTHONUNBUFFERED="1")
            try:
                wait_ready(log, 0)
                per_wave = LEADS // WAVES
                for wave in range(WAVES):
                    sign_up(engine, wave * per_wave, per_wave)
                    time.sleep(WAVE_GAP_S)
                    if wave % FLAP_EVERY == FLAP_EVERY - 1:
                        relay.flap(FLAP_S)
                deadline = time.monotonic() + SETTLE_TIMEOUT_S
                while not settled(engine, LEADS, datetime.now(UTC) + timedelta(seconds=5)):
                    assert time.monotonic() < deadline, "round 1 did not settle:\n" + log.read_text()[-3000:]
                    time.sleep(0.2)
            finally:
                code = stop(proc)
            assert code == 0, log.read_text()[-3000:]
            # Stopped while idle: nothing was left between DATA and its reply.
            assert all(r.status != "sending" for r in final_rows(engine))
            phases.append(f"round 1 {time.monotonic() - started:.1f} s")

            # Later rounds: the requeued messages come due and meet the same faults.
            base = datetime.now(UTC)
            for shift in LATER_ROUNDS:
                once(project, log, base + shift)
            phases.append(f"faults over {time.monotonic() - started:.1f} s")

            # The relay recovers; the engine finishes.
            relay.throttle(None)
            relay.drop(0.0)
            for shift in FINISH:
                once(project, log, base + shift)
                rows = final_rows(engine)
                if all(r.status not in ("queued", "deferred", "sending") for r in rows):
                    break
            phases.append(f"finished {time.monotonic() - started:.1f} s")
        finally:
            engine.dispose()

        arrivals = relay.arrivals()
        refusals = relay.refusals()
        dropped = relay.dropped()
        faults = relay.faults
        flaps = relay.flaps

    received = relay.per_lead_step(arrivals)
    by_key = {(r.email, f"drip/{r.step}"): r.status for r in rows}
    attempts = {(r.email, f"drip/{r.step}"): r.attempts for r in rows}
    expected = {(address(n), f"drip/{step}") for n in range(LEADS) for step in STEPS}
    tally = count("smtp: flaky relay", faults=faults, leads=LEADS, expected=expected, received=received, outbox=by_key)
    kept = sum(1 for _, k in dropped if k)
    codes = Counter(f"{r.code}@{r.command}" for r in refusals)
    reported = sum(int(n) for n in SUMMARY_LINE.findall(log.read_text()))
    tally.notes.append(
        f"{flaps} flaps, {len(refusals)} refusals ({', '.join(f'{k} x{v}' for k, v in sorted(codes.items()))}), "
        f"{len(dropped)} dropped after DATA ({kept} kept by the relay); "
        f"retries {sum(attempts.values()) - len(attempts)}; {'; '.join(phases)}"
    )
    fault_report(tally)

    assert tally.duplicated == 0
    assert tally.lost == 0
    assert tally.strays == 0
    assert set(by_key) == expected
    # 4xx only: every message ends sent, or unknown when its reply never came; none skipped or failed.
    assert set(by_key.values()) <= {"sent", "unknown"}, Counter(by_key.values())
    # The faults really happened, and in every form.
    assert flaps >= WAVES // FLAP_EVERY
    assert {r.command for r in refusals} == {"MAIL", "RCPT", "DATA"}
    assert dropped and kept and kept < len(dropped)
    # Refused messages were requeued and sent later: each refusal cost its message an attempt.
    assert sum(attempts.values()) - len(attempts) >= len(refusals) - tally.unknown
    for refusal in refusals:
        if refusal.command == "DATA":  # the server knows which email it refused
            key = (refusal.rcpt or "", refusal.funnel_step or "")
            assert by_key[key] == "unknown" or (by_key[key] == "sent" and received[key] == 1 and attempts[key] >= 2)
    # A drop after DATA leaves the message unknown, never sent again: the relay has it once if it kept it.
    for key, was_kept in dropped:
        assert by_key[key] == "unknown"
        assert received[key] == (1 if was_kept else 0)
    # Each unknown message was reported when it happened.
    assert reported == tally.unknown
