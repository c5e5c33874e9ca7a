"""Languages: a lead's BCP 47 tag, checked and written one way, and the chain of languages tried for it.

A tag is checked against the syntax of RFC 5646 §2.1 (`langtag`: language, extlang, script, region,
variants, extensions, private use) and written in the case §2.1.1 recommends (`fr-CA`, `zh-Hant-TW`,
`sr-Latn`), so that `FR_ca` from a browser and `fr-CA` from an import are the same lead language. Whether
the engine has texts for a language is the funnel's business (its `languages:`), not the tag's.

The chain is RFC 4647 §3.4 "Lookup": drop subtags from the end, one at a time, and drop a singleton (`x`,
`u`, ...) left at the end with the subtag that followed it; then the funnel's default language. `fr-CA`
tries `fr-CA`, `fr`, then the default: a French-Canadian lead reads French where there is no
French-Canadian text, and the default where there is no French either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# The longest tag the engine keeps; RFC 5646 §4.4.1 asks implementations to allow at least 35 characters
# (a language with extlang, script, region and two variants) and notes real tags are far shorter.
MAX_TAG_LENGTH = 64

# RFC 5646 §2.1, `langtag`. Not lead languages: grandfathered tags, a bare private-use tag, and the
# 4- and 5-to-8-letter language subtags the syntax reserves but no registered language uses (so that
# "english" or "deutsch" typed into a field is refused rather than kept as a language).
_LANGTAG = re.compile(
    r"""
    ^(?P<language>[a-z]{2,3}(?:-[a-z]{3}){0,3})
    (?:-(?P<script>[a-z]{4}))?
    (?:-(?P<region>[a-z]{2}|[0-9]{3}))?
    (?P<variants>(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*)
    (?P<extensions>(?:-[0-9a-wyz](?:-[a-z0-9]{2,8})+)*)
    (?P<private>-x(?:-[a-z0-9]{1,8})+)?$
    """,
    re.VERBOSE,
)


class LanguageError(ValueError):
    """Not a BCP 47 language tag; the message says what was found."""


def canonical(tag: str) -> str:
    """`tag` checked against RFC 5646 and written in its recommended case; `_` is taken for `-` (as
    browsers' and systems' locale names write it). Raises LanguageError with the reason."""
    if not isinstance(tag, str):
        raise LanguageError(f"expected a language tag such as 'de' or 'fr-CA', found {type(tag).__name__}")
    text = tag.strip().replace("_", "-")
    if not text or len(text) > MAX_TAG_LENGTH:
        raise LanguageError(f"expected a language tag such as 'de' or 'fr-CA', found {_shown(tag)}")
    lowered = text.lower()
    found = _LANGTAG.match(lowered) if lowered.isascii() else None
    if found is None:
        raise LanguageError(f"expected a language tag such as 'de' or 'fr-CA', found {_shown(tag)}")
    # §2.2.5 and §2.2.6: a variant appears once, an extension's singleton appears once.
    variants = found["variants"].split("-")[1:]
    singletons = [p for p in found["extensions"].split("-") if len(p) == 1]
    if len(set(variants)) != len(variants) or len(set(singletons)) != len(singletons):
        raise LanguageError(f"expected each variant and extension once in a language tag, found {_shown(tag)}")
    return _cased(lowered)


def is_tag(tag: object) -> bool:
    try:
        canonical(tag)  # type: ignore[arg-type]
    except LanguageError:
        return False
    return True


def lookup_chain(tag: str, default: str) -> tuple[str, ...]:
    """The languages tried for `tag`, most specific first, ending with `default` (both canonical)."""
    chain = _truncations(tag)
    for fallback in _truncations(default):
        if fallback not in chain:
            chain.append(fallback)
    return tuple(chain)


def first_available(tag: str | None, default: str, available: Iterable[str]) -> str:
    """The first language of `tag`'s chain that is in `available`; `default` when none is (a lead with
    no language reads the default)."""
    have = set(available)
    for candidate in lookup_chain(tag or default, default):
        if candidate in have:
            return candidate
    return default


def from_accept_language(header: str | None, declared: Sequence[str], default: str) -> str | None:
    """The declared language an `Accept-Language` header (RFC 9110 §12.5.4) asks for most, by quality
    then order, matched by lookup (`de-AT` takes `de`); None when it asks for none of them. A malformed
    entry is skipped: a browser's header is a hint, not an input to refuse."""
    if not header:
        return None
    wanted: list[tuple[float, int, str]] = []
    for position, entry in enumerate(header[:1000].split(",")[:32]):
        name, _, params = entry.strip().partition(";")
        quality = _quality(params)
        if quality is None or quality <= 0 or name.strip() == "*":
            continue
        try:
            wanted.append((-quality, position, canonical(name)))
        except LanguageError:
            continue
    have = set(declared)
    for _, _, tag in sorted(wanted):
        for candidate in _truncations(tag):
            if candidate in have:
                return candidate
    return None


def _quality(params: str) -> float | None:
    params = params.strip()
    if not params:
        return 1.0
    key, _, value = params.partition("=")
    if key.strip().lower() != "q":
        return None
    try:
        quality = float(value.strip())
    except ValueError:
        return None
    return quality if 0 <= quality <= 1 else None


def _truncations(tag: str) -> list[str]:
    """`tag`, then each shorter tag RFC 4647 §3.4 tries: a tag never ends with a one-character subtag
    (a singleton, or a one-character private-use subtag) after truncation."""
    out: list[str] = []
    subtags = tag.split("-")
    while subtags:
        out.append("-".join(subtags))
        subtags.pop()
        while subtags and len(subtags[-1]) == 1:
            subtags.pop()
    return out


def _cased(lowered: str) -> str:
    # §2.1.1: language lowercase, script title case, region uppercase; after a singleton, all lowercase.
    parts = lowered.split("-")
    out = [parts[0]]
    after_singleton = False
    for part in parts[1:]:
        if len(part) == 1:
            after_singleton = True
        if after_singleton:
            out.append(part)
        elif len(part) == 2 and part.isalpha():
            out.append(part.upper())
        elif len(part) == 4 and part.isalpha():
            out.append(part.title())
        else:
            out.append(part)
    return "-".join(out)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
