"""The persona and journey keys of a funnel file: checked like every other key (file:line:column, what was
expected, what was found), a funnel's entry that lets in only another persona refused, funnels without
them keep their version, and a signup naming a persona enters only that persona's funnel."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from engine.authoring.validation import load_funnels, schema_text
from engine.runtime.worker import Worker
from engine.store import leads as store
from engine.store import tables
from engine.store.database import create_engine_for, upgrade

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
BROKEN = FIXTURES / "journey" / "broken"

# fixture file -> every error it must produce: (line, column, words the message must contain)
EXPECTED: dict[str, list[tuple[int, int, tuple[str, ...]]]] = {
    "persona-typos.yaml": [
        (5, 7, ("persona.id: expected a lowercase kebab-case id", "found 'Facilities Manager'")),
        (7, 3, ("unknown key 'goal' in persona", "expected one of id, name, description, goals, pains", "'goals'?")),
        (
            14,
            7,
            ("unknown key 'questoin' in stage 'inquiry' journey", "expected one of question, needs", "'question'?"),
        ),
        (15, 14, ("stage 'inquiry' journey.needs: expected a list", "found 'the report'")),
        (18, 17, ("stage 'comparison' journey.question: expected text of at least 1 character", "found ''")),
    ],
    "persona-elsewhere.yaml": [
        (
            10,
            38,
            (
                "entry.triggers[0].where.persona: the funnel's persona is 'facilities-manager'",
                "expected 'facilities-manager' among the values, found 'office-manager'",
            ),
        ),
        (11, 45, ("entry.triggers[1].condition.all[0].in:", "found 'owner', 'office-manager'")),
        # Trigger 2 tests persona under `any`: it need not hold, so it proves nothing; trigger 3 admits her.
    ],
}


def test_every_fixture_is_covered() -> None:
    assert sorted(p.name for p in BROKEN.glob("*.yaml")) == sorted(EXPECTED)


def test_broken_keys_are_reported_at_their_position() -> None:
    result = load_funnels([BROKEN], emails_dir=None)
    assert result.funnels == []
    for name, expected in EXPECTED.items():
        path = BROKEN / name
        errors = [e for e in result.errors if e.path == path]
        assert [(e.line, e.column) for e in errors] == [(line, col) for line, col, _ in expected], errors
        for error, (line, column, gists) in zip(errors, expected, strict=True):
            text = str(error)
            assert text.startswith(f"{path}:{line}:{column}: ")
            for gist in gists:
                assert gist in text


def test_the_published_schema_knows_the_keys() -> None:
    shipped = (ROOT / "config" / "funnel.schema.json").read_text(encoding="utf-8")
    assert shipped == schema_text(), "run `funnel schema` after changing the definition"
    schema = json.loads(shipped)
    assert set(schema["$defs"]["Persona"]["properties"]) == {"id", "name", "description", "goals", "pains"}
    assert schema["$defs"]["Persona"]["additionalProperties"] is False
    assert set(schema["$defs"]["JourneyNotes"]["properties"]) == {"question", "needs", "feelings", "content", "goal"}


def test_a_funnel_without_notes_keeps_its_version() -> None:
    """Absent keys are left out of the definition (and so of its hash): upgrading the engine does not
    make every funnel a new version."""
    (plain,) = load_funnels([FIXTURES / "valid" / "nurture.yaml"], emails_dir=None).funnels
    dumped = plain.model_dump(mode="json", by_alias=True)
    assert "persona" not in dumped and all("journey" not in s for s in dumped["stages"])
    (noted,) = load_funnels([ROOT / "funnels" / "lead-magnet.yaml"], emails_dir=None).funnels
    dumped = noted.model_dump(mode="json", by_alias=True)
    assert dumped["persona"]["id"] == "facilities-manager"
    assert all(s["journey"]["question"] for s in dumped["stages"])


def test_a_signup_enters_only_the_funnel_of_its_persona(tmp_path: Path) -> None:
    loaded = load_funnels([FIXTURES / "journey" / "personas"], emails_dir=None)
    assert loaded.ok, loaded.errors
    url = f"sqlite:///{tmp_path / 'funnel.db'}"
    upgrade(url)
    engine = create_engine_for(url)
    worker = Worker(engine, {f.id: f for f in loaded.funnels})
    now = datetime(2026, 11, 2, 9, tzinfo=UTC)
    signups = {"fiona@example.com": "facilities-manager", "omar@example.com": "owner", "ada@example.com": None}
    with engine.begin() as conn:
        for i, (address, persona) in enumerate(signups.items()):
            # What a form with a `persona` field records: the lead's attribute and the event's property.
            fields = {"persona": persona} if persona else {}
            lead = store.upsert_lead(conn, address, attributes=fields, now=now)
            event = store.NewEvent(f"signup-{i}", lead, "form_submitted", now, {"form": "report", **fields})
            store.record_events(conn, [event], now=now)
    worker.run_until_idle(now)
    with engine.connect() as conn:
        e, leads = tables.enrollments, tables.leads
        entered = conn.execute(
            sa.select(leads.c.email, e.c.funnel_id).select_from(e.join(leads, leads.c.id == e.c.lead_id))
        ).all()
    engine.dispose()
    assert sorted(entered) == [("fiona@example.com", "for-facilities"), ("omar@example.com", "for-owners")]
