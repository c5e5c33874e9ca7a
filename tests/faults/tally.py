"""What a fault scenario ends with, counted the same way by every scenario.

A scenario knows which emails it expected (recipient, "funnel/step"), what the SMTP server received, and
what the outbox says. From those three:
- delivered: copies the server accepted;
- duplicated: copies beyond the first of one expected email;
- lost: expected emails that were neither delivered once with the outbox saying `sent`, nor left `unknown`
  (an SMTP outcome nobody can know, reported to ops and never resent: invariant 3);
- unknown: outbox rows left `unknown` (each delivered at most once).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

Key = tuple[str, str]  # (recipient, "funnel/step")


@dataclass
class Tally:
    scenario: str
    faults: int = 0
    leads: int = 0
    expected: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    unknown: int = 0
    strays: int = 0  # emails nobody expected: sent after an unsubscribe, or to the wrong lead
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def clean(self) -> bool:
        return self.duplicated == 0 and self.lost == 0 and self.strays == 0


def count(
    scenario: str,
    *,
    faults: int,
    leads: int,
    expected: Iterable[Key],
    received: Counter[Key],
    outbox: Mapping[Key, str],
) -> Tally:
    """`outbox` maps each email's key to its final status (`sent`, `unknown`, `failed`, ...)."""
    wanted = set(expected)
    unknown = {k for k, status in outbox.items() if status == "unknown"}
    lost = [k for k in wanted if k not in unknown and not (outbox.get(k) == "sent" and received[k] >= 1)]
    return Tally(
        scenario=scenario,
        faults=faults,
        leads=leads,
        expected=len(wanted),
        delivered=sum(received[k] for k in wanted),
        duplicated=sum(n - 1 for k, n in received.items() if n > 1),
        lost=len(lost),
        unknown=len(unknown),
        strays=sum(n for k, n in received.items() if k not in wanted),
    )
