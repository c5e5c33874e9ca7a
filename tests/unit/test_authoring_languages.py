"""A lead's language in `funnel test` and `funnel simulate`: the translation each email is read in is the
library's `pick` with the funnel's languages (the engine's call), and validate's "falls back to" notes
name the same language, for any lead tag and any set of translations."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.authoring.scenarios import Expectation, Scenario, run_scenario
from engine.authoring.simulation import simulate
from engine.authoring.translations import check_translations, read_as
from engine.authoring.validation import load_funnels
from engine.authoring.virtual_timeline import Subjects, timeline_lines
from engine.core.definition import Funnel, Languages
from engine.core.languages import canonical, lookup_chain
from engine.mail.templates import Sender, TemplateLibrary

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "languages"
EMAILS = FIXTURE / "emails"
SENDER = Sender("Greenleaf", "1 Example Street, London", "https://greenleaf.example")


@pytest.fixture(scope="module")
def funnel() -> Funnel:
    result = load_funnels([FIXTURE / "funnels"], emails_dir=EMAILS)
    assert result.ok, result.errors
    return result.funnels[0]


def scenario(language: str | None, *expect: dict[str, str]) -> Scenario:
    lead = {"email": "ana@example.com", "attributes": {"first_name": "Ana"}}
    if language is not None:
        lead["language"] = language
    return Scenario.model_validate({"name": "s", "lead": lead, "start": "2026-11-17 10:00", "expect": list(expect)})


def test_a_french_canadian_lead_reads_french_where_it_exists_and_english_elsewhere(funnel: Funnel) -> None:
    subjects = Subjects(TemplateLibrary(EMAILS), SENDER, funnel)
    run = scenario(
        "fr-ca",  # written in any case, kept in canonical case
        {"email": "hello", "language": "fr", "subject": "Bienvenue, Ana"},
        {"email": "tips", "language": "en", "subject": "Three tips for your team"},
    )
    outcome = run_scenario(funnel, run, Path("s.yaml"), subjects)
    assert outcome.failures == ()
    assert outcome.run is not None and outcome.run.language == "fr-CA"
    lines = [line for line in timeline_lines(outcome.run, ZoneInfo(funnel.timezone), subjects) if "email" in line]
    assert [line.split("email", 1)[1].strip() for line in lines] == [
        'hello "Bienvenue, Ana" (fr)',
        'tips "Three tips for your team" (en)',
    ]


def test_a_wrong_language_or_subject_fails_and_says_what_was_read(funnel: Funnel) -> None:
    subjects = Subjects(TemplateLibrary(EMAILS), SENDER, funnel)
    outcome = run_scenario(
        funnel,
        scenario("de", {"email": "hello", "language": "fr"}, {"email": "tips", "subject": "Drei Tipps"}),
        Path("s.yaml"),
        subjects,
    )
    assert outcome.failures == (
        "email 'hello' expected in fr, found it read in de (welcome/de/hello)",
        "email 'tips' expected with subject 'Drei Tipps', found 'Drei Tipps für Ihr Team' (welcome/de/tips)",
    )


def test_a_lead_without_a_language_reads_the_default(funnel: Funnel) -> None:
    subjects = Subjects(TemplateLibrary(EMAILS), SENDER, funnel)
    outcome = run_scenario(funnel, scenario(None, {"email": "hello", "language": "en"}), Path("s.yaml"), subjects)
    assert outcome.failures == ()


def test_language_expectations_need_the_templates(funnel: Funnel) -> None:
    outcome = run_scenario(funnel, scenario("de", {"email": "hello", "language": "de"}), Path("s.yaml"))
    assert outcome.failures == ("email 'hello': 'language' and 'subject' need the email templates, found none",)


def test_language_and_subject_belong_to_an_email_and_a_tag_must_be_one() -> None:
    with pytest.raises(ValidationError, match="only with 'email'"):
        Expectation.model_validate({"stage": "welcome", "at": "+1d", "language": "de"})
    with pytest.raises(ValidationError, match="language tag"):
        scenario("deutsch", {"email": "hello"})


def test_simulate_counts_emails_by_the_language_read_and_languages_change_no_journey(funnel: Funnel) -> None:
    plain = simulate(funnel, leads=60, days=3, seed=4, emails_dir=EMAILS)
    mixed = simulate(funnel, leads=60, days=3, seed=4, emails_dir=EMAILS, languages=["de", "fr-CA", "en"])
    assert mixed.stage_by_day == plain.stage_by_day and mixed.emails == plain.emails
    assert sum(mixed.lead_languages.values()) == 60 and set(mixed.lead_languages) == {"de", "fr-CA", "en"}
    by_tag = mixed.lead_languages
    # Every lead gets both emails; fr-CA leads read hello in French and the tips in English.
    assert mixed.read_in == Counter(
        {
            ("hello", "de"): by_tag["de"],
            ("hello", "fr"): by_tag["fr-CA"],
            ("hello", "en"): by_tag["en"],
            ("tips", "de"): by_tag["de"],
            ("tips", "en"): by_tag["fr-CA"] + by_tag["en"],
        }
    )
    assert plain.lead_languages == Counter() and plain.read_in == Counter()


# -- the fallback chain, for any tag and any set of translations -------------------------------------

_LANGUAGES = ("en", "de", "fr", "pt", "zh", "sr")
_SUBTAGS = ("CA", "BR", "AT", "GB", "Hant", "Latn", "419")


@st.composite
def tags(draw: st.DrawFn) -> str:
    parts = [draw(st.sampled_from(_LANGUAGES))]
    parts += draw(st.lists(st.sampled_from(_SUBTAGS), max_size=2, unique=True))
    script = [p for p in parts[1:] if p.isalpha() and len(p) == 4]
    region = [p for p in parts[1:] if p not in script]
    return canonical("-".join([parts[0], *script[:1], *region[:1]]))


@settings(max_examples=150, deadline=None)
@given(
    default=tags(),
    others=st.lists(tags(), max_size=5, unique=True),
    existing=st.data(),
    lead=st.one_of(st.none(), tags()),
)
def test_the_email_read_is_the_first_of_the_chain_that_exists(
    default: str, others: list[str], existing: st.DataObject, lead: str | None
) -> None:
    others = [o for o in others if o != default]
    have = existing.draw(st.lists(st.sampled_from(others), unique=True) if others else st.just([]))
    base = load_funnels([FIXTURE / "funnels"], emails_dir=None).funnels[0]
    funnel = base.model_copy(update={"languages": Languages(default=default, others=others)})
    with tempfile.TemporaryDirectory() as folder:
        emails = Path(folder)
        (emails / "_layouts").mkdir()
        (emails / "_layouts" / "base.html").write_text((EMAILS / "_layouts" / "base.html").read_text())
        (emails / "t").mkdir()
        (emails / "t" / "mail.md").write_text("---\nsubject: Default\n---\nDefault.\n")
        for tag in have:
            (emails / "t" / tag).mkdir()
            (emails / "t" / tag / "mail.md").write_text(f"---\nsubject: {tag}\n---\n{tag}.\n")
        library = TemplateLibrary(emails)

        def expected(tag: str | None) -> str:
            chain = lookup_chain(tag or default, default)
            return next(c for c in chain if c == default or c in have)

        name, language = read_as(library, funnel, "t/mail", lead)
        assert language == expected(lead)
        assert language in funnel.languages.declared  # type: ignore[union-attr]
        assert name == ("t/mail" if language == default else f"t/{language}/mail")
        assert library.subject(name) == ("Default" if language == default else language)
        notes = [p.message for p in check_translations(library, funnel, ["t/mail"]) if not p.error]
        missing = [tag for tag in others if tag not in have]
        assert notes == [
            f"t/mail: {tag} falls back to {expected(tag)} (no {(emails / 't' / tag / 'mail.md').as_posix()})"
            for tag in missing
        ]
