"""The sender's-fault alarm on the ops dashboard, over plain HTTP: every page a signed-in operator opens
shows the banner while a domain's alarm is on, and none once it is over; the login page shows nothing."""

from __future__ import annotations

from datetime import timedelta

import httpx
import sqlalchemy as sa

from engine.core.bounce_outcome import SENDER_FAULT, Outcome
from engine.settings import BounceSettings
from engine.store import domain_alarms, tables
from engine.store import leads as store
from engine.store.bounces import record_outcomes
from tests.browser.conftest import Dashboard
from tests.browser.test_ops_http import PAGES, sign_in


def refuse(ops: Dashboard, domain: str, count: int) -> None:
    now = ops.clock()
    with ops.engine.begin() as conn:
        for i in range(count):
            lead_id = store.upsert_lead(conn, f"u{i}@{domain}", now=now)
            conn.execute(
                sa.insert(tables.outbox).values(
                    lead_id=lead_id, funnel_id="trial", step="s", template="t", stage="s", transactional=False,
                    status="sent", due_at=now, attempts=1, created_at=now, sent_at=now,
                )
            )  # fmt: skip
        outcomes = [Outcome(f"k{i}", "test", "dsn", SENDER_FAULT, f"u{i}@{domain}") for i in range(count)]
        record_outcomes(conn, outcomes, now, BounceSettings(sender_fault_alarm=3))


def test_the_banner_shows_on_every_page_while_an_alarm_is_on(ops: Dashboard) -> None:
    client, _ = sign_in(ops)
    ops.lead("ana@greenleaf.example", "signed_up")
    assert "ALARM" not in client.get("/ops/").text
    refuse(ops, "blocky.example", 3)
    refuse(ops, "quiet.example", 2)  # under the threshold: no alarm
    for path in PAGES:
        page = client.get(path)
        assert page.status_code == 200, path
        assert 'class="alarm" role="alert"' in page.text and "ALARM: blocky.example refuses this sender" in page.text
        assert "quiet.example" not in page.text
    with httpx.Client(base_url=ops.url, timeout=10) as stranger:
        assert "blocky.example" not in stranger.get("/ops/login").text  # nothing for who is not signed in
    with ops.engine.begin() as conn:
        [alarm] = domain_alarms.active(conn, ops.clock())
    ops.clock.at = alarm.ends_at + timedelta(seconds=1)
    assert "ALARM" not in client.get("/ops/").text
