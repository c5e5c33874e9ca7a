"""Rate limits in virtual time: the global pace, per-domain paces, pauses, and requeue past patience."""

from __future__ import annotations

from engine.mail.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _drain(throttle: Throttle, clock: Clock, domain: str, count: int) -> list[float]:
    """Send `count` messages as fast as the throttle allows; the instants they go out."""
    times = []
    for _ in range(count):
        wait = throttle.reserve(domain, patience=60)
        assert wait is not None
        clock.t += wait
        times.append(clock.t)
    return times


def test_the_global_rate_holds_over_time_after_a_one_second_burst() -> None:
    clock = Clock()
    throttle = Throttle(10, clock=clock)
    times = _drain(throttle, clock, "a.example", 60)
    assert times[9] - 1000.0 < 1e-9  # a second's worth goes at once
    assert times[10] - 1000.0 > 0.05
    span = times[-1] - times[0]
    assert 4.9 <= span <= 5.1  # the other 50 at 10/s


def test_a_domain_limit_is_slower_than_the_global_one_and_only_for_that_domain() -> None:
    clock = Clock()
    throttle = Throttle(1000, domain_rates={"Gmail.com": 2})
    throttle.clock = clock
    gmail = _drain(throttle, clock, "gmail.com", 12)
    assert 4.9 <= gmail[-1] - gmail[0] <= 5.1
    # Another domain is not held back by gmail's pace.
    assert throttle.reserve("example.org", patience=0) == 0


def test_past_patience_nothing_is_taken_and_the_delay_says_when() -> None:
    clock = Clock()
    throttle = Throttle(100, domain_rates={"a.example": 1}, clock=clock)
    assert throttle.reserve("a.example", patience=0) == 0
    assert throttle.reserve("a.example", patience=0.5) is None  # next slot in 1 s
    assert 0.99 <= throttle.delay("a.example") <= 1.0
    clock.t += 1
    assert throttle.reserve("a.example", patience=0) == 0


def test_the_global_pace_is_waited_for_whatever_the_patience() -> None:
    clock = Clock()
    throttle = Throttle(1, clock=clock)
    assert throttle.reserve("a.example", patience=0) == 0
    assert throttle.reserve("b.example", patience=0) == 1.0


def test_a_paused_domain_waits_while_others_go() -> None:
    clock = Clock()
    throttle = Throttle(1000, clock=clock)
    throttle.pause("slow.example", 120)
    assert throttle.reserve("slow.example", patience=5) is None
    assert 119 <= throttle.delay("SLOW.example") <= 120
    assert throttle.reserve("fast.example", patience=0) == 0
    clock.t += 121
    assert throttle.reserve("slow.example", patience=0) == 0


def test_a_pause_holds_the_domain_five_minutes_at_most_whatever_the_message_s_backoff() -> None:
    clock = Clock()
    throttle = Throttle(1000, clock=clock)
    throttle.pause("slow.example", 6 * 3600)  # a message on its twelfth try
    assert 299 <= throttle.delay("slow.example") <= 300
    throttle.pause("slow.example", 10)  # a shorter pause never cuts a longer one short
    assert 299 <= throttle.delay("slow.example") <= 300
