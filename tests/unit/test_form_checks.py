"""`funnel validate` checks the forms in the settings against the real example funnel and templates."""

from __future__ import annotations

from pathlib import Path

from engine.authoring.form_checks import check_forms
from engine.authoring.validation import load_funnels
from engine.mail.templates import TemplateLibrary
from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def check(tmp_path: Path, **form: object) -> list[str]:
    funnels = load_funnels([ROOT / "funnels"], emails_dir=ROOT / "emails").funnels
    settings = Settings(pages_dir=ROOT / "pages", forms={"cost-of-not-recycling": form})
    return check_forms(settings, funnels, TemplateLibrary(ROOT / "emails"))


def test_the_example_form_is_valid(tmp_path: Path) -> None:
    assert check(tmp_path, page="lead-magnet/signup.html", double_opt_in=True) == []


def test_each_problem_is_named_with_its_key(tmp_path: Path) -> None:
    errors = check(
        tmp_path, page="lead-magnet/nope.html", double_opt_in=True, confirm_template="forms/nope", event="form_sent"
    )
    assert errors == [
        f"forms.cost-of-not-recycling.page: no such page {(ROOT / 'pages' / 'lead-magnet/nope.html').as_posix()}",
        "forms.cost-of-not-recycling.confirm_template: no email template 'forms/nope' in "
        f"{(ROOT / 'emails').as_posix()}",
        "forms.cost-of-not-recycling: no funnel enters on event 'form_sent' with form 'cost-of-not-recycling'; "
        "add an entry trigger like `- event: form_sent` with `where: {form: cost-of-not-recycling}`",
    ]


def test_a_confirmation_email_without_the_link_is_refused(tmp_path: Path) -> None:
    errors = check(tmp_path, double_opt_in=True, confirm_template="lead-magnet/report-delivery")
    assert errors == [
        "forms.cost-of-not-recycling.confirm_template: the email never shows {{ confirm_url }}, "
        "so the lead cannot confirm"
    ]


def test_a_page_that_leads_outside_the_pages_folder_is_reported_with_file_and_line(tmp_path: Path) -> None:
    pages = tmp_path / "pages"
    pages.mkdir()
    (tmp_path / ".env").write_text("FUNNEL_SECRET_KEY=kept-on-the-server-only\n")
    (pages / "direct.html").symlink_to(tmp_path / ".env")
    (pages / "notes.html").symlink_to(Path("..", ".env"))
    # Behind a condition no check renders: found all the same, by reading what the page names.
    (pages / "signup.html").write_text("<h1>Sign up</h1>\n{% if values.vip %}{% include 'notes.html' %}{% endif %}\n")
    funnels = load_funnels([ROOT / "funnels"], emails_dir=ROOT / "emails").funnels
    settings = Settings(
        pages_dir=pages,
        forms={"cost-of-not-recycling": {"page": "signup.html"}, "other": {"page": "direct.html"}},
    )
    errors = check_forms(settings, funnels, TemplateLibrary(ROOT / "emails"))
    outside = "only files inside it are read"
    assert errors[0] == (
        f"forms.cost-of-not-recycling.page: {pages.as_posix()}/signup.html:2: 'notes.html' leads outside "
        f"{pages.as_posix()} (to {(tmp_path / '.env').as_posix()}): {outside}"
    )
    assert errors[1] == (
        f"forms.other.page: {pages.as_posix()}/direct.html:1: 'direct.html' leads outside "
        f"{pages.as_posix()} (to {(tmp_path / '.env').as_posix()}): {outside}"
    )
    assert not any("kept-on-the-server-only" in e for e in errors)
