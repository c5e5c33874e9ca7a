"""Hostile input: a stranger on the internet tries every way in that a security review found, against the
real app on a socket, the real worker and the real mailer, on SQLite and PostgreSQL (invariant 13).

Each attack is one row of `ATTACKS`, tried as the stranger would; what must not happen afterwards is
checked twice: the state it aimed at (a lead's fields, its consent, a stored event) is unchanged, and
the SMTP server got no email the attack caused. Meanwhile a real person signs up through the same
form and must get the report, so a defence that refuses everyone fails too. The tally's `faults` is
the number of hostile inputs tried, `strays` the emails they caused that nobody asked for.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr, ValidationError

from engine.authoring.validation import load_funnels
from engine.core.addresses import AddressError, normalise
from engine.core.secret_keys import new_key
from engine.core.webhook_targets import url_problem
from engine.http.api import create_app
from engine.mail.links import Links
from engine.mail.mailer import Mailer
from engine.mail.templates import TemplateError, TemplateLibrary, sample_context
from engine.runtime.worker import Worker
from engine.settings import DEFAULT_SECRET_KEY, HookSettings, Settings
from engine.store import apikeys, tables
from engine.store.database import create_engine_for
from tests.faults.tally import Tally
from tests.http.conftest import NOW, Clock, Served, start_server
from tests.smtp_server import RecordingSmtpServer, _free_port

ROOT = Path(__file__).resolve().parents[2]
FORM = "cost-of-not-recycling"
HOOK_SECRET = new_key()
STRANGER_NAME = "URGENT: your account is suspended, call +1-555-0100"

Attack = Callable[["Stage"], int]  # tries its hostile inputs, returns how many it tried


class Stage:
    """The app as strangers find it, and what the test needs to see behind it."""

    def __init__(self, served: Served, tmp_path: Path) -> None:
        self.served = served
        self.tmp_path = tmp_path
        self.links = Links(served.settings)

    def post_form(self, data: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{self.served.url}/forms/{FORM}", data=data, timeout=10)

    def lead(self, email: str) -> Any:
        with self.served.engine.connect() as conn:
            return conn.execute(sa.select(tables.leads).where(tables.leads.c.email == email)).first()

    def lead_count(self) -> int:
        with self.served.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(tables.leads)).scalar_one())

    def event_ids(self) -> set[str]:
        with self.served.engine.connect() as conn:
            return set(conn.execute(sa.select(tables.events.c.event_id)).scalars())

    def confirm_latest(self, email: str) -> None:
        """What the owner of `email` does: follows the link in the newest confirmation email."""
        lead = self.lead(email)
        with self.served.engine.connect() as conn:
            request_id = conn.execute(
                sa.select(sa.func.max(tables.consent_records.c.id)).where(
                    tables.consent_records.c.lead_id == lead.id, tables.consent_records.c.action == "requested"
                )
            ).scalar_one()
        answer = httpx.post(self.links.confirm_url(email, FORM, request_id), timeout=10)
        assert answer.status_code == 303, answer.text


def rewrite_a_lead_with_a_form_post(stage: Stage) -> int:
    """Hole 1: a cross-site form post about a subscribed lead, carrying the stranger's words (and a time
    zone that would send her emails at night)."""
    before = stage.lead("alice@example.com")
    posts = [
        {"email": "alice@example.com", "first_name": STRANGER_NAME, "company": "Evil Corp", "consent": "yes"},
        {"email": " Alice@Example.com ", "first_name": STRANGER_NAME, "consent": "yes", "timezone": "Pacific/Apia"},
    ]
    for data in posts:
        assert stage.post_form(data).status_code in (200, 303)
    after = stage.lead("alice@example.com")
    assert (after.attributes, after.consent_status, after.tags, after.score, after.timezone) == (
        before.attributes,
        before.consent_status,
        before.tags,
        before.score,
        before.timezone,
    )
    return len(posts)


def lift_an_opt_out(stage: Stage) -> int:
    """Hole 2: a form post on an unsubscribed address, then the API trying to finish the job."""
    client = stage.served.client()
    assert stage.post_form({"email": "bob@example.com", "consent": "yes"}).status_code in (200, 303)
    tries = 1
    for consent in ("subscribed", "pending", "subscribed"):
        answer = client.put("/v1/leads/bob@example.com", json={"consent": consent})
        assert answer.status_code == 409, answer.text
        tries += 1
    assert stage.lead("bob@example.com").consent_status == "unsubscribed"
    return tries


def forge_links_with_weak_keys(stage: Stage) -> int:
    """Hole 3: links signed with the public default key, an empty key, a one-character key."""
    tries = 0
    for weak in (DEFAULT_SECRET_KEY, "", "x"):
        weak_keys = {"secret_key": SecretStr(weak), "previous_secret_keys": []}
        forged = Links(stage.served.settings.model_copy(update=weak_keys))
        for url in (
            forged.click_url(
                "alice@example.com", "lead-magnet", "nurture-benefits", "pricing", "https://evil.example/"
            ),
            forged.unsubscribe_url("carol@example.com", None),
            forged.preferences_url("carol@example.com"),
        ):
            method = httpx.get if "/c/" in url else httpx.post
            assert method(url, timeout=10, follow_redirects=False).status_code == 404, url
            tries += 1
    assert stage.lead("carol@example.com").consent_status == "subscribed"
    return tries


def read_a_file_through_a_template(stage: Stage) -> int:
    """Hole 4: a partial that is a link to the server's secrets, included by an email and by a page;
    the emails are rendered as preview, validate and the mailer render them."""
    import shutil

    attacked = stage.tmp_path / "attacked"
    shutil.copytree(ROOT / "emails", attacked)
    (stage.tmp_path / "secrets.env").write_text("FUNNEL_SMTP__PASSWORD=hunter2-on-the-server\n")
    (attacked / "_partials" / "notes.txt").symlink_to(Path("..", "..", "secrets.env"))
    report = attacked / "lead-magnet" / "report-delivery.md"
    report.write_text(report.read_text() + '\n{% include "_partials/notes.txt" %}\n')
    library = TemplateLibrary(attacked)
    with pytest.raises(TemplateError, match="outside") as refused:
        library.render("lead-magnet/report-delivery", sample_context())
    assert "hunter2" not in str(refused.value)
    problems = library.check("lead-magnet/report-delivery")
    assert problems and all("hunter2" not in str(p) for p in problems)
    return 2


def type_an_erased_address_another_way(stage: Stage) -> int:
    """Hole 5: an erased address, typed with a display name, a list or padding, at every entry."""
    client = stage.served.client()
    assert client.delete("/v1/leads/erased1@example.com").status_code in (200, 204)
    typed = ["Erased <erased1@example.com>", " ERASED1@example.com,", "erased1@example.com, x@example.com"]
    for text in typed:
        with pytest.raises(AddressError):
            normalise(text)
        event = {"id": f"x-{len(text)}", "type": "signed_up", "email": text}
        assert client.post("/v1/events", json=[event]).status_code == 422
        assert stage.post_form({"email": text, "consent": "yes"}).status_code == 422
    # Typed with padding and capitals, it is the erased address itself: taken, and still suppressed.
    answer = client.post("/v1/events", json=[{"id": "x-pad", "type": "signed_up", "email": "  ERASED1@Example.com "}])
    assert answer.status_code in (200, 202), answer.text
    return len(typed) * 3 + 1


def squat_the_engines_event_ids(stage: Stage) -> int:
    """Hole 6: the ids the next signups' events will get, taken first through the API."""
    client = stage.served.client()
    ids = [f"form:{FORM}:{n}" for n in range(1, 30)] + ["click:1", "import:1", "manual-enroll:1"]
    events = [{"id": i, "type": "form_submitted", "email": "mallory@example.com"} for i in ids]
    for event in events:
        answer = client.post("/v1/events", json=[event])
        assert answer.status_code == 422 and "the engine" in answer.text, answer.text
    assert not any(i in stage.event_ids() for i in ids)
    return len(events)


def send_bodies_before_proving_anything(stage: Stage) -> int:
    """Hole 7: a 400 MiB body declared to a signed hook and to the events API, with no valid proof."""
    tries = 0
    for path in ("/hooks/shop", "/v1/events", f"/forms/{FORM}"):
        host, port = stage.served.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Funnel-Signature: t=1,v1=00\r\nContent-Length: {400 * 2**20}\r\n\r\n".encode()
            )
            assert conn.recv(200).startswith(b"HTTP/1.1 413"), path
        tries += 1
    return tries


def point_webhooks_at_private_addresses(stage: Stage) -> int:
    """Hole 8: webhook URLs that reach the cloud's metadata, private networks or the engine itself."""
    targets = stage.served.settings.webhook_targets()
    urls = [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://[fd00:ec2::254]/",
        "http://2852039166/",
        "http://0x7f000001/",
        "http://[::ffff:127.0.0.1]/",
        f"{stage.served.url}/ops/leads",
    ]
    for url in urls:
        assert url_problem(url, targets) is not None, url
    return len(urls)


def impersonate_the_engine(stage: Stage) -> int:
    """Hole 9: events named as the engine's own, by API and by signed hook."""
    client = stage.served.client()
    forged = [
        {"id": "m-1", "type": "manual_enroll", "email": "dan@example.com", "properties": {"funnel": "lead-magnet"}},
        {"id": "u-1", "type": "funnel_unsubscribed", "email": "alice@example.com", "properties": {"funnel": "x"}},
        {"id": "l-1", "type": "lead_updated", "email": "alice@example.com"},
        {"id": "o-1", "type": "order_completed", "email": "dan@example.com", "source": "ops"},
    ]
    for event in forged:
        answer = client.post("/v1/events", json=[event])
        assert answer.status_code == 422, answer.text
    assert stage.lead("dan@example.com") is None
    return len(forged)


def subscribe_a_pending_lead_from_its_preference_page(stage: Stage) -> int:
    """Hole 10: the preference link a pending lead holds, posted to stop all and start again."""
    assert stage.post_form({"email": "pat@example.com", "consent": "yes"}).status_code in (200, 303)
    url = stage.links.preferences_url("pat@example.com")
    for scope in ("all", "resubscribe", "resubscribe"):
        httpx.post(url, data={"scope": scope}, timeout=10)
    assert stage.lead("pat@example.com").consent_status != "subscribed"
    return 3


def configure_empty_secrets(stage: Stage) -> int:
    """Hole 11: a hook source or a webhook subscription whose signing secret is empty or an example."""
    tries = 0
    for secret in ("", "x", "whsec_test", DEFAULT_SECRET_KEY):
        with pytest.raises(ValidationError):
            HookSettings(secret=secret)  # type: ignore[arg-type]
        tries += 1
        with pytest.raises(ValidationError):
            Settings(webhooks={"crm": {"url": "https://crm.example.com/in", "secret": secret}})
        tries += 1
    return tries


ATTACKS: list[Attack] = [
    rewrite_a_lead_with_a_form_post,
    lift_an_opt_out,
    forge_links_with_weak_keys,
    read_a_file_through_a_template,
    type_an_erased_address_another_way,
    squat_the_engines_event_ids,
    send_bodies_before_proving_anything,
    point_webhooks_at_private_addresses,
    impersonate_the_engine,
    subscribe_a_pending_lead_from_its_preference_page,
    configure_empty_secrets,
]


@pytest.fixture
def stage(db_url: str, tmp_path: Path) -> Iterator[Stage]:
    """The example funnel's form (double opt-in) and a signed hook, served on loopback with a real key."""
    engine = create_engine_for(db_url)
    port = _free_port("127.0.0.1")
    settings = Settings(
        data_dir=tmp_path,
        base_url=f"http://127.0.0.1:{port}",
        secret_key=new_key(),
        forms={FORM: {"double_opt_in": True, "fields": ["first_name", "company"]}},
        hooks={"shop": HookSettings(secret=HOOK_SECRET)},  # type: ignore[arg-type]
    )
    with engine.begin() as conn:
        key = apikeys.create(conn, "hostile", NOW)
    server, thread = start_server(create_app(settings, engine, clock=Clock()), port)
    try:
        yield Stage(Served(f"http://127.0.0.1:{port}", engine, settings, key), tmp_path)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


def test_a_stranger_changes_nothing_and_causes_no_email(stage: Stage, fault_report: Callable[[Tally], None]) -> None:
    client = stage.served.client()
    for email, consent in (("alice@example.com", "subscribed"), ("carol@example.com", "subscribed")):
        answer = client.put(f"/v1/leads/{email}", json={"attributes": {"first_name": "Alice"}, "consent": consent})
        assert answer.status_code == 200, answer.text
    assert client.put("/v1/leads/bob@example.com", json={"consent": "unsubscribed"}).status_code == 200

    tried = {attack.__name__: attack(stage) for attack in ATTACKS}

    # A real person, after all that: signs up, confirms, and must get the report (hole 6 aimed at this).
    assert stage.post_form({"email": "hana@example.com", "first_name": "Hana", "consent": "yes"}).status_code == 303
    stage.confirm_latest("hana@example.com")

    loaded = load_funnels([ROOT / "funnels"], emails_dir=None)
    assert loaded.ok, loaded.errors
    worker = Worker(stage.served.engine, {f.id: f for f in loaded.funnels})
    worker.publish(NOW)
    worker.run_until_idle(NOW)
    with RecordingSmtpServer() as smtp:
        smtp_settings = stage.served.settings.smtp.model_copy(
            update={"host": smtp.host, "port": smtp.port, "security": "none"}
        )
        mailer = Mailer(
            stage.served.engine,
            stage.served.settings.model_copy(update={"smtp": smtp_settings}),
            TemplateLibrary(ROOT / "emails"),
        )
        asyncio.run(mailer.dispatch(NOW, smtp.host, smtp.port))
        received = smtp.messages()

    def confirmation(step: str) -> bool:
        return step.startswith(f"form:{FORM}/confirm-")

    # Emails the attacks may cause: a plain confirmation to the address's owner, nothing else.
    strays = [
        m
        for m in received
        if not confirmation(m.funnel_step)
        and not (m.rcpt == ("hana@example.com",) and m.funnel_step == "lead-magnet/deliver-report")
    ]
    leaked = [m for m in received if "hunter2" in m.body or STRANGER_NAME in m.body + m.subject]
    expected = [("hana@example.com", "lead-magnet/deliver-report")]
    delivered = [(m.rcpt[0], m.funnel_step) for m in received if (m.rcpt[0], m.funnel_step) in expected]
    tally = Tally(
        scenario=f"hostile inputs: 11 holes ({stage.served.engine.dialect.name})",
        faults=sum(tried.values()),
        leads=stage.lead_count(),
        expected=len(expected),
        delivered=len(delivered),
        strays=len(strays) + len(leaked),
        lost=len(expected) - len(delivered),
    )
    tally.notes.append("tried: " + ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in tried.items()))
    fault_report(tally)
    assert strays == [] and leaked == [], [(m.rcpt, m.funnel_step) for m in strays + leaked]
    assert delivered == expected, [(m.rcpt, m.funnel_step) for m in received]
    assert {m.rcpt[0] for m in received if confirmation(m.funnel_step)} <= {
        "alice@example.com",
        "bob@example.com",
        "pat@example.com",
        "hana@example.com",
    }
