"""Prometheus metrics at `/metrics`.

Counts that describe the journey (transitions, emails by status, what is due) are read from the database
when scraped, so every process serving `/metrics` reports the same, whole-system figures, however many
workers there are (aggregate them with `max`, not `sum`). Transitions are counted incrementally by id, so
a scrape reads only the rows added since the last one. Timings (tick, dispatch) are this process's own.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.core.bounce_outcome import COMPLAINT
from engine.store import domain_alarms, metric_counts
from engine.store.database import Connection, Engine
from engine.store.tables import OUTBOX_STATUSES

# Group-by over the whole outbox is a scan: on a big outbox, scrapes reuse the last count for a while
# (twenty times what it cost, at most this long); on a small one it is counted every time.
STATUS_CACHE_MAX_S = 5.0


class DatabaseCollector(Collector):
    def __init__(self, engine: Engine, now: Callable[[], datetime]) -> None:
        self.engine = engine
        self.now = now
        self._lock = threading.Lock()
        self._last_transition = 0
        self._transitions: Counter[tuple[str, str, str]] = Counter()
        self._statuses: dict[str, int] = {}
        self._statuses_until = 0.0
        self._sender_faults = 0

    def collect(self) -> Iterator[Metric]:
        with self._lock, self.engine.connect() as conn:
            self._count_new_transitions(conn)
            started = time.monotonic()
            if started >= self._statuses_until:
                self._statuses = metric_counts.outbox_statuses(conn)
                cost = time.monotonic() - started
                self._statuses_until = started + min(20 * cost, STATUS_CACHE_MAX_S)
                # A count over every report, as costly as the outbox's: read as often, not more.
                self._sender_faults = domain_alarms.sender_fault_reports(conn)
            backlog = metric_counts.backlog(conn, self.now())
            in_alarm = [a.domain for a in domain_alarms.active(conn, self.now())]
            sender_faults = self._sender_faults
            transitions = dict(self._transitions)
            statuses = dict(self._statuses)

        counter = CounterMetricFamily(
            "funnel_transitions",
            "Stage transitions recorded, by funnel, from and to ('' = outside the funnel).",
            labels=["funnel", "from_stage", "to_stage"],
        )
        for (funnel, from_stage, to_stage), n in sorted(transitions.items()):
            counter.add_metric([funnel, from_stage, to_stage], n)
        yield counter
        emails = GaugeMetricFamily("funnel_emails", "Emails in the outbox, by status.", labels=["status"])
        for status in OUTBOX_STATUSES:
            emails.add_metric([status], statuses.get(status, 0))
        yield emails
        for name, text, value in (
            ("funnel_due_enrollments", "Active enrollments whose next step is due now.", backlog[0]),
            ("funnel_outbox_ready", "Emails queued or deferred that may be sent now.", backlog[1]),
            ("funnel_events_pending", "Events recorded and not yet handled by a worker.", backlog[2]),
        ):
            yield GaugeMetricFamily(name, text, value=value)
        yield GaugeMetricFamily(
            "funnel_domains_in_alarm",
            "Receiving domains whose sender's-fault alarm is on (docs/bounces.md).",
            value=len(in_alarm),
        )
        alarm = GaugeMetricFamily("funnel_domain_alarm", "1 for each receiving domain in alarm now.", labels=["domain"])
        for domain in in_alarm:
            alarm.add_metric([domain], 1)
        yield alarm
        yield CounterMetricFamily(
            "funnel_sender_fault_reports",
            "Bounce reports classed as the sender's fault (blocklisting, policy, authentication), recorded so far.",
            value=sender_faults,
        )

    def _count_new_transitions(self, conn: Connection) -> None:
        for funnel, from_stage, to_stage, n, last in metric_counts.transitions_after(conn, self._last_transition):
            self._transitions[(funnel, from_stage or "", to_stage or "")] += n
            self._last_transition = max(self._last_transition, last)


class ReturnsCollector(Collector):
    """What came back after the relay's 250 (docs/bounces.md), read from the database like the journey's
    counts, incrementally by id: a scrape reads only the reports and suppressions added since the last.
    A report is kept for an operator when it is written (nothing the engine does later changes that)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._last_report = 0
        self._last_suppression = 0
        self._reports: Counter[tuple[str, str]] = Counter()
        self._suppressions: Counter[str] = Counter()
        self._kept = 0

    def collect(self) -> Iterator[Metric]:
        with self._lock, self.engine.connect() as conn:
            for source, klass, matched, n, last in metric_counts.bounce_reports_after(conn, self._last_report):
                self._reports[(source, klass or "unclassified")] += n
                self._kept += n if klass is None or not matched else 0
                self._last_report = max(self._last_report, last)
            for reason, n, last in metric_counts.suppressions_after(conn, self._last_suppression):
                self._suppressions[reason] += n
                self._last_suppression = max(self._last_suppression, last)
            reports, suppressions, kept = dict(self._reports), dict(self._suppressions), self._kept
        yield from _returns_metrics(reports, suppressions, kept)


def _returns_metrics(reports: dict[tuple[str, str], int], suppressions: dict[str, int], kept: int) -> Iterator[Metric]:
    counted = CounterMetricFamily(
        "funnel_bounce_reports",
        "Reports that came back after the relay took a message (one per recipient), by source "
        "(ingest, lmtp, imap, ses, sendgrid, postmark, mailgun) and class (address_gone, mailbox_trouble, "
        "sender_fault, complaint, not_failure, unclassified).",
        labels=["source", "class"],
    )
    complaints = CounterMetricFamily(
        "funnel_complaints", "Complaints (spam reports) received, by source.", labels=["source"]
    )
    for (source, klass), n in sorted(reports.items()):
        counted.add_metric([source, klass], n)
    for source in sorted({source for source, klass in reports if klass == COMPLAINT}):
        complaints.add_metric([source], reports[(source, COMPLAINT)])
    yield counted
    yield complaints
    suppressed = CounterMetricFamily(
        "funnel_suppressions",
        "Addresses suppressed, by reason: bounced (a hard bounce at send time or by report, or too many soft "
        "bounces), complained, unsubscribed, erased.",
        labels=["reason"],
    )
    for reason, n in sorted(suppressions.items()):
        suppressed.add_metric([reason], n)
    yield suppressed
    yield GaugeMetricFamily(
        "funnel_bounce_reports_kept",
        "Reports kept for an operator: matched to no message or classed by nothing (funnel bounces unknown).",
        value=kept,
    )


class Metrics:
    """One process's registry: the database's figures and this process's timings."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tick_seconds = Histogram(
            "funnel_tick_seconds",
            "Duration of one worker tick (events and due steps).",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.dispatch_seconds = Histogram(
            "funnel_dispatch_seconds",
            "Duration of one mailer round.",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self._database: DatabaseCollector | None = None

    def watch(self, engine: Engine, now: Callable[[], datetime]) -> None:
        if self._database is None:
            self._database = DatabaseCollector(engine, now)
            self.registry.register(self._database)
            self.registry.register(ReturnsCollector(engine))
