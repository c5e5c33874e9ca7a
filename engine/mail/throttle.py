"""Sending rate limits: one for all mail, one per recipient domain, and a pause for a domain whose
server asked us to slow down. In-process and in real (monotonic) time: each worker paces its own
connections; with several workers, give each a share of the relay's limits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# The longest a throttling reply holds a whole domain.
MAX_PAUSE_S = 300.0


@dataclass(slots=True)
class Pace:
    """A generic cell-rate limiter: `rate` per second with a burst of one second's worth."""

    rate: float
    tat: float = 0.0  # the theoretical arrival time of the next message

    @property
    def interval(self) -> float:
        return 1.0 / self.rate

    @property
    def burst(self) -> float:
        return max(self.rate - 1.0, 0.0) * self.interval

    def wait(self, now: float) -> float:
        return max(0.0, max(self.tat, now) - now - self.burst)

    def take(self, now: float) -> None:
        self.tat = max(self.tat, now) + self.interval


class Throttle:
    def __init__(
        self,
        rate_per_s: float,
        domain_rate_per_s: float | None = None,
        domain_rates: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.all = Pace(rate_per_s)
        self.domain_default = domain_rate_per_s
        self.domain_rates = {d.lower(): r for d, r in (domain_rates or {}).items()}
        self.domains: dict[str, Pace] = {}
        self.paused_until: dict[str, float] = {}

    def _domain(self, domain: str) -> Pace | None:
        pace = self.domains.get(domain)
        if pace is None:
            rate = self.domain_rates.get(domain, self.domain_default)
            if rate is None:
                return None
            pace = self.domains[domain] = Pace(rate)
        return pace

    def reserve(self, domain: str, patience: float) -> float | None:
        """Seconds to wait before sending to `domain`, with the slot taken; or None when the domain's own
        limit (or pause) would hold the connection longer than `patience`: then nothing is taken and the
        caller requeues the message, so one slow domain never stalls the connections for the others.
        The global pace is always waited for: every message is under it alike."""
        now = self.clock()
        domain = domain.lower()
        pace = self._domain(domain)
        own = max(pace.wait(now) if pace else 0.0, self.paused_until.get(domain, now) - now)
        if own > patience:
            return None
        wait = max(self.all.wait(now), own)
        at = now + wait
        self.all.take(at)
        if pace:
            pace.take(at)
        return wait

    def delay(self, domain: str) -> float:
        """How long until `domain` may get mail again, for a requeued message's next attempt."""
        now = self.clock()
        domain = domain.lower()
        pace = self._domain(domain)
        return max(self.all.wait(now), pace.wait(now) if pace else 0.0, self.paused_until.get(domain, now) - now)

    def pause(self, domain: str, seconds: float) -> None:
        """The domain's server answered with a throttling reply: hold everything for it a while. At most
        MAX_PAUSE_S: the refused message's own backoff grows to hours after many tries, but one slow
        message says nothing about the domain an hour from now."""
        domain = domain.lower()
        until = self.clock() + min(seconds, MAX_PAUSE_S)
        self.paused_until[domain] = max(self.paused_until.get(domain, 0.0), until)
