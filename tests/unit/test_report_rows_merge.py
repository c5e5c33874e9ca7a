"""Rows of disjoint sets of leads, merged (`engine.core.report_rows.merged`): what retention's rollups
and the raw tables each count is added up as one query over both would have counted it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.core.report_rows import Engagement, ExitRow, Reached, Rows, Stays, entries, from_entries, merged

FUNNELS = st.sampled_from(["a", "b"])
STAGES = st.sampled_from(["inquiry", "comparison", "conversion"])
COUNT = st.integers(min_value=1, max_value=50)
rows = st.builds(
    Rows,
    reached=st.lists(st.builds(Reached, FUNNELS, STAGES, COUNT), max_size=6),
    stays=st.lists(st.builds(Stays, FUNNELS, STAGES, st.integers(0, 3), COUNT), max_size=6),
    engagement=st.lists(
        st.builds(Engagement, FUNNELS, st.sampled_from(["s1", "s2"]), st.just("opened"), COUNT), max_size=6
    ),
    losses=st.lists(
        st.builds(
            ExitRow,
            FUNNELS,
            STAGES,
            st.just("bounced"),
            st.just("bounce"),
            st.booleans(),
            st.none() | st.just("s1"),
            COUNT,
        ),
        max_size=4,
    ),
)


def totals(*parts: Rows) -> dict[tuple[object, ...], int]:
    found: dict[tuple[object, ...], int] = {}
    for part in parts:
        for kind, key, n in entries(part):
            found[(kind, *key)] = found.get((kind, *key), 0) + n
    return found


@given(rows, rows)
def test_merged_rows_add_the_counts_of_equal_groups(a: Rows, b: Rows) -> None:
    both = merged(a, b)
    assert totals(both) == totals(a, b)
    keys = [(kind, key) for kind, key, _ in entries(both)]
    assert len(keys) == len(set(keys))  # one row per group


@given(rows)
def test_entries_read_back_as_the_rows_they_came_from(a: Rows) -> None:
    back = from_entries(entries(a))
    for kind in ("stage_counts", "reached", "followed", "stays", "engagement", "losses", "exits"):
        assert list(getattr(back, kind)) == list(getattr(a, kind)), kind


def test_a_merge_with_nothing_is_the_rows_themselves() -> None:
    a = Rows(reached=[Reached("a", "inquiry", 3)], stays=[Stays("a", "inquiry", 5, 2), Stays("a", "inquiry", 5, 1)])
    assert merged(a, Rows()).reached == [Reached("a", "inquiry", 3)]
    assert merged(a, Rows()).stays == [Stays("a", "inquiry", 5, 3)]
