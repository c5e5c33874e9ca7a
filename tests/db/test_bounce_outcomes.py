"""What reports do to messages and leads, on SQLite and PostgreSQL: a dead address is suppressed, a
full mailbox counts as soft until it happens too often, the sender's fault never costs a lead, a
complaint opts out and tells the funnels; what matches nothing is kept; a report twice is once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from engine.core.bounce_outcome import (
    ADDRESS_GONE,
    COMPLAINT,
    MAILBOX_TROUBLE,
    NOT_FAILURE,
    SENDER_FAULT,
    Outcome,
)
from engine.settings import BounceSettings
from engine.store import leads as store
from engine.store import tables
from engine.store.bounces import record_outcomes, unknown

T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
RULES = BounceSettings(soft_limit=3, soft_window_days=7)


def sent(db: Engine, email: str, step: str = "s1", message_id: str | None = None) -> tuple[int, int]:
    """A lead and one message the relay took."""
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, email, now=T0)
        outbox_id = conn.execute(
            sa.insert(tables.outbox)
            .values(
                lead_id=lead_id, funnel_id="guide", step=step, template=f"guide/{step}", stage="s",
                transactional=False, status="sent", due_at=T0, attempts=1, created_at=T0, sent_at=T0,
                message_id=message_id or f"<{step}.{email}@shop.test>",
            )
            .returning(tables.outbox.c.id)
        ).scalar_one()  # fmt: skip
    return lead_id, outbox_id


def report(key: str, klass: str | None, recipient: str | None, **fields: str) -> Outcome:
    return Outcome(key, "test", fields.pop("kind", "dsn"), klass, recipient, raw=b"raw " + key.encode(), **fields)


def apply(db: Engine, *outcomes: Outcome, at: datetime = T0) -> list[str]:
    with db.begin() as conn:
        return [a.action for a in record_outcomes(conn, list(outcomes), at, RULES)]


def state(db: Engine, email: str, outbox_id: int) -> tuple[bool, str, str | None]:
    with db.connect() as conn:
        status = conn.execute(sa.select(tables.outbox.c.status).where(tables.outbox.c.id == outbox_id)).scalar_one()
        consent = conn.execute(sa.select(tables.leads.c.consent_status).where(tables.leads.c.email == email)).scalar()
        return store.is_suppressed(conn, email), status, consent


def test_a_dead_address_bounces_its_message_and_is_suppressed_by_message_id(db: Engine) -> None:
    _, message = sent(db, "gone@example.com", message_id="<m1@shop.test>")
    assert apply(db, report("k1", ADDRESS_GONE, None, status="5.1.1", message_id="<m1@shop.test>")) == ["suppressed"]
    assert state(db, "gone@example.com", message)[:2] == (True, "bounced")


def test_the_senders_fault_fails_the_message_and_keeps_the_lead(db: Engine) -> None:
    _, message = sent(db, "ok@example.org")
    assert apply(db, report("k2", SENDER_FAULT, "ok@example.org", status="5.7.1")) == ["failed, lead kept"]
    assert state(db, "ok@example.org", message) == (False, "failed", "subscribed")


def test_soft_bounces_suppress_only_past_the_limit_within_the_window_and_an_open_resets_them(db: Engine) -> None:
    lead_id, _ = sent(db, "full@example.com", step="s0")
    messages = {key: sent(db, "full@example.com", step=key)[1] for key in "abcde"}
    day = timedelta(days=1)

    def soft(key: str, at: datetime) -> list[str]:
        return apply(
            db,
            report(key, MAILBOX_TROUBLE, "full@example.com", message_id=f"<{key}.full@example.com@shop.test>"),
            at=at,
        )

    assert soft("a", T0) == ["soft bounce"]
    assert soft("b", T0 + 10 * day) == ["soft bounce"]  # the first is out of the window
    with db.begin() as conn:
        store.record_events(conn, [store.NewEvent("o1", lead_id, "email_opened", T0 + 11 * day)], now=T0 + 11 * day)
    assert soft("c", T0 + 12 * day) == ["soft bounce"]
    assert soft("d", T0 + 13 * day) == ["soft bounce"]
    assert not state(db, "full@example.com", messages["d"])[0]
    assert soft("e", T0 + 14 * day) == ["suppressed after soft bounces"]
    assert state(db, "full@example.com", messages["e"])[0]


def test_reports_of_one_message_delayed_again_and_again_are_one_soft_bounce(db: Engine) -> None:
    _, message = sent(db, "slow@example.com")
    retries = [report(f"delay-{i}", MAILBOX_TROUBLE, "slow@example.com", kind="delay") for i in range(6)]
    assert apply(db, *retries) == ["soft bounce"] * 6
    assert state(db, "slow@example.com", message) == (False, "sent", "subscribed")
    sent(db, "slow@example.com", step="s2")
    _, third = sent(db, "slow@example.com", step="s3")
    assert apply(db, report("d2", MAILBOX_TROUBLE, None, message_id="<s2.slow@example.com@shop.test>")) == [
        "soft bounce"
    ]
    assert apply(db, report("d3", MAILBOX_TROUBLE, None, message_id="<s3.slow@example.com@shop.test>")) == [
        "suppressed after soft bounces"
    ]
    assert state(db, "slow@example.com", third)[0]


def test_a_complaint_opts_out_and_tells_the_funnels(db: Engine) -> None:
    lead_id, message = sent(db, "angry@example.com")
    assert apply(db, report("arf", COMPLAINT, "angry@example.com", kind="complaint")) == ["complained"]
    assert state(db, "angry@example.com", message) == (True, "sent", "complained")
    with db.connect() as conn:
        names = conn.execute(sa.select(tables.events.c.name).where(tables.events.c.lead_id == lead_id)).scalars()
        assert list(names) == ["complained"]


def test_what_matches_nothing_or_cannot_be_classed_is_kept_and_a_report_twice_is_once(db: Engine) -> None:
    _, message = sent(db, "someone@example.com")
    assert apply(db, report("x", ADDRESS_GONE, "stranger@example.net")) == ["kept for an operator"]
    assert apply(db, report("y", None, "someone@example.com")) == ["kept for an operator"]
    assert apply(db, report("y", None, "someone@example.com")) == ["duplicate"]
    assert apply(db, report("z", NOT_FAILURE, "someone@example.com", kind="auto_reply")) == ["recorded"]
    assert state(db, "someone@example.com", message) == (False, "sent", "subscribed")
    assert not state(db, "stranger@example.net", message)[0]
    with db.connect() as conn:
        assert len(unknown(conn)) == 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([SENDER_FAULT, MAILBOX_TROUBLE, NOT_FAILURE, None]), min_size=1, max_size=8))
def test_no_run_of_harmless_reports_below_the_soft_limit_suppresses(db: Engine, classes: list[str | None]) -> None:
    email = f"h{abs(hash(tuple(map(str, classes))))}@example.com"
    steps = [f"s{i}-{abs(hash(email))}" for i in range(len(classes))]
    message = [sent(db, email, step=step)[1] for step in steps][-1]
    outcomes = [
        report(f"{email}-{i}", c, email, message_id=f"<{step}.{email}@shop.test>")
        for i, (c, step) in enumerate(zip(classes, steps, strict=True))
    ]
    apply(db, *outcomes)
    soft = sum(c == MAILBOX_TROUBLE for c in classes)
    assert state(db, email, message)[0] == (soft >= RULES.soft_limit)
