"""Language tags (RFC 5646 syntax and case) and the lookup chain (RFC 4647 §3.4), against the RFCs' own
examples and over random well-formed tags."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.definition import Languages
from engine.core.languages import LanguageError, canonical, first_available, from_accept_language, lookup_chain


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        # RFC 5646 §2.1.1's examples of the recommended case.
        ("mn-cyrl-mn", "mn-Cyrl-MN"),
        ("MN-cYRL-mn", "mn-Cyrl-MN"),
        ("en-ca-x-ca", "en-CA-x-ca"),
        ("az-latn-x-latn", "az-Latn-x-latn"),
        # Locale names as systems write them.
        ("fr_CA", "fr-CA"),
        ("de", "de"),
        ("es-419", "es-419"),
        ("de-CH-1901", "de-CH-1901"),
        ("zh-hant-tw", "zh-Hant-TW"),
        ("en-us-u-ca-gregory", "en-US-u-ca-gregory"),
    ],
)
def test_a_tag_is_written_in_the_case_rfc_5646_recommends(written: str, expected: str) -> None:
    assert canonical(written) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "english",
        "e",
        "de-",
        "-de",
        "de--at",
        "x-private",
        "i-klingon",
        "de-DE-1996-1996",
        "en-a-bb-a-cc",
        "12",
        "deutsch",
        "germ",
        "dé",
        "fr-CA ;",
        "a" * 70,
        "en-GB-" + "x" * 9,
    ],
)
def test_what_is_not_a_tag_is_refused_with_what_was_found(bad: str) -> None:
    with pytest.raises(LanguageError, match="found"):
        canonical(bad)


def test_lookup_drops_subtags_from_the_end_with_a_singleton_left_at_the_end() -> None:
    # RFC 4647 §3.4's example, then the funnel's default.
    assert lookup_chain("zh-Hant-CN-x-private1-private2", "en") == (
        "zh-Hant-CN-x-private1-private2",
        "zh-Hant-CN-x-private1",
        "zh-Hant-CN",
        "zh-Hant",
        "zh",
        "en",
    )
    assert lookup_chain("fr-CA", "en-GB") == ("fr-CA", "fr", "en-GB", "en")
    assert lookup_chain("en-US", "en-GB") == ("en-US", "en", "en-GB")


def test_the_first_available_language_of_the_chain_wins() -> None:
    assert first_available("fr-CA", "en", ["en", "fr"]) == "fr"
    assert first_available("fr-CA", "en", ["en", "fr", "fr-CA"]) == "fr-CA"
    assert first_available("pt-BR", "en", ["en", "fr"]) == "en"
    assert first_available(None, "en", ["en", "de"]) == "en"


def test_accept_language_picks_the_declared_language_asked_for_most() -> None:
    declared = ["en", "de", "fr"]
    assert from_accept_language("de-AT,de;q=0.9,en;q=0.5", declared, "en") == "de"
    assert from_accept_language("es, fr-CA;q=0.8, en;q=0.7", declared, "en") == "fr"
    assert from_accept_language("en;q=0.2, de;q=0.9", declared, "en") == "de"
    assert from_accept_language("de;q=0, ja", declared, "en") is None
    assert from_accept_language("*, !!, de;q=x, fr;q=2", declared, "en") is None
    assert from_accept_language(None, declared, "en") is None


_ALPHA = "abcdefghijklmnopqrstuvwxyz"
_ALNUM = _ALPHA + "0123456789"


@st.composite
def tags(draw: st.DrawFn) -> str:
    parts = [draw(st.text(_ALPHA, min_size=2, max_size=3))]
    if draw(st.booleans()):
        parts.append(draw(st.text(_ALPHA, min_size=4, max_size=4)))
    if draw(st.booleans()):
        parts.append(
            draw(st.one_of(st.text(_ALPHA, min_size=2, max_size=2), st.text("0123456789", min_size=3, max_size=3)))
        )
    parts += draw(st.lists(st.text(_ALNUM, min_size=5, max_size=8), max_size=2, unique=True))
    if draw(st.booleans()):
        parts += ["x", *draw(st.lists(st.text(_ALNUM, min_size=1, max_size=8), min_size=1, max_size=3))]
    written = "-".join(parts)
    return "".join(c.upper() if draw(st.booleans()) else c for c in written)


def _prefix_of(short: str, long: str) -> bool:
    return long == short or long.startswith(short + "-")


@given(tags(), tags())
def test_any_chain_starts_with_the_tag_shortens_and_ends_with_the_default(written: str, default_written: str) -> None:
    tag, default = canonical(written), canonical(default_written)
    chain = lookup_chain(tag, default)
    assert chain[0] == tag
    assert default in chain
    assert len(set(chain)) == len(chain)
    # First the tag's own truncations, each shorter than the one before; then what remains of the
    # default's.
    own = [c for c in chain if _prefix_of(c, tag)]
    assert list(chain[: len(own)]) == own
    assert all(len(a) > len(b) and _prefix_of(b, a) for a, b in itertools.pairwise(own))
    assert own[-1] == tag.split("-")[0]
    assert all(_prefix_of(c, default) for c in chain[len(own) :])
    # Every language in the chain is itself a tag in canonical case, and canonical is idempotent.
    assert all(canonical(c) == c for c in chain)
    assert canonical(tag.lower()) == tag


@given(tags(), st.lists(tags(), max_size=4))
def test_the_language_chosen_is_available_or_the_default(written: str, others: list[str]) -> None:
    tag = canonical(written)
    available = {canonical(o) for o in others} | {"en"}
    chosen = first_available(tag, "en", available)
    assert chosen in available
    # Nothing earlier in the chain was available.
    chain = lookup_chain(tag, "en")
    assert all(c not in available for c in chain[: chain.index(chosen)])


def test_a_funnel_declares_its_languages_once_each() -> None:
    langs = Languages(default="en-gb", others=["DE", "fr_ca"], complete=["de"])
    assert langs.declared == ("en-GB", "de", "fr-CA")
    for bad, words in [
        ({"default": "en", "others": ["en"]}, "without the default"),
        ({"others": ["de", "DE"]}, "twice"),
        ({"others": ["de"], "complete": ["fr"]}, "among `others`"),
        ({"default": "english"}, "language tag"),
    ]:
        with pytest.raises(ValueError, match=words):
            Languages.model_validate(bad)
