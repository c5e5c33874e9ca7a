"""The command line takes addresses as every other entry does, through the real `funnel` command against a
real database and a real SMTP server: an erased address typed with a display name, padding, a capital or
a trailing comma is either refused or recognised as the erased one, and nothing reaches it; an IDN domain
and its ASCII form are one lead; the engine's own event names and ids cannot be typed."""

from __future__ import annotations

import sqlalchemy as sa

from engine.store import tables
from tests.acceptance.conftest import Project, write_emails

NOTES = """\
id: notes
name: Notes
entry:
  triggers:
    - event: x
    - manual: true
stages:
  - id: inquiry
    steps:
      - id: hello
        send: drip/hello
    on_end: exit
"""


def _setup(project: Project) -> None:
    write_emails(project.root, ["hello"])
    project.add_funnel("notes", NOTES)


def _leads(project: Project) -> list[str]:
    engine = project.db()
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(tables.leads.c.email).order_by(tables.leads.c.id)).scalars())
    finally:
        engine.dispose()


def test_an_erased_address_typed_any_other_way_is_refused_or_still_suppressed(project: Project) -> None:
    _setup(project)
    project.funnel("event", "erased1@example.com", "x")
    project.funnel("lead", "forget", "erased1@example.com", "--yes")

    named = project.funnel("event", "Erased <erased1@example.com>", "x", check=False)
    listed = project.funnel("event", " ERASED1@example.com,", "x", check=False)
    for refused, typed in ((named, "Erased <erased1@example.com>"), (listed, " ERASED1@example.com,")):
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"EMAIL: email {typed!r} is not a valid address" in refused.stderr
    assert "display name" in named.stderr and "one address" in listed.stderr

    # Typed with padding and capitals, it is the erased address: recorded, but on the suppression list.
    project.funnel("event", "  ERASED1@Example.com ", "x")
    assert _leads(project) == ["erased1@example.com"]

    project.funnel("run", "--once")
    assert project.smtp.messages() == []
    engine = project.db()
    try:
        with engine.connect() as conn:
            o = tables.outbox
            statuses = list(conn.execute(sa.select(o.c.status, o.c.skip_reason)))
    finally:
        engine.dispose()
    assert [s.status for s in statuses] == ["skipped"], statuses


def test_an_idn_domain_and_its_ascii_form_are_one_lead_at_every_command(sqlite_project: Project) -> None:
    project = sqlite_project
    _setup(project)
    project.funnel("event", " Idn@Bücher.Example ", "x", "--id", "first")
    project.funnel("lead", "enroll", "idn@xn--bcher-kva.example", "notes", "--by", "olivia")
    assert _leads(project) == ["idn@xn--bcher-kva.example"]
    shown = project.funnel("lead", "show", "IDN@bücher.example", "--utc")
    assert shown.stdout.startswith("idn@xn--bcher-kva.example: consent subscribed")

    project.funnel("run", "--once")
    (message,) = project.smtp.wait_for(1)
    assert message.rcpt == ("idn@xn--bcher-kva.example",)  # the relay is never offered SMTPUTF8

    refusals = [
        (("event", "josé@example.com", "x"), "josé@example.com", "SMTPUTF8"),
        (("lead", "enroll", "ann@example.test", "notes"), "ann@example.test", "special-use"),
        (("lead", "show", "Ann <ann@example.com>"), "Ann <ann@example.com>", "display name"),
        (("lead", "forget", "a@example.com;b@example.com", "--yes"), "a@example.com;b@example.com", "one address"),
    ]
    for command, typed, why in refusals:
        refused = project.funnel(*command, check=False)
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert f"EMAIL: email {typed!r} is not a valid address" in refused.stderr and why in refused.stderr
    assert _leads(project) == ["idn@xn--bcher-kva.example"]


def test_the_engines_own_event_names_and_ids_cannot_be_typed(sqlite_project: Project) -> None:
    project = sqlite_project
    _setup(project)
    project.funnel("db", "upgrade")
    forged = project.funnel("event", "ann@example.com", "manual_enroll", "--prop", "funnel=notes",
                            "--prop", "by=olivia", check=False)  # fmt: skip
    assert forged.returncode == 2
    assert "'manual_enroll' is the name of an event the engine records itself" in forged.stderr
    squatted = project.funnel("event", "ann@example.com", "x", "--id", "form:notes:1", check=False)
    assert squatted.returncode == 2
    assert "'form:' is kept for the engine's own event ids" in squatted.stderr
    assert _leads(project) == []
