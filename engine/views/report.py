"""`funnel report`'s figures, from the plain rows `engine.store.report_queries` reads: where leads are, how many
went from one stage to the next, how long they stayed, and what each email did; with each funnel, its
experiments' figures (`engine.views.experiment_figures`, read apart: they count from the assignments).

Pure: no database, no clock. The rows are already counted by the database (a report over a million
leads reads a few hundred rows); this module only puts them together, in the funnel's own order.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from engine.core.report_rows import Layout, Rows, StageCount
from engine.views import experiment_figures
from engine.views.experiment_figures import ExperimentFigures

# Handed to the relay and taken, or maybe taken, or refused for its address: what "sent" means in the
# report. A `failed` message never went out (refused for good, or never composed or handed over): it is
# counted apart, not as sent.
HANDED_OVER = ("sending", "sent", "bounced", "unknown")
WAITING = ("queued", "deferred")


# The rows in are `engine.core.report_rows`'.


# --------------------------------------------------------------------------------------------------
# Figures out
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageFigures:
    stage: str
    now: int  # active leads in this stage
    reached: int
    next_stage: str | None
    conversion: float | None  # of the leads who reached this stage, the share who later reached the next
    stays: int  # completed stays measured
    median_minutes: int | None
    p90_minutes: int | None
    left_bounced: int = 0  # leads lost here because an email of this stage bounced
    left_complained: int = 0  # leads lost here to a complaint: about an email of this stage, or elsewhere


@dataclass(frozen=True, slots=True)
class EmailFigures:
    step: str
    template: str
    waiting: int  # queued or deferred
    sent: int  # handed to the relay: delivered + bounced + unknown + in flight (not failed)
    delivered: int
    bounced: int
    failed: int
    unknown: int
    skipped: int
    opened: int
    clicked: int
    unsubscribed: int
    soft_bounced: int = 0  # leads whose email had a soft bounce report (mailbox trouble, a delay)
    complained: int = 0  # leads who complained about this email
    # Sent (handed to the relay) per language the email was written in; empty when none was recorded.
    sent_by_language: Mapping[str, int] = field(default_factory=dict)

    def rate(self, count: int) -> float | None:
        """`count` as a share of the delivered emails."""
        return count / self.delivered if self.delivered else None

    def rate_of_sent(self, count: int) -> float | None:
        """`count` as a share of the emails handed to the relay (bounces and complaints are)."""
        return count / self.sent if self.sent else None


@dataclass(frozen=True)
class FunnelReport:
    funnel: str
    leads: int  # enrolled: active + exited
    active: int
    exited: Mapping[str, int]
    stages: Sequence[StageFigures]
    emails: Sequence[EmailFigures] = field(default_factory=tuple)
    experiments: Sequence[ExperimentFigures] = field(default_factory=tuple)


def percentile(histogram: Iterable[tuple[int, int]], q: float) -> int | None:
    """The nearest-rank `q` quantile (0 < q <= 1) of values given as (value, how many): the smallest
    value with at least q of all the counts at or below it."""
    ordered = sorted((value, count) for value, count in histogram if count > 0)
    total = sum(count for _, count in ordered)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value, count in ordered:
        seen += count
        if seen >= rank:
            return value
    return ordered[-1][0]  # pragma: no cover  (rank <= total)


def _ordered(known: Sequence[str], seen: Iterable[str]) -> list[str]:
    """The definition's order first, then anything the data has that the definition no longer names."""
    extra = sorted(set(seen) - set(known))
    return [*known, *extra]


def build(
    rows: Rows,
    layouts: Mapping[str, Layout],
    experiments: Mapping[str, Sequence[ExperimentFigures]] | None = None,
) -> list[FunnelReport]:
    """One report per funnel that has enrollments, sorted by funnel id; `experiments` (funnel id -> its
    experiments' figures, `engine.views.experiment_figures`) go with their funnel."""
    by_funnel: dict[str, list[StageCount]] = defaultdict(list)
    for row in rows.stage_counts:
        by_funnel[row.funnel].append(row)
    tested = experiments or {}
    return [
        _funnel(f, counts, rows, layouts.get(f, Layout()), tested.get(f, ())) for f, counts in sorted(by_funnel.items())
    ]


def _funnel(
    funnel: str, counts: list[StageCount], rows: Rows, layout: Layout, experiments: Sequence[ExperimentFigures]
) -> FunnelReport:
    now: dict[str, int] = defaultdict(int)
    exited: dict[str, int] = defaultdict(int)
    for c in counts:
        if c.status == "active":
            now[c.stage] += c.leads
        else:
            exited[c.exit_reason or "exited"] += c.leads
    reached = {r.stage: r.leads for r in rows.reached if r.funnel == funnel}
    followed = {(f.stage, f.later): f.leads for f in rows.followed if f.funnel == funnel}
    stays: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for s in rows.stays:
        if s.funnel == funnel:
            stays[s.stage].append((s.minutes, s.count))
    lost: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows.losses:
        if row.funnel == funnel:
            lost[(row.stage, row.cause)] += row.leads
    stage_ids = _ordered(layout.stages, [*now, *reached, *stays])
    stages = []
    for i, stage in enumerate(stage_ids):
        nxt = stage_ids[i + 1] if i + 1 < len(stage_ids) else None
        n = reached.get(stage, 0)
        conversion = followed.get((stage, nxt), 0) / n if nxt is not None and n else None
        histogram = stays.get(stage, [])
        stages.append(
            StageFigures(
                stage=stage,
                now=now.get(stage, 0),
                reached=n,
                next_stage=nxt,
                conversion=conversion,
                stays=sum(count for _, count in histogram),
                median_minutes=percentile(histogram, 0.5),
                p90_minutes=percentile(histogram, 0.9),
                left_bounced=lost[(stage, "bounce")],
                left_complained=lost[(stage, "complaint")],
            )
        )
    active = sum(now.values())
    return FunnelReport(
        funnel=funnel,
        leads=active + sum(exited.values()),
        active=active,
        exited=dict(sorted(exited.items())),
        stages=stages,
        emails=_emails(funnel, rows, layout),
        experiments=tuple(experiments),
    )


def _emails(funnel: str, rows: Rows, layout: Layout) -> list[EmailFigures]:
    statuses: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    # A step whose arms send different templates names the one most of its emails used (then the first
    # by name): the rows' order depends on the database and on what has been rolled up, the figure must not.
    used: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows.email_statuses:
        if row.funnel == funnel:
            statuses[row.step][row.status] += row.count
            used[row.step][row.template] += row.count
    templates = {step: min(by, key=lambda t: (-by[t], t)) for step, by in used.items()}
    engaged: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in rows.engagement:
        if e.funnel == funnel and e.step in statuses:
            engaged[e.step][e.kind] += e.leads
    languages = _sent_by_language(funnel, rows)
    out = []
    for step in _ordered([s for s in layout.emails if s in statuses], statuses):
        by = statuses[step]
        out.append(
            EmailFigures(
                step=step,
                template=templates[step],
                waiting=sum(by[s] for s in WAITING),
                sent=sum(by[s] for s in HANDED_OVER),
                delivered=by["sent"],
                bounced=by["bounced"],
                failed=by["failed"],
                unknown=by["unknown"],
                skipped=by["skipped"],
                opened=engaged[step]["opened"],
                clicked=engaged[step]["clicked"],
                unsubscribed=engaged[step]["unsubscribed"],
                soft_bounced=engaged[step]["soft bounced"],
                complained=engaged[step]["complained"],
                sent_by_language=languages.get(step, {}),
            )
        )
    return out


# The key of emails sent without a recorded language (before the engine recorded them).
UNRECORDED = "-"


def _sent_by_language(funnel: str, rows: Rows) -> dict[str, dict[str, int]]:
    """Step -> language -> emails sent; for the funnel's steps only once some email has a language."""
    found: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    recorded = False
    for row in rows.email_languages:
        if row.funnel == funnel and row.status in HANDED_OVER:
            found[row.step][row.language or UNRECORDED] += row.count
            recorded = recorded or row.language is not None
    if not recorded:
        return {}
    return {step: dict(sorted(by.items())) for step, by in found.items()}


def _stage_dict(s: StageFigures) -> dict[str, object]:
    return {
        "stage": s.stage,
        "now": s.now,
        "reached": s.reached,
        "next_stage": s.next_stage,
        "conversion": None if s.conversion is None else round(s.conversion, 4),
        "stays": s.stays,
        "median_minutes": s.median_minutes,
        "p90_minutes": s.p90_minutes,
        "left_bounced": s.left_bounced,
        "left_complained": s.left_complained,
    }


def _email_dict(e: EmailFigures) -> dict[str, object]:
    return {
        "step": e.step,
        "template": e.template,
        "waiting": e.waiting,
        "sent": e.sent,
        "delivered": e.delivered,
        "bounced": e.bounced,
        "failed": e.failed,
        "unknown": e.unknown,
        "skipped": e.skipped,
        "opened": e.opened,
        "clicked": e.clicked,
        "unsubscribed": e.unsubscribed,
        "soft_bounced": e.soft_bounced,
        "complained": e.complained,
        **{f"{name}_rate": _rounded(e.rate_of_sent(n)) for name, n in returned(e)},
        **({"sent_by_language": dict(e.sent_by_language)} if e.sent_by_language else {}),
    }


def returned(e: EmailFigures) -> tuple[tuple[str, int], ...]:
    """What came back about an email: hard bounces, soft bounces and complaints, each a share of sent
    (the figures mailbox providers judge a sender by)."""
    return (("hard_bounce", e.bounced), ("soft_bounce", e.soft_bounced), ("complaint", e.complained))


def _rounded(rate: float | None) -> float | None:
    return None if rate is None else round(rate, 4)


def as_dict(report: FunnelReport) -> dict[str, object]:
    """The report as plain JSON-able data (for `--json`)."""
    return {
        "funnel": report.funnel,
        "leads": report.leads,
        "active": report.active,
        "exited": dict(report.exited),
        "stages": [_stage_dict(s) for s in report.stages],
        "emails": [_email_dict(e) for e in report.emails],
        "experiments": [experiment_figures.as_dict(e) for e in report.experiments],
    }


def csv_rows(report: FunnelReport) -> list[tuple[str, str, str, str, object]]:
    """Long form (funnel, section, item, figure, value): one value a row, easy to pivot in a spreadsheet."""
    f = report.funnel
    out: list[tuple[str, str, str, str, object]] = [
        (f, "funnel", f, "leads", report.leads),
        (f, "funnel", f, "active", report.active),
    ]
    out += [(f, "exit", reason, "leads", n) for reason, n in report.exited.items()]
    items = [("stage", s.stage, _stage_dict(s)) for s in report.stages]
    items += [("email", e.step, _email_dict(e)) for e in report.emails]
    for section, name, figures in items:
        for figure, value in figures.items():
            if isinstance(value, dict):
                out += [(f, section, name, f"{figure}.{key}", n) for key, n in value.items()]
            elif figure not in ("stage", "step"):
                out.append((f, section, name, figure, "" if value is None else value))
    for experiment in report.experiments:
        out += experiment_figures.csv_rows(experiment)
    return out
