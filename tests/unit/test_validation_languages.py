"""`funnel validate` and a funnel's languages: each translation checked like its default, missing ones
noted (or refused where the language is complete), translations no lead reads reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.authoring.translations import lead_fields_used
from engine.authoring.validation import LoadResult, load_funnels
from engine.cli.main import app
from engine.mail.templates import TemplateLibrary

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "languages"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the fixture, to break one thing at a time."""
    shutil.copytree(FIXTURE, tmp_path / "p")
    return tmp_path / "p"


def load(root: Path) -> LoadResult:
    return load_funnels([root / "funnels"], emails_dir=root / "emails")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_the_fixture_is_valid_and_notes_the_missing_french_tips() -> None:
    result = load(FIXTURE)
    assert result.ok, result.errors
    missing = FIXTURE / "emails" / "welcome" / "fr" / "tips.md"
    assert result.notes == [
        f"{FIXTURE / 'funnels' / 'welcome.yaml'}: welcome/tips: fr falls back to en (no {missing.as_posix()})"
    ]


def test_a_regional_language_falls_back_to_its_language_before_the_default(project: Path) -> None:
    edit(project / "funnels" / "welcome.yaml", "others: [de, fr]", "others: [de, fr, fr-CA]")
    notes = [n.split(": ", 1)[1] for n in load(project).notes]
    emails = (project / "emails").as_posix()
    assert notes == [
        f"welcome/hello: fr-CA falls back to fr (no {emails}/welcome/fr-CA/hello.md)",
        f"welcome/tips: fr falls back to en (no {emails}/welcome/fr/tips.md)",
        f"welcome/tips: fr-CA falls back to en (no {emails}/welcome/fr-CA/tips.md)",
    ]


def test_a_complete_language_refuses_a_missing_translation_at_the_step(project: Path) -> None:
    funnel = project / "funnels" / "welcome.yaml"
    edit(funnel, "others: [de, fr]}", "others: [de, fr], complete: [fr]}")
    result = load(project)
    assert [(e.path, e.line) for e in result.errors] == [(funnel, 20)]
    message = result.errors[0].message
    assert message.startswith("stage 'welcome' step 'tips' send: email template 'welcome/tips' has no fr translation")
    assert f"{(project / 'emails' / 'welcome' / 'fr' / 'tips.md').as_posix()}" in message
    assert result.funnels == []
    # German is complete: every email has it.
    edit(funnel, "complete: [fr]", "complete: [de]")
    assert load(project).ok


def test_cli_validate_prints_the_note_and_exits_1_on_a_complete_gap(project: Path) -> None:
    args = ["validate", str(project / "funnels"), "--emails", str(project / "emails")]
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    assert "welcome/tips: fr falls back to en (no " in " ".join(outcome.output.split())
    edit(project / "funnels" / "welcome.yaml", "others: [de, fr]}", "others: [de, fr], complete: [fr]}")
    outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 1
    assert "has no fr translation" in " ".join(outcome.output.split())


def test_a_translation_is_rendered_like_its_default_and_located_at_its_own_file(project: Path) -> None:
    broken = project / "emails" / "welcome" / "fr" / "hello.md"
    edit(broken, "bienvenue parmi nous.", "bienvenue parmi nous.\n\n{{ lead.first_name }}, {% if %}")
    errors = load(project).errors
    assert errors and all(e.path == Path(broken.as_posix()) for e in errors), errors
    assert errors[0].line == 6


def test_a_translation_without_a_subject_is_refused(project: Path) -> None:
    broken = project / "emails" / "welcome" / "de" / "hello.md"
    edit(broken, "subject: \"Willkommen, {{ lead.first_name | default('liebe Leserin, lieber Leser') }}\"\n", "")
    errors = load(project).errors
    assert [e.path for e in errors] == [Path(broken.as_posix())]
    assert "subject" in errors[0].message


def test_a_translation_may_not_use_a_lead_field_its_default_does_not(project: Path) -> None:
    translation = project / "emails" / "welcome" / "de" / "hello.md"
    edit(translation, "schön, dass", "{{ lead.city | default('') }} schön, dass")
    errors = load(project).errors
    assert [(e.path, e.line) for e in errors] == [(Path(translation.as_posix()), 4)]
    assert errors[0].message == (
        "lead.city: expected the lead fields the default template 'welcome/hello' uses (first_name),"
        " found 'lead.city' only in this translation"
    )
    # Fewer fields than the default is fine: a translation may say less.
    edit(translation, "{{ lead.city | default('') }} ", "")
    edit(translation, '{{ lead.first_name | default("zusammen") }}', "zusammen")
    assert load(project).ok


def test_lead_fields_are_read_from_subject_body_and_text_part(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.md").write_text(
        "---\nsubject: \"{{ lead.company }}\"\n---\n{{ lead['first_name'] }} {{ sender.name }}\n", encoding="utf-8"
    )
    (tmp_path / "a" / "b.txt").write_text("\n\n{{ lead.city }}\n", encoding="utf-8")
    assert lead_fields_used(TemplateLibrary(tmp_path), "a/b") == {"company": 2, "first_name": 4, "city": 3}


def test_a_translation_into_an_undeclared_language_is_noted_not_refused(project: Path) -> None:
    # emails/ is shared by every funnel: another funnel may declare Spanish.
    stray = project / "emails" / "welcome" / "es" / "hello.md"
    stray.parent.mkdir()
    stray.write_text("---\nsubject: Bienvenido\n---\nHola.\n", encoding="utf-8")
    result = load(project)
    assert result.ok, result.errors
    assert [n for n in result.notes if "into es" in n] == [
        f"{project / 'funnels' / 'welcome.yaml'}: {stray.as_posix()}: a translation into es, which this"
        " funnel's leads do not read: funnel 'welcome' declares de, fr (declare es to send it)"
    ]


def test_a_translation_folder_beside_a_funnel_in_one_language_is_noted(project: Path) -> None:
    edit(project / "funnels" / "welcome.yaml", "languages: {default: en, others: [de, fr]}\n", "")
    result = load(project)
    assert result.ok, result.errors
    said = [n for n in result.notes if "is in one language" in n]
    assert len(said) == 3, result.notes


def test_a_translation_whose_original_does_not_exist_is_reported(project: Path) -> None:
    orphan = project / "emails" / "welcome" / "de" / "goodbye.md"
    orphan.write_text("---\nsubject: Auf Wiedersehen\n---\nTschüss.\n", encoding="utf-8")
    errors = load(project).errors
    assert [e.path for e in errors] == [Path(orphan.as_posix())]
    expected = (project / "emails" / "welcome" / "goodbye.md").as_posix()
    assert errors[0].message == (
        f"a de translation of a template that does not exist: expected {expected} (or .html) beside it, found none"
    )


def test_a_folder_named_like_an_undeclared_tag_without_originals_is_an_ordinary_folder(project: Path) -> None:
    # `crm` is a well-formed language tag; with nothing in it to translate, it is just a folder.
    folder = project / "emails" / "welcome" / "crm"
    folder.mkdir()
    (folder / "notice.md").write_text("---\nsubject: Notice\n---\nHello.\n", encoding="utf-8")
    assert load(project).ok


def test_the_example_translations_render_and_ask_for_no_field_their_default_does_not() -> None:
    """The example project's German and French emails, the signup confirmation included (sent for a
    form, not by a funnel step, so not among what validate checks per funnel)."""
    root = Path(__file__).resolve().parents[2]
    library = TemplateLibrary(root / "emails")
    translations = sorted(
        name
        for path in (root / "emails").rglob("*.md")
        if library.original(name := path.relative_to(root / "emails").with_suffix("").as_posix()) is not None
    )
    assert {t.split("/")[-2] for t in translations} == {"de", "fr"}
    assert "forms/de/confirm-subscription" in translations and "forms/fr/confirm-subscription" in translations
    for name in translations:
        assert library.check(name) == [], name
        original = library.original(name)
        assert original is not None
        assert set(lead_fields_used(library, name)) <= set(lead_fields_used(library, original)), name
    result = load_funnels([root / "funnels"], emails_dir=root / "emails")
    assert result.ok, result.errors
    assert not any("report-delivery" in note or "hidden-costs" in note for note in result.notes)
