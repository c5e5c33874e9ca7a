"""Handing one raw message to the `Intake`, for the ways in that hold it for someone else (the LMTP
receiver for its MTA, the mailbox poller for the mailbox): whatever goes wrong there, the message is
kept where it is for another try, and the failure is said as an outage (invariant 17), not a line per
message."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from engine.core.bounce_outcome import Intake, Verdict
from engine.runtime.outages import Outage, Say

log = logging.getLogger("engine.bounce_handover")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Handover:
    """`await handover(raw)`: the intake's verdict for `source`, RETRY when it raised."""

    def __init__(self, intake: Intake, source: str, retrying: str, clock: Callable[[], datetime] = utc_now) -> None:
        self.intake = intake
        self.source = source
        self.clock = clock
        self.outage = Outage("bounce intake", retrying)

    async def __call__(self, raw: bytes) -> Verdict:
        try:
            verdict = await self.intake(raw, self.source)
        except Exception as exc:
            # A bug or a lost database must not cost a report: an MTA told 5xx, or a mailbox message
            # removed, would lose it, since nobody bounces a bounce. It stays where it is.
            self._say(self.outage.failed(f"bounce intake failed: {type(exc).__name__}: {exc}", self.clock()))
            log.debug("bounce intake failure", exc_info=exc)
            return Verdict.RETRY
        if verdict is Verdict.RETRY:
            self._say(self.outage.failed("bounce intake cannot record reports now", self.clock()))
        else:
            self._say(self.outage.recovered(self.clock()))
        return verdict

    def _say(self, line: Say | None) -> None:
        if line is not None:
            log.log(line.level, "%s", line.text)
