"""`/metrics` over a real socket: the journey's figures read from the database, in Prometheus format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from engine.authoring.validation import load_funnels
from engine.runtime.worker import Worker
from engine.store import leads as store
from tests.acceptance.conftest import queue_email
from tests.http.conftest import NOW, Served

FUNNEL = """\
id: guide
name: Guide
entry:
  triggers:
    - event: signed_up
stages:
  - id: first
    steps:
      - id: hello
        send: drip/hello
    on_end: next
  - id: second
    steps:
      - id: pause
        wait: 2d
"""


def scrape(served: Served) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{served.url}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert "@" not in response.text  # counts only, never an address
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_transitions_emails_and_backlog(served: Served, tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "guide.yaml").write_text(FUNNEL)
    worker = Worker(served.engine, {f.id: f for f in load_funnels([tmp_path / "f"], emails_dir=None).funnels})
    worker.publish(NOW)
    with served.engine.begin() as conn:
        for i in range(3):
            lead = store.upsert_lead(conn, f"m{i}@example.com", now=NOW)
            store.record_events(conn, [store.NewEvent(f"e{i}", lead, "signed_up", NOW)], now=NOW)
    before = scrape(served)
    assert before[("funnel_events_pending", ())] == 3
    assert ("funnel_transitions_total", (("from_stage", ""), ("funnel", "guide"), ("to_stage", "first"))) not in before

    worker.run_until_idle(NOW)
    after = scrape(served)
    entered = ("funnel_transitions_total", (("from_stage", ""), ("funnel", "guide"), ("to_stage", "first")))
    moved = ("funnel_transitions_total", (("from_stage", "first"), ("funnel", "guide"), ("to_stage", "second")))
    assert (after[entered], after[moved]) == (3, 3)
    assert after[("funnel_events_pending", ())] == 0
    assert after[("funnel_emails", (("status", "queued"),))] == 3
    assert after[("funnel_emails", (("status", "sent"),))] == 0
    assert after[("funnel_outbox_ready", ())] == 3

    # A later scrape counts only what was added, on top of what it had.
    with served.engine.begin() as conn:
        lead = store.upsert_lead(conn, "m9@example.com", now=NOW)
        store.record_events(conn, [store.NewEvent("e9", lead, "signed_up", NOW)], now=NOW)
    worker.run_until_idle(NOW)
    queue_email(served.engine, "other@example.com", "welcome", NOW)
    again = scrape(served)
    assert (again[entered], again[moved]) == (4, 4)
    assert again[("funnel_outbox_ready", ())] == 5


def test_metrics_show_domains_in_alarm_and_reports_of_the_senders_fault(serve: Any) -> None:
    import sqlalchemy as sa

    from engine.core.bounce_outcome import SENDER_FAULT, Outcome
    from engine.settings import BounceSettings
    from engine.store import tables
    from engine.store.bounces import record_outcomes
    from tests.http.conftest import Clock

    served = serve(clock=Clock(NOW))
    before = scrape(served)
    assert before[("funnel_domains_in_alarm", ())] == 0
    assert before[("funnel_sender_fault_reports_total", ())] == 0
    with served.engine.begin() as conn:
        for i in range(3):
            lead_id = store.upsert_lead(conn, f"u{i}@blocky.example", now=NOW)
            conn.execute(
                sa.insert(tables.outbox).values(
                    lead_id=lead_id, funnel_id="f", step="s", template="t", stage="s", transactional=False,
                    status="sent", due_at=NOW, attempts=1, created_at=NOW, sent_at=NOW,
                )
            )  # fmt: skip
        outcomes = [Outcome(f"k{i}", "test", "dsn", SENDER_FAULT, f"u{i}@blocky.example") for i in range(3)]
        record_outcomes(conn, outcomes, NOW, BounceSettings(sender_fault_alarm=3))
    after = scrape(served)
    assert after[("funnel_domains_in_alarm", ())] == 1
    assert after[("funnel_domain_alarm", (("domain", "blocky.example"),))] == 1
    assert after[("funnel_sender_fault_reports_total", ())] == 3
