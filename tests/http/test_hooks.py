"""Signed webhooks over a real socket: a signed request records its events once, a replay is 409 and
changes nothing, every kind of refusal is the same 401, a bad batch is 422 with each item's errors and
leaves no receipt, and old receipts are swept."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from pydantic import SecretStr

from engine.core.signatures import sign
from engine.http.api import create_app
from engine.settings import HookSettings, Settings
from engine.store import tables
from engine.store.database import create_engine_for
from tests.http.conftest import NOW, Clock
from tests.http.raw_client import Raw
from tests.smtp_server import _free_port

SECRET = "whsec_shop_bUfeRUVmPW_St1r3RoRzYiJtu1iLQW3lrOSgX"
CRM_SECRET = "whsec_crm_VcxeBRovsm-WVPNdhl2VYTa9s01JgNytRWdOBkY"


@dataclass
class Hooked:
    url: str
    engine: sa.Engine
    clock: Clock
    nudges: list[datetime]
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def post(self, body: bytes, header: str | None, source: str = "shop") -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers["Funnel-Signature"] = header
        return self.client.post(f"/hooks/{source}", content=body, headers=headers)

    def signed(self, payload: Any) -> httpx.Response:
        """`payload` as JSON, signed now by the shop."""
        body = json.dumps(payload).encode()
        return self.post(body, sign(SECRET, int(self.clock.at.timestamp()), body))


@pytest.fixture
def hooked(db_url: str, tmp_path: Path) -> Iterator[Hooked]:
    """The app with two hooks (shop, crm) over a migrated database on each backend, on a clock the test
    moves, counting its nudges (conftest's `serve` knows neither PostgreSQL nor the nudge)."""
    engine = create_engine_for(db_url)
    port = _free_port("127.0.0.1")
    settings = Settings(
        data_dir=tmp_path,
        base_url=f"http://127.0.0.1:{port}",
        hooks={"shop": HookSettings(secret=SecretStr(SECRET)), "crm": HookSettings(secret=SecretStr(CRM_SECRET))},
    )
    clock = Clock()
    nudges: list[datetime] = []
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, engine, clock=clock, nudge=lambda: nudges.append(clock.at)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    hooked = Hooked(f"http://127.0.0.1:{port}", engine, clock, nudges)
    try:
        yield hooked
    finally:
        hooked.client.close()
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


def _events(hooked: Hooked) -> list[tuple[str, str, str, str]]:
    e, leads = tables.events, tables.leads
    with hooked.engine.connect() as conn:
        rows = conn.execute(
            sa.select(e.c.event_id, e.c.name, leads.c.email, e.c.source)
            .join(leads, leads.c.id == e.c.lead_id)
            .order_by(e.c.id)
        ).all()
    return [(r.event_id, r.name, r.email, r.source) for r in rows]


def _receipts(hooked: Hooked) -> list[tuple[str, datetime]]:
    r = tables.webhook_receipts
    with hooked.engine.connect() as conn:
        return [(row.source, row.received_at) for row in conn.execute(sa.select(r).order_by(r.c.received_at))]


ORDER = {"id": "order-1001", "type": "order_completed", "email": "Ann@Example.com", "properties": {"total": 49}}


def test_a_signed_event_is_recorded_once_with_the_hook_as_its_source(hooked: Hooked) -> None:
    response = hooked.signed(ORDER)
    assert (response.status_code, response.json()) == (200, {"accepted": 1, "duplicates": 0})
    # Answered after the commit: a reader sees the event at once.
    assert _events(hooked) == [("order-1001", "order_completed", "ann@example.com", "shop")]
    assert _receipts(hooked) == [("shop", NOW)]
    assert hooked.nudges == [NOW]  # `funnel run` ticks at once


def test_a_batch_is_recorded_whole_and_an_events_own_source_wins(hooked: Hooked) -> None:
    batch = [
        {"id": "o1", "type": "order_completed", "email": "ann@example.com"},
        {"id": "o2", "type": "order_refunded", "email": "bob@example.com", "source": "shop-eu"},
    ]
    response = hooked.signed(batch)
    assert (response.status_code, response.json()) == (200, {"accepted": 2, "duplicates": 0})
    assert _events(hooked) == [
        ("o1", "order_completed", "ann@example.com", "shop"),
        ("o2", "order_refunded", "bob@example.com", "shop-eu"),
    ]


def test_the_same_signed_request_again_is_409_and_changes_nothing(hooked: Hooked) -> None:
    body = json.dumps(ORDER).encode()
    header = sign(SECRET, int(NOW.timestamp()), body)
    assert hooked.post(body, header).status_code == 200
    hooked.clock.at = NOW + timedelta(seconds=200)  # still within the tolerance
    replay = hooked.post(body, header)
    assert (replay.status_code, replay.json()) == (409, {"detail": "already received"})
    # A replay that keeps the signature but wraps it in another header spelling is the same request.
    again = hooked.post(body, header.replace(",", ", ").replace("v1=", "v0=x, v1="))
    assert again.status_code == 409
    assert _events(hooked) == [("order-1001", "order_completed", "ann@example.com", "shop")]
    assert len(_receipts(hooked)) == 1
    assert hooked.nudges == [NOW]


def test_copies_of_one_request_sent_at_once_are_taken_once(hooked: Hooked) -> None:
    body = json.dumps([{**ORDER, "id": f"o{i}"} for i in range(50)]).encode()
    header = sign(SECRET, int(NOW.timestamp()), body)
    start = threading.Barrier(6)

    def send() -> int:
        with httpx.Client(base_url=hooked.url, timeout=30) as client:
            start.wait()
            headers = {"Content-Type": "application/json", "Funnel-Signature": header}
            return client.post("/hooks/shop", content=body, headers=headers).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(lambda _: send(), range(6)))
    assert statuses == [200, 409, 409, 409, 409, 409]
    assert len(_events(hooked)) == 50
    assert len(_receipts(hooked)) == 1


def test_the_same_events_newly_signed_are_taken_as_duplicates_not_replays(hooked: Hooked) -> None:
    assert hooked.signed(ORDER).status_code == 200
    hooked.clock.at = NOW + timedelta(seconds=1)
    response = hooked.signed(ORDER)  # a sender's retry: new timestamp, new signature
    assert (response.status_code, response.json()) == (200, {"accepted": 0, "duplicates": 1})
    assert len(_events(hooked)) == 1


def test_every_refusal_is_the_same_401_and_records_nothing(hooked: Hooked) -> None:
    body = json.dumps(ORDER).encode()
    t = int(NOW.timestamp())
    good = sign(SECRET, t, body)
    refusals = {
        "no header": hooked.post(body, None),
        "empty header": hooked.post(body, ""),
        "malformed header": hooked.post(body, "sha256=" + good.split("v1=")[1]),
        "tampered body": hooked.post(body.replace(b"49", b"1"), good),
        "another timestamp": hooked.post(body, good.replace(f"t={t}", f"t={t + 1}")),
        "old timestamp": hooked.post(body, sign(SECRET, t - 301, body)),
        "future timestamp": hooked.post(body, sign(SECRET, t + 301, body)),
        "wrong secret": hooked.post(body, sign("whsec_guess", t, body)),
        "another hook's secret": hooked.post(body, sign(CRM_SECRET, t, body)),
        "unknown source": hooked.post(body, good, source="nobody"),
        "unsigned and not JSON": hooked.post(b"{not json", None),
    }
    for reason, response in refusals.items():
        assert (reason, response.status_code, response.json()) == (reason, 401, {"detail": "Unauthorized"})
        assert response.headers["www-authenticate"] == "Funnel-Signature"
    assert _events(hooked) == []
    assert _receipts(hooked) == []
    assert hooked.post(body, good).status_code == 200  # none of that spent the good signature


def test_a_known_and_an_unknown_source_are_refused_alike_and_at_the_same_moment(hooked: Hooked) -> None:
    """Whether a source exists cannot be told from the answer nor from when it comes: without a
    well-formed signature header both are refused from the headers alone, with one both read the body."""
    body = json.dumps(ORDER).encode()
    guessed = sign("whsec_guess", int(NOW.timestamp()), body)
    length = {"Content-Length": str(len(body))}
    for source in ("shop", "nobody"):
        for header in ({}, {"Funnel-Signature": "sha256=" + guessed.split("v1=")[1]}):
            request = Raw(hooked.url, "POST", f"/hooks/{source}", header).start(**length)
            try:
                assert request.answered(within=5), f"{source} {header}: waited for a body it cannot use"
                assert request.answer() == (401, {"detail": "Unauthorized"})
            finally:
                request.close()
        request = Raw(hooked.url, "POST", f"/hooks/{source}", {"Funnel-Signature": guessed}).start(**length)
        try:
            assert not request.answered(within=0.5), f"{source}: answered before the body"
            request.send(body)
            assert request.answer() == (401, {"detail": "Unauthorized"})
        finally:
            request.close()
    assert _events(hooked) == [] and _receipts(hooked) == []


def test_a_signed_batch_with_bad_items_is_422_per_item_and_can_be_sent_again_once_fixed(hooked: Hooked) -> None:
    batch: list[dict[str, Any]] = [
        {"id": "ok-1", "type": "order_completed", "email": "ann@example.com"},
        {"id": "bad-1", "type": "order_completed", "email": "not-an-address"},
        {"id": "bad-2", "email": "bob@example.com", "occurred_at": "2026-11-23T10:00:00"},
    ]
    body = json.dumps(batch).encode()
    header = sign(SECRET, int(NOW.timestamp()), body)
    response = hooked.post(body, header)
    assert response.status_code == 422
    places = {tuple(str(p) for p in error["loc"][-2:]) for error in response.json()["detail"]}
    assert {("1", "email"), ("2", "type"), ("2", "occurred_at")} <= places
    assert _events(hooked) == []
    assert _receipts(hooked) == []
    # Signed but not JSON: 422 as well, and nothing remembered.
    garbage = b'{"id": '
    assert hooked.post(garbage, sign(SECRET, int(NOW.timestamp()), garbage)).status_code == 422
    assert _receipts(hooked) == []
    # Signed, with a value JSON cannot say back in the answer (NaN): still a 422 naming the field.
    nan = b'{"id": "n-1", "type": "order_completed", "email": "ann@example.com", "properties": {"x": NaN}}'
    refused = hooked.post(nan, sign(SECRET, int(NOW.timestamp()), nan))
    assert refused.status_code == 422 and refused.json()["detail"]
    assert hooked.signed(batch[:1]).status_code == 200
    assert [e[0] for e in _events(hooked)] == ["ok-1"]


def test_a_failed_request_leaves_no_receipt_and_the_same_signature_can_be_retried(hooked: Hooked) -> None:
    body = json.dumps(ORDER).encode()
    header = sign(SECRET, int(NOW.timestamp()), body)
    # The events' insert fails after the receipt's (a trigger stands in for a full disk): no commit.
    with hooked.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'disk full'; END $$"
            )
            conn.exec_driver_sql("CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse()")
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
    assert hooked.post(body, header).status_code == 500
    assert _receipts(hooked) == []
    with hooked.engine.begin() as conn:
        conn.exec_driver_sql(
            "DROP TRIGGER refuse ON events" if conn.dialect.name == "postgresql" else "DROP TRIGGER refuse"
        )
    hooked.client.close()  # the server closed that connection after its 500
    hooked.client = httpx.Client(base_url=hooked.url, timeout=10)
    assert hooked.post(body, header).status_code == 200
    assert len(_events(hooked)) == 1


def test_receipts_older_than_twice_the_tolerance_are_swept(hooked: Hooked) -> None:
    assert hooked.signed({**ORDER, "id": "first"}).status_code == 200
    hooked.clock.at = NOW + timedelta(seconds=600)  # a request signed at NOW + 300 is still good until here
    assert hooked.signed({**ORDER, "id": "second"}).status_code == 200
    assert [at for _, at in _receipts(hooked)] == [NOW, NOW + timedelta(seconds=600)]
    hooked.clock.at = NOW + timedelta(seconds=601)
    assert hooked.signed({**ORDER, "id": "third"}).status_code == 200
    assert [at for _, at in _receipts(hooked)] == [NOW + timedelta(seconds=600), NOW + timedelta(seconds=601)]


def test_the_hook_is_in_the_openapi_document_with_its_body_and_header(hooked: Hooked) -> None:
    document = hooked.client.get("/openapi.json").json()
    operation = document["paths"]["/hooks/{source}"]["post"]
    body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert "#/components/schemas/EventIn" in json.dumps(body_schema)
    assert {"401", "409", "422", "200"} <= set(operation["responses"])
    headers = [p for p in operation["parameters"] if p["in"] == "header"]
    assert [(p["name"], p["required"]) for p in headers] == [("Funnel-Signature", True)]


def test_a_hooks_address_goes_through_the_one_normaliser(hooked: Hooked) -> None:
    taken = hooked.signed({"id": "o-1", "type": "order_completed", "email": " Idn@Bücher.Example "})
    assert taken.json() == {"accepted": 1, "duplicates": 0}
    refused = hooked.signed({"id": "o-2", "type": "order_completed", "email": "Ann <ann@example.com>"})
    assert refused.status_code == 422
    (problem,) = [p for p in refused.json()["detail"] if p["loc"][-1] == "email"]
    assert "display name" in problem["msg"]
    assert _events(hooked) == [("o-1", "order_completed", "idn@xn--bcher-kva.example", "shop")]


def test_a_hook_cannot_send_the_engines_own_events_ids_or_sources(hooked: Hooked) -> None:
    forged = [
        {"id": "m-1", "type": "manual_enroll", "email": "ann@example.com",
         "properties": {"funnel": "lead-magnet", "by": "olivia"}},
        {"id": "u-1", "type": "funnel_unsubscribed", "email": "ann@example.com", "properties": {"funnel": "x"}},
        {"id": "form:cost-of-not-recycling:1", "type": "form_submitted", "email": "ann@example.com"},
        {"id": "o-1", "type": "order_completed", "email": "ann@example.com", "source": "form"},
    ]  # fmt: skip
    for event in forged:
        response = hooked.signed(event)
        assert response.status_code == 422, event
        assert any("the engine" in p["msg"] for p in response.json()["detail"]), response.text
    assert _events(hooked) == [] and _receipts(hooked) == []


def test_a_hook_may_not_be_named_as_one_of_the_engines_own_sources() -> None:
    secret = SecretStr(SECRET)
    with pytest.raises(ValueError, match=r"hooks\.ops: 'ops' is a source the engine keeps for itself"):
        Settings(hooks={"ops": HookSettings(secret=secret)})
    assert set(Settings(hooks={"shop": HookSettings(secret=secret)}).hooks) == {"shop"}


def test_a_signed_event_dated_after_the_engines_clock_is_refused_and_leaves_no_receipt(hooked: Hooked) -> None:
    late = (NOW + timedelta(minutes=6)).isoformat()
    response = hooked.signed({**ORDER, "occurred_at": late})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"][-1] == "occurred_at" and "after the engine's time 2026-11-23T10:00:00+00:00" in error["msg"]
    assert _events(hooked) == [] and _receipts(hooked) == []
    hooked.clock.at = NOW + timedelta(minutes=2)  # its time has come (the sender's clock was 4 minutes ahead)
    assert hooked.signed({**ORDER, "occurred_at": late}).status_code == 200
    with hooked.engine.connect() as conn:
        stored = conn.execute(sa.select(tables.events.c.occurred_at)).scalar_one()
    assert stored == NOW + timedelta(minutes=2)
