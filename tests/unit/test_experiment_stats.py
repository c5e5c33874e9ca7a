"""The winner test of experiments (engine.core.experiment_stats): published worked examples, figures computed
here another way (the 2x2 table's chi-squared, exact binomial sums), and properties over any counts."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.experiment_stats import (
    ArmCounts,
    Rule,
    decide,
    holm,
    planned_per_arm,
    power,
    two_proportion_z,
)

# --------------------------------------------------------------------------------------------------
# Worked examples
# --------------------------------------------------------------------------------------------------


def test_textbook_two_proportion_z_test() -> None:
    # A textbook exercise: 140 of 200 against 255 of 340; pooled rate 395/540 = 0.7314815, standard error
    # 0.03949401, z = -1.266015 (its p-value there is read from a t table; the normal's is computed here
    # through erfc, not NormalDist).
    z = two_proportion_z(255, 340, 140, 200)
    assert z == pytest.approx(-1.266015, abs=1e-6)
    assert (140 / 200 - 255 / 340) / z == pytest.approx(0.03949401, abs=1e-8)
    decision = decide(arms((340, 255), (200, 140)), "a", Rule(alpha=0.05, min_per_arm=200))
    assert decision.state == "no_winner"
    assert decision.comparisons[0].p_value == pytest.approx(math.erfc(1.266015 / math.sqrt(2)), abs=1e-6)


@pytest.mark.parametrize(("c1", "n1", "c2", "n2"), [(140, 200, 255, 340), (28, 254, 36, 301), (5, 1000, 19, 1000)])
def test_z_squared_is_the_chi_squared_of_the_two_by_two_table(c1: int, n1: int, c2: int, n2: int) -> None:
    # Pearson's chi-squared without continuity correction, from the table's expected counts: another road
    # to the same statistic.
    table = [[c1, n1 - c1], [c2, n2 - c2]]
    rows, cols, total = [n1, n2], [c1 + c2, n1 + n2 - c1 - c2], n1 + n2
    chi2 = sum(
        (table[i][j] - rows[i] * cols[j] / total) ** 2 / (rows[i] * cols[j] / total) for i in range(2) for j in range(2)
    )
    assert two_proportion_z(c1, n1, c2, n2) ** 2 == pytest.approx(chi2, rel=1e-12)


def test_sample_size_and_power_match_r_power_prop_test() -> None:
    # R's documented examples of power.prop.test: p1 = 0.50, p2 = 0.75 at alpha 0.05 need n = 76.7 per group
    # for power 0.90, and n = 50 gives power 0.740.
    assert planned_per_arm(0.50, 0.25, 0.05, 0.90) == 77
    assert power(0.50, 0.25, 50, 0.05) == pytest.approx(0.740, abs=5e-4)


@pytest.mark.parametrize(("baseline", "mde", "target"), [(0.10, 0.02, 0.8), (0.30, -0.05, 0.9), (0.02, 0.01, 0.8)])
def test_planned_size_is_the_smallest_with_the_power(baseline: float, mde: float, target: float) -> None:
    n = planned_per_arm(baseline, mde, 0.05, target)
    assert power(baseline, mde, n, 0.05) >= target > power(baseline, mde, n - 1, 0.05)
    # Three comparisons to the control plan at alpha / 3: more leads.
    assert planned_per_arm(baseline, mde, 0.05, target, comparisons=3) > n


def _exact_power(p1: float, p2: float, n: int, alpha: float) -> float:
    """The z-test's power summed over every outcome of two Binomial(n, p) arms, no approximation."""
    crit = NormalDist().inv_cdf(1 - alpha / 2)
    pmf1 = [math.comb(n, k) * p1**k * (1 - p1) ** (n - k) for k in range(n + 1)]
    pmf2 = [math.comb(n, k) * p2**k * (1 - p2) ** (n - k) for k in range(n + 1)]
    return sum(
        a * b for i, a in enumerate(pmf1) for j, b in enumerate(pmf2) if abs(two_proportion_z(i, n, j, n)) > crit
    )


@pytest.mark.parametrize(("p1", "p2", "n"), [(0.3, 0.45, 150), (0.1, 0.2, 200), (0.5, 0.5, 120)])
def test_power_formula_against_exact_binomial_sums(p1: float, p2: float, n: int) -> None:
    exact = _exact_power(p1, p2, n, 0.05)
    if p1 == p2:
        # No difference: the "power" is the false positive rate, which must be about alpha.
        assert exact == pytest.approx(0.05, abs=0.01)
    else:
        assert power(p1, p2 - p1, n, 0.05) == pytest.approx(exact, abs=0.02)


def test_interval_matches_newcombes_worked_example() -> None:
    # Newcombe 1998, "Interval estimation for the difference between independent proportions", Statistics in
    # Medicine 17:873-890, example (a): 56/70 against 48/80, the simple asymptotic (Wald) 95 % interval for
    # the difference is 0.0575 to 0.3425.
    (c,) = decide(arms((80, 48), (70, 56)), "a", Rule(alpha=0.05, min_per_arm=70)).comparisons
    assert c.lift == pytest.approx(0.2)
    assert (round(c.low, 4), round(c.high, 4)) == (0.0575, 0.3425)


def test_holm_matches_the_step_down_worked_example() -> None:
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 is 0.02, 0.03, 0.06, 0.04; made monotone: 0.06 for both
    # last ones (R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") gives 0.03 0.06 0.06 0.02).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.9]) == [0.9]
    assert holm([0.6, 0.7]) == [1.0, 1.0]


# --------------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------------

RULE = Rule(alpha=0.05, min_per_arm=100, planned_per_arm=1000)


def arms(*pairs: tuple[int, int]) -> list[ArmCounts]:
    return [ArmCounts(name, leads, conv) for name, (leads, conv) in zip("abcdefgh", pairs, strict=False)]


def test_states_in_turn() -> None:
    collecting = decide(arms((99, 10), (500, 90)), "a", RULE)
    assert collecting.state == "collecting" and collecting.winner is None and not collecting.comparisons
    assert "a: 99" in collecting.reason and "100" in collecting.reason
    running = decide(arms((999, 100), (1000, 200)), "a", RULE)
    assert running.state == "running" and running.winner is None
    assert running.comparisons[0].p_value < 1e-6  # shown, but not a decision before the horizon
    assert "1,000 leads" in running.reason
    won = decide(arms((1000, 100), (1000, 130)), "a", RULE)
    assert won.state == "winner" and won.winner == "b"
    assert "winner: b converts 13.00% against 10.00% for a" in won.reason
    lost = decide(arms((1000, 100), (1000, 110)), "a", RULE)
    assert lost.state == "no_winner" and lost.winner is None and "no winner" in lost.reason


def test_lift_and_its_interval() -> None:
    (c,) = decide(arms((1000, 100), (1000, 130)), "a", RULE).comparisons
    assert c.lift == pytest.approx(0.03) and c.relative_lift == pytest.approx(0.3)
    half = 1.959964 * math.sqrt(0.13 * 0.87 / 1000 + 0.1 * 0.9 / 1000)
    assert (c.low, c.high) == pytest.approx((0.03 - half, 0.03 + half), abs=1e-6)
    assert c.p_value == pytest.approx(math.erfc(abs(c.z) / math.sqrt(2)))


def test_more_arms_are_corrected_for_and_say_so() -> None:
    # b alone against a: p = 0.035, a winner; with a third arm the same b is not (Holm: 0.071).
    three = decide(arms((1000, 100), (1000, 130), (1000, 105)), "a", RULE)
    assert three.state == "no_winner"
    b = three.comparisons[0]
    assert b.adjusted_p == pytest.approx(2 * b.p_value) and not b.significant
    assert "2 comparisons to the control" in three.reason and "Holm" in three.reason and "Bonferroni" in three.reason
    # Its interval is wider: at 1 - 0.05 / 2.
    half = NormalDist().inv_cdf(1 - 0.05 / 4) * math.sqrt(0.13 * 0.87 / 1000 + 0.1 * 0.9 / 1000)
    assert b.high - b.lift == pytest.approx(half)


def test_control_wins_when_every_arm_is_worse() -> None:
    decision = decide(arms((1000, 150), (1000, 100), (1000, 90)), "a", RULE)
    assert decision.state == "winner" and decision.winner == "a" and "the control" in decision.reason


def test_the_best_of_several_significant_arms_wins() -> None:
    decision = decide(arms((1000, 100), (1000, 160), (1000, 180)), "a", RULE)
    assert decision.winner == "c" and "2 arms beat the control" in decision.reason


@pytest.mark.parametrize(
    ("counts", "control", "rule", "said"),
    [
        (arms((10, 1)), "a", RULE, "two or more arms"),
        (arms((10, 1), (10, 2)), "z", RULE, "control: expected one of the arms (a, b), found 'z'"),
        (arms((10, 11), (10, 2)), "a", RULE, "counts of arm 'a': expected 0 <= conversions <= leads, found 11 of 10"),
        ([ArmCounts("a", 10, 1), ArmCounts("a", 10, 1)], "a", RULE, "each arm once"),
        (arms((10, 1), (10, 2)), "a", Rule(alpha=1.5, min_per_arm=10), "alpha: expected a significance level"),
        (arms((10, 1), (10, 2)), "a", Rule(alpha=0.05, min_per_arm=0), "min_per_arm: expected at least 1"),
    ],
)
def test_bad_input_is_named(counts: list[ArmCounts], control: str, rule: Rule, said: str) -> None:
    with pytest.raises(ValueError, match=said.replace("(", r"\(").replace(")", r"\)")):
        decide(counts, control, rule)


def test_bad_planning_input_is_named() -> None:
    with pytest.raises(ValueError, match="baseline: expected a conversion rate"):
        planned_per_arm(0, 0.01, 0.05, 0.8)
    with pytest.raises(ValueError, match="mde: expected a non-zero lift"):
        planned_per_arm(0.1, 0.95, 0.05, 0.8)
    with pytest.raises(ValueError, match="power: expected a probability"):
        planned_per_arm(0.1, 0.01, 0.05, 1.0)


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------


@st.composite
def experiments(draw: st.DrawFn, min_arms: int = 2) -> tuple[list[ArmCounts], Rule]:
    minimum = draw(st.integers(1, 400))
    rule = Rule(
        alpha=draw(st.sampled_from([0.01, 0.05, 0.1])),
        min_per_arm=minimum,
        planned_per_arm=draw(st.none() | st.integers(minimum, 1500)),
    )
    k = draw(st.integers(min_arms, 5))
    counts = []
    for name in "abcde"[:k]:
        leads = draw(st.integers(0, 2000))
        counts.append(ArmCounts(name, leads, draw(st.integers(0, leads))))
    return counts, rule


@given(experiments())
@settings(max_examples=300, deadline=None)
def test_never_a_winner_before_every_arm_reached_the_horizon(case: tuple[list[ArmCounts], Rule]) -> None:
    counts, rule = case
    decision = decide(counts, "a", rule)
    fewest = min(c.leads for c in counts)
    if fewest < rule.min_per_arm:
        assert decision.state == "collecting"
    if fewest < rule.horizon:
        assert decision.state in ("collecting", "running") and decision.winner is None
    else:
        assert decision.state in ("winner", "no_winner")
    assert (decision.winner is not None) == (decision.state == "winner")


@given(st.integers(1, 5000), st.data(), st.integers(2, 5), st.sampled_from([0.01, 0.05, 0.1]))
@settings(max_examples=200, deadline=None)
def test_equal_arms_give_no_winner(leads: int, data: st.DataObject, k: int, alpha: float) -> None:
    conversions = data.draw(st.integers(0, leads))
    counts = [ArmCounts(name, leads, conversions) for name in "abcde"[:k]]
    decision = decide(counts, "a", Rule(alpha=alpha, min_per_arm=1))
    assert decision.state == "no_winner"
    assert all(c.lift == 0 and c.p_value == pytest.approx(1.0) for c in decision.comparisons)


@given(experiments())
@settings(max_examples=300, deadline=None)
def test_swapping_two_arms_swaps_the_answer(case: tuple[list[ArmCounts], Rule]) -> None:
    counts, rule = case
    a, b = counts[0], counts[1]
    decision = decide(counts[:2], "a", rule)
    swapped = decide([ArmCounts("a", b.leads, b.conversions), ArmCounts("b", a.leads, a.conversions)], "a", rule)
    assert swapped.state == decision.state
    assert swapped.winner == {"a": "b", "b": "a", None: None}[decision.winner]
    if decision.comparisons:
        assert swapped.comparisons[0].z == pytest.approx(-decision.comparisons[0].z)


@given(experiments(min_arms=3), st.data())
@settings(max_examples=200, deadline=None)
def test_reordering_the_other_arms_moves_the_winner_with_its_data(
    case: tuple[list[ArmCounts], Rule], data: st.DataObject
) -> None:
    counts, rule = case
    others = data.draw(st.permutations(counts[1:]))
    renamed = [counts[0], *(ArmCounts(c.arm, o.leads, o.conversions) for c, o in zip(counts[1:], others, strict=True))]
    first, second = decide(counts, "a", rule), decide(renamed, "a", rule)
    assert first.state == second.state
    if first.winner is not None and second.winner is not None:
        was = next(c for c in counts if c.arm == first.winner)
        now = next(c for c in renamed if c.arm == second.winner)
        assert was.rate == now.rate  # the same data wins (among equal rates, the first listed)


@given(experiments(), st.integers(2, 20))
@settings(max_examples=300, deadline=None)
def test_more_data_at_the_same_rates_keeps_a_winner(case: tuple[list[ArmCounts], Rule], k: int) -> None:
    counts, rule = case
    decision = decide(counts, "a", rule)
    more = decide([ArmCounts(c.arm, c.leads * k, c.conversions * k) for c in counts], "a", rule)
    if decision.state == "winner":
        assert more.state == "winner"
        if len(counts) == 2 or decision.winner == "a":
            assert more.winner == decision.winner


def _binomial(rng: random.Random, n: int, p: float) -> int:
    """Binomial(n, p) for p <= 0.5, by counting geometric waiting times between conversions."""
    log_q, count, position = math.log1p(-p), 0, 0
    while True:
        position += int(math.log(1.0 - rng.random()) / log_q) + 1
        if position > n:
            return count
        count += 1


def test_four_identical_arms_name_a_winner_at_most_alpha_of_the_time() -> None:
    """1,000 A/A/A/A experiments at their horizon: Holm keeps the chance of any winner at alpha over the three
    comparisons; the raw p-values would name one more than twice as often."""
    rng = random.Random(4)
    rule = Rule(alpha=0.05, min_per_arm=2000)
    runs, any_winner, uncorrected = 1000, 0, 0
    for _ in range(runs):
        counts = [ArmCounts(arm, 2000, _binomial(rng, 2000, 0.1)) for arm in "abcd"]
        decision = decide(counts, "a", rule)
        any_winner += decision.state == "winner"
        uncorrected += any(c.p_value <= 0.05 for c in decision.comparisons)
    limit = 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert any_winner / runs <= limit < uncorrected / runs
