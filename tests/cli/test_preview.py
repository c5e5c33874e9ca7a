"""`funnel preview`: the message a lead would get, built by the mailer's own code, written to files."""

from __future__ import annotations

import subprocess
import sys
from email import message_from_bytes
from email.policy import strict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def preview(tmp_path: Path, template: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "preview", template, "--out", str(tmp_path), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_preview_writes_html_text_headers_and_a_message_that_parses_strictly(tmp_path: Path) -> None:
    result = preview(tmp_path, "lead-magnet/benefits-of-recycling", "--lead", "jo@example.com")
    assert result.returncode == 0, result.stderr
    stem = tmp_path / "lead-magnet--benefits-of-recycling"
    assert result.stdout.split() == [f"{stem}.html", f"{stem}.txt", f"{stem}.headers.txt", f"{stem}.eml"]
    message = message_from_bytes(Path(f"{stem}.eml").read_bytes(), policy=strict)
    assert message["To"] == "jo@example.com"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "<mailto:" in message["List-Unsubscribe"] and "/u/" in message["List-Unsubscribe"]
    assert {part.get_content_type() for part in message.walk()} >= {"text/plain", "text/html"}
    assert "Unsubscribe" in Path(f"{stem}.html").read_text() or "unsubscribe" in Path(f"{stem}.html").read_text()


def test_line_breaks_in_lead_data_never_make_an_extra_header(tmp_path: Path) -> None:
    lead = tmp_path / "lead.yaml"
    lead.write_text('email: sam@example.com\nattributes:\n  company: "Acme\\r\\nBcc: victim@example.com"\n')
    result = preview(tmp_path, "lead-magnet/first-month-check-in", "--lead", str(lead))
    assert result.returncode == 0, result.stderr
    raw = (tmp_path / "lead-magnet--first-month-check-in.eml").read_bytes()
    message = message_from_bytes(raw, policy=strict)
    assert message["Bcc"] is None
    assert b"\nBcc:" not in raw
    assert "Acme" in message["Subject"]


def _example_templates() -> list[str]:
    from engine.mail.templates import TemplateLibrary

    return [n for n in TemplateLibrary(ROOT / "emails").names() if n.startswith("lead-magnet/")]


def test_every_example_email_has_the_required_headers_and_a_text_part() -> None:
    from datetime import UTC, datetime

    from engine.core.outbox_item import OutboxItem
    from engine.mail.mailer import Mailer
    from engine.mail.templates import TemplateLibrary
    from engine.settings import Settings

    settings = Settings()
    mailer = Mailer(None, settings, TemplateLibrary(ROOT / "emails"))  # type: ignore[arg-type]
    names = _example_templates()
    assert len(names) >= 12
    for name in names:
        item = OutboxItem(
            1,
            1,
            "jo@example.com",
            "subscribed",
            {"first_name": "Jo"},
            "lead-magnet",
            "s",
            name,
            "inquiry",
            False,
            0,
            False,
        )
        prepared = mailer.compose(item, datetime(2026, 11, 23, tzinfo=UTC))
        raw, message_id = prepared.payload, prepared.message_id
        parsed = message_from_bytes(raw, policy=strict)
        for header in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post"):
            assert parsed[header], f"{name}: no {header}"
        assert parsed["Message-ID"] == message_id
        text = parsed.get_body(preferencelist=("plain",))
        html = parsed.get_body(preferencelist=("html",))
        assert text is not None and html is not None, name
        assert text.get_content().strip(), f"{name}: empty text part"
        assert all(len(line) <= 998 for line in raw.split(b"\r\n")), f"{name}: a line over 998 octets"


def test_a_from_with_a_display_name_is_sent_with_that_name(tmp_path: Path) -> None:
    import shutil
    from datetime import UTC, datetime

    from engine.core.outbox_item import OutboxItem
    from engine.mail.mailer import Mailer
    from engine.mail.templates import TemplateLibrary
    from engine.settings import Settings

    emails = tmp_path / "emails"
    for shared in ("_layouts", "_partials"):
        shutil.copytree(ROOT / "emails" / shared, emails / shared)
    (emails / "t").mkdir(parents=True)
    (emails / "t" / "note.md").write_text(
        "---\nsubject: A note\nfrom: Zoë at Greenleaf <zoe@greenleaf.example>\n---\n"
        "Hello. [Unsubscribe]({{ unsubscribe_url }})\n"
    )
    mailer = Mailer(None, Settings(), TemplateLibrary(emails))  # type: ignore[arg-type]
    item = OutboxItem(1, 1, "jo@example.com", "subscribed", {}, "f", "s", "t/note", "inquiry", False, 0, False)
    parsed = message_from_bytes(mailer.compose(item, datetime(2026, 11, 23, tzinfo=UTC)).payload, policy=strict)
    assert parsed["From"].addresses[0].display_name == "Zoë at Greenleaf"
    assert parsed["From"].addresses[0].addr_spec == "zoe@greenleaf.example"


def test_a_template_cannot_read_a_file_outside_the_emails_folder(tmp_path: Path) -> None:
    import shutil

    # A project whose `.env` holds its secrets, and a partial committed as a link to it.
    shutil.copytree(ROOT / "emails", tmp_path / "emails")
    (tmp_path / ".env").write_text("FUNNEL_SMTP__PASSWORD=hunter2-relay-password\n")
    (tmp_path / "emails" / "_partials" / "notes.txt").symlink_to(Path("..", "..", ".env"))
    report = tmp_path / "emails" / "lead-magnet" / "report-delivery.md"
    text = report.read_text()
    report.write_text(text + '\n{% include "_partials/notes.txt" %}\n')
    line = text.count("\n") + 2
    out = tmp_path / "out"
    result = preview(out, "lead-magnet/report-delivery", "--emails", str(tmp_path / "emails"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{report.as_posix()}:{line}: "), result.stderr
    assert "_partials/notes.txt" in result.stderr and "outside" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert not out.exists() or not any("hunter2" in p.read_text() for p in out.iterdir())


def test_a_template_past_the_bounds_is_refused_with_its_file_and_line_at_once(tmp_path: Path) -> None:
    import shutil
    import time

    shutil.copytree(ROOT / "emails", tmp_path / "emails")
    report = tmp_path / "emails" / "lead-magnet" / "report-delivery.md"
    text = report.read_text()
    report.write_text(text + "\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n")
    started = time.monotonic()
    result = preview(tmp_path / "out", "lead-magnet/report-delivery", "--emails", str(tmp_path / "emails"))
    assert time.monotonic() - started < 30  # it kept a command busy for minutes
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"{report.as_posix()}:{text.count(chr(10)) + 2}: more than 100,000 loop iterations and calls in one email"
    ), result.stderr


LANGUAGES_FUNNEL = """\
id: drip
name: Drip
languages:
  default: en
  others: [de, fr]
entry:
  triggers:
    - event: signed_up
stages:
  - id: nurture
    steps:
      - id: welcome
        send: lead-magnet/x
    on_end: exit
"""


def _translated_project(root: Path) -> None:
    from tests.acceptance.conftest import LAYOUT

    (root / "funnels").mkdir()
    (root / "funnels" / "drip.yaml").write_text(LANGUAGES_FUNNEL)
    emails = root / "emails"
    (emails / "_layouts").mkdir(parents=True)
    (emails / "_layouts" / "base.html").write_text(LAYOUT)
    for folder, subject in (("lead-magnet", "Welcome"), ("lead-magnet/fr", "Bienvenue"), ("lead-magnet/es", "Hola")):
        (emails / folder).mkdir(parents=True, exist_ok=True)
        (emails / folder / "x.md").write_text(f'---\nsubject: "{subject}"\n---\n{subject}, {{{{ lead.email }}}}.\n')


def _preview_in(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNEL_")}
    env["FUNNEL_FUNNELS_DIR"] = str(root / "funnels")
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "preview", "lead-magnet/x", "--out", str(root / "out"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_preview_in_a_language_says_the_chain_tried_and_renders_the_file_used(tmp_path: Path) -> None:
    _translated_project(tmp_path)
    french = _preview_in(tmp_path, "--language", "FR_ca")
    assert french.returncode == 0, french.stderr
    assert french.stdout.splitlines()[0] == "fr-CA: fr-CA (no file) -> fr: emails/lead-magnet/fr/x.md"
    message = message_from_bytes((tmp_path / "out" / "lead-magnet--x.eml").read_bytes(), policy=strict)
    assert message["Subject"] == "Bienvenue"
    # A translation of a language the funnel does not declare is not read: the default is.
    spanish = _preview_in(tmp_path, "--language", "es-MX", "--funnel", "drip")
    assert spanish.returncode == 0, spanish.stderr
    assert spanish.stdout.splitlines()[0] == (
        "es-MX: es-MX (no file) -> es (emails/lead-magnet/es/x.md, not a language of the funnel)"
        " -> en: emails/lead-magnet/x.md"
    )
    assert message_from_bytes((tmp_path / "out" / "lead-magnet--x.eml").read_bytes())["Subject"] == "Welcome"
    bad = _preview_in(tmp_path, "--language", "french")
    assert (
        bad.returncode == 2
        and "--language: expected a language tag such as 'de' or 'fr-CA', found 'french'" in bad.stderr
    )
    unknown = _preview_in(tmp_path, "--language", "de", "--funnel", "nope")
    assert unknown.returncode == 2 and "--funnel: no funnel 'nope'" in unknown.stderr
