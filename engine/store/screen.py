"""Who may get which email now: consent and suppression first, then the timing rules across funnels.

Asked twice per message: when a batch is leased (so a capped or unwanted email never costs an SMTP
envelope) and again in the transaction that marks it `sending` (so an unsubscribe or another funnel's
email that landed in between still wins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from engine.core.localtime import zone
from engine.core.outbox_item import OutboxItem
from engine.core.signup import confirmation_of, may_confirm_to
from engine.core.timing import TimingRules, earliest_send
from engine.store import domain_alarms, outbox

GO = "go"


@dataclass(frozen=True, slots=True)
class Later:
    """Not now: requeue for `until`, without counting an attempt."""

    until: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Never:
    """Not to this lead (unsubscribed, bounced, erased ...): the message is skipped for good."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unsure:
    """The rules raised on this message's data (a lead's time zone that does not exist): the message
    spends an attempt, as a failed try does, and the others are judged as usual."""

    reason: str


Verdict = str | Later | Never | Unsure


def may_send(consent: str | None, suppressed: bool, transactional: bool, confirmation: bool = False) -> bool:
    """Marketing email needs a subscribed lead; a transactional one (the report the lead asked for) may
    also go to a lead whose opt-in is pending. A double opt-in confirmation may also go to a lead who
    unsubscribed or bounced: it keeps its opt-out until it follows the link, which is how it opts in
    again (the caller has checked that its suppression, if any, is a bounce). Never to a suppressed or
    complained one."""
    if suppressed or consent is None:
        return False
    if confirmation:
        return consent in ("subscribed", "pending", "unsubscribed", "bounced")
    return consent == "subscribed" or (transactional and consent == "pending")


class Screen:
    def __init__(
        self, rules: TimingRules, funnel_zones: Mapping[str, str], default_zone: str, pause_domains: bool = False
    ) -> None:
        self.rules = rules
        self.funnel_zones = funnel_zones
        self.default_zone = default_zone
        # `bounces.pause_domain_on_alarm`: marketing email to a domain in alarm waits for the alarm's end.
        self.pause_domains = pause_domains

    def zone_of(self, item: OutboxItem) -> str:
        return item.timezone or self.funnel_zones.get(item.funnel_id) or self.default_zone

    def judge(self, conn: sa.Connection, items: Sequence[OutboxItem], now: datetime, fresh: bool) -> list[Verdict]:
        """A verdict per item, in order. `fresh` reads consent from the database now (and locks the
        leads on PostgreSQL); otherwise the consent read with the lease is used."""
        if fresh:
            consent = outbox.consent_of(conn, {i.lead_id: i.email for i in items}, lock=self.rules.active)
        else:
            consent = {i.lead_id: (i.consent_status, i.suppressed) for i in items}
        marketing = [i.lead_id for i in items if not i.transactional]
        sent: dict[int, list[datetime]] = {}
        if self.rules.max_per_day is not None and marketing:
            # A local day is at most 26 hours long; two days back covers it in every zone.
            sent = outbox.marketing_sent_since(conn, marketing, now - timedelta(days=2))
        paused = domain_alarms.paused(conn, now) if self.pause_domains and marketing else {}
        lifting = self._bounce_confirmations(conn, items, consent)
        verdicts: list[Verdict] = []
        for item in items:
            try:
                if item.id in lifting:  # its suppression is a bounce, which this email's link lifts
                    verdicts.append(self._one(item, {item.lead_id: (consent[item.lead_id][0], False)}, sent, now))
                    continue
                verdicts.append(self._one(item, consent, sent, now, paused))
            except Exception as exc:
                text = " ".join(str(exc).split())
                verdicts.append(Unsure(f"screening: {type(exc).__name__}: {text}"))
        return verdicts

    def _one(
        self,
        item: OutboxItem,
        consent: Mapping[int, tuple[str, bool]],
        sent: dict[int, list[datetime]],
        now: datetime,
        paused: Mapping[str, datetime] | None = None,
    ) -> Verdict:
        status, suppressed = consent.get(item.lead_id, (None, True))
        confirmation = item.transactional and confirmation_of(item.funnel_id, item.step) is not None
        if not may_send(status, suppressed, item.transactional, confirmation):
            return Never("no-consent")
        if item.transactional:
            return GO
        domain = item.email.rpartition("@")[2].lower()
        if paused and domain in paused:
            return Later(paused[domain], domain_alarms.pause_reason(domain))
        if not self.rules.active:
            return GO
        history = sent.setdefault(item.lead_id, [])
        when = earliest_send(now, zone(self.zone_of(item)), self.rules, history)
        if when > now:
            return Later(when, self._why(now, item, history))
        # Two emails for one lead in one batch: the second sees the first as sent.
        history.append(now)
        return GO

    def _bounce_confirmations(
        self, conn: sa.Connection, items: Sequence[OutboxItem], consent: Mapping[int, tuple[str, bool]]
    ) -> set[int]:
        """The double opt-in confirmations among these whose address is suppressed for a bounce only:
        they may go (`may_confirm_to`). Rare, so the reasons are read only when there is one."""
        asked = [
            i for i in items
            if i.transactional and consent.get(i.lead_id, ("", True))[1] and confirmation_of(i.funnel_id, i.step)
        ]  # fmt: skip
        if not asked:
            return set()
        reasons = outbox.suppression_reasons(conn, [i.email for i in asked])
        return {i.id for i in asked if i.lead_id in consent and may_confirm_to(reasons.get(i.email))}

    def _why(self, now: datetime, item: OutboxItem, history: Sequence[datetime]) -> str:
        quiet_only = TimingRules(self.rules.quiet_start, self.rules.quiet_end, None)
        if earliest_send(now, zone(self.zone_of(item)), quiet_only, history) > now:
            return "quiet hours"
        return f"daily cap ({self.rules.max_per_day} a day)"
