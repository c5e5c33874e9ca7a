"""A variant send end to end: `funnel event`, `funnel run --once` and `funnel lead show` as real processes,
a real database and a real SMTP server. Each lead gets its arm's template, the arm the core's hash gives
it, and its timeline shows the assignment."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from engine.core.experiments import assign, lead_key
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
          decide: {alpha: 0.05, min_per_arm: 100, promote: auto}
    on_end: stay
"""


def test_each_lead_gets_its_arms_email_and_the_assignment_is_in_its_timeline(project: Project) -> None:
    write_emails(project.root, ["welcome", "teaser"])
    project.add_funnel("ab", AB)
    leads = [f"lead{i}@example.com" for i in range(8)]
    arms = {a: assign(lead_key(a), "ab", "welcome", "subject", [("plain", 1), ("teaser", 1)]) for a in leads}
    assert set(arms.values()) == {"plain", "teaser"}  # these addresses cover both arms
    start = datetime.now(UTC)
    for i, address in enumerate(leads):
        project.funnel("event", address, "signed_up", "--id", f"signup-{i}", "--at", iso(start))
    project.funnel("run", "--once", "--now", iso(start))
    got = project.smtp.wait_for(len(leads))
    sent = {m.rcpt[0]: (m.funnel_step, m.subject) for m in got}
    subject = {"plain": "Welcome for you", "teaser": "Teaser for you"}
    assert sent == {a: ("ab/welcome", subject[arm]) for a, arm in arms.items()}
    teaser = next(a for a, arm in arms.items() if arm == "teaser")
    shown = project.funnel("lead", "show", teaser).stdout
    assert "put in arm teaser of experiment subject at step welcome (email drip/teaser)" in shown
    engine = project.db()
    try:
        with engine.connect() as conn:
            assigned = conn.execute(
                sa.select(sa.func.count()).select_from(events).where(events.c.name == "experiment_assigned")
            ).scalar()
            pending = conn.execute(
                sa.select(sa.func.count()).select_from(events).where(events.c.processed_at.is_(None))
            ).scalar()
    finally:
        engine.dispose()
    assert (assigned, pending) == (len(leads), 0)
