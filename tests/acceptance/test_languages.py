"""A lead's language end to end: `funnel event` and `funnel run --once` as real processes, a real
database (SQLite and PostgreSQL) and a real SMTP server. Each lead reads the translation its language's
lookup chain finds, chosen when the email is composed; `outbox.language` says which; a step's email goes
once whatever the language does meanwhile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from engine.authoring.validation import load_funnels
from engine.runtime.worker import Worker
from engine.store import leads as store
from engine.store.tables import leads, outbox
from tests.acceptance.conftest import Project, iso, write_emails

DRIP = """\
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
        send: drip/welcome
      - id: pause
        wait: 2s
      - id: tip
        send: drip/tip
    on_end: exit
"""

# (template, language folder, subject): `tip` has no French translation.
TRANSLATIONS = [
    ("welcome", "de", "Willkommen"),
    ("welcome", "fr", "Bienvenue"),
    ("tip", "de", "Tipp"),
]


def _setup(project: Project) -> None:
    emails = write_emails(project.root, ["welcome", "tip"])
    for name, language, subject in TRANSLATIONS:
        folder = emails / "drip" / language
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.md").write_text(
            f'---\nsubject: "{subject} {{{{ lead.language }}}}"\n---\n{subject}, {{{{ lead.email }}}}.\n'
        )
    project.add_funnel("drip", DRIP)


def _sent(project: Project) -> dict[tuple[str, str], tuple[str, str | None]]:
    """{(address, step): (status, language)} of every outbox row."""
    engine = project.db()
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(leads.c.email, outbox.c.step, outbox.c.status, outbox.c.language).join(
                    leads, leads.c.id == outbox.c.lead_id
                )
            ).all()
    finally:
        engine.dispose()
    return {(r.email, r.step): (r.status, r.language) for r in rows}


def _set_language(project: Project, address: str, language: str, now: datetime) -> None:
    engine = project.db()
    try:
        with engine.begin() as conn:
            store.upsert_lead(conn, address, language=language, now=now)
    finally:
        engine.dispose()


def test_each_lead_reads_its_language_and_the_outbox_says_which(project: Project) -> None:
    _setup(project)
    start = datetime.now(UTC)
    chosen = {"de@example.com": "de", "fr@example.com": "fr-CA", "ada@example.com": None, "switch@example.com": "en"}
    for address, language in chosen.items():
        project.funnel("event", address, "signed_up", "--id", f"signup-{address}", "--at", iso(start))
        if language is not None:
            _set_language(project, address, language, start)
    project.funnel("run", "--once", "--now", iso(start))
    # The lead of `switch@` changes language between the two steps.
    _set_language(project, "switch@example.com", "de-AT", start)
    project.funnel("run", "--once", "--now", iso(start + timedelta(seconds=5)))

    got = project.smtp.wait_for(8, timeout=2)
    subjects = {(m.rcpt[0], m.funnel_step): m.subject for m in got}
    assert subjects == {
        ("de@example.com", "drip/welcome"): "Willkommen de",
        ("de@example.com", "drip/tip"): "Tipp de",
        # French where it exists; the default where there is no French (nor French-Canadian) text.
        ("fr@example.com", "drip/welcome"): "Bienvenue fr-CA",
        ("fr@example.com", "drip/tip"): "Tip for you",
        ("ada@example.com", "drip/welcome"): "Welcome for you",
        ("ada@example.com", "drip/tip"): "Tip for you",
        ("switch@example.com", "drip/welcome"): "Welcome for you",
        ("switch@example.com", "drip/tip"): "Tipp de-AT",
    }
    assert set(project.smtp.per_lead_step().values()) == {1}
    assert _sent(project) == {
        ("de@example.com", "welcome"): ("sent", "de"),
        ("de@example.com", "tip"): ("sent", "de"),
        ("fr@example.com", "welcome"): ("sent", "fr"),
        ("fr@example.com", "tip"): ("sent", "en"),
        ("ada@example.com", "welcome"): ("sent", "en"),
        ("ada@example.com", "tip"): ("sent", "en"),
        ("switch@example.com", "welcome"): ("sent", "en"),
        ("switch@example.com", "tip"): ("sent", "de"),
    }


def test_a_language_changed_between_queue_and_send_sends_one_email_in_the_new_language(project: Project) -> None:
    _setup(project)
    now = datetime.now(UTC)
    project.funnel("event", "cy@example.com", "signed_up", "--id", "signup-cy", "--at", iso(now))
    _set_language(project, "cy@example.com", "fr", now)
    loaded = load_funnels([project.funnels_dir], emails_dir=project.emails_dir)
    assert not loaded.errors
    engine = project.db()
    try:
        # The tick queues the welcome email in no language yet: it is chosen when the email is composed.
        assert Worker(engine, {f.id: f for f in loaded.funnels}).tick(now).emails_queued == 1
        with engine.begin() as conn:
            store.upsert_lead(conn, "cy@example.com", language="de", now=now)
    finally:
        engine.dispose()
    assert _sent(project) == {("cy@example.com", "welcome"): ("queued", None)}

    project.funnel("run", "--once", "--now", iso(now))
    project.funnel("run", "--once", "--now", iso(now + timedelta(seconds=1)))
    got = project.smtp.wait_for(2, timeout=1)
    assert [(m.funnel_step, m.subject) for m in got] == [("drip/welcome", "Willkommen de")]
    assert _sent(project) == {("cy@example.com", "welcome"): ("sent", "de")}
