"""What an operator does with bounce outcomes, on SQLite and PostgreSQL: a bounce is lifted with a
recorded reason (never a complaint, an unsubscribe or an erasure), soft bounces count afresh after it,
and reports of the sender's fault from one domain raise one alarm per window, which ends by itself or
by an operator."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from engine.core.bounce_outcome import ADDRESS_GONE, MAILBOX_TROUBLE, SENDER_FAULT, Outcome
from engine.settings import BounceSettings
from engine.store import consents, domain_alarms, lead_data, tables
from engine.store import leads as store
from engine.store.bounces import record_outcomes
from engine.views import lead_timeline

T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
RULES = BounceSettings(soft_limit=2, soft_window_days=7, sender_fault_alarm=3, sender_fault_window_minutes=60)
BY = consents.ConsentAct("lifted", "operator olivia", fields={"reason": "mailbox fixed", "by": "olivia"})


def sent(db: Engine, email: str, step: str = "s1") -> int:
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, email, now=T0)
        conn.execute(
            sa.insert(tables.outbox).values(
                lead_id=lead_id, funnel_id="guide", step=step, template=f"guide/{step}", stage="s",
                transactional=False, status="sent", due_at=T0, attempts=1, created_at=T0, sent_at=T0,
                message_id=f"<{step}.{email}@shop.test>",
            )
        )  # fmt: skip
    return lead_id


def report(db: Engine, key: str, klass: str, recipient: str, at: datetime = T0) -> list[str]:
    outcome = Outcome(key, "test", "dsn", klass, recipient, status="5.0.0", raw=b"raw")
    with db.begin() as conn:
        return [a.action for a in record_outcomes(conn, [outcome], at, RULES)]


def lift(db: Engine, email: str, at: datetime = T0) -> consents.Lift | None:
    with db.begin() as conn:
        return consents.lift_bounce(conn, email, BY, at)


def refusal(db: Engine, email: str) -> str | None:
    with db.connect() as conn:
        return consents.lift_refusal(conn, email)


def suppressed(db: Engine, email: str) -> bool:
    with db.connect() as conn:
        return store.is_suppressed(conn, email)


def test_a_hard_bounce_is_lifted_with_its_reason_in_the_consent_records_and_the_timeline(db: Engine) -> None:
    lead_id = sent(db, "fixed@example.com")
    assert report(db, "k1", ADDRESS_GONE, "fixed@example.com") == ["suppressed"]
    assert refusal(db, "fixed@example.com") is None
    done = lift(db, "fixed@example.com", T0 + timedelta(hours=1))
    assert done == consents.Lift(lead_id, "subscribed", "subscribed")
    assert not suppressed(db, "fixed@example.com")
    with db.connect() as conn:
        record = consents.history(conn, lead_id)[-1]
        shown = [e.what for e in lead_timeline.read(conn, "fixed@example.com").entries]  # type: ignore[union-attr]
    assert (record["action"], record["source"], record["fields"]["reason"]) == (
        "lifted",
        "operator olivia",
        "mailbox fixed",
    )
    assert record["at"] == T0 + timedelta(hours=1)
    assert "bounce lifted via operator olivia: mailbox fixed" in shown
    assert refusal(db, "fixed@example.com") == "the address is not bounced: there is nothing to lift"
    assert lift(db, "fixed@example.com") is None  # a second lift changes nothing


def test_a_bounced_status_goes_back_to_what_it_was(db: Engine) -> None:
    with db.begin() as conn:
        lead_id = store.upsert_lead(conn, "was@example.com", now=T0)
        consents.change_status(conn, lead_id, "was@example.com", "subscribed", "bounced",
                               consents.ConsentAct("withdrawn", "import"), T0)  # fmt: skip
    assert lift(db, "was@example.com") == consents.Lift(lead_id, "bounced", "subscribed")


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("complained", "complaint is an opt-out"),
        ("unsubscribed", "the lead unsubscribed"),
        ("erased", "no lead has this address"),
        ("nothing", "not bounced"),
    ],
)
def test_a_complaint_an_unsubscribe_an_erasure_or_no_bounce_is_not_lifted(db: Engine, how: str, expected: str) -> None:
    email = f"{how}@example.com"
    sent(db, email)
    report(db, "gone", ADDRESS_GONE, email)  # bounced first: the other state still wins
    with db.begin() as conn:
        lead_id = store.find_lead_id(conn, email)
        assert lead_id is not None
        if how == "complained":
            consents.change_status(
                conn, lead_id, email, "subscribed", "complained", consents.ConsentAct("withdrawn", "x"), T0
            )
        elif how == "unsubscribed":
            conn.execute(sa.delete(tables.suppressions))
            store.suppress(conn, email, "unsubscribed", now=T0)
            consents.change_status(
                conn, lead_id, email, "subscribed", "unsubscribed", consents.ConsentAct("withdrawn", "x"), T0
            )
        elif how == "erased":
            lead_data.erase(conn, email, T0)
        else:
            conn.execute(sa.delete(tables.suppressions))
    assert expected in (refusal(db, email) or "")
    assert lift(db, email) is None
    with db.connect() as conn:
        assert store.is_suppressed(conn, email) == (how != "nothing")
        if how == "erased":  # the bounce became an erasure: nothing lifts it
            assert lead_data.suppression(conn, email)["reason"] == "erased"  # type: ignore[index]


def test_soft_bounces_count_afresh_after_a_lift(db: Engine) -> None:
    def soft(key: str, hours: int) -> list[str]:
        sent(db, "full@example.com", step=key)  # each report about a message of its own, its latest
        return report(db, key, MAILBOX_TROUBLE, "full@example.com", T0 + timedelta(hours=hours))

    assert soft("a", 0) == ["soft bounce"]
    assert soft("b", 1) == ["suppressed after soft bounces"]
    assert lift(db, "full@example.com", T0 + timedelta(hours=2)) is not None
    assert soft("c", 3) == ["soft bounce"]
    assert not suppressed(db, "full@example.com")
    assert soft("d", 4) == ["suppressed after soft bounces"]


def alarms(db: Engine) -> list[domain_alarms.Alarm]:
    with db.connect() as conn:
        return domain_alarms.listing(conn)


def test_the_alarm_is_raised_once_per_window_extended_by_more_reports_and_ends_by_itself(
    db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.bounces")
    for i in range(5):
        sent(db, f"u{i}@blocky.example", step=f"s{i}")
    sent(db, "other@fine.example")
    report(db, "o", SENDER_FAULT, "other@fine.example")
    minute = timedelta(minutes=1)
    for i in range(5):
        report(db, f"r{i}", SENDER_FAULT, f"u{i}@blocky.example", T0 + i * minute)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "ALARM" in r.getMessage()]
    assert len(warnings) == 1 and "blocky.example" in warnings[0].getMessage()
    [alarm] = alarms(db)
    assert (alarm.domain, alarm.raised_at, alarm.reports) == ("blocky.example", T0 + 2 * minute, 5)
    assert alarm.ends_at == T0 + 4 * minute + timedelta(minutes=60)
    with db.begin() as conn:
        assert domain_alarms.end_due(conn, alarm.ends_at - minute) == []
        assert [a.domain for a in domain_alarms.active(conn, alarm.ends_at - minute)] == ["blocky.example"]
        assert [a.id for a in domain_alarms.end_due(conn, alarm.ends_at)] == [alarm.id]
        assert domain_alarms.active(conn, alarm.ends_at) == []
    over = [r for r in caplog.records if r.levelno == logging.INFO and r.getMessage().startswith("alarm over")]
    assert len(over) == 1 and "blocky.example" in over[0].getMessage()
    # A new burst after the end is a new alarm, said again.
    later = alarm.ends_at + timedelta(hours=1)
    for i in range(3):
        report(db, f"again{i}", SENDER_FAULT, f"u{i}@blocky.example", later + i * minute)
    assert [a.raised_at for a in alarms(db)] == [later + 2 * minute, T0 + 2 * minute]


def test_an_operator_clears_an_alarm_and_reports_after_it_count_afresh(db: Engine) -> None:
    for i in range(6):
        sent(db, f"u{i}@blocky.example", step=f"s{i}")
    for i in range(3):
        report(db, f"r{i}", SENDER_FAULT, f"u{i}@blocky.example", T0)
    with db.begin() as conn:
        assert domain_alarms.clear(conn, "nowhere.example", T0, "olivia", "x") is None
        cleared = domain_alarms.clear(conn, "Blocky.Example", T0 + timedelta(minutes=5), "olivia", "delisted")
    assert cleared is not None
    [alarm] = alarms(db)
    assert (alarm.cleared_by, alarm.clear_reason, alarm.ended_at) == ("olivia", "delisted", T0 + timedelta(minutes=5))
    for i in (3, 4):  # the reports heard before the clearing do not count again
        report(db, f"r{i}", SENDER_FAULT, f"u{i}@blocky.example", T0 + timedelta(minutes=6))
    assert len(alarms(db)) == 1
    report(db, "r5", SENDER_FAULT, "u5@blocky.example", T0 + timedelta(minutes=7))
    assert [a.reports for a in alarms(db)] == [3, 3]
