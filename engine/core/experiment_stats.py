"""How an experiment's winner is decided: a fixed-horizon two-proportion z-test, Holm-corrected over the
comparisons to the control. Pure: counts in, a decision out; no clock, no IO.

The engine looks at an experiment's counts every tick, so a test that decided whenever it crossed p < alpha
would be a repeated test and find a winner in an A/A test far more often than alpha says. Here nothing is
decided before every arm has reached the planned sample size (the horizon): below the minimum per arm the
state is `collecting`, between the minimum and the horizon `running`, and at the horizon the test is run
once: `winner` or `no_winner`. The engine records that first decision and keeps it (docs/experiments.md,
"How a winner is decided", gives the formulas and their references).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

_NORMAL = NormalDist()

State = Literal["collecting", "running", "winner", "no_winner"]


@dataclass(frozen=True)
class ArmCounts:
    """One arm's leads whose metric window has closed, and how many of them converted within it."""

    arm: str
    leads: int
    conversions: int

    @property
    def rate(self) -> float:
        return self.conversions / self.leads if self.leads else 0.0


@dataclass(frozen=True)
class Rule:
    """What the experiment's file states. `planned_per_arm`: the horizon, leads per arm at which the test
    runs (see `planned_per_arm`); the minimum per arm when absent."""

    alpha: float
    min_per_arm: int
    planned_per_arm: int | None = None

    @property
    def horizon(self) -> int:
        return max(self.min_per_arm, self.planned_per_arm or 0)


@dataclass(frozen=True)
class Comparison:
    """One arm against the control. `lift`: the difference of conversion rates (arm minus control), with
    its confidence interval `low`..`high` at 1 - alpha jointly over all the comparisons (Bonferroni);
    `relative_lift`: lift / control's rate (None when the control converted no one). `p_value`: the
    two-sided z-test's; `adjusted_p`: Holm's, compared with alpha."""

    arm: str
    rate: float
    control_rate: float
    lift: float
    low: float
    high: float
    relative_lift: float | None
    z: float
    p_value: float
    adjusted_p: float
    significant: bool


@dataclass(frozen=True)
class Decision:
    state: State
    winner: str | None
    comparisons: tuple[Comparison, ...]
    horizon: int
    reason: str


def z_quantile(p: float) -> float:
    return _NORMAL.inv_cdf(p)


def two_proportion_z(c1: int, n1: int, c2: int, n2: int) -> float:
    """The pooled two-proportion z statistic of arm 2 against arm 1 (0 when both rates are 0 or 1)."""
    pooled = (c1 + c2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return 0.0 if se == 0 else (c2 / n2 - c1 / n1) / se


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: reject where the adjusted p <= alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def planned_per_arm(baseline: float, mde: float, alpha: float, power: float, comparisons: int = 1) -> int:
    """Leads per arm for the test to detect an absolute lift `mde` over `baseline` with probability `power`
    (two-sided, at alpha / comparisons, as Bonferroni bounds Holm's first step; Fleiss et al. 2003, 4.2)."""
    _check_rates(baseline, mde)
    if not 0 < power < 1:
        raise ValueError(f"power: expected a probability such as 0.8, found {power:g}")
    p1, p2 = baseline, baseline + mde
    mean = (p1 + p2) / 2
    z_a = z_quantile(1 - _alpha(alpha) / (2 * comparisons))
    z_b = z_quantile(power)
    root = z_a * math.sqrt(2 * mean * (1 - mean)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root * root / (mde * mde))


def power(baseline: float, mde: float, per_arm: int, alpha: float, comparisons: int = 1) -> float:
    """The probability that the test at `per_arm` leads per arm finds a difference when the arm converts at
    baseline + mde: the inverse of `planned_per_arm` (both tails counted)."""
    _check_rates(baseline, mde)
    p1, p2 = baseline, baseline + mde
    mean = (p1 + p2) / 2
    z_a = z_quantile(1 - _alpha(alpha) / (2 * comparisons))
    null_sd = math.sqrt(2 * mean * (1 - mean) / per_arm)
    true_sd = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / per_arm)
    return _NORMAL.cdf((abs(mde) - z_a * null_sd) / true_sd) + _NORMAL.cdf((-abs(mde) - z_a * null_sd) / true_sd)


def decide(counts: Sequence[ArmCounts], control: str, rule: Rule) -> Decision:
    """The experiment's state now. Comparisons (with their intervals) are given from the minimum per arm on,
    for the report; only at the horizon do they decide."""
    _check(counts, control, rule)
    base = next(c for c in counts if c.arm == control)
    others = [c for c in counts if c.arm != control]
    horizon = rule.horizon
    short = [c for c in counts if c.leads < rule.min_per_arm]
    if short:
        fewest = min(short, key=lambda c: c.leads)
        reason = (
            f"collecting: {len(short)} arm(s) below the minimum of {rule.min_per_arm:,} leads per arm "
            f"({fewest.arm}: {fewest.leads:,})"
        )
        return Decision("collecting", None, (), horizon, reason)
    compared = _compare(base, others, rule.alpha)
    correction = _correction_words(len(others), rule.alpha)
    behind = [c for c in counts if c.leads < horizon]
    if behind:
        fewest = min(behind, key=lambda c: c.leads)
        reason = (
            f"running: the test runs once every arm has {horizon:,} leads ({fewest.arm}: {fewest.leads:,}); "
            f"looking earlier would not keep the false positive rate at {rule.alpha:g}{correction}"
        )
        return Decision("running", None, compared, horizon, reason)
    return _at_horizon(base, compared, horizon, rule.alpha, correction)


def _at_horizon(
    base: ArmCounts, compared: tuple[Comparison, ...], horizon: int, alpha: float, correction: str
) -> Decision:
    better = [c for c in compared if c.significant and c.lift > 0]
    if better:
        best = max(better, key=lambda c: c.rate)  # the first listed among equal rates
        reason = (
            f"winner: {best.arm} converts {best.rate:.2%} against {best.control_rate:.2%} for {base.arm} "
            f"(lift {best.lift:+.2%}, interval {best.low:+.2%} to {best.high:+.2%}, adjusted p = "
            f"{best.adjusted_p:.3g} <= {alpha:g}){correction}"
        )
        if len(better) > 1:
            reason += f"; {len(better)} arms beat the control, {best.arm} has the highest observed rate"
        return Decision("winner", best.arm, compared, horizon, reason)
    if all(c.significant and c.lift < 0 for c in compared):
        reason = f"winner: {base.arm} (the control) beats every other arm at adjusted p <= {alpha:g}{correction}"
        return Decision("winner", base.arm, compared, horizon, reason)
    closest = min(compared, key=lambda c: c.adjusted_p)
    reason = (
        f"no winner: every arm reached {horizon:,} leads and no difference from {base.arm} is significant at "
        f"{alpha:g} (the closest, {closest.arm}: lift {closest.lift:+.2%}, adjusted p = {closest.adjusted_p:.3g})"
        f"{correction}"
    )
    return Decision("no_winner", None, compared, horizon, reason)


def _compare(base: ArmCounts, others: Sequence[ArmCounts], alpha: float) -> tuple[Comparison, ...]:
    m = len(others)
    zs = [two_proportion_z(base.conversions, base.leads, c.conversions, c.leads) for c in others]
    p_values = [2 * _NORMAL.cdf(-abs(z)) for z in zs]
    adjusted = holm(p_values)
    z_ci = z_quantile(1 - alpha / (2 * m))
    out = []
    for c, z, p, adj in zip(others, zs, p_values, adjusted, strict=True):
        lift = c.rate - base.rate
        se = math.sqrt(c.rate * (1 - c.rate) / c.leads + base.rate * (1 - base.rate) / base.leads)
        relative = lift / base.rate if base.rate else None
        out.append(
            Comparison(c.arm, c.rate, base.rate, lift, lift - z_ci * se, lift + z_ci * se, relative, z, p, adj,
                       adj <= alpha)
        )  # fmt: skip
    return tuple(out)


def _correction_words(m: int, alpha: float) -> str:
    if m == 1:
        return ""
    return (
        f" ({m} comparisons to the control: p-values Holm-adjusted, intervals at {1 - alpha / m:.4g} each, "
        f"Bonferroni, so that all hold together at {1 - alpha:g})"
    )


def _alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a significance level between 0 and 1 such as 0.05, found {alpha:g}")
    return alpha


def _check_rates(baseline: float, mde: float) -> None:
    if not 0 < baseline < 1:
        raise ValueError(f"baseline: expected a conversion rate between 0 and 1 such as 0.1, found {baseline:g}")
    if mde == 0 or not 0 < baseline + mde < 1:
        raise ValueError(
            f"mde: expected a non-zero lift that keeps the rate between 0 and 1 (baseline {baseline:g}), found {mde:g}"
        )


def _check(counts: Sequence[ArmCounts], control: str, rule: Rule) -> None:
    _alpha(rule.alpha)
    if rule.min_per_arm < 1:
        raise ValueError(f"min_per_arm: expected at least 1 lead per arm, found {rule.min_per_arm}")
    names = [c.arm for c in counts]
    if len(counts) < 2:
        raise ValueError(f"counts: expected two or more arms, found {len(counts)}")
    if len(set(names)) != len(names):
        raise ValueError(f"counts: expected each arm once, found {', '.join(sorted(names))}")
    if control not in names:
        raise ValueError(f"control: expected one of the arms ({', '.join(names)}), found {control!r}")
    for c in counts:
        if c.leads < 0 or not 0 <= c.conversions <= c.leads:
            raise ValueError(
                f"counts of arm {c.arm!r}: expected 0 <= conversions <= leads, found {c.conversions} of {c.leads}"
            )
