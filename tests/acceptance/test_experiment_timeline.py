"""An experiment in a lead's timeline, through `funnel lead show` and `funnel lead export` as real processes
on a real database: the assignment in words, and once the experiment is decided, one entry at the
decision's time (how, where new leads go, by whom, why, and that this lead keeps its arm), read from the one
decision row of the experiment. A lead entering after the decision shows the promoted arm; a lead that was
never in the experiment shows nothing of it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.core.experiments import assign, lead_key
from engine.store import leads as store
from engine.store.database import upgrade
from engine.store.tables import experiment_decisions
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
          decide: {min_per_arm: 100, promote: manual}
    on_end: stay
"""

NEWS = """\
id: news
name: Newsletter
entry:
  triggers:
    - event: subscribed
stages:
  - id: reading
    steps:
      - id: hello
        send: drip/hello
    on_end: stay
"""


def arm_of(address: str) -> str:
    return assign(lead_key(address), "ab", "welcome", "subject", [("plain", 1), ("teaser", 1)])


def sign_up(project: Project, address: str, name: str, at: datetime) -> None:
    engine = project.db()
    try:
        with engine.begin() as conn:
            lead_id = store.find_lead_id(conn, address) or store.upsert_lead(conn, address, now=at)
            store.record_events(conn, [store.NewEvent(f"{name}-{address}", lead_id, name, at, {}, "test")], now=at)
    finally:
        engine.dispose()


def shown(project: Project, address: str) -> list[tuple[str, str]]:
    """`funnel lead show`'s timeline as (funnel, what) rows, a row's folded lines joined again."""
    out = project.funnel("lead", "show", address, "--utc").stdout
    rows: list[list[str]] = []
    for line in out[out.index("Timeline") :].splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) != 5 or cells[1] == "time":
            continue
        if cells[1]:
            rows.append([cells[2], cells[3]])
        else:  # a folded line of the row above
            rows[-1] = [rows[-1][0] + cells[2], f"{rows[-1][1]} {cells[3]}".strip()]
    return [(funnel, what) for funnel, what in rows]


def squash(text: str) -> str:
    """Without whitespace: a folded cell may break a line between words or inside a long one."""
    return "".join(text.split())


def experiment_rows(project: Project, address: str) -> list[str]:
    return [squash(what) for funnel, what in shown(project, address) if "experiment" in what]


def exported(project: Project, address: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(project.funnel("lead", "export", address).stdout)
    return data


def test_the_assignment_and_the_decision_in_the_leads_timeline_and_export(project: Project) -> None:
    write_emails(project.root, ["welcome", "teaser", "hello"])
    project.add_funnel("ab", AB)
    project.add_funnel("news", NEWS)
    (project.root / "data").mkdir(exist_ok=True)
    upgrade(project.database_url)
    early, late = (next(f"{p}{i}@example.com" for i in range(100) if arm_of(f"{p}{i}@example.com") == "plain")
                   for p in ("early", "late"))  # fmt: skip
    reader = "reader@example.com"
    start = datetime.now(UTC) - timedelta(hours=2)
    sign_up(project, early, "signed_up", start)
    sign_up(project, reader, "subscribed", start)
    project.funnel("run", "--once", "--now", iso(start + timedelta(minutes=1)))

    assigned = "put in arm plain of experiment subject at step welcome (email drip/welcome)"
    assert experiment_rows(project, early) == [squash(assigned)]
    before = exported(project, early)
    assert before["experiment_decisions"] == []
    assert [(e["kind"], e["funnel"], e["what"]) for e in before["timeline"] if e["kind"] == "experiment"] == [
        ("experiment", "ab", assigned)
    ]
    # The assignment, then its arm's email.
    kinds = [e["kind"] for e in before["timeline"]]
    assert kinds.index("experiment") < kinds.index("email")

    project.funnel("experiment", "promote", "ab", "subject", "teaser", "--reason", "brand voice", "--by", "olivia")
    sign_up(project, late, "signed_up", datetime.now(UTC))
    project.funnel("run", "--once")

    decided = "experiment subject promoted (manual) by olivia: new leads get teaser; why: brand voice; "
    assert experiment_rows(project, early) == [squash(assigned), squash(decided + "this lead keeps its arm plain")]
    assert experiment_rows(project, late) == [
        squash(decided + "this lead reached it after the decision, in arm teaser"),
        squash(
            "put in arm teaser of experiment subject at step welcome (email drip/teaser; "
            "the promoted arm: the experiment was decided before)"
        ),
    ]
    after = exported(project, early)
    (decision,) = after["experiment_decisions"]
    assert {k: decision[k] for k in ("funnel", "experiment", "arm", "how", "decided_by", "reason")} == {
        "funnel": "ab", "experiment": "subject", "arm": "teaser", "how": "manual", "decided_by": "olivia",
        "reason": "brand voice",
    }  # fmt: skip
    told = [e for e in after["timeline"] if e["kind"] == "experiment"]
    assert [e["what"] for e in told] == [assigned, decided + "this lead keeps its arm plain"]
    assert told[1]["at"] == decision["decided_at"]
    assert after["events"] == before["events"]  # the decision wrote nothing about the lead

    # A lead never in the experiment: nothing of it, in its timeline or its export.
    assert experiment_rows(project, reader) == []
    theirs = exported(project, reader)
    assert theirs["experiment_decisions"] == []
    assert not [e for e in theirs["timeline"] if "experiment" in e["what"] or e["kind"] == "experiment"]
    assert any(e["what"].startswith("email hello") for e in theirs["timeline"])  # its own story is there
    engine = project.db()
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(sa.func.count()).select_from(experiment_decisions)).scalar_one()
    finally:
        engine.dispose()
    assert rows == 1  # one row for the experiment, none per lead
