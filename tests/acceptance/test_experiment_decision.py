"""An auto-promoting experiment decided by the running engine: `funnel run --once` as a real process on a
real database and SMTP server. Once every arm's windows have closed at the horizon, the engine records the
winner once and logs it; a lead entering after that gets the winner's email (its hash would have given it
the other arm), while the leads assigned before keep theirs. `funnel experiment show` tells the decision,
and promoting it again is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from engine.core.experiments import assign, lead_key
from engine.store import experiment_decisions as decisions
from engine.store import leads as store
from engine.store.database import upgrade
from engine.store.tables import events
from tests.acceptance.conftest import Project, iso, write_emails

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
          decide: {alpha: 0.05, min_per_arm: 4, promote: auto}
    on_end: stay
"""


def arm_of(address: str) -> str:
    return assign(lead_key(address), "ab", "welcome", "subject", [("plain", 1), ("teaser", 1)])


def record(project: Project, new: list[tuple[str, str, datetime, dict[str, str]]]) -> None:
    engine = project.db()
    try:
        with engine.begin() as conn:
            for address, name, at, properties in new:
                lead_id = store.find_lead_id(conn, address) or store.upsert_lead(conn, address, now=at)
                event = store.NewEvent(f"{name}-{address}", lead_id, name, at, properties, "test")
                store.record_events(conn, [event], now=at)
    finally:
        engine.dispose()


def test_the_engine_promotes_the_winner_for_new_leads_and_earlier_leads_keep_their_arm(
    sqlite_project: Project,
) -> None:
    project = sqlite_project
    write_emails(project.root, ["welcome", "teaser"])
    project.add_funnel("ab", AB)
    (project.root / "data").mkdir(exist_ok=True)
    upgrade(project.database_url)
    early = [f"early{i}@example.com" for i in range(14)]
    arms = {a: arm_of(a) for a in early}
    assert min(list(arms.values()).count(arm) for arm in ("plain", "teaser")) >= 4  # both arms at the horizon
    start = datetime.now(UTC) - timedelta(days=5)
    record(project, [(a, "signed_up", start, {}) for a in early])
    project.funnel("run", "--once", "--now", iso(start))
    assert len(project.smtp.wait_for(len(early))) == len(early)
    # Every teaser lead clicks its email within the hour; no plain lead does.
    clicks = {"funnel": "ab", "step": "welcome", "link": "offer"}
    record(
        project,
        [(a, "email_clicked", start + timedelta(hours=1), clicks) for a, arm in arms.items() if arm == "teaser"],
    )
    late = next(f"late{i}@example.com" for i in range(100) if arm_of(f"late{i}@example.com") == "plain")
    record(project, [(late, "signed_up", datetime.now(UTC), {})])
    ran = project.funnel("run", "--once")
    assert "experiment ab/subject decided (auto): winner: teaser" in ran.stdout + ran.stderr
    got = project.smtp.wait_for(len(early) + 1)
    subjects = {m.rcpt[0]: m.subject for m in got}
    assert subjects[late] == "Teaser for you"  # the winner's, where its hash says plain
    assert {a: subjects[a] for a in early} == {
        a: "Teaser for you" if arm == "teaser" else "Welcome for you" for a, arm in arms.items()
    }
    assert len(got) == len(early) + 1  # nobody got a second email
    engine = project.db()
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(events.c.properties).where(events.c.name == "experiment_assigned")).all()
            (decided,) = decisions.settled(conn)
    finally:
        engine.dispose()
    by_lead = {(p["arm"], bool(p.get("promoted"))) for (p,) in rows}
    assert by_lead == {("plain", False), ("teaser", False), ("teaser", True)}
    assert (decided.arm, decided.how, decided.decided_by) == ("teaser", "auto", "engine")
    shown = project.funnel("experiment", "show", "ab", "subject").stdout
    assert "decision: decided (auto)" in shown and "new leads get teaser" in shown and "why: winner: teaser" in shown
    refused = project.funnel("experiment", "promote", "ab", "subject", "plain", "--reason", "brand", check=False)
    assert refused.returncode == 1 and "already decided (auto)" in refused.stderr
