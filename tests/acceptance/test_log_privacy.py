"""What `funnel run` writes to its log, through its own log setup, while it is driven with addresses in
other scripts (an accented local part, a German domain, fullwidth letters) over every path that can put
an address in a log line: form posts, events, signed hooks, the dashboard's sign-in, emails the relay
answers strangely or the engine cannot send, unsubscribes, erasure, outbound webhooks, imports.

No line holds an address, its local part, a signed token or a webhook receiver's secret path or query;
the lines that speak of a lead name it by its pseudonym.
"""

from __future__ import annotations

import http.server
import re
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa

from engine.core.redaction import pseudonym
from engine.store import leads as store
from engine.store import tables
from tests.acceptance.conftest import Project, write_emails
from tests.acceptance.test_http_engine import _wait_until_up
from tests.smtp_server import Received, RecordingHandler, RecordingSmtpServer, _free_port

GUIDE = """\
id: guide
name: Guide
entry:
  triggers:
    - event: form_submitted
    - event: lead_imported
      where: {funnel: guide}
stages:
  - id: inquiry
    steps:
      - id: welcome
        send: drip/welcome
    on_end: stay
"""

# Rows stored before the address rules (a local part that needs SMTPUTF8, a Unicode domain): the engine
# cannot send to the first two and tells why, and a relay quotes the third with its Unicode domain.
LEGACY = ("josé.quince@example.com", "ｆｕｌｌ@example.com", "quokka7@straße.example")
SIGNUP = "quokka8@straße.example"  # through the form, then unsubscribed
EVENT = "quokka9@straße.example"  # through the API, then erased
IMPORTED = "quokka10@straße.example"  # through `funnel import` into the funnel
SECRET_PATH = "/services/T00/B00/XoXoSecretPath"
SECRET_QUERY = "api_key=sk_live_51Hsecret"
# What must not be in any line: the addresses, their local parts, every spelling of their domains.
NEEDLES = (
    "josé", "jose", "quince", "ｆｕｌｌ", "full@", "quokka", "straße", "strasse", "strae-oqa", "stra%c3%9f",
    "XoXoSecretPath", "sk_live", "api_key",
)  # fmt: skip


class QuirkyRelay(RecordingHandler):
    """Takes every message, but answers the DATA of one recipient with a reply that is no reply (a 299),
    quoting the address with its Unicode domain: the engine cannot know whether the relay has it."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        said = await super().handle_DATA(server, session, envelope)
        if any(r.startswith("quokka7@") for r in envelope.rcpt_tos):
            return "299 <quokka7@straße.example> stored, maybe"
        return said


class Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    paths: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        Receiver.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # the test's own server says nothing
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    """A webhook receiver (a CRM) on loopback; its URL carries a secret path and query."""
    Receiver.paths = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}{SECRET_PATH}?{SECRET_QUERY}"
    server.shutdown()
    thread.join(timeout=10)


def config(receiver_url: str) -> str:
    return f"""\
[forms.report]
consent_version = "v1"

[hooks.shop]
secret = "{secrets.token_urlsafe(32)}"

[webhooks]
allow_private_hosts = ["127.0.0.1"]
poll_s = 0.2

[webhooks.crm]
url = "{receiver_url}"
secret = "{secrets.token_urlsafe(32)}"
"""


def store_legacy_leads(project: Project) -> None:
    """Leads stored under addresses the rules now refuse, as an older version kept them, each with the
    event that enters it into the funnel."""
    now = datetime.now(UTC)
    engine = project.db()
    try:
        with engine.begin() as conn:
            for n, address in enumerate(LEGACY):
                lead_id = conn.execute(
                    sa.insert(tables.leads)
                    .values(email=address, attributes={}, tags=[], score=0, consent_status="subscribed",
                            created_at=now, updated_at=now)
                    .returning(tables.leads.c.id)
                ).scalar_one()  # fmt: skip
                store.record_events(
                    conn, [store.NewEvent(f"legacy-{n}", lead_id, "form_submitted", now, {}, "api")], now=now
                )
    finally:
        engine.dispose()


def email_to(relay: RecordingSmtpServer, rcpt: str) -> Received:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for message in relay.messages():
            if message.rcpt == (rcpt,):
                return message
        time.sleep(0.1)
    raise AssertionError(f"no email to {rcpt}: {relay.messages()}")


def unsubscribe_link(message: Received, url: str) -> str:
    found = re.search(rf"{re.escape(url)}/u/[A-Za-z0-9_.\-]+", message.body)
    assert found, message.body
    return found.group(0)


def test_no_address_token_or_secret_reaches_the_log_of_funnel_run(
    tmp_path: Path, receiver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RecordingSmtpServer(handler=QuirkyRelay(), smtputf8=True) as relay:
        project = Project(tmp_path, f"sqlite:///{tmp_path / 'data' / 'funnel.db'}", relay)
        write_emails(project.root, ["welcome"])
        (project.root / "config").mkdir()
        (project.root / "config" / "funnel.toml").write_text(config(receiver))
        project.add_funnel("guide", GUIDE)
        key = project.funnel("apikey", "create", "--name", "shop").stdout.strip().splitlines()[-1]
        store_legacy_leads(project)

        port = _free_port("127.0.0.1")
        url = f"http://127.0.0.1:{port}"
        log = tmp_path / "run.log"
        proc = project.spawn(
            "run", log=log, FUNNEL_HTTP__PORT=str(port), FUNNEL_BASE_URL=url, FUNNEL_TICK_SECONDS="0.2",
            FUNNEL_LOG_LEVEL="DEBUG", FUNNEL_LOG_LEVEL_LIBRARIES="DEBUG",
        )  # fmt: skip
        tokens: list[str] = []
        try:
            _wait_until_up(url, time.monotonic() + 60)
            api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
            web = httpx.Client(base_url=url, timeout=10)
            # A signup through the form; a click on the unsubscribe link of its email, then one-click.
            signup = {"email": SIGNUP, "name": "Quokka", "consent": "yes", "company": LEGACY[0]}
            assert web.post("/forms/report", data=signup).status_code == 303
            link = unsubscribe_link(email_to(relay, "quokka8@xn--strae-oqa.example"), url)
            tokens.append(link.rsplit("/", 1)[1])
            assert web.get(link).status_code == 200
            assert web.post(link, data={"List-Unsubscribe": "One-Click"}).status_code == 200
            # Events: two addresses the API refuses, one it takes; then that lead is erased.
            for address in (*LEGACY[:2], EVENT):
                api.post("/v1/events", json={"id": f"e-{address}", "type": "form_submitted", "email": address})
            assert api.get(f"/v1/leads/{quote(EVENT)}").status_code == 200
            assert api.delete(f"/v1/leads/{quote(EVENT)}").status_code == 204
            # An import into the funnel, beside a row the import refuses.
            csv = tmp_path / "leads.csv"
            csv.write_text(f"email,company\n{IMPORTED},Quokka Ltd\n{LEGACY[0]},X\n", encoding="utf-8")
            imported = project.funnel("import", str(csv), "--funnel", "guide", "--skip-bad-rows")
            assert "imported 1 new lead(s)" in imported.stdout, imported.stdout + imported.stderr
            # A signed hook from a source nobody configured, named like an address.
            assert web.post(f"/hooks/{quote(LEGACY[0])}", content=b"{}").status_code == 401
            # The dashboard's sign-in, with an address typed as the name.
            nonce = re.search(r'name="nonce" value="([^"]+)"', web.get("/ops/login").text)
            assert nonce is not None
            web.post("/ops/login", data={"name": LEGACY[1], "password": "x", "nonce": nonce.group(1)})
            # Every email the engine could send went out (the quirky one too), and the CRM heard of each.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(Receiver.paths) < 5:
                time.sleep(0.2)
            time.sleep(1)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
    text = log.read_text(encoding="utf-8")
    assert code == 0, text
    # Each lead that entered the funnel (three stored before the rules, the signup, the import; the event's
    # lead too, unless it was erased first).
    assert len(Receiver.paths) >= 5 and all(p == f"{SECRET_PATH}?{SECRET_QUERY}" for p in Receiver.paths)
    email_to(relay, "quokka10@xn--strae-oqa.example")

    lowered = text.lower()
    found = [needle for needle in NEEDLES if needle.lower() in lowered]
    assert not found, f"{found} in the log:\n{text[-6000:]}"
    assert tokens and not any(token.split(".")[0] in text for token in tokens)  # the payload holds the address

    # The lines are there, naming each lead by its pseudonym.
    assert re.search(rf"message \d+ \(guide/welcome\) [a-z ]+: .*{re.escape(pseudonym(LEGACY[0]))}", text), text
    assert re.search(rf"message \d+ \(guide/welcome\) [a-z ]+: .*{re.escape(pseudonym(LEGACY[1]))}", text), text
    assert re.search(rf"message \d+ \(guide/welcome\) is unknown: .*{re.escape(pseudonym(LEGACY[2]))}", text), text
    assert f"refused a webhook from '{pseudonym(LEGACY[0])}'" in text
    assert f"ops sign-in refused for '{pseudonym(LEGACY[1])}'" in text
    origin = receiver.split("/services")[0]
    assert re.search(rf'HTTP Request: POST {re.escape(origin)} "HTTP/1.1 200 OK"', text), text
    assert '"POST /u/<token> HTTP/1.1" 200' in text
    assert f'"DELETE /v1/leads/{pseudonym(EVENT)} HTTP/1.1" 204' in text


def test_libraries_log_nothing_at_info_unless_asked(tmp_path: Path, receiver: str) -> None:
    """`funnel run --once` sends the webhook of a signup: httpx's line of it appears only when
    `log_level_libraries` asks for INFO, and then with the receiver's origin only."""
    with RecordingSmtpServer() as relay:
        project = Project(tmp_path, f"sqlite:///{tmp_path / 'data' / 'funnel.db'}", relay)
        write_emails(project.root, ["welcome"])
        (project.root / "config").mkdir()
        (project.root / "config" / "funnel.toml").write_text(config(receiver))
        project.add_funnel("guide", GUIDE)
        origin = receiver.split("/services")[0]
        lines = []
        for n, libraries in enumerate(("WARNING", "INFO")):
            project.funnel("event", f"ann{n}@example.com", "form_submitted", "--id", f"signup-{n}")
            done = subprocess_run(project, FUNNEL_LOG_LEVEL_LIBRARIES=libraries)
            lines.append([line for line in done.splitlines() if "HTTP Request" in line])
    assert len(Receiver.paths) == 2
    assert lines[0] == []
    assert len(lines[1]) == 1 and lines[1][0].endswith(f'INFO httpx HTTP Request: POST {origin} "HTTP/1.1 200 OK"')


def subprocess_run(project: Project, **env: str) -> str:
    import subprocess

    done = subprocess.run(
        project.command("run", "--once"), cwd=project.root, env=project.env(**env), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr
