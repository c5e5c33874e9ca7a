"""`engine.views.report`: the figures of `funnel report` from counted rows. Journeys are generated, counted the
way the database counts them, and the figures checked against what the journeys say."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from engine.core.report_rows import EmailStatus, Engagement, Followed, Layout, Reached, Rows, StageCount, Stays
from engine.views.report import build, csv_rows, percentile

STAGES = ("inquiry", "comparison", "conversion", "onboarding")
LAYOUT = Layout(stages=STAGES, emails=("welcome", "nudge", "invite"))
OUTBOX_STATUSES = ("queued", "sending", "sent", "failed", "bounced", "unknown", "skipped", "deferred")


@dataclass(frozen=True)
class Journey:
    """One lead: the stages it entered in order, how long it stayed in each, and maybe its exit."""

    visits: tuple[str, ...]
    minutes: tuple[int, ...]
    exit_reason: str | None


journeys = st.lists(
    st.builds(
        lambda visits, minutes, exit_reason: Journey(tuple(visits), tuple(minutes[: len(visits)]), exit_reason),
        st.lists(st.sampled_from(STAGES), min_size=1, max_size=6),
        st.lists(st.integers(0, 60 * 24 * 30), min_size=6, max_size=6),
        st.none() | st.sampled_from(("unsubscribed", "no-reply", "refunded")),
    ),
    max_size=40,
)


def counted(funnel: str, leads: list[Journey]) -> Rows:
    """What the report's queries return for these journeys."""
    now: Counter[tuple[str, str, str | None]] = Counter()
    reached: Counter[str] = Counter()
    followed: Counter[tuple[str, str]] = Counter()
    stays: Counter[tuple[str, int]] = Counter()
    for j in leads:
        first = {}
        for i, stage in enumerate(j.visits):
            first.setdefault(stage, i)
        reached.update(first.keys())
        followed.update((a, b) for a in first for b in first if first[b] > first[a])
        # A stay is complete when another transition follows it: the next visit, or the exit.
        completed = len(j.visits) if j.exit_reason else len(j.visits) - 1
        stays.update((j.visits[i], j.minutes[i]) for i in range(completed))
        last = j.visits[-1]
        now[(last, "exited" if j.exit_reason else "active", j.exit_reason)] += 1
    return Rows(
        stage_counts=[StageCount(funnel, s, status, r, n) for (s, status, r), n in now.items()],
        reached=[Reached(funnel, s, n) for s, n in reached.items()],
        followed=[Followed(funnel, a, b, n) for (a, b), n in followed.items()],
        stays=[Stays(funnel, s, m, n) for (s, m), n in stays.items()],
    )


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 20)), max_size=30), st.floats(0.01, 1.0))
def test_percentile_is_the_nearest_rank_of_the_values_spelled_out(histogram: list[tuple[int, int]], q: float) -> None:
    values = sorted(v for v, n in histogram for _ in range(n))
    expected = values[max(1, math.ceil(q * len(values))) - 1] if values else None
    assert percentile(histogram, q) == expected


@given(journeys)
def test_stage_figures_agree_with_the_journeys(leads: list[Journey]) -> None:
    reports = build(counted("f", leads), {"f": LAYOUT})
    if not leads:
        assert reports == []
        return
    (report,) = reports
    assert report.leads == len(leads)
    assert sum(s.now for s in report.stages) + sum(report.exited.values()) == len(leads)
    assert report.active == sum(1 for j in leads if j.exit_reason is None)
    assert [s.stage for s in report.stages] == list(STAGES)
    for s in report.stages:
        entered = [j for j in leads if s.stage in j.visits]
        assert s.reached == len(entered)
        assert s.now <= s.reached
        if s.conversion is not None:
            assert 0 <= s.conversion <= 1
            nxt = s.next_stage
            later = [j for j in entered if nxt in j.visits and j.visits.index(nxt) > j.visits.index(s.stage)]
            assert s.conversion == len(later) / len(entered)
        if s.stays:
            assert s.median_minutes is not None and s.p90_minutes is not None
            assert 0 <= s.median_minutes <= s.p90_minutes
        else:
            assert s.median_minutes is None


@given(
    st.dictionaries(
        st.sampled_from(("welcome", "nudge", "invite")),
        st.dictionaries(st.sampled_from(OUTBOX_STATUSES), st.integers(1, 50), min_size=1),
        min_size=1,
    ),
    st.integers(0, 50),
)
def test_email_figures_account_for_every_message(by_step: dict[str, dict[str, int]], opens: int) -> None:
    rows = Rows(
        stage_counts=[StageCount("f", "inquiry", "active", None, 1)],
        email_statuses=[
            EmailStatus("f", step, f"t/{step}", status, n) for step, c in by_step.items() for status, n in c.items()
        ],
        engagement=[Engagement("f", step, "opened", opens) for step in by_step]
        + [Engagement("f", "not-an-email-here", "clicked", 3), Engagement("other", "welcome", "clicked", 9)],
    )
    (report,) = build(rows, {"f": LAYOUT})
    assert [e.step for e in report.emails] == [s for s in LAYOUT.emails if s in by_step]
    for e in report.emails:
        c = Counter(by_step[e.step])
        assert e.sent == e.delivered + e.bounced + e.unknown + c["sending"]
        assert e.sent + e.failed + e.waiting + e.skipped == sum(c.values())
        assert e.delivered == c["sent"]
        assert (e.opened, e.clicked) == (opens, 0)
        assert e.rate(e.opened) == (opens / e.delivered if e.delivered else None)


@given(st.permutations([("t/a", "sent", 5), ("t/b", "sent", 3), ("t/b", "failed", 1), ("t/c", "sent", 4)]))
def test_a_step_sending_several_templates_names_the_most_used_whatever_the_rows_order(
    order: list[tuple[str, str, int]],
) -> None:
    """An experiment's arms may send different templates from one step; the rows come in the database's
    order, which changes when retention rolls some of them up."""
    rows = Rows(
        stage_counts=[StageCount("f", "inquiry", "active", None, 1)],
        email_statuses=[EmailStatus("f", "welcome", t, status, n) for t, status, n in order],
    )
    (report,) = build(rows, {"f": LAYOUT})
    assert [(e.step, e.template, e.delivered) for e in report.emails] == [("welcome", "t/a", 12)]


def test_stages_the_definition_no_longer_has_come_after_its_own() -> None:
    rows = Rows(
        stage_counts=[StageCount("f", "retired", "active", None, 2), StageCount("f", "inquiry", "active", None, 1)],
        reached=[Reached("f", "retired", 2), Reached("f", "inquiry", 3)],
    )
    (report,) = build(rows, {"f": Layout(stages=("inquiry", "comparison"))})
    assert [s.stage for s in report.stages] == ["inquiry", "comparison", "retired"]
    assert [s.now for s in report.stages] == [1, 0, 2]


def test_funnels_come_in_id_order_and_without_a_layout_in_the_data_order() -> None:
    rows = Rows(stage_counts=[StageCount("b", "x", "active", None, 1), StageCount("a", "y", "exited", "done", 4)])
    a, b = build(rows, {})
    assert (a.funnel, a.leads, a.active, dict(a.exited)) == ("a", 4, 0, {"done": 4})
    assert (b.funnel, [s.stage for s in b.stages]) == ("b", ["x"])


def test_csv_has_one_row_per_figure() -> None:
    rows = Rows(
        stage_counts=[
            StageCount("f", "inquiry", "active", None, 2),
            StageCount("f", "inquiry", "exited", "no-reply", 1),
        ],
        reached=[Reached("f", "inquiry", 3)],
        stays=[Stays("f", "inquiry", 90, 1)],
        email_statuses=[EmailStatus("f", "welcome", "t/welcome", "sent", 3)],
    )
    (report,) = build(rows, {"f": LAYOUT})
    table = {(section, item, figure): value for _, section, item, figure, value in csv_rows(report)}
    assert table[("funnel", "f", "leads")] == 3
    assert table[("exit", "no-reply", "leads")] == 1
    assert table[("stage", "inquiry", "median_minutes")] == 90
    assert table[("stage", "onboarding", "median_minutes")] == ""
    assert table[("email", "welcome", "delivered")] == 3
