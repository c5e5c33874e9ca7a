"""The `/v1` API over a real socket: keys, idempotent events committed before the answer, whole-batch
rejection with per-item, per-field errors, no event from the future, and the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa

from engine.store import apikeys, tables
from tests.http.conftest import NOW, Served
from tests.http.raw_client import Raw


def _events(served: Served) -> list[tuple[str, str, str]]:
    e, leads = tables.events, tables.leads
    with served.engine.connect() as conn:
        rows = conn.execute(
            sa.select(e.c.event_id, e.c.name, leads.c.email).join(leads, leads.c.id == e.c.lead_id).order_by(e.c.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_every_v1_call_needs_a_valid_key_and_a_refusal_says_nothing(served: Served) -> None:
    event = {"id": "e1", "type": "form_submitted", "email": "ann@example.com"}
    for key in ("fk_", "fk_not-a-key", served.key[:-1] + "x", "Basic"):
        with served.client(key) as client:
            response = client.post("/v1/events", json=event)
        assert response.status_code == 401
        assert response.json() == {"detail": "Unauthorized"}
    assert httpx.post(f"{served.url}/v1/events", json=event, timeout=10).status_code == 401  # no header at all
    with served.engine.begin() as conn:
        assert apikeys.revoke(conn, served.key[:10], NOW) == 1
    with served.client() as client:
        assert client.post("/v1/events", json=event).status_code == 401
    assert _events(served) == []


def test_a_caller_without_a_valid_key_is_refused_before_its_body_is_read(served: Served) -> None:
    for authorization in ({}, {"Authorization": "Bearer fk_not-a-key"}, {"Authorization": "Basic YTpi"}):
        headers = {"Content-Type": "application/json", **authorization}
        request = Raw(served.url, "POST", "/v1/events", headers).start(**{"Content-Length": "500000"})
        try:
            assert request.answered(within=5), f"{authorization}: waited for the body"
            assert request.answer() == (401, {"detail": "Unauthorized"})
        finally:
            request.close()
    # Nothing of the body is parsed either: what is not JSON is a 401 without a key, a 422 with one.
    json_type = {"Content-Type": "application/json"}
    with served.client("fk_not-a-key") as client:
        assert client.post("/v1/events", content=b'{"id": [', headers=json_type).status_code == 401
    with served.client() as client:
        assert client.post("/v1/events", content=b'{"id": [', headers=json_type).status_code == 422
        assert client.put("/v1/leads/ann@example.com", json={"tags": ["a"]}).status_code == 200
    with served.client("fk_not-a-key") as client:
        assert client.put("/v1/leads/ann@example.com", content=b"[").status_code == 401


def test_an_event_is_committed_once_and_a_replay_changes_nothing(served: Served) -> None:
    event = {"id": "signup-1", "type": "form_submitted", "email": " Ann@Example.com ", "properties": {"form": "x"}}
    with served.client() as client:
        first = client.post("/v1/events", json=event)
        # The answer came after the commit: a reader sees the event at once.
        assert _events(served) == [("signup-1", "form_submitted", "ann@example.com")]
        again = client.post("/v1/events", json=event)
    assert (first.status_code, first.json()) == (200, {"accepted": 1, "duplicates": 0})
    assert (again.status_code, again.json()) == (200, {"accepted": 0, "duplicates": 1})
    assert len(_events(served)) == 1


def test_a_batch_is_taken_whole(served: Served) -> None:
    batch = [{"id": f"b{i}", "type": "link_clicked", "email": f"lead{i % 3}@example.com"} for i in range(500)]
    with served.client() as client:
        response = client.post("/v1/events", json=batch)
    assert response.json() == {"accepted": 500, "duplicates": 0}
    assert len(_events(served)) == 500
    with served.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.leads)).scalar_one() == 3


def test_a_batch_with_bad_items_is_rejected_whole_with_each_items_field_errors(served: Served) -> None:
    batch = [
        {"id": "ok-1", "type": "form_submitted", "email": "ann@example.com"},
        {"id": "bad-1", "type": "form_submitted", "email": "not-an-address"},
        {"id": "bad-2", "email": "bob@example.com", "occurred_at": "2026-11-23T10:00:00"},
    ]
    with served.client() as client:
        response = client.post("/v1/events", json=batch)
    assert response.status_code == 422
    places = {tuple(str(p) for p in error["loc"][-2:]) for error in response.json()["detail"]}
    assert {("1", "email"), ("2", "type"), ("2", "occurred_at")} <= places
    assert _events(served) == []


def test_a_batch_over_1000_items_is_refused(served: Served) -> None:
    batch = [{"id": f"b{i}", "type": "x", "email": "a@example.com"} for i in range(1001)]
    with served.client() as client:
        assert client.post("/v1/events", json=batch).status_code == 422
    assert _events(served) == []


def test_the_openapi_document_describes_the_api(served: Served) -> None:
    with served.client() as client:
        document = client.get("/openapi.json").json()
    assert "/v1/events" in document["paths"]
    assert "EventIn" in document["components"]["schemas"]


# --------------------------------------------------------------------------------------------------
# Addresses as every entry takes them; the engine's own ids, names and sources
# --------------------------------------------------------------------------------------------------


def test_an_address_is_taken_through_the_one_normaliser_in_events_and_lead_paths(served: Served) -> None:
    with served.client() as client:
        taken = client.post(
            "/v1/events", json={"id": "o-1", "type": "order_completed", "email": " Idn@Bücher.Example "}
        )
        assert taken.json() == {"accepted": 1, "duplicates": 0}
        again = client.post(
            "/v1/events", json={"id": "o-2", "type": "order_completed", "email": "idn@xn--bcher-kva.example"}
        )
        assert again.json() == {"accepted": 1, "duplicates": 0}
        shown = client.get("/v1/leads/IDN@bücher.example")
        assert (shown.status_code, shown.json()["email"]) == (200, "idn@xn--bcher-kva.example")
        refused = {
            "Erased <erased1@example.com>": "display name",
            "erased1@example.com,": "one address",
            "josé@example.com": "SMTPUTF8",
            "ann@example.test": "special-use",
        }
        for typed, why in refused.items():
            event = client.post("/v1/events", json={"id": "o-3", "type": "order_completed", "email": typed})
            assert event.status_code == 422, typed
            (problem,) = [p for p in event.json()["detail"] if p["loc"][-1] == "email"]
            assert why in problem["msg"], problem
            for method in ("GET", "PUT", "DELETE"):
                path = client.request(method, f"/v1/leads/{typed}", json={} if method == "PUT" else None)
                assert path.status_code == 422, (method, typed)
                assert why in path.json()["detail"][0]["msg"]
    assert _events(served) == [
        ("o-1", "order_completed", "idn@xn--bcher-kva.example"),
        ("o-2", "order_completed", "idn@xn--bcher-kva.example"),
    ]


def test_the_engines_own_ids_names_and_sources_are_refused_saying_why(served: Served) -> None:
    own_id, own_name = "is kept for the engine's own event ids", "is the name of an event the engine records itself"
    squats = [
        ({"id": "form:cost-of-not-recycling:1", "type": "form_submitted"}, "id", f"'form:' {own_id}"),
        ({"id": "click:1:f:s:pricing", "type": "email_clicked"}, "id", f"'click:' {own_id}"),
        ({"id": "import:lead-magnet:abc", "type": "x"}, "id", f"'import:' {own_id}"),
        ({"id": "e-1", "type": "manual_enroll", "properties": {"funnel": "f", "by": "olivia"}}, "type",
         f"'manual_enroll' {own_name}"),
        ({"id": "e-2", "type": "funnel_unsubscribed", "properties": {"funnel": "f"}}, "type",
         f"'funnel_unsubscribed' {own_name}"),
        ({"id": "e-3", "type": "lead_updated"}, "type", f"'lead_updated' {own_name}"),
        ({"id": "e-4", "type": "signed_up", "source": "ops"}, "source", "'ops' is a source the engine keeps"),
    ]  # fmt: skip
    with served.client() as client:
        for fields, where, why in squats:
            response = client.post("/v1/events", json={"email": "victim@example.com", **fields})
            assert response.status_code == 422, fields
            (problem,) = [p for p in response.json()["detail"] if p["loc"][-1] == where]
            assert why in problem["msg"], problem
        # An id of the client's own that merely mentions a word the engine uses is fine.
        fine = client.post("/v1/events", json={"id": "shop:form:1", "type": "signed_up", "email": "ann@example.com",
                                               "source": "shop-eu"})  # fmt: skip
        assert fine.json() == {"accepted": 1, "duplicates": 0}
    assert _events(served) == [("shop:form:1", "signed_up", "ann@example.com")]


def _occurred(served: Served) -> dict[str, datetime]:
    e = tables.events
    with served.engine.connect() as conn:
        return {r.event_id: r.occurred_at for r in conn.execute(sa.select(e.c.event_id, e.c.occurred_at))}


def test_an_event_dated_after_the_engines_clock_is_refused_beyond_five_minutes(served: Served) -> None:
    """A sender's clock may run a little ahead of ours: up to 5 minutes is taken as now. Beyond it the
    event has not happened yet, and the whole batch is refused saying the engine's time."""
    late = (NOW + timedelta(minutes=5, seconds=1)).isoformat()
    batch = [
        {"id": "past", "type": "order_completed", "email": "ann@example.com", "occurred_at": "2026-11-22T09:00:00Z"},
        {"id": "future", "type": "order_completed", "email": "bob@example.com", "occurred_at": late},
    ]
    with served.client() as client:
        refused = client.post("/v1/events", json=batch)
        single = client.post("/v1/events", json=batch[1])
    for answer in (refused, single):
        assert answer.status_code == 422
        (error,) = answer.json()["detail"]
        assert error["loc"][-1] == "occurred_at" and error["input"] == late
        assert error["msg"] == (
            f"occurred_at {late} is after the engine's time 2026-11-23T10:00:00+00:00 by more than 5 minutes "
            "(an event is sent once it has happened; a clock up to 5 minutes ahead is taken as now)"
        )
    assert refused.json()["detail"][0]["loc"][-2] == 1
    assert _events(served) == []

    skewed = {**batch[1], "occurred_at": (NOW + timedelta(minutes=4)).isoformat()}
    with served.client() as client:
        taken = client.post("/v1/events", json=[batch[0], skewed])
    assert taken.json() == {"accepted": 2, "duplicates": 0}
    assert _occurred(served) == {"past": datetime(2026, 11, 22, 9, 0, tzinfo=UTC), "future": NOW}


def test_an_event_may_carry_the_leads_time_zone(served: Served) -> None:
    """`timezone` on an event sets the lead's zone (new or existing lead), once: a replay changes
    nothing. A name that is not an IANA zone refuses the whole batch naming the item and field."""
    with served.client() as client:
        first = client.post("/v1/events", json={"id": "z1", "type": "page_viewed", "email": "ann@example.com",
                                                "timezone": "Europe/Berlin"})  # fmt: skip
        moved = client.post("/v1/events", json=[
            {"id": "z2", "type": "page_viewed", "email": "ann@example.com", "timezone": "America/Chicago"},
            {"id": "z3", "type": "page_viewed", "email": "bob@example.com"},
        ])  # fmt: skip
        replayed = client.post("/v1/events", json={"id": "z1", "type": "page_viewed", "email": "ann@example.com",
                                                   "timezone": "Europe/Berlin"})  # fmt: skip
        refused = client.post("/v1/events", json=[
            {"id": "z4", "type": "page_viewed", "email": "bob@example.com", "timezone": "Asia/Tokyo"},
            {"id": "z5", "type": "page_viewed", "email": "bob@example.com", "timezone": "Mars/Olympus_Mons"},
        ])  # fmt: skip
        shown = client.get("/v1/leads/ann@example.com").json()
    assert first.json()["accepted"] == 1 and moved.json()["accepted"] == 2
    assert replayed.json() == {"accepted": 0, "duplicates": 1}
    assert shown["timezone"] == "America/Chicago"  # the replay of z1 did not set Berlin again
    assert refused.status_code == 422
    # (The answer also says the body is not a single event, as for every refused batch.)
    (error,) = [e for e in refused.json()["detail"] if e["loc"][-1] == "timezone"]
    assert error["loc"][-2:] == [1, "timezone"]
    assert "unknown time zone 'Mars/Olympus_Mons'; expected an IANA name like Europe/Berlin" in error["msg"]
    with served.engine.connect() as conn:
        zones = dict(conn.execute(sa.select(tables.leads.c.email, tables.leads.c.timezone)).all())
    assert zones == {"ann@example.com": "America/Chicago", "bob@example.com": None}


def test_an_event_may_carry_the_leads_language(served: Served) -> None:
    """`language` on an event sets the lead's language in canonical case, as `timezone` sets its zone; a
    tag that is not BCP 47 refuses the whole batch naming the item, the field and what was found."""
    with served.client() as client:
        first = client.post("/v1/events", json={"id": "l1", "type": "page_viewed", "email": "ann@example.com",
                                                "language": "FR_ca"})  # fmt: skip
        refused = client.post("/v1/events", json=[
            {"id": "l2", "type": "page_viewed", "email": "bob@example.com", "language": "de"},
            {"id": "l3", "type": "page_viewed", "email": "bob@example.com", "language": "deutsch"},
        ])  # fmt: skip
        shown = client.get("/v1/leads/ann@example.com").json()
    assert first.json()["accepted"] == 1
    assert shown["language"] == "fr-CA"
    assert refused.status_code == 422
    (error,) = [e for e in refused.json()["detail"] if e["loc"][-1] == "language"]
    assert error["loc"][-2:] == [1, "language"]
    assert "expected a language tag such as 'de' or 'fr-CA', found 'deutsch'" in error["msg"]
    with served.engine.connect() as conn:
        languages = dict(conn.execute(sa.select(tables.leads.c.email, tables.leads.c.language)).all())
    assert languages == {"ann@example.com": "fr-CA"}
