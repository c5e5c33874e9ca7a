"""Lead-magnet forms over a real socket: an ordinary form post records the lead with proof of consent and
emits the funnel's entry event, at once or only after the double opt-in link is followed."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engine.authoring.validation import load_funnels
from engine.mail.links import Links
from engine.mail.mailer import Mailer
from engine.mail.templates import TemplateLibrary
from engine.runtime.worker import Worker
from engine.store import tables
from tests.http.conftest import NOW, Clock, Served
from tests.smtp_server import Received, RecordingSmtpServer

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


def test_a_signup_page_cannot_show_a_file_outside_the_pages_folder(
    serve: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pages = tmp_path / "pages"
    pages.mkdir()
    (tmp_path / "secrets.env").write_text("FUNNEL_SECRET_KEY=kept-on-the-server-only\n")
    (pages / "notes.html").symlink_to(Path("..", "secrets.env"))
    (pages / "signup.html").write_text("<h1>Sign up</h1>\n{% include 'notes.html' %}\n")
    (pages / "direct.html").symlink_to(tmp_path / "secrets.env")
    served = serve(pages_dir=pages, forms={"report": {"page": "signup.html"}, "direct": {"page": "direct.html"}})
    for form in ("report", "direct"):
        page = httpx.get(f"{served.url}/forms/{form}", timeout=10)
        # The engine's own form instead, so the signup still works; the log says what is wrong.
        assert page.status_code == 200
        assert "kept-on-the-server-only" not in page.text
        assert f'action="/forms/{form}"' in page.text
    refusals = [r.getMessage() for r in caplog.records if r.name == "engine.forms"]
    assert len(refusals) == 2 and all("outside" in m for m in refusals), refusals
    assert "signup.html:2" in refusals[0] and "'notes.html'" in refusals[0]


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


def test_a_subscribed_lead_signing_up_again_is_asked_to_confirm_and_then_gets_the_report(serve: Any) -> None:
    served = serve(forms={"report": DOUBLE})
    client = served.client()
    assert client.put("/v1/leads/fay@example.com", json={"consent": "subscribed"}).status_code == 200
    post(served, "report", {"email": "fay@example.com", "consent": "on"})
    [requested] = rows(served, tables.consent_records)
    assert [o.step for o in rows(served, tables.outbox)] == [f"confirm-{requested.id}"]
    assert [e.name for e in rows(served, tables.events)] == ["lead_updated"]  # the PUT's only, so far
    assert httpx.post(confirm_link(served, requested.id, "fay@example.com"), timeout=10).status_code == 303
    assert [e.name for e in rows(served, tables.events)] == ["lead_updated", "form_submitted"]
    assert lead(served, "fay@example.com").consent_status == "subscribed"


def test_erasure_deletes_the_consent_records_too(serve: Any) -> None:
    served = serve(forms={"report": SINGLE})
    post(served, "report", {"email": "hal@example.com", "consent": "yes", "company": "Hal Ltd"})
    assert len(rows(served, tables.consent_records)) == 1
    assert served.client().delete("/v1/leads/hal@example.com").status_code == 204
    assert rows(served, tables.consent_records) == [] and rows(served, tables.events) == []


# --------------------------------------------------------------------------------------------------
# A stranger changes nothing: only the address's owner, by following the confirmation link, can
# make a post count (invariant 13).
# --------------------------------------------------------------------------------------------------

EXAMPLE_FORM = {"double_opt_in": True, "fields": ["first_name", "company", "employees"], "consent_version": "2026-11"}
STRANGER = {
    "email": "alice@example.com",
    "first_name": "URGENT: your account is suspended, call +1-555-0100",
    "company": "Evil Corp",
    "consent": "yes",
}


def deliver(served: Served, smtp: RecordingSmtpServer, funnels: bool = True) -> list[Received]:
    """What the engine does next, for real: the example funnel handles the events, the mailer sends
    what is due to the SMTP server. Returns the messages the server got."""
    if funnels:
        loaded = load_funnels([ROOT / "funnels"], emails_dir=None)
        assert loaded.ok, loaded.errors
        worker = Worker(served.engine, {f.id: f for f in loaded.funnels})
        worker.publish(NOW)
        worker.run_until_idle(NOW)
    smtp_settings = served.settings.smtp.model_copy(update={"host": smtp.host, "port": smtp.port, "security": "none"})
    settings = served.settings.model_copy(update={"smtp": smtp_settings})
    mailer = Mailer(served.engine, settings, TemplateLibrary(ROOT / "emails"))
    asyncio.run(mailer.dispatch(NOW, smtp.host, smtp.port))
    return smtp.messages()


def test_a_strangers_post_for_a_subscribed_lead_changes_nothing_and_mails_only_a_plain_confirmation(
    serve: Any,
) -> None:
    served = serve(forms={"cost-of-not-recycling": EXAMPLE_FORM})
    put = served.client().put(
        "/v1/leads/alice@example.com", json={"attributes": {"first_name": "Alice"}, "consent": "subscribed"}
    )
    assert put.status_code == 200
    before = lead(served, "alice@example.com")

    answer = post(served, "cost-of-not-recycling", STRANGER)
    assert (answer.status_code, answer.headers["location"]) == (303, "/forms/cost-of-not-recycling/check-inbox")

    after = lead(served, "alice@example.com")
    assert (after.attributes, after.tags, after.score, after.consent_status, after.consent_source) == (
        before.attributes,
        before.tags,
        before.score,
        before.consent_status,
        before.consent_source,
    )
    assert [r.action for r in rows(served, tables.consent_records)] == ["requested"]  # a request, not consent
    assert [e.name for e in rows(served, tables.events)] == ["lead_updated"]  # the PUT's; no form_submitted
    with RecordingSmtpServer() as smtp:
        [confirmation] = deliver(served, smtp)
    assert confirmation.rcpt == ("alice@example.com",)
    assert confirmation.funnel_step.startswith("form:cost-of-not-recycling/confirm-")
    assert "Hi Alice," in confirmation.body  # what is on record, never what the stranger typed
    assert "URGENT" not in confirmation.body + confirmation.subject and "Evil" not in confirmation.body
    assert lead(served, "alice@example.com").attributes == {"first_name": "Alice"}


def test_what_a_post_carried_is_applied_when_the_owner_confirms(serve: Any) -> None:
    served = serve(forms={"report": DOUBLE})
    served.client().put("/v1/leads/ivy@example.com", json={"attributes": {"first_name": "Ivy"}})
    post(served, "report", {"email": "ivy@example.com", "first_name": "Ivy", "company": "New Co", "consent": "on"})
    assert lead(served, "ivy@example.com").attributes == {"first_name": "Ivy"}
    [requested] = rows(served, tables.consent_records)
    assert requested.fields == {"first_name": "Ivy", "company": "New Co"}

    assert httpx.post(confirm_link(served, requested.id, "ivy@example.com"), timeout=10).status_code == 303
    row = lead(served, "ivy@example.com")
    assert row.attributes == {"first_name": "Ivy", "company": "New Co"} and row.consent_status == "subscribed"
    [_, confirmed] = rows(served, tables.consent_records)
    assert (confirmed.action, confirmed.status_before, confirmed.status_after) == (
        "confirmed",
        "subscribed",
        "subscribed",
    )
    assert [e.name for e in rows(served, tables.events)] == ["lead_updated", "form_submitted"]


def test_a_new_address_gets_a_confirmation_built_from_nothing_the_post_carried(serve: Any) -> None:
    served = serve(forms={"cost-of-not-recycling": EXAMPLE_FORM})
    post(served, "cost-of-not-recycling", {**STRANGER, "email": "victim@example.com"})
    row = lead(served, "victim@example.com")
    assert (row.consent_status, row.attributes) == ("pending", {})  # the fields wait in the request
    with RecordingSmtpServer() as smtp:
        [confirmation] = deliver(served, smtp)
    assert "Hi there," in confirmation.body and "URGENT" not in confirmation.body


def test_a_single_opt_in_post_for_an_existing_lead_only_asks_its_owner_to_confirm(serve: Any) -> None:
    served = serve(forms={"report": SINGLE})
    served.client().put("/v1/leads/jo@example.com", json={"attributes": {"first_name": "Jo"}})
    answer = post(served, "report", {"email": "jo@example.com", "first_name": "Mallory", "consent": "yes"})
    assert (answer.status_code, answer.headers["location"]) == (303, "/forms/report/thanks")  # as for anyone
    assert lead(served, "jo@example.com").attributes == {"first_name": "Jo"}
    assert [e.name for e in rows(served, tables.events)] == ["lead_updated"]
    [requested] = rows(served, tables.consent_records)
    assert requested.action == "requested"
    [confirmation] = rows(served, tables.outbox)
    assert confirmation.step == f"confirm-{requested.id}"
    httpx.post(confirm_link(served, requested.id, "jo@example.com"), timeout=10)
    assert lead(served, "jo@example.com").attributes == {"first_name": "Mallory"}  # the owner confirmed it
    assert [e.name for e in rows(served, tables.events)] == ["lead_updated", "form_submitted"]


def test_a_confirmed_lead_who_signs_up_again_confirms_again_and_gets_the_report(serve: Any) -> None:
    clock = Clock()
    served = serve(clock=clock, forms={"report": DOUBLE})
    post(served, "report", {"email": "kim@example.com", "consent": "on"})
    [first] = rows(served, tables.consent_records)
    httpx.post(confirm_link(served, first.id, "kim@example.com"), timeout=10)
    clock.at = NOW + timedelta(hours=1)  # the first link is still valid, but used: a new one goes
    post(served, "report", {"email": "kim@example.com", "consent": "on"})
    second = rows(served, tables.consent_records)[-1]
    assert second.action == "requested" and second.id != first.id
    assert [o.step for o in rows(served, tables.outbox)] == [f"confirm-{first.id}", f"confirm-{second.id}"]
    httpx.post(confirm_link(served, second.id, "kim@example.com"), timeout=10)
    assert [e.name for e in rows(served, tables.events)] == ["form_submitted", "form_submitted"]


def test_confirmation_emails_to_one_address_are_limited_across_forms(serve: Any, caplog: Any) -> None:
    limits = {"confirmations_per_address": 2, "limit_window_hours": 24}
    served = serve(forms={f"f{i}": {**DOUBLE, **limits} for i in range(4)})
    served.client().put("/v1/leads/lou@example.com", json={"attributes": {"first_name": "Lou"}})
    caplog.set_level(logging.WARNING, logger="engine.forms")
    for i in range(4):
        answer = post(served, f"f{i}", {"email": "lou@example.com", "consent": "on"})
        assert (answer.status_code, answer.headers["location"]) == (303, f"/forms/f{i}/check-inbox")
    assert len(rows(served, tables.outbox)) == 2
    assert [r.action for r in rows(served, tables.consent_records)] == ["requested", "requested"]
    assert sum("confirmations to this address" in r.getMessage() for r in caplog.records) == 2


def test_confirmation_emails_caused_from_one_client_are_limited(serve: Any, caplog: Any) -> None:
    served = serve(forms={"report": {**DOUBLE, "confirmations_per_ip": 3}})
    caplog.set_level(logging.WARNING, logger="engine.forms")
    for i in range(5):
        answer = post(served, "report", {"email": f"v{i}@example.com", "consent": "on"})
        assert (answer.status_code, answer.headers["location"]) == (303, "/forms/report/check-inbox")
    assert [r.email for r in rows(served, tables.leads)] == ["v0@example.com", "v1@example.com", "v2@example.com"]
    assert len(rows(served, tables.outbox)) == 3
    assert sum("from client 127.0.0.1" in r.getMessage() for r in caplog.records) == 2


def test_an_unsubscribed_lead_stays_unsubscribed_until_it_confirms(serve: Any) -> None:
    served = serve(forms={"report": DOUBLE})
    client = served.client()
    client.put("/v1/leads/gil@example.com", json={"attributes": {"first_name": "Gil"}, "consent": "unsubscribed"})
    post(served, "report", {"email": "gil@example.com", "consent": "on"})
    assert lead(served, "gil@example.com").consent_status == "unsubscribed"  # the opt-out is kept
    with RecordingSmtpServer() as smtp:
        [confirmation] = deliver(served, smtp, funnels=False)  # the confirmation itself reaches the lead
    assert confirmation.funnel_step.startswith("form:report/confirm-")
    requested = rows(served, tables.consent_records)[-1]
    httpx.post(confirm_link(served, requested.id, "gil@example.com"), timeout=10)
    assert lead(served, "gil@example.com").consent_status == "subscribed"
    confirmed = rows(served, tables.consent_records)[-1]
    assert (confirmed.action, confirmed.status_before, confirmed.status_after) == (
        "confirmed",
        "unsubscribed",
        "subscribed",
    )


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


def test_a_signup_carries_the_browsers_time_zone_and_a_bad_one_is_ignored(serve: Any) -> None:
    """The signup page's script puts the browser's zone in the hidden `timezone` field: a new lead on a
    single opt-in form gets it at once, as its other fields. A value that is not an IANA zone (an old
    browser, a bot) is left out, and the person still signs up."""
    served = serve(forms={"report": SINGLE})
    answer = post(served, "report", {"email": "ny@example.com", "consent": "yes", "timezone": "America/New_York"})
    assert answer.status_code == 303
    row = lead(served, "ny@example.com")
    assert (row.timezone, row.attributes) == ("America/New_York", {})
    for i, bad in enumerate(("Mars/Olympus_Mons", "", "x" * 600, "Europe/London\x00", "../../etc/passwd")):
        answer = post(served, "report", {"email": f"odd{i}@example.com", "consent": "yes", "timezone": bad})
        assert answer.status_code == 303, bad
        odd = lead(served, f"odd{i}@example.com")
        assert (odd.consent_status, odd.timezone, odd.attributes) == ("subscribed", None, {}), bad
    [given, *_] = rows(served, tables.consent_records)
    assert given.fields == {"timezone": "America/New_York"}  # kept with the proof of consent


def test_a_posted_time_zone_waits_for_the_confirmation_like_every_other_field(serve: Any) -> None:
    """Invariant 13: a post about an existing lead changes nothing until its owner confirms, its zone
    included; a new lead on a double opt-in form has no fields, nor a zone, until then."""
    served = serve(forms={"report": DOUBLE})
    served.client().put("/v1/leads/ivy@example.com", json={"timezone": "Europe/London"})
    post(served, "report", {"email": "ivy@example.com", "company": "New Co", "consent": "on", "timezone": "Asia/Tokyo"})
    post(served, "report", {"email": "new@example.com", "consent": "on", "timezone": "Australia/Sydney"})
    assert lead(served, "ivy@example.com").timezone == "Europe/London"
    assert lead(served, "new@example.com").timezone is None
    ivy, new = rows(served, tables.consent_records)
    assert ivy.fields == {"company": "New Co", "timezone": "Asia/Tokyo"}
    for requested, address in ((ivy, "ivy@example.com"), (new, "new@example.com")):
        assert httpx.post(confirm_link(served, requested.id, address), timeout=10).status_code == 303
    confirmed = lead(served, "ivy@example.com")
    assert (confirmed.timezone, confirmed.attributes) == ("Asia/Tokyo", {"company": "New Co"})
    assert lead(served, "new@example.com").timezone == "Australia/Sydney"
    submitted = [e.properties for e in rows(served, tables.events) if e.name == "form_submitted"]
    assert submitted == [{"company": "New Co", "form": "report"}, {"form": "report"}]  # a zone is not an attribute


def test_both_signup_pages_fill_the_zone_with_a_script_from_this_app(serve: Any) -> None:
    """The engine's plain form and the example page carry the hidden field and load one script served
    by the app itself (no inline script: a page under `script-src 'self'` still fills it)."""
    served = serve(
        pages_dir=ROOT / "pages",
        forms={"cost-of-not-recycling": {"page": "lead-magnet/signup.html"}, "plain": {}},
    )
    for form in ("cost-of-not-recycling", "plain"):
        page = httpx.get(f"{served.url}/forms/{form}", timeout=10)
        assert '<input type="hidden" name="timezone" value="">' in page.text, form
        assert '<script src="/forms/timezone.js" defer></script>' in page.text, form
        assert "<script>" not in page.text, form
    script = httpx.get(f"{served.url}/forms/timezone.js", timeout=10)
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["x-content-type-options"] == "nosniff"
    assert "resolvedOptions().timeZone" in script.text and 'input[name="timezone"]' in script.text


def bounce(served: Served, email: str, status: str = "subscribed") -> None:
    """The address bounced: suppressed, as a report or the relay's 550 leaves it (and `status` for a lead
    an import marked bounced)."""
    from engine.store import leads as store

    with served.engine.begin() as conn:
        store.upsert_lead(conn, email, attributes={"first_name": "Hal"}, consent=status)
        store.suppress(conn, email, "bounced")


def suppression(served: Served, email: str) -> str | None:
    from engine.store.consents import suppression_reason

    with served.engine.connect() as conn:
        return suppression_reason(conn, email)


@pytest.mark.parametrize("status", ["subscribed", "bounced"])
def test_a_bounced_lead_that_confirms_a_signup_again_is_lifted_and_a_post_alone_lifts_nothing(
    serve: Any, status: str
) -> None:
    served = serve(forms={"report": DOUBLE})
    bounce(served, "hal@example.com", status)
    assert (
        post(served, "report", {"email": "hal@example.com", "first_name": "Mallory", "consent": "on"}).status_code
        == 303
    )
    # The post is a request: the bounce stands, nothing of the lead changed.
    assert (lead(served, "hal@example.com").consent_status, suppression(served, "hal@example.com")) == (
        status,
        "bounced",
    )
    assert lead(served, "hal@example.com").attributes == {"first_name": "Hal"}
    with RecordingSmtpServer() as smtp:
        [confirmation] = deliver(served, smtp, funnels=False)  # its confirmation goes to the bounced address
    assert confirmation.rcpt == ("hal@example.com",) and confirmation.funnel_step.startswith("form:report/confirm-")
    [requested] = [r for r in rows(served, tables.consent_records) if r.action == "requested"]
    assert httpx.post(confirm_link(served, requested.id, "hal@example.com"), timeout=10).status_code == 303
    assert (lead(served, "hal@example.com").consent_status, suppression(served, "hal@example.com")) == (
        "subscribed",
        None,
    )
    acts = [(r.action, r.status_before, r.status_after) for r in rows(served, tables.consent_records)]
    assert acts[1:] == [("lifted", status, "subscribed"), ("confirmed", "subscribed", "subscribed")]


def test_a_complained_or_erased_address_gets_no_confirmation_and_stays_suppressed(serve: Any) -> None:
    from engine.store import leads as store

    served = serve(forms={"report": DOUBLE})
    with served.engine.begin() as conn:
        store.upsert_lead(conn, "kat@example.com", consent="complained")
        store.suppress(conn, "kat@example.com", "complained")
    served.client().put("/v1/leads/lee@example.com", json={"consent": "subscribed"})
    bounce(served, "lee@example.com")
    assert served.client().delete("/v1/leads/lee@example.com").status_code in (200, 204)
    assert suppression(served, "lee@example.com") == "erased"  # the bounce became an erasure
    for address in ("kat@example.com", "lee@example.com"):
        assert post(served, "report", {"email": address, "consent": "on"}).status_code == 303
    with RecordingSmtpServer() as smtp:
        assert deliver(served, smtp, funnels=False) == []
    assert lead(served, "kat@example.com").consent_status == "complained"
    assert (suppression(served, "kat@example.com"), suppression(served, "lee@example.com")) == ("complained", "erased")
