"""Experiments in `funnel report` (table, JSON, CSV), on SQLite and PostgreSQL: the worker assigns leads and
decides an auto-promoting experiment at its horizon, an operator promotes the other with `funnel experiment
promote`, and the report shows each arm's leads assigned and counted, conversions, rate and lift over the
control with its interval, the state, and who decided what, when and why: the same figures as `funnel
experiment show`. A funnel without experiments gets nothing extra."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from engine.authoring.validation import load_funnels
from engine.core.experiments import assign, lead_key
from engine.runtime.worker import Worker
from engine.store import leads as store
from engine.store.database import create_engine_for
from tests.cli.test_experiment_commands import AB as COMMANDS_AB
from tests.cli.test_experiment_commands import funnel
from tests.cli.test_report_returns import run, table

# The experiments of `funnel experiment`'s tests, with horizons a few leads reach.
AB = COMMANDS_AB.replace("min_per_arm: 100", "min_per_arm: 4").replace("within: 7d", "within: 1d")
assert AB.count("min_per_arm: 4") == 2 and "within: 1d" in AB

PLAIN = """\
id: plain
name: No experiment
entry:
  triggers:
    - event: signed_up
stages:
  - id: reading
    steps:
      - id: hello
        send: drip/welcome
    on_end: stay
"""

EARLY = [f"early{i}@example.com" for i in range(24)]
LATE = [f"late{i}@example.com" for i in range(3)]


def subject_arm(address: str) -> str:
    return assign(lead_key(address), "ab", "welcome", "subject", [("plain", 1), ("teaser", 1)])


def pace_arm(address: str) -> str:
    return assign(lead_key(address), "ab", "pace", "pace", [("soon", 1), ("none", 1)])


def clicks(address: str) -> bool:
    """Every teaser lead clicks its email within the hour; one plain lead in three does."""
    return subject_arm(address) == "teaser" or EARLY.index(address) % 3 == 0


@dataclass(frozen=True)
class Seeded:
    url: str
    root: Path


def seed(engine: Engine, root: Path, now: datetime) -> None:
    """Funnels `ab` and `plain` in root/funnels, published and run by the worker: the early leads signed
    up five days before `now` and clicked (`clicks`) within the hour, the late ones sign up at `now`; the
    worker's tick at `now` decides `subject` at its horizon (auto), and the late leads get its winner."""
    (root / "funnels").mkdir(exist_ok=True)
    (root / "funnels" / "ab.yaml").write_text(AB)
    (root / "funnels" / "plain.yaml").write_text(PLAIN)
    loaded = {f.id: f for f in load_funnels([root / "funnels"], emails_dir=None).funnels}
    start = now - timedelta(days=5)
    worker = Worker(engine, loaded)
    worker.publish(start)  # as `funnel run` does: the report reads the definitions the engine runs
    signed_up(engine, EARLY, start)
    worker.run_until_idle(start)
    with engine.begin() as conn:
        for address in filter(clicks, EARLY):
            lead_id = store.find_lead_id(conn, address)
            assert lead_id is not None
            properties = {"funnel": "ab", "step": "welcome", "link": "offer"}
            event = store.NewEvent(f"click-{address}", lead_id, "email_clicked", start + timedelta(hours=1),
                                   properties, "test")  # fmt: skip
            store.record_events(conn, [event], now=start + timedelta(hours=1))
    signed_up(engine, LATE, now)
    worker.run_until_idle(now)


@pytest.fixture
def seeded(db_url: str, tmp_path: Path) -> Seeded:
    engine = create_engine_for(db_url)
    try:
        seed(engine, tmp_path, datetime.now(UTC))
    finally:
        engine.dispose()
    promoted = funnel(tmp_path, db_url, "experiment", "promote", "ab", "pace", "soon", "--reason", "brand voice",
                      "--by", "olivia")  # fmt: skip
    assert promoted.returncode == 0, promoted.stderr
    return Seeded(db_url, tmp_path)


def signed_up(engine: Engine, addresses: list[str], at: datetime) -> None:
    with engine.begin() as conn:
        for address in addresses:
            lead_id = store.upsert_lead(conn, address, now=at)
            store.record_events(conn, [store.NewEvent(f"s-{address}", lead_id, "signed_up", at)], now=at)


def test_the_report_shows_each_experiments_arms_state_and_decision(seeded: Seeded) -> None:
    plain_leads = [a for a in EARLY if subject_arm(a) == "plain"]
    teaser_leads = [a for a in EARLY if subject_arm(a) == "teaser"]
    assert min(len(plain_leads), len(teaser_leads)) >= 4  # both arms at the horizon
    plain_rate = sum(map(clicks, plain_leads)) / len(plain_leads)

    report = json.loads(run("report", "--json", "--database-url", seeded.url).output)
    by_funnel = {f["funnel"]: f for f in report["funnels"]}
    assert by_funnel["plain"]["experiments"] == []
    subject, pace = by_funnel["ab"]["experiments"]
    assert (subject["experiment"], subject["step"], subject["kind"], subject["metric"], subject["within"]) == (
        "subject", "welcome", "variant send", "click: *", "3d",
    )  # fmt: skip
    assert (subject["state"], subject["control"], subject["horizon"], subject["not_a_decision"]) == (
        "winner", "plain", 4, False,
    )  # fmt: skip
    assert subject["reason"].startswith("winner: teaser converts 100.00%")
    plain, teaser = subject["arms"]
    assert (plain["arm"], plain["control"], plain["assigned"], plain["promoted"]) == (
        "plain", True, len(plain_leads), 0,
    )  # fmt: skip
    assert (plain["leads"], plain["conversions"], plain["rate"]) == (
        len(plain_leads), sum(map(clicks, plain_leads)), round(plain_rate, 4),
    )  # fmt: skip
    assert plain["lift"] is None  # the control is not compared with itself
    # The late leads came after the decision: assigned by it, not counted (their window is open anyway).
    assert (teaser["assigned"], teaser["promoted"], teaser["leads"], teaser["conversions"], teaser["rate"]) == (
        len(teaser_leads), len(LATE), len(teaser_leads), len(teaser_leads), 1.0,
    )  # fmt: skip
    assert teaser["lift"] == round(1 - plain_rate, 4)
    assert teaser["relative_lift"] == round((1 - plain_rate) / plain_rate, 4)
    assert teaser["lift_low"] < teaser["lift"] < teaser["lift_high"]
    decided = subject["decision"]
    assert (decided["how"], decided["by"], decided["arm"], decided["new_leads"]) == (
        "auto", "engine", "teaser", "new leads get teaser",
    )  # fmt: skip
    assert decided["why"].startswith("winner: teaser") and decided["why"].endswith("new leads get teaser")
    assert datetime.fromisoformat(decided["at"]) > datetime.now(UTC) - timedelta(minutes=10)

    assert (pace["kind"], pace["control"], pace["within"]) == ("split", "none", "1d")
    soon, none = pace["arms"]
    # The split: every lead is assigned by the hash (it was decided after the late leads came), and
    # only the early ones are counted.
    assert soon["assigned"] + none["assigned"] == len(EARLY) + len(LATE)
    assert soon["leads"] + none["leads"] == len(EARLY)
    assert soon["conversions"] == sum(clicks(a) for a in EARLY if pace_arm(a) == "soon")
    decided = pace["decision"]
    assert (decided["how"], decided["by"], decided["arm"]) == ("manual", "olivia", "soon")
    assert decided["why"] == "brand voice"

    rows = list(csv.reader(io.StringIO(run("report", "--csv", "--database-url", seeded.url).output)))
    figures = {(r[0], r[1], r[2], r[3]): r[4] for r in rows[1:]}
    assert figures[("ab", "experiment", "subject", "state")] == "winner"
    assert figures[("ab", "experiment", "subject", "decision_how")] == "auto"
    assert figures[("ab", "experiment", "pace", "decision_by")] == "olivia"
    assert figures[("ab", "experiment arm", "subject/teaser", "promoted")] == str(len(LATE))
    assert figures[("ab", "experiment arm", "subject/teaser", "lift")] == str(teaser["lift"])
    assert figures[("ab", "experiment arm", "subject/plain", "lift")] == ""
    assert not [r for r in rows[1:] if r[0] == "plain" and r[1].startswith("experiment")]

    text = run("report", "--database-url", seeded.url).output
    ab_part, plain_part = text.split("\nplain:")
    assert "Experiment" not in plain_part
    arms = table(ab_part, "Experiment subject: winner")
    assert arms["teaser"]["assigned"] == f"{len(teaser_leads)} (+{len(LATE)} promoted)"
    assert arms["teaser"]["rate"] == "100.00%" and arms["plain"]["lift over control"] == "(control)"
    lift = f"{(1 - plain_rate) * 100:+.2f} pts ({(1 - plain_rate) / plain_rate:+.1%})"
    assert arms["teaser"]["lift over control"] == lift
    assert "decision: decided (auto)" in ab_part and "by engine: new leads get teaser" in ab_part
    assert "by olivia: new leads get soon" in ab_part and "why: brand voice" in ab_part

    # `funnel experiment show` gives the same figures, from the same code.
    shown = funnel(seeded.root, seeded.url, "experiment", "show", "ab", "subject")
    assert shown.returncode == 0, shown.stderr
    assert table(shown.stdout, "Experiment subject: winner") == arms
