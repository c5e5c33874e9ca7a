"""Which file a lead reads: translations beside their template, chosen along the lead's lookup chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.mail.templates import TemplateLibrary

LANGUAGES = ("en", "de", "fr", "fr-CA")


def _write(root: Path, name: str, subject: str) -> None:
    path = root / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"---\nsubject: {subject}\n---\nBody\n", encoding="utf-8")


@pytest.fixture
def library(tmp_path: Path) -> TemplateLibrary:
    (tmp_path / "_layouts").mkdir()
    (tmp_path / "_layouts" / "base.html").write_text("<html><body>{{ content }}</body></html>", encoding="utf-8")
    _write(tmp_path, "lm/welcome", "Welcome")
    _write(tmp_path, "lm/de/welcome", "Willkommen")
    _write(tmp_path, "lm/fr/welcome", "Bienvenue")
    _write(tmp_path, "lm/report", "Your report")
    _write(tmp_path, "lm/de/report", "Ihr Bericht")
    # Folders named like languages that translate nothing are templates of their own.
    _write(tmp_path, "faq/answer", "An answer")
    _write(tmp_path, "lm/es/orphan", "Huérfano")
    return TemplateLibrary(tmp_path)


def test_translations_are_not_templates_of_their_own(library: TemplateLibrary) -> None:
    assert library.names() == ["faq/answer", "lm/es/orphan", "lm/report", "lm/welcome"]
    assert library.original("lm/de/welcome") == "lm/welcome"
    assert library.original("lm/es/orphan") is None
    assert library.original("faq/answer") is None


@pytest.mark.parametrize(
    ("language", "welcome", "report"),
    [
        (None, ("lm/welcome", "en"), ("lm/report", "en")),
        ("de", ("lm/de/welcome", "de"), ("lm/de/report", "de")),
        ("de-AT", ("lm/de/welcome", "de"), ("lm/de/report", "de")),
        # fr-CA has no file of its own: French, then the default where French is missing.
        ("fr-CA", ("lm/fr/welcome", "fr"), ("lm/report", "en")),
        ("pt-BR", ("lm/welcome", "en"), ("lm/report", "en")),
    ],
)
def test_a_lead_reads_the_first_language_of_its_chain_the_email_exists_in(
    library: TemplateLibrary, language: str | None, welcome: tuple[str, str], report: tuple[str, str]
) -> None:
    assert library.pick("lm/welcome", language, LANGUAGES) == welcome
    assert library.pick("lm/report", language, LANGUAGES) == report


def test_an_undeclared_language_is_not_read_even_when_its_file_exists(library: TemplateLibrary) -> None:
    assert library.pick("lm/welcome", "de", ("en", "fr")) == ("lm/welcome", "en")
    assert library.translated_into("lm/welcome", ("de", "fr", "fr-CA")) == ["de", "fr"]


def test_a_translation_renders_its_own_subject(library: TemplateLibrary) -> None:
    name, _ = library.pick("lm/welcome", "de", LANGUAGES)
    assert library.render(name, {"lead": {"email": "a@example.com"}}).subject == "Willkommen"
