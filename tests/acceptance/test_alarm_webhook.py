"""Domain alarms as outbound webhooks, to a real loopback receiver that checks each signature, on
SQLite and PostgreSQL: a subscription that asks for "alarm" hears once when a domain's alarm is raised
and once when it is over (cleared by an operator here); a subscription that does not ask hears nothing,
and a lead's deliveries never wait behind an alarm's."""

from __future__ import annotations

import sqlalchemy as sa

from engine.core import signatures
from engine.core.bounce_outcome import SENDER_FAULT, Outcome
from engine.settings import BounceSettings
from engine.store import domain_alarms, tables
from engine.store import leads as store
from engine.store.bounces import record_outcomes
from tests.acceptance.test_webhooks_out import (  # the fixtures and the receiver of the webhook tests
    SECRET,
    Receiver,
    Scene,
    clock,  # noqa: F401
    funnel_engine,  # noqa: F401
    receiver,  # noqa: F401
    run_once,
    sender,
    settings,
)


def refuse(env: Scene, domain: str, count: int) -> None:
    now = env.clock()
    with env.engine.begin() as conn:
        for i in range(count):
            lead_id = store.upsert_lead(conn, f"u{i}@{domain}", now=now)
            conn.execute(
                sa.insert(tables.outbox).values(
                    lead_id=lead_id, funnel_id="trial", step="s", template="t", stage="s", transactional=False,
                    status="sent", due_at=now, attempts=1, created_at=now, sent_at=now,
                )
            )  # fmt: skip
        outcomes = [Outcome(f"{domain}-{i}", "test", "dsn", SENDER_FAULT, f"u{i}@{domain}") for i in range(count)]
        record_outcomes(conn, outcomes, now, BounceSettings(sender_fault_alarm=3))


def test_an_alarm_is_sent_when_raised_and_when_over_to_the_subscriptions_that_ask(
    funnel_engine: Scene,  # noqa: F811
    receiver: Receiver,  # noqa: F811
) -> None:
    env = funnel_engine
    # "crm" asks for alarms; "slow" keeps the default events (transitions and goals), so hears none.
    webhooks = settings(
        receiver, crm={"events": ["transition", "alarm"]}, slow={"url": receiver.url("/slow"), "secret": SECRET}
    )
    ops = sender(env, webhooks)
    run_once(ops)  # the subscriptions start here
    env.event("ana@example.com", "signed_up", first_name="Ana")
    refuse(env, "blocky.example", 3)
    result = run_once(ops)
    assert (result.sent, result.failed, result.errors) == (3, 0, [])
    assert all(isinstance(r.verified, signatures.Verified) for r in receiver.received)
    assert [r.event["type"] for r in receiver.paths("/slow")] == ["transition"]
    crm = receiver.paths("/crm")
    assert sorted(r.event["type"] for r in crm) == ["alarm", "transition"]
    [raised] = [r for r in crm if r.event["type"] == "alarm"]
    assert raised.headers["funnel-event"] == "alarm" and raised.delivery == raised.event["id"]
    alarm = raised.event["alarm"]
    assert (alarm["state"], alarm["kind"], alarm["domain"], alarm["reports"]) == (
        "raised", "sender_fault", "blocky.example", 3
    )  # fmt: skip
    assert raised.event["occurred_at"] == env.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "lead" not in raised.event and "@" not in raised.body.decode()  # a domain and counts, no address

    env.clock.advance(minutes=5)
    with env.engine.begin() as conn:
        assert domain_alarms.clear(conn, "blocky.example", env.clock(), "olivia", "delisted") is not None
    assert run_once(ops).sent == 1
    over = receiver.paths("/crm")[-1]
    assert over.headers["funnel-event"] == "alarm" and over.event["id"] != raised.event["id"]
    assert (over.event["alarm"]["state"], over.event["alarm"]["cleared_by"]) == ("over", "olivia")
    assert over.event["occurred_at"] == env.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
    assert run_once(ops).work == 0  # nothing twice
    env.clock.advance(days=2)
    assert run_once(ops).work == 0
    assert [d.lead_id for d in env.deliveries(subscription="crm", source="alarm")] == [None]
    assert len(receiver.received) == 4
