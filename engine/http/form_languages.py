"""The languages a signup form is offered in, and the one a visitor gets.

A form's languages are those of the funnel it feeds: the funnel whose entry trigger listens to the
form's event with `where: {form: <id>}` (its `languages:`, engine.core.definition). A form no funnel
with languages listens to is in one language, English. The app reads the funnel files once, at start.

A visitor gets, in this order:
1. the language the URL names, `/forms/<id>?lang=de`, when it is one of the form's (by lookup: `de-AT`
   takes `de`): a link in a German campaign, or the language switch of a page;
2. else the one the browser asks for most among the form's (`Accept-Language`, RFC 4647 lookup);
3. else the funnel's default language.

The page file is then the first of that language's lookup chain that exists: `pages/lead-magnet/de/
signup.html` beside `pages/lead-magnet/signup.html` (the default language's), as emails are translated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from engine.core.definition import Funnel
from engine.core.languages import LanguageError, canonical, first_available, from_accept_language, lookup_chain
from engine.core.signup import feeds
from engine.core.yamlfile import YamlSyntaxError, read_yaml

log = logging.getLogger("engine.forms")

# The form field and the query parameter that carry a language.
LANGUAGE_FIELD = "language"
SCENARIO_SUFFIX = ".scenarios.yaml"


@dataclass(frozen=True, slots=True)
class FormLanguages:
    default: str = "en"
    others: tuple[str, ...] = ()

    @property
    def declared(self) -> tuple[str, ...]:
        return (self.default, *self.others)

    def match(self, tag: object) -> str | None:
        """The declared language `tag` reaches by lookup (`fr-CA` reaches `fr`), None for none (or not
        a tag at all: a value from a URL or a post is anyone's)."""
        if not isinstance(tag, str) or not tag:
            return None
        try:
            wanted = canonical(tag)
        except LanguageError:
            return None
        return next((c for c in lookup_chain(wanted, wanted) if c in self.declared), None)

    def for_visitor(self, asked: str | None, accept_language: str | None) -> str:
        """The visitor's language, as the module docstring says."""
        return self.match(asked) or from_accept_language(accept_language, self.declared, self.default) or self.default

    def posted(self, value: str | None, page_language: str) -> str:
        """The language a signup post gives its lead: the posted one when it is declared, else the page's."""
        return self.match(value) or page_language

    def page(self, name: str, language: str, exists: Callable[[str], bool]) -> str:
        """The page file a reader of `language` gets: its translation along the lookup chain, else `name`."""
        have = [lang for lang in self.others if exists(translated(name, lang))]
        chosen = first_available(language, self.default, [self.default, *have])
        return name if chosen == self.default else translated(name, chosen)


def translated(name: str, language: str) -> str:
    """`lead-magnet/signup.html` in `de`: `lead-magnet/de/signup.html`."""
    folder, _, file = name.rpartition("/")
    return f"{folder}/{language}/{file}" if folder else f"{language}/{file}"


def read_form_languages(funnels_dir: Path, form_events: Mapping[str, str]) -> dict[str, FormLanguages]:
    """The languages of each form (`form_events`: form id -> the event it emits), from the funnels in
    `funnels_dir`. A file that does not load is skipped: `funnel validate` is where it is reported."""
    found: dict[str, FormLanguages] = {}
    for funnel in _funnels(funnels_dir):
        if funnel.languages is None:
            continue
        languages = FormLanguages(funnel.languages.default, tuple(funnel.languages.others))
        for form_id, event in form_events.items():
            if form_id not in found and feeds(funnel, form_id, event):
                found[form_id] = languages
    return found


def _funnels(folder: Path) -> Iterable[Funnel]:
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".yaml", ".yml") or path.name.endswith(SCENARIO_SUFFIX) or not path.is_file():
            continue
        try:
            yield Funnel.model_validate(read_yaml(path).data)
        except (YamlSyntaxError, ValidationError, OSError, UnicodeDecodeError) as exc:
            log.debug("%s: not read for its languages: %s", path, type(exc).__name__)
