"""The texts of the engine's own pages (unsubscribe, preferences, the double opt-in confirmation, the
plain signup form, its errors and answers) in the reader's language.

The texts are gettext message catalogues, English text as the msgid: `engine/locale/<LANG>/LC_MESSAGES/
engine.po` for each language, LANG a BCP 47 tag in canonical case (`de`, `fr`, `pt-BR`). The .po files
are the source and the only copy: they are compiled in memory when the app starts (Babel's `read_po`
and `write_mo`), so no binary .mo file is kept beside them to fall out of date. `engine/locale/engine.pot`
is the template the catalogues are made from, extracted by `pybabel extract` (configured in
pyproject.toml, `[tool.babel.extract_messages]`); docs/languages.md says how to add a language.

A reader gets the first catalogue of its language's lookup chain (`fr-CA`, `fr`, then English): a
French-Canadian lead reads the French pages, a Portuguese one the English pages.
"""

from __future__ import annotations

import gettext
import html
import logging
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from markupsafe import Markup

from engine.core.languages import LanguageError, canonical, first_available

log = logging.getLogger("engine.http")

LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
DOMAIN = "engine"
# The language of the msgids, which needs no catalogue.
SOURCE_LANGUAGE = "en"


@dataclass(frozen=True, slots=True)
class PageTexts:
    """The engine's texts in one language. Called with a msgid, it answers HTML (Markup): the
    translated text escaped, then `values` in its `{name}` places, escaped unless they are Markup."""

    language: str
    translations: gettext.NullTranslations

    def __call__(self, message: str, **values: object) -> Markup:
        text = Markup(html.escape(self.translations.gettext(message), quote=False))  # noqa: S704
        return text.format(**values) if values else text


class Catalogues:
    """Every catalogue of a locale folder, compiled."""

    def __init__(self, translations: dict[str, gettext.NullTranslations]) -> None:
        self._translations = {SOURCE_LANGUAGE: gettext.NullTranslations(), **translations}

    @classmethod
    def load(cls, folder: Path = LOCALE_DIR) -> Catalogues:
        """The catalogues of `folder`; a folder not named by a canonical tag is not a language, and is
        logged and left out (an `fr_FR` copied from elsewhere would otherwise never be chosen)."""
        found: dict[str, gettext.NullTranslations] = {}
        for po in sorted(folder.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
            language = po.parent.parent.name
            if not _is_canonical(language):
                log.warning("%s: the folder is not a language tag in canonical case, left out", po)
                continue
            found[language] = _compiled(po, language)
        return cls(found)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted(self._translations))

    def texts(self, language: str | None) -> PageTexts:
        """The texts a reader whose language is `language` reads (None: English)."""
        chosen = first_available(language, SOURCE_LANGUAGE, self._translations)
        return PageTexts(chosen, self._translations[chosen])


def _is_canonical(name: str) -> bool:
    try:
        return canonical(name) == name
    except LanguageError:
        return False


def _compiled(po: Path, language: str) -> gettext.GNUTranslations:
    with po.open("rb") as source:
        catalog = read_po(source, locale=language.replace("-", "_"), domain=DOMAIN)
    compiled = BytesIO()
    write_mo(compiled, catalog)  # fuzzy entries are left out, as msgfmt leaves them out
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


@lru_cache(maxsize=1)
def catalogues() -> Catalogues:
    """The engine's catalogues, read once per process (`engine.http.forms.install` reads them at start)."""
    return Catalogues.load()
