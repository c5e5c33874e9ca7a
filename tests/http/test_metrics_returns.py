"""`/metrics` over a real socket: what came back after the relay's 250 (reports by source and class,
complaints, suppressions by reason, reports kept for an operator), from a history built by the worker,
the mailer and the bounce processor with real reports; a later scrape adds only what is new."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from engine.runtime.bounce_processing import process_report
from engine.settings import BounceSettings
from tests import bounce_history
from tests.http.conftest import Served
from tests.http.test_metrics import scrape


def test_metrics_count_reports_complaints_suppressions_and_what_waits_for_an_operator(
    served: Served, tmp_path: Path
) -> None:
    before = scrape(served)
    assert before[("funnel_bounce_reports_kept", ())] == 0
    history = bounce_history.build(served.engine, tmp_path)
    after = scrape(served)

    def reports(klass: str) -> float:
        return after.get(("funnel_bounce_reports_total", (("class", klass), ("source", "ingest"))), 0)

    # The dead address and the report about an address nobody has; the full mailbox; two complaints.
    assert (reports("address_gone"), reports("mailbox_trouble"), reports("complaint"), reports("sender_fault")) == (
        2, 1, 2, 1,
    )  # fmt: skip
    assert after[("funnel_complaints_total", (("source", "ingest"),))] == 2
    assert after[("funnel_suppressions_total", (("reason", "bounced"),))] == 2  # a report; the relay itself
    assert after[("funnel_suppressions_total", (("reason", "complained"),))] == 2
    assert after[("funnel_bounce_reports_kept", ())] == 1

    # Another report for nobody: counted on top, and one more waits for an operator.
    raw = (bounce_history.REPORTS / "flufl.bounce" / "dsn_12.eml").read_bytes()
    process_report(served.engine, raw, "lmtp", history.second_reports_at + timedelta(hours=1), BounceSettings())
    again = scrape(served)
    assert again[("funnel_bounce_reports_total", (("class", "address_gone"), ("source", "lmtp")))] == 1
    assert again[("funnel_bounce_reports_total", (("class", "address_gone"), ("source", "ingest")))] == 2
    assert again[("funnel_bounce_reports_kept", ())] == 2
