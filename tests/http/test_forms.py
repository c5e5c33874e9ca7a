"""Lead-magnet forms over a real socket: an ordinary form post records the lead with proof of consent and
emits the funnel's entry event, at once or only after the double opt-in link is followed."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engine import tables
from engine.links import Links
from tests.http.conftest import NOW, Clock, Served

ROOT = Path(__file__).resolve().parents[2]
SINGLE = {"fields": ["first_name", "company", "employees"], "consent_version": "v7"}
DOUBLE = {**SINGLE, "double_opt_in": True}


def post(served: Served, form: str, data: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{served.url}/forms/{form}", data=data, timeout=10, follow_redirects=False)


def rows(served: Served, table: sa.Table) -> list[Any]:
    with served.engine.connect() as conn:
        return list(conn.execute(sa.select(table).order_by(table.c.id)))


def lead(served: Served, email: str) -> Any:
    with served.engine.connect() as conn:
        return conn.execute(sa.select(tables.leads).where(tables.leads.c.email == email)).first()


def test_the_example_signup_page_is_served_with_its_consent_text(serve: Any) -> None:
    served = serve(
        pages_dir=ROOT / "pages",
        forms={"cost-of-not-recycling": {"page": "lead-magnet/signup.html", "consent_text": "Yes, email me & co."}},
    )
    page = httpx.get(f"{served.url}/forms/cost-of-not-recycling", timeout=10)
    assert page.status_code == 200
    assert "The real cost of not recycling" in page.text
    assert 'action="/forms/cost-of-not-recycling"' in page.text
    assert "Yes, email me &amp; co." in page.text  # autoescaped
    assert 'name="website"' in page.text  # the honeypot
    assert httpx.get(f"{served.url}/forms/nope", timeout=10).status_code == 404


def test_a_single_opt_in_post_records_consent_and_emits_the_entry_event(serve: Any) -> None:
    served = serve(forms={"report": SINGLE})
    answer = post(
        served,
        "report",
        {
            "email": " Ana@Example.COM ",
            "name": "Ana Lima",
            "company": "Acme",
            "employees": "12",
            "consent": "yes",
            "ignored": "x",
            "website": "",
        },
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/forms/report/thanks"
    row = lead(served, "ana@example.com")
    assert row.consent_status == "subscribed"
    assert row.attributes == {"first_name": "Ana", "name": "Ana Lima", "company": "Acme", "employees": "12"}
    [record] = rows(served, tables.consent_records)
    assert (record.action, record.form_id, record.text_version, record.ip) == ("given", "report", "v7", "127.0.0.1")
    assert record.at == NOW
    [event] = rows(served, tables.events)
    assert (event.name, event.source, event.lead_id) == ("form_submitted", "form", row.id)
    assert event.properties["form"] == "report" and event.properties["company"] == "Acme"
    assert httpx.get(f"{served.url}{answer.headers['location']}", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"email": "not-an-address", "consent": "yes"}, "email", "Please check your email address"),
        ({"email": "", "consent": "yes"}, "email", "Please enter your email address"),
        ({"email": "ok@example.com"}, "consent", "Please tick the box"),
        ({"email": "ok@example.com", "consent": "yes", "company": "x" * 501}, "company", "under 500"),
    ],
)
def test_a_bad_post_shows_the_form_again_with_its_error_and_changes_nothing(
    serve: Any, data: dict[str, str], field: str, message: str
) -> None:
    served = serve(forms={"report": SINGLE})
    answer = post(served, "report", data)
    assert answer.status_code == 422
    assert message in answer.text
    assert data.get("email", "") in answer.text or not data.get("email")  # what was typed is kept
    assert rows(served, tables.leads) == [] and rows(served, tables.events) == []
    assert rows(served, tables.consent_records) == []


def test_a_bot_filling_the_honeypot_gets_the_same_redirect_and_changes_nothing(serve: Any) -> None:
    served = serve(forms={"report": SINGLE})
    answer = post(served, "report", {"email": "bot@example.com", "consent": "yes", "website": "http://spam"})
    assert (answer.status_code, answer.headers["location"]) == (303, "/forms/report/thanks")
    assert rows(served, tables.leads) == [] and rows(served, tables.events) == []


def confirm_link(served: Served, request_id: int, email: str, form: str = "report") -> str:
    # The link the confirmation email carries (the composer makes it the same way).
    return Links(served.settings).confirm_url(email, form, request_id)


def test_double_opt_in_sends_nothing_of_the_funnel_until_the_link_is_followed(serve: Any) -> None:
    clock = Clock()
    served = serve(clock=clock, forms={"report": DOUBLE})
    answer = post(served, "report", {"email": "bo@example.com", "name": "Bo", "consent": "on"})
    assert (answer.status_code, answer.headers["location"]) == (303, "/forms/report/check-inbox")
    row = lead(served, "bo@example.com")
    assert row.consent_status == "pending"
    assert rows(served, tables.events) == []  # no entry event, so no funnel email
    [requested] = rows(served, tables.consent_records)
    assert requested.action == "requested"
    [confirmation] = rows(served, tables.outbox)
    assert (confirmation.funnel_id, confirmation.step, confirmation.template) == (
        "form:report",
        f"confirm-{requested.id}",
        "forms/confirm-subscription",
    )
    assert confirmation.transactional and confirmation.status == "queued"

    # Posting again while the link is valid sends no second confirmation.
    clock.at = NOW + timedelta(hours=1)
    assert post(served, "report", {"email": "bo@example.com", "consent": "on"}).status_code == 303
    assert len(rows(served, tables.outbox)) == 1

    link = confirm_link(served, requested.id, "bo@example.com")
    page = httpx.get(link, timeout=10)
    assert page.status_code == 200 and '<form method="post">' in page.text
    assert lead(served, "bo@example.com").consent_status == "pending"  # a GET (a link scanner) changes nothing

    clock.at = NOW + timedelta(hours=2)
    confirmed = httpx.post(link, timeout=10)
    assert (confirmed.status_code, confirmed.headers["location"]) == (303, "/forms/report/confirmed")
    assert lead(served, "bo@example.com").consent_status == "subscribed"
    [event] = rows(served, tables.events)
    assert (event.name, event.properties["form"], event.properties["first_name"]) == ("form_submitted", "report", "Bo")
    assert [r.action for r in rows(served, tables.consent_records)] == ["requested", "confirmed"]

    # A second click on the same link changes nothing.
    assert httpx.post(link, timeout=10).status_code == 303
    assert len(rows(served, tables.events)) == 1
    assert len(rows(served, tables.consent_records)) == 2


def test_an_expired_link_is_refused_and_a_new_signup_gets_a_new_one(serve: Any) -> None:
    clock = Clock()
    served = serve(clock=clock, forms={"report": {**DOUBLE, "confirm_within_hours": 24}})
    post(served, "report", {"email": "cy@example.com", "consent": "on"})
    [first] = rows(served, tables.consent_records)
    clock.at = NOW + timedelta(hours=25)
    expired = httpx.post(confirm_link(served, first.id, "cy@example.com"), timeout=10)
    assert expired.status_code == 410 and "expired" in expired.text
    assert lead(served, "cy@example.com").consent_status == "pending"
    assert rows(served, tables.events) == []
    post(served, "report", {"email": "cy@example.com", "consent": "on"})
    assert [r.step for r in rows(served, tables.outbox)] == [f"confirm-{first.id}", f"confirm-{first.id + 1}"]


def test_confirmation_tokens_that_are_tampered_or_made_for_another_purpose_get_404(serve: Any) -> None:
    served = serve(forms={"report": DOUBLE})
    post(served, "report", {"email": "di@example.com", "consent": "on"})
    [requested] = rows(served, tables.consent_records)
    link = confirm_link(served, requested.id, "di@example.com")
    token = link.rsplit("/", 1)[1]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    unsubscribe_token = Links(served.settings).sign("unsubscribe", {"e": "di@example.com", "r": requested.id})
    other_lead = confirm_link(served, requested.id, "eve@example.com")
    for url in (f"{served.url}/confirm/{tampered}", f"{served.url}/confirm/{unsubscribe_token}", other_lead):
        assert httpx.post(url, timeout=10).status_code == 404
    assert lead(served, "di@example.com").consent_status == "pending"


def test_a_subscribed_lead_signing_up_again_skips_the_confirmation(serve: Any) -> None:
    served = serve(forms={"report": DOUBLE})
    client = served.client()
    assert client.put("/v1/leads/fay@example.com", json={"consent": "subscribed"}).status_code == 200
    post(served, "report", {"email": "fay@example.com", "consent": "on"})
    assert rows(served, tables.outbox) == []
    assert [e.name for e in rows(served, tables.events)] == ["lead_updated", "form_submitted"]  # the PUT, the form


def test_an_unsubscribed_lead_is_not_resubscribed_without_confirming(serve: Any) -> None:
    served = serve(forms={"report": DOUBLE})
    client = served.client()
    client.put("/v1/leads/gil@example.com", json={"consent": "unsubscribed"})
    post(served, "report", {"email": "gil@example.com", "consent": "on"})
    assert lead(served, "gil@example.com").consent_status == "pending"
    assert re.fullmatch(r"confirm-\d+", rows(served, tables.outbox)[0].step)


def test_erasure_deletes_the_consent_records_too(serve: Any) -> None:
    served = serve(forms={"report": SINGLE})
    post(served, "report", {"email": "hal@example.com", "consent": "yes", "company": "Hal Ltd"})
    assert len(rows(served, tables.consent_records)) == 1
    assert served.client().delete("/v1/leads/hal@example.com").status_code == 204
    assert rows(served, tables.consent_records) == [] and rows(served, tables.events) == []


def test_a_forms_address_goes_through_the_one_normaliser(serve: Any) -> None:
    served = serve(forms={"report": SINGLE})
    for typed, why in (("Ann <ann@example.com>", "display name"), ("josé@example.com", "SMTPUTF8"),
                       ("ann@example.test", "special-use")):  # fmt: skip
        refused = post(served, "report", {"email": typed, "consent": "yes"})
        assert refused.status_code == 422 and why in refused.text, typed
    assert rows(served, tables.leads) == []
    taken = post(served, "report", {"email": " Idn@Bücher.Example ", "consent": "yes"})
    assert taken.status_code == 303
    assert [r.email for r in rows(served, tables.leads)] == ["idn@xn--bcher-kva.example"]
