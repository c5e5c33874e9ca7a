"""Experiments: does the winner test keep its promises when the engine looks at it every tick?

    python benchmarks/experiments.py [--experiments 1000] [--baseline 0.10] [--lift 0.02] [--alpha 0.05]
                                     [--power 0.8] [--batch 100] [--seed 20261205]

Simulates `--experiments` A/A experiments (both arms convert at `--baseline`) and as many A/B experiments
(the second arm converts at baseline + `--lift`) on the pure core (engine.core.experiment_stats), with the
horizon the method plans for that lift and power. Leads arrive in batches of `--batch`, each assigned to an
arm with probability 1/2 (as the assignment hash does) and converting at its arm's rate; after every batch
the experiment is looked at as a tick would (`decide` on the counts so far) until it decides, as the engine
does, and the first decision is kept. Counts per batch are binomial draws, not leads one by one.

Prints a table and, as its last line, one JSON object: `aa_false_positive_rate` (A/A experiments that named a
winner), `ab_power` (A/B experiments that named the better arm), `predicted_power` (the method's formula at
the mean leads per arm the test ran on, a little past the horizon; `planned_power` at the horizon itself),
`alpha`, `experiments`, `elapsed_s`, and `problems`: the false positive rate above alpha by more than 3
standard errors of a binomial proportion at that many experiments, or the power that far from the
prediction. For contrast, `naive_false_positive_rate`: the same A/A experiments judged by a z-test at every
look from the minimum per arm on, the repeated test the method avoids.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.core.experiment_stats import ArmCounts, Rule, decide, planned_per_arm, power, two_proportion_z

SIGMAS = 3.0  # how far a measured rate may stray from its expectation: standard errors of a binomial proportion


def binomial(rng: random.Random, n: int, p: float) -> int:
    """A Binomial(n, p) draw by counting geometric waiting times (exact; about n * min(p, 1 - p) steps)."""
    if p <= 0 or n == 0:
        return 0
    if p >= 1:
        return n
    if p > 0.5:
        return n - binomial(rng, n, 1 - p)
    log_q = math.log1p(-p)
    count, position = 0, 0
    while True:
        position += int(math.log(1.0 - rng.random()) / log_q) + 1
        if position > n:
            return count
        count += 1


@dataclass(frozen=True)
class Outcome:
    decided: str  # winner or no_winner
    winner: str | None
    leads_per_arm: float  # the mean of the arms' leads at the decision (the look after the horizon)
    naive_winner: bool  # a z-test at p < alpha at any look from the minimum on would have named one
    looks: int


def run_experiment(rng: random.Random, rates: tuple[float, float], rule: Rule, batch: int) -> Outcome:
    leads = [0, 0]
    conversions = [0, 0]
    naive = False
    z_crit = -_inv(rule.alpha / 2)
    looks = 0
    while True:
        first = binomial(rng, batch, 0.5)
        for arm, arrived in enumerate((first, batch - first)):
            leads[arm] += arrived
            conversions[arm] += binomial(rng, arrived, rates[arm])
        looks += 1
        counts = [ArmCounts("a", leads[0], conversions[0]), ArmCounts("b", leads[1], conversions[1])]
        decision = decide(counts, "a", rule)
        if decision.state == "running" and not naive:
            naive = abs(two_proportion_z(conversions[0], leads[0], conversions[1], leads[1])) > z_crit
        if decision.state in ("winner", "no_winner"):
            naive = naive or decision.state == "winner"
            return Outcome(decision.state, decision.winner, (leads[0] + leads[1]) / 2, naive, looks)


def _inv(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def tolerance(rate: float, experiments: int) -> float:
    return SIGMAS * math.sqrt(rate * (1 - rate) / experiments)


def check(report: dict[str, float]) -> list[str]:
    """What `benchmarks/run` calls wrong: the false positive rate or the power outside their sampling error."""
    n, alpha = int(report["experiments"]), report["alpha"]
    fpr, measured, predicted = report["aa_false_positive_rate"], report["ab_power"], report["predicted_power"]
    out = []
    if fpr > alpha + tolerance(alpha, n):
        out.append(f"A/A false positive rate {fpr:.4f} above alpha {alpha:g} by more than {SIGMAS:g} standard errors")
    if abs(measured - predicted) > tolerance(predicted, n):
        out.append(f"A/B power {measured:.4f} more than {SIGMAS:g} standard errors from the predicted {predicted:.4f}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000, help="A/A experiments, and as many A/B ones.")
    parser.add_argument("--baseline", type=float, default=0.10, help="The control's conversion rate.")
    parser.add_argument("--lift", type=float, default=0.02, help="The B arm's absolute lift in the A/B experiments.")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--power", type=float, default=0.8, help="The power the horizon is planned for.")
    parser.add_argument("--batch", type=int, default=100, help="Leads between two looks.")
    parser.add_argument("--seed", type=int, default=20261205)
    args = parser.parse_args()

    horizon = planned_per_arm(args.baseline, args.lift, args.alpha, args.power)
    rule = Rule(alpha=args.alpha, min_per_arm=max(1, horizon // 10), planned_per_arm=horizon)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    aa = [run_experiment(rng, (args.baseline, args.baseline), rule, args.batch) for _ in range(args.experiments)]
    ab = [
        run_experiment(rng, (args.baseline, args.baseline + args.lift), rule, args.batch)
        for _ in range(args.experiments)
    ]
    elapsed = time.perf_counter() - started
    n = args.experiments
    # The first look past the horizon finds each arm a little past it (a batch arrives at once, and the split
    # is random): the power the formula predicts is at the leads the test actually ran on.
    tested = sum(o.leads_per_arm for o in ab) / n
    report = {
        "aa_false_positive_rate": sum(o.decided == "winner" for o in aa) / n,
        "ab_power": sum(o.winner == "b" for o in ab) / n,
        "predicted_power": round(power(args.baseline, args.lift, round(tested), args.alpha), 4),
        "planned_power": round(power(args.baseline, args.lift, horizon, args.alpha), 4),
        "alpha": args.alpha,
        "experiments": n,
        "elapsed_s": round(elapsed, 2),
        "naive_false_positive_rate": sum(o.naive_winner for o in aa) / n,
        "ab_wrong_winner_rate": sum(o.winner == "a" for o in ab) / n,
        "horizon_per_arm": horizon,
        "tested_per_arm": round(tested, 1),
        "min_per_arm": rule.min_per_arm,
        "baseline": args.baseline,
        "lift": args.lift,
        "batch": args.batch,
        "mean_looks": round(sum(o.looks for o in aa + ab) / (2 * n), 1),
        "seed": args.seed,
    }
    report["problems"] = check(report)
    tol_fp, tol_power = tolerance(args.alpha, n), tolerance(report["predicted_power"], n)
    print(f"{n:,} A/A and {n:,} A/B experiments, {report['mean_looks']} looks each on average, {elapsed:.1f} s")
    print(f"horizon {horizon:,} leads per arm (baseline {args.baseline:g}, lift {args.lift:+g}, power {args.power:g})")
    print(f"A/A false positive rate  {report['aa_false_positive_rate']:.4f}  (alpha {args.alpha:g} + {tol_fp:.4f})")
    print(
        f"A/B power                {report['ab_power']:.4f}  (predicted {report['predicted_power']:.4f} "
        f"± {tol_power:.4f} at {tested:,.0f} leads per arm; {report['planned_power']:.4f} at the horizon)"
    )
    print(f"naive repeated z-test    {report['naive_false_positive_rate']:.4f}  (what looking every tick would give)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
