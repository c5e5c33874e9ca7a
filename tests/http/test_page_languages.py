"""Forms and pages in the lead's language, over a real socket: a German browser gets the German form,
its post makes a German lead, and every page that lead reaches (confirmation, unsubscribe, preferences)
is German; a Portuguese browser gets the default; the language a URL or a post names is checked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engine.http.catalogues import Catalogues
from engine.http.form_languages import FormLanguages
from engine.mail.links import Links
from engine.store import tables
from tests.http.conftest import Served

ROOT = Path(__file__).resolve().parents[2]
FORM = "cost-of-not-recycling"
GERMAN = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.8"}
PORTUGUESE = {"Accept-Language": "pt-BR,pt;q=0.9"}


def _funnels(folder: Path, languages: str, form: str = FORM) -> Path:
    """The example funnel, declaring `languages` (a YAML block) and entered by `form`, in a folder of its own."""
    text = (ROOT / "funnels" / "lead-magnet.yaml").read_text(encoding="utf-8").replace(f"form: {FORM}", f"form: {form}")
    text = re.sub(r"^languages:.*?(?=^\S)", "", text, flags=re.MULTILINE | re.DOTALL)  # the example's own, if any
    folder.mkdir()
    (folder / "lead-magnet.yaml").write_text(
        text.replace("\ntimezone: ", f"\n{languages}\ntimezone: ", 1), encoding="utf-8"
    )
    return folder


@pytest.fixture
def served(serve: Any, tmp_path: Path) -> Served:
    funnels = _funnels(tmp_path / "funnels", "languages:\n  default: en\n  others: [de, fr]")
    return serve(
        pages_dir=ROOT / "pages",
        funnels_dir=funnels,
        forms={FORM: {"page": "lead-magnet/signup.html", "double_opt_in": True, "consent_version": "v1"}},
    )


def _lang(page: httpx.Response) -> str:
    found = re.search(r'<html lang="([^"]+)"', page.text)
    assert found is not None, page.text[:200]
    return found.group(1)


def _language_of(served: Served, email: str) -> str | None:
    with served.engine.connect() as conn:
        return conn.execute(sa.select(tables.leads.c.language).where(tables.leads.c.email == email)).scalar_one()


def _request_id(served: Served, email: str) -> int:
    with served.engine.connect() as conn:
        lead_id = conn.execute(sa.select(tables.leads.c.id).where(tables.leads.c.email == email)).scalar_one()
        c = tables.consent_records
        return int(
            conn.execute(sa.select(c.c.id).where(c.c.lead_id == lead_id, c.c.action == "requested")).scalar_one()
        )


def test_a_german_browser_signs_up_in_german_and_reads_every_page_in_german(served: Served) -> None:
    url = f"{served.url}/forms/{FORM}"
    form = httpx.get(url, headers=GERMAN, timeout=10)
    assert form.status_code == 200
    assert _lang(form) == "de" and "Was es wirklich kostet, nicht zu recyceln" in form.text
    assert "Accept-Language" in form.headers["vary"]

    # A mistake is told in German, on the German page.
    wrong = httpx.post(url, headers=GERMAN, data={"email": "", "consent": "yes"}, timeout=10)
    assert wrong.status_code == 422 and _lang(wrong) == "de"
    assert "Bitte geben Sie Ihre E-Mail-Adresse ein." in wrong.text

    posted = httpx.post(url, headers=GERMAN, data={"email": "jonas@example.com", "consent": "yes"}, timeout=10)
    assert (posted.status_code, posted.headers["location"]) == (303, f"/forms/{FORM}/check-inbox")
    assert _language_of(served, "jonas@example.com") == "de"
    inbox = httpx.get(f"{served.url}{posted.headers['location']}", headers=GERMAN, timeout=10)
    assert _lang(inbox) == "de" and "Sehen Sie in Ihrem Posteingang nach" in inbox.text

    # The confirmation link: its pages are the lead's language, whatever the browser that opens it asks.
    links = Links(served.settings)
    link = links.confirm_url("jonas@example.com", FORM, _request_id(served, "jonas@example.com"))
    confirm = httpx.get(link, headers=PORTUGUESE, timeout=10)
    assert _lang(confirm) == "de" and "Bestätigen Sie Ihre Adresse" in confirm.text
    assert "<strong>jonas@example.com</strong>" in confirm.text and "Ja, bestätigen" in confirm.text
    confirmed = httpx.post(link, headers=PORTUGUESE, timeout=10)
    assert (confirmed.status_code, confirmed.headers["location"]) == (303, f"/forms/{FORM}/confirmed?lang=de")
    done = httpx.get(f"{served.url}{confirmed.headers['location']}", headers=PORTUGUESE, timeout=10)
    assert _lang(done) == "de" and "Ihre Adresse ist bestätigt" in done.text

    preferences = httpx.get(links.preferences_url("jonas@example.com"), timeout=10)
    assert _lang(preferences) == "de" and "E-Mail-Einstellungen für" in preferences.text
    assert "Keine Marketing-E-Mails mehr" in preferences.text
    unsubscribe = links.unsubscribe_url("jonas@example.com", "lead-magnet")
    page = httpx.get(unsubscribe, timeout=10)
    assert _lang(page) == "de" and "<title>Abmelden</title>" in page.text
    gone = httpx.post(unsubscribe, data={"scope": "all"}, timeout=10)
    assert _lang(gone) == "de" and "erhält keine Marketing-E-Mails mehr von uns" in gone.text


def test_a_portuguese_browser_gets_the_default_language(served: Served) -> None:
    url = f"{served.url}/forms/{FORM}"
    form = httpx.get(url, headers=PORTUGUESE, timeout=10)
    assert _lang(form) == "en" and "The real cost of not recycling" in form.text
    posted = httpx.post(url, headers=PORTUGUESE, data={"email": "joao@example.com", "consent": "yes"}, timeout=10)
    assert posted.headers["location"] == f"/forms/{FORM}/check-inbox"
    assert _language_of(served, "joao@example.com") == "en"
    preferences = httpx.get(Links(served.settings).preferences_url("joao@example.com"), headers=PORTUGUESE, timeout=10)
    assert _lang(preferences) == "en" and "Email preferences for" in preferences.text


def test_the_url_names_the_language_and_the_post_carries_it(served: Served) -> None:
    url = f"{served.url}/forms/{FORM}"
    # `?lang=` wins over the browser; a regional tag takes its language; an unknown one is ignored.
    french = httpx.get(f"{url}?lang=fr-CA", headers=GERMAN, timeout=10)
    assert _lang(french) == "fr" and "Le vrai coût du non-recyclage" in french.text
    assert f'action="/forms/{FORM}?lang=fr"' in french.text
    assert _lang(httpx.get(f"{url}?lang=klingon", headers=GERMAN, timeout=10)) == "de"
    assert _lang(httpx.get(f"{url}?lang=es", timeout=10)) == "en"

    # The page's action carries its language back: the lead is French though the browser asks German.
    posted = httpx.post(
        f"{url}?lang=fr", headers=GERMAN, data={"email": "zoe@example.com", "consent": "on"}, timeout=10
    )
    assert posted.status_code == 303 and posted.headers["location"] == f"/forms/{FORM}/check-inbox?lang=fr"
    assert _language_of(served, "zoe@example.com") == "fr"
    inbox = httpx.get(f"{served.url}{posted.headers['location']}", headers=GERMAN, timeout=10)
    assert "Consultez votre boîte de réception" in inbox.text

    # A posted language outside the funnel's falls back to the page's; a declared one is taken.
    for email, posted_language, expected in [
        ("ana@example.com", "es", "de"),
        ("ben@example.com", "<script>", "de"),
        ("cleo@example.com", "fr", "fr"),
    ]:
        data = {"email": email, "consent": "yes", "language": posted_language}
        assert httpx.post(url, headers=GERMAN, data=data, timeout=10).status_code == 303
        assert _language_of(served, email) == expected, email


def test_a_post_about_an_existing_lead_leaves_its_language(served: Served) -> None:
    url = f"{served.url}/forms/{FORM}"
    httpx.post(url, headers=GERMAN, data={"email": "dora@example.com", "consent": "yes"}, timeout=10)
    # A stranger posting the same address from a French page changes nothing of the lead (invariant 13).
    httpx.post(f"{url}?lang=fr", data={"email": "dora@example.com", "consent": "yes"}, timeout=10)
    assert _language_of(served, "dora@example.com") == "de"


def test_the_plain_form_and_its_errors_in_french(serve: Any, tmp_path: Path) -> None:
    funnels = _funnels(tmp_path / "funnels", "languages:\n  default: de\n  others: [fr]", form="plain")
    served = serve(funnels_dir=funnels, forms={"plain": {"double_opt_in": False}})
    url = f"{served.url}/forms/plain"
    german = httpx.get(url, timeout=10)  # no Accept-Language: the funnel's default
    assert _lang(german) == "de" and "Schicken Sie es mir" in german.text
    page = httpx.get(url, headers={"Accept-Language": "fr-CH, en;q=0.5"}, timeout=10)
    assert _lang(page) == "fr" and "Envoyez-le-moi" in page.text and 'name="language" value="fr"' in page.text
    wrong = httpx.post(url, data={"email": "x@", "language": "fr"}, timeout=10)
    assert wrong.status_code == 422 and _lang(wrong) == "fr"
    assert "Veuillez vérifier votre adresse e-mail" in wrong.text
    assert "Veuillez cocher la case" in wrong.text
    made = httpx.post(url, data={"email": "eve@example.com", "consent": "yes", "language": "fr"}, timeout=10)
    assert made.headers["location"] == "/forms/plain/thanks?lang=fr"
    assert _language_of(served, "eve@example.com") == "fr"


def test_without_a_funnel_that_declares_languages_a_form_is_english(serve: Any) -> None:
    served = serve(funnels_dir=ROOT / "no-such-folder", forms={"plain": {"double_opt_in": False}})
    page = httpx.get(f"{served.url}/forms/plain", headers=GERMAN, timeout=10)
    assert _lang(page) == "en" and "Send it to me" in page.text


def test_every_catalogue_translates_every_message() -> None:
    """The shipped catalogues are complete for the pages, and their placeholders are the msgid's."""
    from babel.messages.pofile import read_po

    template = read_po((ROOT / "engine" / "locale" / "engine.pot").open("rb"))
    wanted = {m.id for m in template if m.id}
    loaded = Catalogues.load()
    assert set(loaded.languages) >= {"en", "de", "fr"}
    for language in ("de", "fr"):
        catalog = read_po((ROOT / "engine" / "locale" / language / "LC_MESSAGES" / "engine.po").open("rb"))
        messages = {m.id: m for m in catalog if m.id}
        assert set(messages) == wanted, language
        for msgid, message in messages.items():
            assert message.string and not message.fuzzy, (language, msgid)
            assert set(re.findall(r"\{\w+\}", message.string)) == set(re.findall(r"\{\w+\}", msgid)), msgid
        texts = loaded.texts(language)
        assert texts.language == language
        assert all(texts(m) != m or m in ("Name",) for m in wanted if "{" not in m), language


def test_the_template_holds_every_message_of_the_code() -> None:
    """engine.pot is what `pybabel extract` finds now: a text added to a page is in the catalogues."""
    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    found = {
        message
        for _, _, message, _, _ in extract_from_dir(
            ROOT / "engine" / "http", [("**.py", "python")], keywords={"_": None}
        )
    }
    template = {m.id for m in read_po((ROOT / "engine" / "locale" / "engine.pot").open("rb")) if m.id}
    assert found == template


def test_a_reader_gets_the_first_catalogue_of_its_lookup_chain() -> None:
    loaded = Catalogues.load()
    assert loaded.texts("fr-CA").language == "fr"
    assert loaded.texts("de-AT-x-private").language == "de"
    assert loaded.texts("pt-BR").language == "en"
    assert loaded.texts(None).language == "en"
    # The HTML a catalogue's text becomes escapes what is put in it.
    assert str(loaded.texts("de")("Unsubscribed")) == "Abgemeldet"
    assert "&lt;b&gt;" in loaded.texts("fr")("Only emails about {funnel}", funnel="<b>")


def test_a_form_language_is_matched_by_lookup() -> None:
    languages = FormLanguages("en", ("de", "fr-CA"))
    assert languages.for_visitor("de-CH", None) == "de"
    assert languages.for_visitor(None, "fr-CA;q=0.5, pt;q=0.9") == "fr-CA"
    assert languages.for_visitor("fr", None) == "en"  # fr-CA is declared, fr is not
    assert languages.posted("x" * 5000, "de") == "de"
    exists = {"lm/signup.html", "lm/de/signup.html"}.__contains__
    assert languages.page("lm/signup.html", "de", exists) == "lm/de/signup.html"
    assert languages.page("lm/signup.html", "fr-CA", exists) == "lm/signup.html"
