"""A funnel's emails in its languages, for authoring: which translation a lead reads (the library's own
`pick`, with the funnel's declared languages, as the engine calls it), and `funnel validate`'s checks of
the translations beside the templates a funnel sends.

What validate says about each declared language and each template the funnel sends:
- a translation that exists is checked like the default (`TemplateLibrary.check`, errors at the
  translation's own file), and must use no lead field the default does not use: a lead's data is
  collected once, for every language, so a field only one translation asks for is a field most leads
  of that language lack;
- a missing translation is a note naming the language the lead reads instead (by `pick`, so
  `fr-CA falls back to fr` where French exists), or an error where the language is `complete`;
- beside those templates, a translation into a language the funnel does not declare is a note (this
  funnel never sends it; `emails/` is shared, and another funnel may declare that language), and a file
  in a declared language's folder whose original does not exist (never sent) is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2 import nodes

from engine.core.definition import Funnel
from engine.core.languages import LanguageError, canonical
from engine.mail.templates import BODY_SUFFIXES, TemplateLibrary

# Known of every lead that reads a translation: its address, and its language (which chose it).
ALWAYS_KNOWN = frozenset({"email", "language"})


def declared(funnel: Funnel) -> tuple[str, ...]:
    """The funnel's languages, default first; empty for a funnel in one language."""
    return funnel.languages.declared if funnel.languages is not None else ()


def read_as(library: TemplateLibrary, funnel: Funnel, template: str, language: str | None) -> tuple[str, str]:
    """(the template, its language) a lead of `language` reads for `template`: the library's `pick` with
    the funnel's languages, the call the engine makes when it renders the email."""
    return library.pick(template, language, declared(funnel))


def falls_back_line(library: TemplateLibrary, funnel: Funnel, template: str, language: str) -> str:
    """The note for a language `template` has no translation into: what its leads read instead."""
    _, instead = read_as(library, funnel, template, language)
    suffix = ".html" if (library.emails_dir / f"{template}.html").is_file() else ".md"
    missing = library.display(f"{library.translation(template, language)}{suffix}")
    return f"{template}: {language} falls back to {instead} (no {missing})"


@dataclass(frozen=True)
class TranslationProblem:
    """One finding: `error` refuses the funnel (at `path:line`, or at the send step when path is None)."""

    template: str
    message: str
    error: bool
    path: str | None = None
    line: int = 1


def check_translations(library: TemplateLibrary, funnel: Funnel, templates: Iterable[str]) -> list[TranslationProblem]:
    """Every declared language of each template in `templates` (the ones the funnel sends, which exist)."""
    if funnel.languages is None:
        return [*_strays(library, funnel, sorted(set(templates)))]
    complete = set(funnel.languages.complete)
    out: list[TranslationProblem] = []
    names = sorted(set(templates))
    for template in names:
        for language in funnel.languages.others:
            name = library.translation(template, language)
            if not library.exists(name):
                if language in complete:
                    missing = library.display(f"{name}.md")
                    out.append(
                        TranslationProblem(
                            template,
                            f"email template '{template}' has no {language} translation: expected {missing}"
                            f" ({language} is listed in languages.complete), found none",
                            error=True,
                        )
                    )
                else:
                    note = falls_back_line(library, funnel, template, language)
                    out.append(TranslationProblem(template, note, False))
                continue
            out += [TranslationProblem(template, e.message, True, e.path, e.line) for e in library.check(name)]
            out += _extra_fields(library, template, name)
    out += _strays(library, funnel, names)
    return out


def lead_fields_used(library: TemplateLibrary, name: str) -> dict[str, int]:
    """The `lead.FIELD`s (and `lead['FIELD']`s) the template's own files use, with the first line of
    each: front matter (subject, preheader), body and plain-text part. Partials are shared by every
    language and left out."""
    used: dict[str, int] = {}
    for file in _own_files(library, name):
        try:
            # Parsed, never rendered: the environment's escaping plays no part.
            tree = jinja2.Environment(autoescape=True).parse(library.loader.read(file))
        except (jinja2.TemplateError, OSError, UnicodeDecodeError):
            continue  # `check` reports what is wrong with the file
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            field = _lead_field(node)
            if field is None:
                continue
            used.setdefault(field, node.lineno)
    return used


def _lead_field(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == "lead":
        return node.attr
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.node, nodes.Name)
        and node.node.name == "lead"
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        return node.arg.value
    return None


def _own_files(library: TemplateLibrary, name: str) -> list[str]:
    files = [f"{name}{suffix}" for suffix in BODY_SUFFIXES if (library.emails_dir / f"{name}{suffix}").is_file()]
    if (library.emails_dir / f"{name}.txt").is_file():
        files.append(f"{name}.txt")
    return files


def _extra_fields(library: TemplateLibrary, template: str, translation: str) -> list[TranslationProblem]:
    original = lead_fields_used(library, template)
    found = lead_fields_used(library, translation)
    body = next(iter(_own_files(library, translation)), f"{translation}.md")
    return [
        TranslationProblem(
            template,
            f"lead.{field}: expected the lead fields the default template '{template}' uses"
            f" ({', '.join(sorted(original)) or 'none'}), found 'lead.{field}' only in this translation",
            True,
            library.display(body),
            line,
        )
        for field, line in sorted(found.items(), key=lambda item: item[1])
        if field not in original and field not in ALWAYS_KNOWN
    ]


def _language_folder(part: str) -> bool:
    try:
        return canonical(part) == part
    except LanguageError:
        return False


def _undeclared(funnel: Funnel, language: str) -> str:
    if funnel.languages is None:
        return (
            f"a translation into {language}, which this funnel's leads do not read: funnel '{funnel.id}' is"
            f" in one language (declare {language} in `languages:` to send it)"
        )
    if language == funnel.languages.default:
        return (
            f"a translation into {language}, the default language, which this funnel's leads do not read:"
            " the default's text is the template itself, not a language folder"
        )
    return (
        f"a translation into {language}, which this funnel's leads do not read: funnel '{funnel.id}'"
        f" declares {', '.join(funnel.languages.others)} (declare {language} to send it)"
    )


def _strays(library: TemplateLibrary, funnel: Funnel, templates: Sequence[str]) -> list[TranslationProblem]:
    """Translations beside the funnel's templates that no lead of the funnel can read."""
    languages = set(declared(funnel)[1:])
    out: list[TranslationProblem] = []
    seen: set[Path] = set()
    for template in templates:
        folder = (library.emails_dir / template).parent
        if folder in seen or not folder.is_dir():
            continue
        seen.add(folder)
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and _language_folder(p.name)):
            for file in sorted(p for p in sub.iterdir() if p.is_file() and p.suffix in BODY_SUFFIXES):
                name = file.relative_to(library.emails_dir).with_suffix("").as_posix()
                original = library.original(name)
                shown = library.display(file.relative_to(library.emails_dir).as_posix())
                if original is not None and sub.name not in languages:
                    said = f"{shown}: {_undeclared(funnel, sub.name)}"
                    out.append(TranslationProblem(original, said, False, shown))
                elif original is None and sub.name in languages:
                    base = library.display(f"{'/'.join((*name.split('/')[:-2], file.stem))}.md")
                    out.append(
                        TranslationProblem(
                            name,
                            f"a {sub.name} translation of a template that does not exist: expected {base}"
                            " (or .html) beside it, found none",
                            True,
                            shown,
                        )
                    )
    return out


__all__ = [
    "TranslationProblem",
    "check_translations",
    "declared",
    "falls_back_line",
    "lead_fields_used",
    "read_as",
]
