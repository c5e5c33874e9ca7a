"""The rule every key that signs must meet (the secret key and its predecessors, the hooks' and the
webhooks' secrets): at least 256 random bits judged by length and alphabet, and none of the values
anyone can read in this project. Pure: no settings, no clock."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.secret_keys import DEFAULT_SECRET_KEY, key_problem, new_key

ROOT = Path(__file__).resolve().parents[2]


GUESSABLE = [
    ("", "empty"),
    ("k", "1 character"),
    ("a-long-random-value-for-this-test", "33 characters"),
    (secrets.token_hex(16), "32 characters"),  # 128 random bits, however long it looks
    ("0123456789" * 7, "70 characters"),  # digits carry 3.3 bits each: 78 are needed
    ("ab" * 40, "2 different characters"),
    ("x" * 64, "1 different character"),
    ("correct horse battery staple correct horse battery staple", "space"),
    ("clé-" + secrets.token_urlsafe(40), "printable ASCII"),
    (DEFAULT_SECRET_KEY, "public default"),
]


# Named by the reason, not by a random key: every process that collects them names them alike.
@pytest.mark.parametrize(("key", "words"), GUESSABLE, ids=[words for _, words in GUESSABLE])
def test_a_key_anyone_could_guess_is_refused_with_the_reason(key: str, words: str) -> None:
    problem = key_problem(key)
    assert problem is not None and words in problem
    assert len(key) < 4 or key not in problem  # the message never repeats a key


@pytest.mark.parametrize(
    "key",
    [
        secrets.token_urlsafe(32),  # what `funnel secret` prints
        secrets.token_hex(32),  # openssl rand -hex 32
        "openssl-rand-base64-32:" + "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=",
    ],
    ids=["funnel secret", "hex", "base64 with a prefix"],  # the same names in every process that collects them
)
def test_a_key_of_32_random_bytes_is_accepted_however_it_is_written(key: str) -> None:
    assert key_problem(key) is None


@given(st.integers(min_value=0, max_value=2**64))
def test_funnel_secret_never_makes_a_key_the_rule_refuses(_: int) -> None:
    key = new_key()
    assert key_problem(key) is None and len(key) == 43


def _published() -> set[str]:
    """Every long run of key characters with letters and digits (what a random key looks like, unlike a
    heading's slug) printed in the docs, the README and the sample settings: a reader may copy any of them
    into a setting."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "config").glob("*.toml"))]
    found: set[str] = set()
    for path in files:
        found.update(re.findall(r"[A-Za-z0-9_+/-]{20,}={0,2}", path.read_text()))
    return {value for value in found if re.search("[0-9]", value) and re.search("[A-Za-z]", value)}


def test_no_value_printed_in_the_docs_can_be_used_as_a_key() -> None:
    published = _published()
    assert published  # the scan reads the files
    usable = sorted(value for value in published if key_problem(value) is None)
    assert usable == [], "add these to engine/core/secret_keys.py's published values, or take them out of the docs"


@pytest.mark.parametrize(
    "example",
    [
        "whsec_test",
        "the shop's secret",
        "set FUNNEL_HOOKS__SHOP__SECRET instead of writing it here",
        "q3Vn0c2Jx8wT5m1KfYpR7hLzA9bE4uGdS6oWiN2vXk0",  # the sample environment file once printed it
    ],
)
def test_the_examples_the_docs_give_are_refused(example: str) -> None:
    assert key_problem(example) is not None
